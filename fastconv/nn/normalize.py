"""Normalize: raw images to the input a network is trained on, per channel.

The one normalization of the package. It sits with the model, below the data
sets, because a trained model carries its own (``model.meta['normalization']``)
and applies it (``Sequential.preprocess``); ``fastconv.data`` exports it
beside the other transforms, and the trainer, the command line and every
analysis tool use it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping

    from numpy.typing import ArrayLike, DTypeLike

    import fastconv  # fastconv.Model in annotations: the API reference documents it once, under fastconv

__all__ = ["Normalize"]


class Normalize:
    """x -> (x - scale * mean[c]) / (scale * std[c]), per channel: raw images
    (N, C, H, W) of pixel values in [0, scale] to the float input a network
    is trained on. The one normalization of the package: the trainer, the
    command line, every analysis tool and ``model.preprocess`` use this
    arithmetic.

    ``Normalize.fit(x_train)`` computes mean and std from uint8 images;
    ``from_model(model)`` reads what a trained model carries in
    ``model.meta['normalization']``; ``to_meta()`` gives that JSON-able dict;
    ``undo`` maps a normalized array back to pixel values. A mean and std of
    one value apply to every channel. ``dtype`` (float32 or float64) is the
    type of the output, unless a call asks for another.
    """

    def __init__(self, mean: ArrayLike, std: ArrayLike, scale: float = 255.0, dtype: DTypeLike = np.float32) -> None:
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        self.scale = float(scale)
        self.dtype: np.dtype = np.dtype(dtype)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"mean {self.mean.tolist()} and std {self.std.tolist()} must have one value "
                             "per channel each")
        if not np.all(self.std > 0):
            raise ValueError(f"std must be positive, got {self.std.tolist()}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")

    @classmethod
    def fit(cls, x: np.ndarray, chunk: int = 4096) -> Normalize:
        """Per-channel mean and std of uint8 images x (N, C, H, W), scaled to [0, 1]."""
        if x.ndim != 4 or len(x) == 0:
            raise ValueError(f"expected a non-empty (N, C, H, W) array, got shape {x.shape}")
        total = np.zeros(x.shape[1])
        total_sq = np.zeros(x.shape[1])
        for start in range(0, len(x), chunk):
            part = x[start:start + chunk].astype(np.float64) / 255.0
            total += part.sum(axis=(0, 2, 3))
            total_sq += np.square(part).sum(axis=(0, 2, 3))
        count = x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
        return cls(mean, np.where(std > 1e-6, std, 1.0), 255.0)

    @classmethod
    def from_model(cls, model: fastconv.Model) -> Normalize:
        """The normalization a model was trained with, from ``model.meta``
        (``normalization``, as the trainer stores it, or top-level ``mean``
        and ``std``), in the model's dtype. A model without statistics gets
        pixels / 255, as the trainer feeds uint8 images it has none for."""
        meta = getattr(model, "meta", None) or {}
        stats = meta.get("normalization") or meta
        dtype = getattr(model, "dtype", None) or np.float32
        return cls(stats.get("mean", [0.0]), stats.get("std", [1.0]), stats.get("scale", 255.0), dtype)

    def per_channel(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) in units of ``scale`` for ``channels`` channels, float64
        arrays shaped (1, C, 1, 1): what a tool working on [0, 1] pixels needs."""
        mean, std = self.mean, self.std
        if mean.size == 1:
            mean, std = np.full(channels, mean[0]), np.full(channels, std[0])
        elif mean.size != channels:
            raise ValueError(f"the images have {channels} channels, but the normalization has "
                             f"{mean.size} (mean {mean.tolist()})")
        return mean.reshape(1, channels, 1, 1), std.reshape(1, channels, 1, 1)

    def _stats(self, channels: int, dtype: DTypeLike) -> tuple[np.ndarray, np.ndarray]:
        """(scale * mean, 1 / (scale * std)) in ``dtype``, shaped to broadcast over NCHW."""
        mean, std = self.per_channel(channels)
        return (mean * self.scale).astype(dtype), (1.0 / (std * self.scale)).astype(dtype)

    def __call__(self, x: ArrayLike, dtype: DTypeLike | None = None) -> np.ndarray:
        """Images x (N, C, H, W) of pixel values in [0, scale], normalized, in ``dtype``
        (default the Normalize's own)."""
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"images must be shaped (N, C, H, W), got shape {x.shape}")
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        mean, inv = self._stats(x.shape[1], dtype)
        return (x.astype(dtype) - mean) * inv

    def pixel_value(self, value: float, channels: int) -> np.ndarray:
        """The normalized value of raw pixel ``value`` in each of ``channels`` channels, shape (C,)."""
        mean, inv = self._stats(channels, self.dtype)
        return ((self.dtype.type(value) - mean) * inv).reshape(-1)

    def undo(self, x: np.ndarray) -> np.ndarray:
        """Pixel values (float, in [0, scale] for in-range input) of normalized images."""
        channels = x.shape[1]
        mean, inv = self._stats(channels, np.float64)
        return x.astype(np.float64) / inv + mean

    def to_meta(self) -> dict[str, list[float] | float]:
        """``{'mean', 'std', 'scale'}`` as JSON-able values: what ``model.meta['normalization']`` holds."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "scale": self.scale}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Normalize:
        """The Normalize a ``to_meta()`` record describes; ValueError if it is not one."""
        try:
            return cls(meta["mean"], meta["std"], meta.get("scale", 255.0))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a normalization record: {meta!r}") from exc

    def __repr__(self) -> str:
        return f"Normalize(mean={np.round(self.mean, 4).tolist()}, std={np.round(self.std, 4).tolist()})"
