"""Tools to look inside a trained network (``fastconv.analysis``).

They work on any :class:`fastconv.model.Sequential`, grayscale or RGB,
batch-first, through the model's public API only, return NumPy arrays, and
each has a figure function in :mod:`fastconv.analysis.figures`.

Attribution methods share one verb, ``Method(model).attribute(x, target)``,
whose result is shaped like x.
"""
from .feature_maps import Activations, activations
from .attribution import (
    Deconvnet, Gradient, GradCAM, GuidedBackprop, GuidedGradCAM, IntegratedGradients, Saliency,
    SmoothGrad, channel_max, relu_backward_rule,
)
from ._common import Normalizer
from .embedding import Clusters, cluster, embed, layer_features, snap_to_grid
from .weights import filter_tiles, filters
from .occlusion import Occlusion, OcclusionMaps, occlusion_maps
from .receptive_field import EffectiveField, effective_receptive_field, geometry, theoretical_size
from .segment import grabcut_from_saliency
from .units import TopImages, top_images

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
]
