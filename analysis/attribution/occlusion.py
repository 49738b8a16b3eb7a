"""Occlusion sensitivity (Zeiler & Fergus 2014): slide a patch over the image
and watch the prediction.

:func:`occlusion_maps` gives, for each position of the patch, the
probability of the true class and the most probable class, as the grids
Zeiler & Fergus plot. :class:`Occlusion` gives the per-pixel attribution
(``attribute`` verb): the drop of the target output averaged over every
patch position covering the pixel.

A patch at grid cell (j, k) covers rows stride*j .. stride*j + size - 1 and
columns stride*k .. stride*k + size - 1 of every channel; the grid has
(H - size) // stride + 1 rows and likewise columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fastconv.analysis import _common as C
from fastconv.nn.losses import softmax

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from numpy.typing import ArrayLike, DTypeLike

    import fastconv


@dataclass
class OcclusionMaps:
    """What occluding each patch position does to a batch of N images.

    ``probability[n, j, k]`` is the probability of ``target[n]`` with the
    patch at grid cell (j, k), ``top_class``/``top_probability`` the most
    probable class there, ``baseline_probability[n]`` the probability of the
    target without occlusion.
    """

    target: np.ndarray
    probability: np.ndarray
    top_class: np.ndarray
    top_probability: np.ndarray
    baseline_probability: np.ndarray
    patch: tuple[int, int]
    stride: tuple[int, int]

    def pixel_map(self, image_shape: Sequence[int]) -> np.ndarray:
        """Spread ``probability`` back onto the pixels: mean over the patches covering each one.

        Pixels no patch covers get NaN. Shape (N, H, W).
        """
        return _patches_to_pixels(self.probability, image_shape, self.patch, self.stride)


def occlusion_grid(image_size: Sequence[int], patch: int | Sequence[int],
                   stride: int | Sequence[int]) -> tuple[int, int]:
    """Number of patch positions (rows, cols); ValueError if the patch does not fit."""
    h, w = image_size
    ph, pw = C.check_pair(patch, "patch size")
    sh, sw = C.check_pair(stride, "stride")
    if ph > h or pw > w:
        raise ValueError(f"patch {(ph, pw)} is larger than the image {(h, w)}")
    return (h - ph) // sh + 1, (w - pw) // sw + 1


def _fill_values(fill: ArrayLike, channels: int, dtype: DTypeLike) -> np.ndarray:
    values = np.asarray(fill, dtype=dtype).reshape(-1)
    if values.size == 1:
        return np.full(channels, values[0], dtype=dtype)
    if values.size != channels:
        raise ValueError(f"fill has {values.size} values {values.tolist()} but the image has {channels} channels")
    return values


def _occluded_batches(image: np.ndarray, patch: int | Sequence[int], stride: int | Sequence[int], fill: ArrayLike,
                      batch_size: int) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
    """Yield (cell indices, batch of occluded copies of one image (C, H, W))."""
    c, h, w = image.shape
    rows, cols = occlusion_grid((h, w), patch, stride)
    ph, pw = C.check_pair(patch, "patch size")
    sh, sw = C.check_pair(stride, "stride")
    fill = _fill_values(fill, c, image.dtype).reshape(c, 1, 1)
    cells = [(j, k) for j in range(rows) for k in range(cols)]
    for start, stop in C.batches(len(cells), batch_size):
        chunk = cells[start:stop]
        batch = np.repeat(image[None], len(chunk), axis=0)
        for b, (j, k) in enumerate(chunk):
            batch[b, :, j * sh:j * sh + ph, k * sw:k * sw + pw] = fill
        yield chunk, batch


def occlusion_maps(model: fastconv.Model, x: np.ndarray, target: int | Sequence[int] | np.ndarray | None = None,
                   patch: int | Sequence[int] = 14, stride: int | Sequence[int] = 2, fill: ArrayLike = 0.0,
                   batch_size: int = 256) -> OcclusionMaps:
    """Slide a ``patch`` (size, stride, fill value in model-input units) over each image.

    ``target`` is the true class of each image (an int or N ints); None uses
    the class the model predicts on the unoccluded image. Probabilities are
    the softmax of the model's output (correct for logits and log-probs).
    """
    C.check_images(model, x)
    n = x.shape[0]
    rows, cols = occlusion_grid(x.shape[2:], patch, stride)
    with C.evaluating(model):
        base = softmax(model.predict(x).astype(np.float64), axis=1)
        n_classes = base.shape[1]
        if target is None:
            targets = base.argmax(axis=1)
        else:
            targets = C.target_list(target, n, "occlusion")
            for t in targets:
                if not (C.is_int(t) and 0 <= t < n_classes):
                    raise ValueError(
                        f"target {t!r} is out of range for {n_classes} classes (valid: 0..{n_classes - 1})"
                    )
            targets = np.array(targets, dtype=np.int64)
        probability = np.empty((n, rows, cols))
        top_class = np.empty((n, rows, cols), dtype=np.int64)
        top_probability = np.empty((n, rows, cols))
        for i in range(n):
            for cells, batch in _occluded_batches(x[i], patch, stride, fill, batch_size):
                probs = softmax(model.predict(batch, batch_size=len(batch)).astype(np.float64), axis=1)
                j, k = np.array(cells).T
                probability[i, j, k] = probs[:, targets[i]]
                top_class[i, j, k] = probs.argmax(axis=1)
                top_probability[i, j, k] = probs.max(axis=1)
    return OcclusionMaps(
        target=targets.astype(np.int64),
        probability=probability,
        top_class=top_class,
        top_probability=top_probability,
        baseline_probability=base[np.arange(n), targets],
        patch=C.check_pair(patch, "patch size"),
        stride=C.check_pair(stride, "stride"),
    )


def _patches_to_pixels(values: np.ndarray, image_shape: Sequence[int], patch: tuple[int, int],
                       stride: tuple[int, int]) -> np.ndarray:
    n, rows, cols = values.shape
    h, w = image_shape[-2:]
    ph, pw = patch
    sh, sw = stride
    total = np.zeros((n, h, w))
    count = np.zeros((h, w))
    for j in range(rows):
        for k in range(cols):
            total[:, j * sh:j * sh + ph, k * sw:k * sw + pw] += values[:, j, k, None, None]
            count[j * sh:j * sh + ph, k * sw:k * sw + pw] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


class Occlusion:
    """Per-pixel occlusion attribution: f(x)[target] minus f(occluded x)[target],
    averaged over the patch positions that cover each pixel (0 where none does).

    The output is the model's raw output (logits), as Captum's Occlusion does;
    use :func:`occlusion_maps` for probabilities.
    """

    def __init__(self, model: fastconv.Model) -> None:
        self.model = model

    def attribute(self, x: np.ndarray, target: C.Target, patch: int | Sequence[int] = 14,
                  stride: int | Sequence[int] = 2, fill: ArrayLike = 0.0, batch_size: int = 256) -> np.ndarray:
        C.check_images(self.model, x)
        n, c, h, w = x.shape
        ph, pw = C.check_pair(patch, "patch size")
        sh, sw = C.check_pair(stride, "stride")
        rows, cols = occlusion_grid((h, w), (ph, pw), (sh, sw))
        targets = C.target_list(target, n, "occlusion")
        with C.evaluating(self.model):
            out = self.model.forward(x)
            seed = C.seed_gradient(out, targets, "the model output")
            reference = (out * seed).reshape(n, -1).sum(axis=1)
            drops = np.empty((n, rows, cols))
            for i in range(n):
                for cells, batch in _occluded_batches(x[i], (ph, pw), (sh, sw), fill, batch_size):
                    occluded = self.model.predict(batch, batch_size=len(batch))
                    j, k = np.array(cells).T
                    drops[i, j, k] = reference[i] - occluded[:, targets[i]]
        pixels = np.nan_to_num(_patches_to_pixels(drops, (h, w), (ph, pw), (sh, sw)), nan=0.0)
        return np.repeat(pixels[:, None], c, axis=1).astype(x.dtype)
