"""Images optimized against a network: class models, feature visualization
(units, directions, channel combinations, diverse batches, an activation
atlas), inversion, DeepDream, style transfer and evolved fooling images,
with their parametrizations and figures."""
from fastconv.analysis.optimize.atlas import Atlas, activation_atlas, embed_activations, layer_activations, plot_atlas
from fastconv.analysis.optimize.cppn import CPPN, Fooling, Gratings, evolve_fooling, plot_fooling
from fastconv.analysis.optimize.figures import (
    plot_class_models,
    plot_directions,
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
    combine_channels,
    deep_dream,
    direction_visualization,
    diverse_visualization,
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
    "plot_optimizer_comparison", "plot_directions",
    "direction_visualization", "combine_channels", "diverse_visualization",
    "Atlas", "activation_atlas", "layer_activations", "embed_activations", "plot_atlas",
    "CPPN", "Gratings", "Fooling", "evolve_fooling", "plot_fooling",
]
