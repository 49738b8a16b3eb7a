"""Preparation of uint8 image batches for training: per-channel normalization
(``Normalize``, defined in ``fastconv.nn.normalize`` because a model applies
its own) and batch-vectorized augmentation (``Augment``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fastconv.nn.normalize import Normalize

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["Normalize", "Augment", "resize_and_crop"]


class Augment:
    """Random crop after zero padding, and random horizontal flip, for a whole batch at once.

    Each image gets its own offset (dy, dx) in [0, 2*padding] and, when flip
    is on, a coin toss for mirroring; all random numbers come from the rng
    passed in, drawn in a fixed order, so a seed gives the same batch.
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        self.padding = int(padding)
        self.flip = bool(flip)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The batch x (N, C, H, W) cropped and flipped, a new array of x's dtype."""
        n: int
        n, c, h, w = x.shape
        p = self.padding
        dy = rng.integers(0, 2 * p + 1, size=n)
        dx = rng.integers(0, 2 * p + 1, size=n)
        flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, dtype=bool)
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        rows = dy[:, None] + np.arange(h)
        cols = dx[:, None] + np.arange(w)
        cols = np.where(flips[:, None], cols[:, ::-1], cols)
        return padded[
            np.arange(n)[:, None, None, None],
            np.arange(c)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]

    def config(self) -> dict[str, int | bool]:
        """The constructor's arguments: ``Augment(**augment.config())`` makes the same augmentation."""
        return {"padding": self.padding, "flip": self.flip}

    def __repr__(self) -> str:
        return f"Augment(padding={self.padding}, flip={self.flip})"


def resize_and_crop(image: ArrayLike, size: int | None = None, resize: int | None = None) -> np.ndarray:
    """Resize a uint8 image (H, W) or (H, W, C) so that its shorter side is
    ``resize`` pixels (bilinear, with Pillow's antialiasing), then cut the
    central ``size`` x ``size`` square: the usual way to bring photos of any
    shape to a network's input. ``resize`` None keeps the scale, ``size``
    None keeps the whole resized image. The longer side is truncated to whole
    pixels, as torchvision's Resize does."""
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 image shaped (H, W) or (H, W, C), got {array.dtype} {array.shape}")
    h, w = array.shape[:2]
    if resize is not None:
        resize = int(resize)
        if resize < 1:
            raise ValueError(f"resize must be a positive number of pixels, got {resize}")
        if min(h, w) != resize:
            new_w, new_h = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
            # Image.BILINEAR, not Image.Resampling.BILINEAR (Pillow 9.1+): Pillow 9.0 is still supported,
            # and newer Pillow sets the old name at import time, where the type checker cannot see it.
            array = np.asarray(Image.fromarray(array).resize((new_w, new_h), Image.BILINEAR))  # type: ignore[attr-defined]
            h, w = new_h, new_w
    if size is None:
        return array
    size = int(size)
    if not 1 <= size <= min(h, w):
        raise ValueError(f"crop size {size} does not fit the resized {w}x{h} image")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return array[top:top + size, left:left + size]
