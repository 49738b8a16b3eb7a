"""What a single unit responds to: its top-k activating images out of a data set.

The data are streamed in batches and only the k best candidates are kept,
so memory does not grow with the number of images. A channel of a spatial
layer scores each image by its largest value anywhere in the map (and
remembers where); a unit (c, i, j) or a neuron of a flat layer scores it
by that one value. Around each maximum, the receptive field of the unit
gives the crop of the image that the unit actually saw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fastconv import _checks
from fastconv.analysis import _common as C
from fastconv.analysis.visualize import receptive_field as rf

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import fastconv


@dataclass
class TopImages:
    """The k images (out of ``count``) that excite one unit most, best first.

    ``indices`` index the data; ``values`` are the activations; ``positions``
    (k, 2) hold where in the map the maximum was (None for a flat layer);
    ``boxes`` (k, 4) the receptive field (top, left, bottom, right) of that
    position in the image, bottom/right exclusive; ``crops`` the image
    regions inside the boxes (a list, since boxes at the border are smaller);
    ``fields`` (k, 4) the whole receptive fields, which reach past the image
    for units near its border (one size for all: the figure pads the crops
    to it).
    """

    layer: str
    unit: int | Sequence[int]
    indices: np.ndarray
    values: np.ndarray
    positions: np.ndarray | None
    boxes: np.ndarray
    crops: list[np.ndarray]
    count: int
    fields: np.ndarray | None = None


def _scores(out: np.ndarray, unit: int | Sequence[int], layer: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Score of each example for ``unit`` and the position it came from."""
    # The ignores below: C.is_int tells an int from a sequence, which mypy cannot see, as it does not
    # follow the fastconv.analysis imports.
    n = out.shape[0]
    if out.ndim == 2:
        if not (C.is_int(unit) and 0 <= unit < out.shape[1]):  # type: ignore[operator]
            raise ValueError(f"unit {unit!r} is out of range for layer {layer!r} with {out.shape[1]} outputs")
        return out[:, unit].astype(np.float64), None
    if out.ndim != 4:
        raise ValueError(f"layer {layer!r} outputs shape {out.shape}; expected (N, C) or (N, C, H, W)")
    _, channels, h, w = out.shape
    if C.is_int(unit):
        if not 0 <= unit < channels:  # type: ignore[operator]
            raise ValueError(f"unit {unit!r} is out of range for layer {layer!r} with {channels} channels")
        flat = out[:, unit].reshape(n, -1)
        where = flat.argmax(axis=1)
        positions = np.stack(np.unravel_index(where, (h, w)), axis=1)
        return flat[np.arange(n), where].astype(np.float64), positions
    c, i, j = (int(v) for v in unit)  # type: ignore[union-attr]
    if not (0 <= c < channels and 0 <= i < h and 0 <= j < w):
        raise ValueError(f"unit {tuple(unit)} is out of range for layer {layer!r} whose output is {(channels, h, w)}")  # type: ignore[arg-type]
    return out[:, c, i, j].astype(np.float64), np.tile([i, j], (n, 1))


def top_images(model: fastconv.Model, data: np.ndarray, layer: str, unit: int | Sequence[int], k: int = 20,
               batch_size: int = 256, transform: Callable[[np.ndarray], np.ndarray] | None = None,
               limit: int | None = None) -> TopImages:
    """The ``k`` images of ``data`` that activate ``unit`` of ``layer`` most.

    ``data`` is any array-like of images (N, C, H, W) that can be sliced
    (a NumPy array or memmap); ``transform`` turns a slice into model input
    (default: the model's normalization for uint8 data, none for floats).
    ``limit`` looks at the first ``limit`` images only. Ties go to the
    earlier image.
    """
    k = _checks.positive_int(k, "k")
    C.check_layer(model, layer)
    total = len(data) if limit is None else min(len(data), _checks.positive_int(limit, "limit"))
    if total == 0:
        raise ValueError("data holds no images")
    if transform is None:
        transform = _default_transform(model, data)
    best_values = np.empty(0)
    best_indices = np.empty(0, dtype=np.int64)
    best_positions = None
    with C.evaluating(model):
        for start, stop in C.batches(total, batch_size):
            x = transform(np.asarray(data[start:stop]))
            C.check_images(model, x, "data")
            out = model.forward(x, until=layer)
            values, positions = _scores(out, unit, layer)
            values = np.concatenate([best_values, values])
            indices = np.concatenate([best_indices, np.arange(start, stop)])
            if positions is not None:
                positions = positions if best_positions is None else np.concatenate([best_positions, positions])
            # Sort by value descending, then by index ascending, so ties are deterministic.
            order = np.lexsort((indices, -values))[:k]
            best_values, best_indices = values[order], indices[order]
            best_positions = None if positions is None else positions[order]
    image_size = np.asarray(data[0]).shape[-2:]
    geo = rf.geometry(model, layer)
    boxes = []
    fields = []
    crops = []
    for rank, index in enumerate(best_indices):
        if best_positions is None:
            box = field = (0, 0) + tuple(image_size)
        else:
            i, j = int(best_positions[rank, 0]), int(best_positions[rank, 1])
            box, field = geo.box(i, j, image_size), geo.box(i, j, image_size, clip=False)
        boxes.append(box)
        fields.append(field)
        top, left, bottom, right = box
        crops.append(np.asarray(data[int(index)])[:, top:bottom, left:right].copy())
    return TopImages(
        layer=layer,
        unit=unit,
        indices=best_indices,
        values=best_values,
        positions=best_positions,
        boxes=np.array(boxes, dtype=np.int64).reshape(-1, 4),
        crops=crops,
        count=total,
        fields=np.array(fields, dtype=np.int64).reshape(-1, 4),
    )


def _default_transform(model: fastconv.Model, data: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    sample = np.asarray(data[:1])
    if sample.dtype == np.uint8:
        return C.Normalizer.from_model(model)
    return lambda batch: batch
