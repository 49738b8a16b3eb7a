"""Images optimized against a network: class models, feature visualization,
inversion, DeepDream and style transfer, with their parametrizations and figures."""
from fastconv.analysis.optimize.figures import (
    plot_class_models,
    plot_dream,
    plot_feature_grid,
    plot_inversions,
    plot_optimizer_comparison,
    plot_style,
    plot_to_class,
)
from fastconv.analysis.optimize.methods import (
    Dream,
    Inversion,
    ToClass,
    Visualization,
    class_model,
    deep_dream,
    feature_grid,
    feature_visualization,
    invert,
    invert_layers,
    load_image,
    to_class,
)
from fastconv.analysis.optimize.style import (
    StyleObjective,
    Stylized,
    gram_matrix,
    random_weights,
    style_loss,
    style_transfer,
)

__all__ = [
    "Visualization", "class_model", "feature_visualization", "feature_grid", "ToClass", "to_class",
    "Inversion", "invert", "invert_layers", "Dream", "deep_dream", "load_image",
    "Stylized", "StyleObjective", "style_transfer", "gram_matrix", "style_loss", "random_weights",
    "plot_class_models", "plot_feature_grid", "plot_to_class", "plot_inversions", "plot_dream", "plot_style",
    "plot_optimizer_comparison",
]
