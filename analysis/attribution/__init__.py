"""Attribution: which input pixels a chosen output depends on (gradients and
their variants, DeepLIFT, gradient SHAP, relevance propagation, occlusion,
and a segmentation seeded by a saliency map), and measures of how good a map
is (deletion and insertion curves, the randomization sanity check)."""
from fastconv.analysis.attribution.lrp import LRP
from fastconv.analysis.attribution.methods import (
    Deconvnet,
    DeepLift,
    GradCAM,
    Gradient,
    GradientShap,
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    LayerConductance,
    Saliency,
    SmoothGrad,
    channel_max,
    relu_backward_rule,
)
from fastconv.analysis.attribution.metrics import (
    PerturbationCurve,
    SanityCheck,
    cascading_randomization,
    perturbation_curve,
)
from fastconv.analysis.attribution.occlusion import Occlusion, OcclusionMaps, occlusion_maps
from fastconv.analysis.attribution.segment import grabcut_from_saliency

__all__ = [
    "Gradient", "Saliency", "Deconvnet", "GuidedBackprop", "GradCAM", "GuidedGradCAM", "SmoothGrad",
    "IntegratedGradients", "InputXGradient", "DeepLift", "GradientShap", "LayerConductance", "LRP",
    "PerturbationCurve", "SanityCheck", "cascading_randomization", "perturbation_curve",
    "channel_max", "relu_backward_rule",
    "Occlusion", "OcclusionMaps", "occlusion_maps", "grabcut_from_saliency",
]
