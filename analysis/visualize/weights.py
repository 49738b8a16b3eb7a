"""First-layer filters as images, deeper ones per input channel.

:func:`filters` returns a convolution's weights; :func:`filter_tiles`
scales each first-layer filter to [0, 1] so it can be shown as a small RGB
or grey image.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fastconv.analysis import _common as C
from fastconv.nn import layers as L

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    import fastconv


def filters(model: fastconv.Model, layer: str | None = None) -> np.ndarray:
    """Weights (F, C, KH, KW) of the Conv2d ``layer`` (default: the first one), as a copy."""
    if layer is None:
        names = C.conv_layer_names(model)
        if not names:
            raise ValueError("the model has no Conv2d layer")
        layer = names[0]
    conv = C.check_layer(model, layer)
    if not isinstance(conv, L.Conv2d):
        raise ValueError(f"layer {layer!r} is a {type(conv).__name__}, not a Conv2d: it has no filters to show")
    return conv.params["weight"].astype(np.float64)


def filter_tiles(weights: ArrayLike) -> np.ndarray:
    """Each filter scaled to [0, 1] on its own range: (F, KH, KW, 3) for 3 input
    channels (RGB), (F, KH, KW) for one; ValueError for other channel counts."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 4 or weights.shape[1] not in (1, 3):
        raise ValueError(
            f"filter tiles need weights (F, 1 or 3, KH, KW), got shape {weights.shape}; "
            "show deeper layers per input channel instead"
        )
    lo = weights.min(axis=(1, 2, 3), keepdims=True)
    hi = weights.max(axis=(1, 2, 3), keepdims=True)
    scaled = (weights - lo) / np.where(hi > lo, hi - lo, 1.0)
    if weights.shape[1] == 1:
        return scaled[:, 0]
    return scaled.transpose(0, 2, 3, 1)
