"""Tools to look inside a trained network (``fastconv.analysis``).

They work on any :class:`fastconv.nn.model.Sequential`, grayscale or RGB,
batch-first, through the model's public API only, return NumPy arrays, and
each has a figure function in :mod:`fastconv.analysis.visualize.figures`.

Attribution methods share one verb, ``Method(model).attribute(x, target)``,
whose result is shaped like x. Attacks share another,
``Attack(model, ...)(x, y=None, target=None) -> x_adv``, on [0, 1] pixels.
"""
from fastconv.analysis.visualize.feature_maps import Activations, activations
from fastconv.analysis.attribution.methods import (
    Deconvnet, Gradient, GradCAM, GuidedBackprop, GuidedGradCAM, IntegratedGradients, Saliency,
    SmoothGrad, channel_max, relu_backward_rule,
)
from fastconv.analysis._common import Normalizer
from fastconv.analysis.visualize.embedding import Clusters, cluster, embed, layer_features, snap_to_grid
from fastconv.analysis.visualize.weights import filter_tiles, filters
from fastconv.analysis.attribution.occlusion import Occlusion, OcclusionMaps, occlusion_maps
from fastconv.analysis.visualize.receptive_field import EffectiveField, effective_receptive_field, geometry, theoretical_size
from fastconv.analysis.attribution.segment import grabcut_from_saliency
from fastconv.analysis.visualize.units import TopImages, top_images
from fastconv.analysis.attacks.methods import (
    ATTACKS, BIM, FGSM, PGD, PGDL2, Attack, CarliniWagnerL2, DeepFool, IterativeTargeted, make_attack,
)
from fastconv.analysis.attacks.robustness import (
    AdversarialTraining, attack_report, defensive_distillation, evaluate_attack, jacobian_augmentation,
    robustness_curve, train_substitute, transfer,
)
from fastconv.analysis.attacks.linear import add_template, linear_classifier, template_flip, templates, train_linear
from fastconv.analysis.attacks.figures import plot_adversarial, plot_fooling_images, plot_robustness, plot_templates
from fastconv.analysis.optimize.methods import (
    Dream, Inversion, ToClass, Visualization, class_model, deep_dream, feature_grid, feature_visualization,
    invert, invert_layers, load_image, to_class,
)
from fastconv.analysis.optimize.style import StyleObjective, Stylized, gram_matrix, random_weights, style_loss, style_transfer
from fastconv.analysis.optimize.figures import (
    plot_class_models, plot_dream, plot_feature_grid, plot_inversions, plot_optimizer_comparison, plot_style,
    plot_to_class,
)
from fastconv.analysis.report.page import Report, ReportSettings, build_report, write_report

__all__ = [
    "Activations", "activations",
    "Gradient", "Saliency", "Deconvnet", "GuidedBackprop", "GradCAM", "GuidedGradCAM", "SmoothGrad",
    "IntegratedGradients", "channel_max", "relu_backward_rule",
    "Normalizer",
    "Clusters", "cluster", "embed", "layer_features", "snap_to_grid",
    "filter_tiles", "filters",
    "Occlusion", "OcclusionMaps", "occlusion_maps",
    "EffectiveField", "effective_receptive_field", "geometry", "theoretical_size",
    "grabcut_from_saliency",
    "TopImages", "top_images",
    "Attack", "FGSM", "BIM", "PGD", "PGDL2", "IterativeTargeted", "DeepFool", "CarliniWagnerL2",
    "ATTACKS", "make_attack",
    "AdversarialTraining", "attack_report", "evaluate_attack", "robustness_curve", "transfer",
    "defensive_distillation", "train_substitute", "jacobian_augmentation",
    "linear_classifier", "train_linear", "templates", "add_template", "template_flip",
    "plot_adversarial", "plot_fooling_images", "plot_robustness", "plot_templates",
    "Visualization", "class_model", "feature_visualization", "feature_grid", "ToClass", "to_class",
    "Inversion", "invert", "invert_layers", "Dream", "deep_dream", "load_image",
    "Stylized", "StyleObjective", "style_transfer", "gram_matrix", "style_loss", "random_weights",
    "plot_class_models", "plot_feature_grid", "plot_to_class", "plot_inversions", "plot_dream", "plot_style",
    "plot_optimizer_comparison",
    "Report", "ReportSettings", "build_report", "write_report",
]
