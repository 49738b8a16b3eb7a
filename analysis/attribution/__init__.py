"""Attribution: which input pixels a chosen output depends on (gradients and
their variants, occlusion, and a segmentation seeded by a saliency map)."""
from fastconv.analysis.attribution.methods import (
    Deconvnet,
    GradCAM,
    Gradient,
    GuidedBackprop,
    GuidedGradCAM,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
    channel_max,
    relu_backward_rule,
)
from fastconv.analysis.attribution.occlusion import Occlusion, OcclusionMaps, occlusion_maps
from fastconv.analysis.attribution.segment import grabcut_from_saliency

__all__ = [
    "Gradient", "Saliency", "Deconvnet", "GuidedBackprop", "GradCAM", "GuidedGradCAM", "SmoothGrad",
    "IntegratedGradients", "channel_max", "relu_backward_rule",
    "Occlusion", "OcclusionMaps", "occlusion_maps", "grabcut_from_saliency",
]
