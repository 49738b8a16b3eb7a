"""Segmentation from a saliency map: GrabCut seeded by where the gradient is
strong (Simonyan et al. 2014, section 3.2).

Pixels whose saliency is above the ``foreground`` quantile are seeds of
the object, pixels below the ``background`` quantile seeds of the
background; GrabCut (OpenCV) decides the rest from the colours. OpenCV is
an optional extra: ``pip install fastconv[segment]``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from types import ModuleType

    from numpy.typing import ArrayLike

INSTALL_HINT = (
    "saliency segmentation needs OpenCV's GrabCut: pip install fastconv[segment] "
    "(or pip install opencv-python-headless)"
)


def _cv2() -> ModuleType:
    try:
        import cv2
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return cv2


def to_uint8_rgb(image: ArrayLike) -> np.ndarray:
    """(C, H, W) image with C in (1, 3), any range, as (H, W, 3) uint8 for OpenCV."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be shaped (C, H, W) with 1 or 3 channels, got {image.shape}")
    if image.dtype != np.uint8:
        lo, hi = float(image.min()), float(image.max())
        image = np.round((image - lo) / (hi - lo if hi > lo else 1.0) * 255).astype(np.uint8)
    hwc = image.transpose(1, 2, 0)
    if hwc.shape[2] == 1:
        hwc = np.repeat(hwc, 3, axis=2)
    return np.ascontiguousarray(hwc)


def grabcut_from_saliency(image: ArrayLike, saliency: ArrayLike, foreground: float = 0.95, background: float = 0.30,
                          iterations: int = 5) -> np.ndarray:
    """Boolean object mask (H, W) of ``image`` (C, H, W), seeded by ``saliency`` (H, W).

    ``foreground`` and ``background`` are quantiles of the saliency: above
    the first is surely object, below the second surely background, in
    between probably background or probably object (split at the median).
    """
    cv2 = _cv2()
    saliency = np.asarray(saliency, dtype=np.float64)
    rgb = to_uint8_rgb(image)
    if saliency.shape != rgb.shape[:2]:
        raise ValueError(f"saliency has shape {saliency.shape} but the image is {rgb.shape[:2]}")
    if not 0 <= background < foreground <= 1:
        raise ValueError(
            "quantiles must satisfy 0 <= background < foreground <= 1, "
            f"got background={background!r}, foreground={foreground!r}"
        )
    hi, mid, lo = np.quantile(saliency, [foreground, 0.5 * (foreground + background), background])
    mask = np.full(saliency.shape, cv2.GC_PR_BGD, dtype=np.uint8)
    mask[saliency >= mid] = cv2.GC_PR_FGD
    mask[saliency >= hi] = cv2.GC_FGD
    mask[saliency <= lo] = cv2.GC_BGD
    if not np.any(mask == cv2.GC_FGD) or not np.any((mask == cv2.GC_BGD) | (mask == cv2.GC_PR_BGD)):
        raise ValueError("the saliency map is flat: it cannot seed both an object and a background")
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    cv2.grabCut(rgb[:, :, ::-1].copy(), mask, None, bgd_model, fgd_model, int(iterations), cv2.GC_INIT_WITH_MASK)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
