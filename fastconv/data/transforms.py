"""Preparation of uint8 image batches for training: per-channel normalization
(``Normalize``, defined in ``fastconv.nn.normalize`` because a model applies
its own), batch-vectorized augmentation (``Augment``), and the views that
test-time augmentation averages (``tta_views``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fastconv.nn.normalize import Normalize

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["Normalize", "Augment", "shift", "tta_views", "resize_and_crop", "PADDING_MODES", "FLIP_MODES",
           "TTA_MODES"]


PADDING_MODES = ("zeros", "reflect")
FLIP_MODES = ("random", "alternate")
TTA_MODES = ("none", "flip", "flip-translate")


def _flip_bits(indices: np.ndarray, seed: int) -> np.ndarray:
    """A fixed pseudo-random bit per data-set index (splitmix64's finalizer of
    index and seed): which images the first epoch of alternating flips mirrors."""
    z = indices.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2 ** 64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(63)).astype(bool)


def _padded(x: np.ndarray, padding: int, mode: str) -> np.ndarray:
    pad = ((0, 0), (0, 0), (padding, padding), (padding, padding))
    return np.pad(x, pad, mode="reflect") if mode == "reflect" else np.pad(x, pad)


class Augment:
    """Random translation and horizontal flip, for a whole batch at once.

    Each image is cut, at its own offset (dy, dx) in [0, 2*padding], out of
    the image padded by ``padding`` pixels on every side: with zeros
    (``padding_mode="zeros"``, the usual random crop) or with the image's
    own mirror image (``"reflect"``, the airbench recipe's translation,
    which never shows a border). Then it is mirrored left-right:

    * ``flip_mode="random"``: each image on a coin toss;
    * ``flip_mode="alternate"``: the derandomized flip of the airbench paper
      (Jordan, 2024): in the first epoch a fixed half of the data set, chosen
      by a hash of each image's index (and ``flip_seed``), and in every
      later epoch the images that were not mirrored in the epoch before, so
      that every two consecutive epochs show each image both ways. It needs
      each image's ``indices`` in the data set and the ``epoch`` (from 0).

    Random numbers come from the rng passed in, drawn in a fixed order
    (offsets, then the coin tosses of the random flip), so a seed gives the
    same batch. The images may be of any dtype: uint8 batches are augmented
    before they are converted.
    """

    def __init__(self, padding: int = 4, flip: bool = True, padding_mode: str = "zeros",
                 flip_mode: str = "random", flip_seed: int = 0) -> None:
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if flip_mode not in FLIP_MODES:
            raise ValueError(f"flip_mode must be one of {FLIP_MODES}, got {flip_mode!r}")
        if isinstance(flip_seed, bool) or not isinstance(flip_seed, (int, np.integer)) or flip_seed < 0:
            raise ValueError(f"flip_seed must be a non-negative int, got {flip_seed!r}")
        self.padding = int(padding)
        self.flip = bool(flip)
        self.padding_mode = padding_mode
        self.flip_mode = flip_mode
        self.flip_seed = int(flip_seed)

    def __call__(self, x: np.ndarray, rng: np.random.Generator, indices: np.ndarray | None = None,
                 epoch: int = 0) -> np.ndarray:
        """The batch x (N, C, H, W) translated and flipped, a new array of x's
        dtype; ``indices`` (N,) and ``epoch`` are what the alternating flip needs."""
        n: int
        n, c, h, w = x.shape
        p = self.padding
        if p and self.padding_mode == "reflect" and p >= min(h, w):
            raise ValueError(f"reflect padding of {p} pixels needs images larger than that, got {h}x{w}")
        dy = rng.integers(0, 2 * p + 1, size=n)
        dx = rng.integers(0, 2 * p + 1, size=n)
        flips = self._flips(n, rng, indices, epoch)
        out = np.empty_like(x)
        if p:
            padded = _padded(x, p, self.padding_mode)
            offsets = dy * (2 * p + 1) + dx
            # One slice copy per offset, of all the images that share it: at
            # most (2p + 1)^2 copies, rather than an index per pixel.
            for offset in np.unique(offsets):
                rows = np.flatnonzero(offsets == offset)
                top, left = divmod(int(offset), 2 * p + 1)
                out[rows] = padded[rows, :, top:top + h, left:left + w]
        else:
            out[...] = x
        mirrored = np.flatnonzero(flips)
        if mirrored.size:
            out[mirrored] = out[mirrored, :, :, ::-1]
        return out

    def _flips(self, n: int, rng: np.random.Generator, indices: np.ndarray | None, epoch: int) -> np.ndarray:
        if not self.flip:
            return np.zeros(n, dtype=bool)
        if self.flip_mode == "random":
            return rng.random(n) < 0.5
        if indices is None:
            raise ValueError("the alternating flip needs the images' indices in the data set (indices=...)")
        indices = np.asarray(indices)
        if indices.shape != (n,):
            raise ValueError(f"indices have shape {indices.shape}, expected ({n},), one per image")
        return _flip_bits(indices, self.flip_seed) ^ bool(epoch % 2)

    def config(self) -> dict[str, int | bool | str]:
        """The constructor's arguments: ``Augment(**augment.config())`` makes the same augmentation."""
        config: dict[str, int | bool | str] = {"padding": self.padding, "flip": self.flip}
        # The defaults are left out, so that the record of an older run still matches.
        if self.padding_mode != "zeros":
            config["padding_mode"] = self.padding_mode
        if self.flip_mode != "random":
            config.update(flip_mode=self.flip_mode, flip_seed=self.flip_seed)
        return config

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"Augment({args})"


def shift(x: np.ndarray, dy: int, dx: int, padding_mode: str = "reflect") -> np.ndarray:
    """The images x (N, C, H, W) moved down by dy and right by dx pixels
    (negative: up, left), the uncovered border filled by reflection or zeros."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    h, w = x.shape[2:]
    p = max(abs(dy), abs(dx))
    if p == 0:
        return x.copy()
    if padding_mode == "reflect" and p >= min(h, w):
        raise ValueError(f"reflect padding of {p} pixels needs images larger than that, got {h}x{w}")
    padded = _padded(x, p, padding_mode)
    return np.ascontiguousarray(padded[:, :, p - dy:p - dy + h, p - dx:p - dx + w])


def tta_views(x: np.ndarray, mode: str) -> list[tuple[float, np.ndarray]]:
    """The views of a batch whose logits test-time augmentation averages, as
    (weight, images) pairs whose weights add up to 1.

    ``"none"``: the images alone. ``"flip"``: the images and their mirror
    images, half each. ``"flip-translate"`` (the airbench evaluation): half
    to the images and their mirror images, and a quarter each to the images
    moved one pixel down and right and one pixel up and left (reflected
    borders), each with its mirror image too: six views.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"test-time augmentation must be one of {TTA_MODES}, got {mode!r}")
    if mode == "none":
        return [(1.0, x)]
    mirror = np.ascontiguousarray(x[..., ::-1])
    if mode == "flip":
        return [(0.5, x), (0.5, mirror)]
    views = [(0.25, x), (0.25, mirror)]
    for step in (1, -1):
        moved = shift(x, step, step)
        views += [(0.125, moved), (0.125, np.ascontiguousarray(moved[..., ::-1]))]
    return views


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
