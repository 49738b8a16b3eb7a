"""What a hidden unit sees in the images that excite it most: Zeiler & Fergus's figure.

For a channel of a layer, :func:`unit_projections` finds its top-k images
(:func:`fastconv.analysis.top_images`) and projects the channel's unit at its
maximum in each of them back to the pixels with the deconvnet rule (or guided
backpropagation, or the plain gradient). The projection of one unit can only
be nonzero inside that unit's receptive field, so the figure shows it cropped
to the field, beside the image patch the unit saw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fastconv.analysis import _common as C
from fastconv.analysis.attribution import methods as A
from fastconv.analysis.visualize.units import TopImages, _default_transform, top_images

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    import fastconv

# The backward rules a unit can be projected with, by the names `fastconv viz` uses.
PROJECTIONS: dict[str, type[A.Attribution]] = {
    "deconvnet": A.Deconvnet,
    "guided-backprop": A.GuidedBackprop,
    "gradient": A.Gradient,
}


@dataclass
class UnitProjections:
    """One channel's top images and the projection of its unit in each.

    ``projections`` (k, C, H, W) are whole-image projections of the unit at
    the channel's maximum (``top.positions``) in each top image, in the order
    of ``top.indices``; ``method`` names the backward rule.
    """

    layer: str
    channel: int
    method: str
    top: TopImages
    projections: np.ndarray


def unit_projections(model: fastconv.Model, data: np.ndarray, layer: str, channels: Sequence[int] | int,
                     k: int = 9, method: str = "deconvnet", transform: Callable[[np.ndarray], np.ndarray] | None = None,
                     limit: int | None = None, batch_size: int = 256) -> list[UnitProjections]:
    """The top-``k`` images of each channel of ``layer`` and the unit's projection in each.

    ``data``, ``transform``, ``limit`` and ``batch_size`` are as in
    :func:`fastconv.analysis.top_images`; ``method`` is one of
    ``deconvnet``, ``guided-backprop``, ``gradient``. A flat layer's
    "channels" are its neurons.
    """
    if method not in PROJECTIONS:
        raise ValueError(f"method must be one of {', '.join(PROJECTIONS)}; got {method!r}")
    C.check_layer(model, layer)
    wanted: list[int] = []
    for channel in [channels] if C.is_int(channels) else list(channels):  # type: ignore[arg-type]
        if not C.is_int(channel):
            raise TypeError(f"a channel must be an int, got {channel!r}")
        wanted.append(int(channel))  # type: ignore[arg-type]  # is_int narrows; mypy does not see it
    if not wanted:
        raise ValueError("channels is empty: name at least one channel")
    if transform is None:
        transform = _default_transform(model, data)
    projector = PROJECTIONS[method](model, layer)
    results = []
    for channel in wanted:
        top = top_images(model, data, layer, channel, k=k, batch_size=batch_size, transform=transform,
                         limit=limit)
        x = transform(np.stack([np.asarray(data[int(i)]) for i in top.indices]))
        if top.positions is None:
            targets: list[C.Unit] = [channel] * len(top.indices)
        else:
            targets = [(channel, int(i), int(j)) for i, j in top.positions]
        projections = projector.attribute(x, targets).astype(np.float64)
        results.append(UnitProjections(layer=layer, channel=channel, method=method, top=top,
                                       projections=projections))
    return results


def projection_image(projection: np.ndarray) -> np.ndarray:
    """A signed projection (C, h, w) as a displayable (h, w) or (h, w, 3) image in
    [0, 1]: grey is zero, and the largest magnitude reaches black or white."""
    projection = np.asarray(projection, dtype=np.float64)
    peak = float(np.max(np.abs(projection))) or 1.0
    shown = 0.5 + projection / (2 * peak)
    return shown[0] if shown.shape[0] == 1 else shown.transpose(1, 2, 0)


def _show(ax: Axes, image: np.ndarray) -> None:
    from fastconv.analysis.visualize import figures as F

    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    F._clean(ax)


def plot_unit_projections(results: Sequence[UnitProjections], data: np.ndarray, per_row: int = 4,
                          path: str | os.PathLike | None = None) -> Figure:
    """Zeiler & Fergus's figure: for each unit, its projections (left) beside the
    image patches of its receptive field (right), one block per unit, the
    units of one layer on one row of blocks (at most ``per_row`` a row)."""
    from fastconv.analysis.visualize import figures as F

    if not results:
        raise ValueError("no units to draw")
    k = max(len(r.top.indices) for r in results)
    side = int(np.ceil(np.sqrt(k)))
    rows_in_block = int(np.ceil(k / side))
    layers = list(dict.fromkeys(r.layer for r in results))
    lines: list[list[UnitProjections]] = []
    for layer in layers:
        units = [r for r in results if r.layer == layer]
        lines.extend(units[i:i + per_row] for i in range(0, len(units), per_row))
    width = max(len(line) for line in lines)
    cell = 0.55
    fig = F.new_figure(max(width * (2 * side * cell + 0.4), 6.0), len(lines) * (rows_in_block * cell + 0.45) + 0.6)
    blocks = fig.subfigures(len(lines), width, squeeze=False)
    for line_index, line in enumerate(lines):
        for col in range(width):
            block = blocks[line_index, col]
            if col >= len(line):
                continue
            r = line[col]
            axes = block.subplots(rows_in_block, 2 * side, squeeze=False)
            for ax in axes.flat:
                ax.axis("off")
            for rank, index in enumerate(r.top.indices):
                top, left, bottom, right = (int(v) for v in r.top.boxes[rank])
                row, place = divmod(rank, side)
                _show(axes[row, place], projection_image(r.projections[rank][:, top:bottom, left:right]))
                patch = np.asarray(data[int(index)])[:, top:bottom, left:right]
                _show(axes[row, side + place], F.display_image(patch))
            block.suptitle(f"{r.layer} channel {r.channel}", fontsize=8)
    method = results[0].method
    fig.suptitle(f"top {k} images per unit: {method} projections of the unit at its maximum (left, grey is 0) "
                 "and the image patches in its receptive field (right)", fontsize=10)
    return F._finish(fig, path)
