"""Telling adversarial inputs apart: feature squeezing (Xu, Evans & Qi 2018).

An adversarial perturbation is fitted to the exact pixels it was made for.
Squeezing the image (fewer grey levels, a median filter) removes much of
it while barely changing a natural image, so the network's answer on a
squeezed adversarial image moves far more than on a squeezed natural one.
The score of an image is the largest L1 distance between the softmax of the
image and that of each squeezed version; an image whose score passes a
threshold, set to accept a chosen share of natural images as adversarial
(the false positive rate), is flagged.

    detector = FeatureSqueezing(model)            # bits and median size from the image type
    detector.fit(x_clean, false_positive_rate=0.05)
    flagged = detector.detect(x_suspect)
    roc = detection_roc(detector, x_clean, x_adv)  # {"fpr", "tpr", "thresholds", "auc"}

Images are [0, 1] pixels; the model's normalization is applied inside.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from fastconv import _checks
from fastconv.analysis.attacks import methods as A
from fastconv.nn.losses import softmax

if TYPE_CHECKING:
    import fastconv

__all__ = ["FeatureSqueezing", "reduce_bit_depth", "median_smooth", "detection_roc"]


def reduce_bit_depth(x: np.ndarray, bits: int) -> np.ndarray:
    """x ([0, 1] pixels) rounded to 2 ** bits grey levels per channel."""
    bits = _checks.positive_int(bits, "bits")
    levels = 2 ** bits - 1
    return (np.round(x * levels) / levels).astype(x.dtype)


def median_smooth(x: np.ndarray, size: int) -> np.ndarray:
    """Each channel of each image of x (N, C, H, W) through a size x size median filter
    (edges reflected); a filter of even size takes the upper of the two middle values."""
    size = _checks.positive_int(size, "size")
    return ndimage.median_filter(x, size=(1, 1, size, size), mode="reflect")


class FeatureSqueezing:
    """Xu et al.'s detector on ``model``: squeezers of bit depth ``bits`` and a
    ``median_size`` median filter, scored by the largest L1 distance between
    predictions. ``bits`` defaults to 1 for single-channel images and 5 for
    colour ones, the settings Xu et al. chose for MNIST and CIFAR-10; 0 or
    None for ``median_size`` leaves that squeezer out.
    """

    def __init__(self, model: fastconv.Model, bits: int | None = None, median_size: int | None = 2,
                 batch_size: int = 256) -> None:
        self.model = model
        self.bits = None if bits is None else _checks.positive_int(bits, "bits")
        if self.bits is not None and self.bits > 8:
            raise ValueError(f"bits must be at most 8, got {bits!r}")
        self.median_size = None if not median_size else _checks.positive_int(median_size, "median_size")
        self.batch_size = _checks.positive_int(batch_size, "batch_size")
        self.threshold: float | None = None

    def squeezers(self, channels: int) -> dict[str, Any]:
        """{name: function of a batch} for images with this many channels."""
        bits = self.bits if self.bits is not None else (1 if channels == 1 else 5)
        out: dict[str, Any] = {f"{bits}-bit": lambda x: reduce_bit_depth(x, bits)}
        if self.median_size:
            size = self.median_size
            out[f"median {size}x{size}"] = lambda x: median_smooth(x, size)
        return out

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        return softmax(A.predict_pixels(self.model, x, self.batch_size).astype(np.float64), axis=1)

    def distances(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """L1 distance between the model's softmax on x and on each squeezed x, per image."""
        x = A.check_pixels(self.model, x)
        p = self._probabilities(x)
        return {name: np.abs(self._probabilities(squeeze(x)) - p).sum(axis=1)
                for name, squeeze in self.squeezers(x.shape[1]).items()}

    def score(self, x: np.ndarray) -> np.ndarray:
        """The detector's score of each image (0 to 2): higher is more suspect."""
        return np.max(np.stack(list(self.distances(x).values())), axis=0)

    def fit(self, x_clean: np.ndarray, false_positive_rate: float = 0.05) -> float:
        """Set and return the threshold that flags ``false_positive_rate`` of the natural images x_clean."""
        rate = A._number(false_positive_rate, "false_positive_rate", 0.0)
        if rate >= 1:
            raise ValueError(f"false_positive_rate must be below 1, got {false_positive_rate!r}")
        self.threshold = float(np.quantile(self.score(x_clean), 1 - rate))
        return self.threshold

    def detect(self, x: np.ndarray) -> np.ndarray:
        """True for each image whose score passes the threshold set by :meth:`fit`."""
        if self.threshold is None:
            raise RuntimeError("call fit(x_clean) first: the detector has no threshold yet")
        return self.score(x) > self.threshold


def detection_roc(detector: FeatureSqueezing, x_clean: np.ndarray, x_adv: np.ndarray) -> dict[str, Any]:
    """The detector's ROC curve (scikit-learn's ``roc_curve``) on natural images
    (negatives) against adversarial ones (positives): {"fpr", "tpr",
    "thresholds", "auc", "natural", "adversarial"} as lists and numbers, and,
    if the detector was fitted, "detection_rate" at its threshold."""
    from sklearn.metrics import auc, roc_curve

    clean = detector.score(x_clean)
    adversarial = detector.score(x_adv)
    if not len(clean) or not len(adversarial):
        raise ValueError(f"the ROC needs natural and adversarial images; got {len(clean)} and {len(adversarial)}")
    truth = np.concatenate([np.zeros(len(clean)), np.ones(len(adversarial))])
    fpr, tpr, thresholds = roc_curve(truth, np.concatenate([clean, adversarial]))
    result: dict[str, Any] = {
        "natural": int(len(clean)), "adversarial": int(len(adversarial)),
        "fpr": fpr.tolist(), "tpr": tpr.tolist(),
        "thresholds": [float(t) if np.isfinite(t) else None for t in thresholds],
        "auc": float(auc(fpr, tpr)),
    }
    if detector.threshold is not None:
        result["threshold"] = detector.threshold
        result["detection_rate"] = float((adversarial > detector.threshold).mean())
        result["false_positive_rate"] = float((clean > detector.threshold).mean())
    return result
