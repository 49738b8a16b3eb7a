"""Receptive fields: the theoretical one, from the layer geometry, and the
effective one (Luo et al. 2016), from the gradient of a central unit.

Theoretical field of a unit along one axis, after a chain of convolutions
and poolings with kernel k, stride s and padding p: starting from the input
(size r = 1, jump j = 1, first pixel a = 0), each layer maps
r -> r + (k - 1) * j, a -> a - p * j, j -> j * s. Unit u of the layer then
sees input pixels a + u * j .. a + u * j + r - 1 (clipped to the image).
Layers that mix every position (Flatten, Linear, GlobalAvgPool2d) see the
whole image. In a graph, a node that merges branches (a residual sum, a
concatenation) sees the union of its inputs' fields.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fastconv.analysis import _common as C
from fastconv.nn import graph as G
from fastconv.nn import layers as L

if TYPE_CHECKING:
    from collections.abc import Sequence

    import fastconv


@dataclass
class Geometry:
    """Receptive-field geometry of one layer's units, per axis (rows, cols).

    ``size`` is None for layers whose units see the whole image.
    """

    size: tuple[int, ...] | None
    jump: tuple[int, ...] | None
    start: tuple[int, ...] | None

    def box(self, i: int, j: int, image_size: Sequence[int], clip: bool = True) -> tuple[int, int, int, int]:
        """Input box (top, left, bottom, right), bottom/right exclusive, seen by unit (i, j).

        Clipped to the image unless ``clip`` is False: then the whole field,
        which reaches past the border for units near it (into the padding).
        """
        h, w = image_size
        if self.size is None:
            return 0, 0, h, w
        # jump and start are None only when size is.
        top = self.start[0] + i * self.jump[0]  # type: ignore[index]
        left = self.start[1] + j * self.jump[1]  # type: ignore[index]
        if not clip:
            return top, left, top + self.size[0], left + self.size[1]
        return (max(top, 0), max(left, 0),
                min(top + self.size[0], h), min(left + self.size[1], w))


def _window(layer: L.Layer) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    config = layer.config()
    kernel = C.check_pair(config["kernel_size"], "kernel_size")
    stride = config.get("stride", 1)
    stride = kernel if stride is None else C.check_pair(stride, "stride")
    padding = config.get("padding", 0)
    if isinstance(padding, (list, tuple)):
        padding = tuple(int(p) for p in padding)
    else:
        padding = (int(padding), int(padding))
    return kernel, stride, padding


_WHOLE = Geometry(None, None, None)


def _through(current: L.Layer, before: Geometry) -> Geometry:
    """The geometry of a one-input layer's units, from that of its input's."""
    if before.size is None:
        return before
    assert before.jump is not None and before.start is not None  # set with size
    if isinstance(current, (L.Conv2d, L.MaxPool2d, L.AvgPool2d, G.PadShortcut)):
        if isinstance(current, G.PadShortcut):
            kernel, stride, padding = (1, 1), (current.stride, current.stride), (0, 0)
        else:
            kernel, stride, padding = _window(current)
        return Geometry(tuple(before.size[a] + (kernel[a] - 1) * before.jump[a] for a in (0, 1)),
                        tuple(before.jump[a] * stride[a] for a in (0, 1)),
                        tuple(before.start[a] - padding[a] * before.jump[a] for a in (0, 1)))
    if isinstance(current, C.POINTWISE + (G.Identity,)):
        return before
    return _WHOLE


def _merged(inputs: list[Geometry]) -> Geometry:
    """The geometry of a merge's units (Add, Concat): the union of its inputs'
    fields, which must step alike; else the whole image."""
    if any(g.size is None for g in inputs) or len({g.jump for g in inputs}) != 1:
        return _WHOLE
    starts = [min(g.start[a] for g in inputs) for a in (0, 1)]  # type: ignore[index]
    ends = [max(g.start[a] + g.size[a] for g in inputs) for a in (0, 1)]  # type: ignore[index]
    return Geometry(tuple(ends[a] - starts[a] for a in (0, 1)), inputs[0].jump, tuple(starts))


def geometry(model: fastconv.Model, layer: str) -> Geometry:
    """Theoretical receptive-field geometry of the units of ``layer``; in a
    graph, the union of the fields along every path from the input."""
    C.check_layer(model, layer)
    inputs_of = getattr(model, "inputs", None)
    previous = "input"
    geometries = {previous: Geometry((1, 1), (1, 1), (0, 0))}
    for name, current in model.named_layers():
        sources = inputs_of(name) if inputs_of is not None else (previous,)
        if isinstance(current, G.Merge):
            geometries[name] = _merged([geometries[source] for source in sources])
        else:
            geometries[name] = _through(current, geometries[sources[0]])
        if name == layer:
            return geometries[name]
        previous = name
    raise AssertionError("unreachable: check_layer found the layer")


def theoretical_size(model: fastconv.Model, layer: str, image_size: Sequence[int]) -> tuple[int, ...]:
    """Theoretical receptive field (rows, cols) of a unit, before clipping to the image."""
    geo = geometry(model, layer)
    return tuple(image_size) if geo.size is None else geo.size


@dataclass
class EffectiveField:
    """Effective receptive field of the central unit of one layer.

    ``map`` (H, W) is the mean over images of ``|d unit / d input|`` summed over
    channels, scaled to max 1. ``box`` is the theoretical field of that unit
    (top, left, bottom, right), clipped to the image; ``theoretical`` its
    unclipped size; ``effective`` the
    side of a square holding ``mass`` of the gradient (sqrt of the number of
    largest pixels whose sum is that fraction of the total).
    """

    layer: str
    unit: tuple[int, int]
    map: np.ndarray
    box: tuple[int, int, int, int]
    theoretical: tuple[int, ...]
    effective: float
    mass: float


def effective_receptive_field(model: fastconv.Model, x: np.ndarray, layers: str | Sequence[str] | None = None,
                              channel: int | None = None, mass: float = 0.95,
                              batch_size: int = 64) -> list[EffectiveField]:
    """Effective receptive field of the central unit at each of ``layers``.

    ``layers`` defaults to every convolution and pooling layer. The unit is
    the centre position of the layer's output; its gradient is summed over
    all channels unless ``channel`` names one.
    """
    C.check_images(model, x)
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass!r}")
    if layers is None:
        layers = [name for name, layer in model.named_layers()
                  if isinstance(layer, (L.Conv2d, L.MaxPool2d, L.AvgPool2d))]
    if isinstance(layers, str):
        layers = [layers]
    results = []
    image_size = x.shape[2:]
    with C.evaluating(model):
        for name in layers:
            C.check_layer(model, name)
            total = np.zeros(image_size)
            unit = None
            for start, stop in C.batches(x.shape[0], batch_size):
                out = model.forward(x[start:stop], until=name)
                if out.ndim != 4:
                    raise ValueError(
                        f"layer {name!r} has no spatial output (shape {out.shape}); "
                        "pick a convolution or pooling layer"
                    )
                if channel is not None and not (C.is_int(channel) and 0 <= channel < out.shape[1]):
                    raise ValueError(
                        f"channel {channel!r} is out of range for layer {name!r} with {out.shape[1]} channels"
                    )
                i, j = out.shape[2] // 2, out.shape[3] // 2
                unit = (i, j)
                seed = np.zeros_like(out)
                if channel is None:
                    seed[:, :, i, j] = 1
                else:
                    seed[:, channel, i, j] = 1
                grad = model.backward(seed, start=name, param_grads=False)
                total += np.abs(grad).sum(axis=(0, 1))
            field = total / x.shape[0]
            peak = field.max()
            normalized = field / peak if peak > 0 else field
            geo = geometry(model, name)
            # x holds at least one image, so the loop above has set unit.
            results.append(EffectiveField(
                layer=name,
                unit=unit,  # type: ignore[arg-type]
                map=normalized,
                box=geo.box(unit[0], unit[1], image_size),  # type: ignore[index]
                theoretical=theoretical_size(model, name, image_size),
                effective=_effective_side(field, mass),
                mass=mass,
            ))
    return results


def _effective_side(field: np.ndarray, mass: float) -> float:
    values = np.sort(field.ravel())[::-1]
    total = values.sum()
    if total <= 0:
        return 0.0
    count = int(np.searchsorted(np.cumsum(values), mass * total - 1e-12 * total) + 1)
    return float(np.sqrt(min(count, values.size)))
