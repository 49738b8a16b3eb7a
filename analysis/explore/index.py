"""The top images of every unit of every layer, in one pass over the data.

:func:`fastconv.analysis.visualize.units.top_images` answers for one unit
and reads the data once per unit; the explorer needs the answer for any
unit the user clicks, so this index reads the data once and keeps, for
every unit of every layer at the same time, the ``k`` images that excite it
most. A unit is scored as ``top_images`` scores it: a channel of a spatial
layer by its largest value anywhere in the map (and where), a neuron of a
flat layer by its value; ties go to the earlier image.

The index is saved as one ``.npz`` file whose name holds a digest of the
model file, the data and the settings, so it is computed once per model
and never read for another.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fastconv._files import atomic_write, open_npz
from fastconv.analysis import _common as C

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Sequence
    from pathlib import Path

    import fastconv

__all__ = ["UnitIndex", "build_index", "index_key", "save_index", "load_index"]


@dataclass
class UnitIndex:
    """For each layer, ``indices[layer]`` (units, k) of the best images
    (best first; -1 where fewer than k images were searched),
    ``values[layer]`` (units, k) their scores and, for a spatial layer,
    ``positions[layer]`` (units, k, 2) where in the map each maximum was."""

    layers: list[str]
    k: int
    count: int
    indices: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    positions: dict[str, np.ndarray | None]


def _scores(out: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(scores (units, n), positions (units, n, 2) or None) of a batch of layer outputs."""
    if out.ndim == 2:
        return out.T.astype(np.float64), None
    n, units, h, w = out.shape
    flat = out.reshape(n, units, h * w)
    where = flat.argmax(axis=2)
    best = np.take_along_axis(flat, where[:, :, None], axis=2)[:, :, 0]
    positions = np.stack(np.unravel_index(where, (h, w)), axis=-1)  # (n, units, 2)
    return best.T.astype(np.float64), positions.transpose(1, 0, 2)


def build_index(model: fastconv.Model, data: np.ndarray, layers: Sequence[str], k: int,
                transform: Callable[[np.ndarray], np.ndarray], batch_size: int = 128,
                progress: Callable[[int, int], None] | None = None) -> UnitIndex:
    """Search every image of ``data`` (N, C, H, W; ``transform`` makes a slice
    model input) for the ``k`` best images of every unit of ``layers``.

    ``progress(done, total)`` is called after each batch; an exception it
    raises stops the search.
    """
    names = list(layers)
    for name in names:
        C.check_layer(model, name)
    total = len(data)
    if total == 0:
        raise ValueError("the data set holds no images to search")
    last = max(C.layer_index(model, name) for name in names)
    until = C.layer_names(model)[last]
    best_values: dict[str, np.ndarray] = {}
    best_indices: dict[str, np.ndarray] = {}
    best_positions: dict[str, np.ndarray | None] = {}
    with C.evaluating(model):
        for start, stop in C.batches(total, batch_size):
            x = transform(np.asarray(data[start:stop]))
            _, outputs = C.forward_with_outputs(model, x, names, until=until)
            for name in names:
                values, positions = _scores(outputs[name])
                indices = np.broadcast_to(np.arange(start, stop), values.shape)
                if name in best_values:
                    values = np.concatenate([best_values[name], values], axis=1)
                    indices = np.concatenate([best_indices[name], indices], axis=1)
                    previous = best_positions[name]
                    if positions is not None and previous is not None:
                        positions = np.concatenate([previous, positions], axis=1)
                # Highest value first, then the earlier image: as top_images orders them.
                order = np.lexsort((indices, -values), axis=-1)[:, :k]
                best_values[name] = np.take_along_axis(values, order, axis=1)
                best_indices[name] = np.take_along_axis(indices, order, axis=1)
                best_positions[name] = (None if positions is None
                                        else np.take_along_axis(positions, order[:, :, None], axis=1))
            if progress is not None:
                progress(stop, total)
    kept = min(k, total)
    pad = k - kept
    indices_out = {n: np.pad(best_indices[n], ((0, 0), (0, pad)), constant_values=-1) for n in names}
    values_out = {n: np.pad(best_values[n], ((0, 0), (0, pad)), constant_values=np.nan) for n in names}
    positions_out = {n: None if p is None else np.pad(p, ((0, 0), (0, pad), (0, 0)), constant_values=-1)
                     for n, p in best_positions.items()}
    return UnitIndex(layers=names, k=k, count=total, indices=indices_out, values=values_out,
                     positions=positions_out)


def index_key(model_path: str | os.PathLike, settings: dict[str, object]) -> str:
    """A digest of the model file's bytes and of ``settings`` (the data and the search)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:24]


def save_index(index: UnitIndex, path: str | os.PathLike) -> Path:
    """Write the index to ``path`` (an .npz, atomically)."""
    arrays: dict[str, np.ndarray] = {
        "layers": np.array(index.layers), "k": np.array(index.k), "count": np.array(index.count)}
    for number, name in enumerate(index.layers):
        arrays[f"indices_{number}"] = index.indices[name]
        arrays[f"values_{number}"] = index.values[name]
        positions = index.positions[name]
        if positions is not None:
            arrays[f"positions_{number}"] = positions
    return atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]


def load_index(path: str | os.PathLike) -> UnitIndex:
    """The index saved at ``path``; ValueError if the file is damaged."""
    with open_npz(path, what="top-images index") as archive:
        layers = [str(name) for name in archive["layers"]]
        positions = {}
        for number, name in enumerate(layers):
            key = f"positions_{number}"
            positions[name] = archive[key] if key in archive.files else None
        return UnitIndex(
            layers=layers, k=int(archive["k"]), count=int(archive["count"]),
            indices={name: archive[f"indices_{n}"] for n, name in enumerate(layers)},
            values={name: archive[f"values_{n}"] for n, name in enumerate(layers)},
            positions=positions,
        )
