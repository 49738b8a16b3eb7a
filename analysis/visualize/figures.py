"""Figures for every analysis tool: matplotlib with the Agg canvas, saved as PNG.

Each ``plot_*`` function returns a :class:`matplotlib.figure.Figure` and,
given ``path``, writes it there (through a temporary file and a rename, so
a crash never leaves half a PNG). No pyplot state is touched, so the
functions are safe in scripts, servers and tests.

Images to display are (C, H, W) with C in (1, 3): uint8 pixels, or floats
of any range (scaled to their own min..max).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from fastconv.analysis import _common as C
from fastconv.analysis.attribution import methods as A
from fastconv.analysis.visualize import weights as W
from fastconv.train.figures import save

if TYPE_CHECKING:
    import os
    from collections.abc import Collection, Iterable, Mapping, Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import FigureBase
    from numpy.typing import ArrayLike

    import fastconv
    from fastconv.analysis.attribution.occlusion import OcclusionMaps
    from fastconv.analysis.visualize.embedding import Clusters
    from fastconv.analysis.visualize.feature_maps import Activations
    from fastconv.analysis.visualize.receptive_field import EffectiveField
    from fastconv.analysis.visualize.units import TopImages

SIGNED_CMAP = "gray"
HEAT_CMAP = "jet"


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        save(fig, path)
    return fig


def display_image(image: ArrayLike) -> np.ndarray:
    """(C, H, W) -> (H, W) grey or (H, W, 3) RGB in [0, 1]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"an image to display must be shaped (C, H, W) with C in (1, 3), got {image.shape}")
    if image.dtype == np.uint8:
        scaled = image / 255.0
    else:
        lo, hi = float(np.min(image)), float(np.max(image))
        scaled = (image - lo) / (hi - lo if hi > lo else 1.0)
    return scaled[0] if image.shape[0] == 1 else scaled.transpose(1, 2, 0)


def _show_image(ax: Axes, image: ArrayLike, title: str | None = None) -> None:
    shown = display_image(image)
    ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    _clean(ax, title)


def _clean(ax: Axes, title: str | None = None, fontsize: float = 8) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def _limits(values: ArrayLike) -> tuple[float, float, bool]:
    """(vmin, vmax, signed): symmetric around 0 when there are negative values."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if lo < 0:
        m = max(abs(lo), abs(hi)) or 1.0
        return -m, m, True
    return 0.0, hi if hi > 0 else 1.0, False


def _grid(n: int, columns: int) -> tuple[int, int]:
    columns = max(1, min(columns, n))
    return (n + columns - 1) // columns, columns


def _class_name(classes: Sequence[str] | None, k: int) -> str:
    if classes is not None and 0 <= int(k) < len(classes):
        return str(classes[int(k)])
    return str(int(k))


def _map_grid(fig: FigureBase, maps: np.ndarray, title: str, columns: int, first_image: ArrayLike | None = None,
              cmap: str = SIGNED_CMAP, labels: Sequence[str] | None = None) -> np.ndarray:
    """Draw maps (K, h, w) as tiles on one colour scale, optionally preceded by an image."""
    count = len(maps) + (first_image is not None)
    rows, cols = _grid(count, columns)
    axes = fig.subplots(rows, cols, squeeze=False)
    vmin, vmax, signed = _limits(maps)
    slot = 0
    if first_image is not None:
        _show_image(axes.flat[0], first_image, "input")
        slot = 1
    image = None
    for k, m in enumerate(maps):
        ax = axes.flat[slot + k]
        image = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        _clean(ax, labels[k] if labels else str(k), fontsize=7)
    for ax in axes.flat[count:]:
        ax.axis("off")
    scale = "signed: grey is 0" if signed else "0 is black"
    fig.suptitle(f"{title} ({scale})", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, fraction=0.03)
    return axes


# -- filters --------------------------------------------------------------

def plot_filters(model: fastconv.Model, layer: str | None = None, channels: Sequence[int] | None = None,
                 max_filters: int = 64, columns: int = 8, path: str | os.PathLike | None = None) -> Figure:
    """First-layer filters as RGB or grey tiles; a deeper layer as one grid of
    filter slices per input channel (``channels``, default the first four)."""
    weights = W.filters(model, layer)
    name = layer or C.conv_layer_names(model)[0]
    weights = weights[:max_filters]
    n_filters, in_channels = weights.shape[:2]
    for c in channels or ():
        if not 0 <= int(c) < in_channels:
            raise ValueError(
                f"input channel {c!r} is out of range for layer {name!r} with {in_channels} input channels"
            )
    if in_channels == 3 and channels is None:
        tiles = W.filter_tiles(weights)
        rows, cols = _grid(n_filters, columns)
        fig = new_figure(1.1 * cols, 1.1 * rows + 0.6)
        axes = fig.subplots(rows, cols, squeeze=False)
        for k, tile in enumerate(tiles):
            axes.flat[k].imshow(tile, interpolation="nearest")
            _clean(axes.flat[k], f"{k}", fontsize=7)
        for ax in axes.flat[n_filters:]:
            ax.axis("off")
        fig.suptitle(f"{name}: {n_filters} RGB filters {weights.shape[2]}x{weights.shape[3]} "
                     "(each scaled to its own range)", fontsize=10)
        return _finish(fig, path)
    if in_channels == 1:
        rows, cols = _grid(n_filters, columns)
        fig = new_figure(1.1 * cols + 0.8, 1.1 * rows + 0.6)
        _map_grid(fig, weights[:, 0], f"{name}: {n_filters} filters {weights.shape[2]}x{weights.shape[3]}", columns)
        return _finish(fig, path)
    if channels is None:
        channels = list(range(min(4, in_channels)))
    rows, cols = _grid(n_filters, columns)
    fig = new_figure(len(channels) * (1.0 * cols) + 0.8, 1.0 * rows + 0.8)
    # atleast_1d also takes the single SubFigure of one channel (its stub does not say so).
    subfigs = np.atleast_1d(fig.subfigures(1, len(channels)))  # type: ignore[arg-type]
    vmin, vmax, _ = _limits(weights[:, channels])
    image = None
    for sub, c in zip(subfigs, channels):
        axes = sub.subplots(rows, cols, squeeze=False)
        for k in range(n_filters):
            image = axes.flat[k].imshow(weights[k, c], cmap=SIGNED_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest")
            _clean(axes.flat[k], f"{k}", fontsize=6)
        for ax in axes.flat[n_filters:]:
            ax.axis("off")
        sub.suptitle(f"input channel {c}", fontsize=9)
    fig.suptitle(f"{name}: {n_filters} filters, weights seen by each input channel (signed: grey is 0)", fontsize=10)
    # Every channel drew its filters above, so image is set.
    fig.colorbar(image, ax=subfigs[-1].axes, shrink=0.8, fraction=0.05)  # type: ignore[arg-type]
    return _finish(fig, path)


# -- activations --------------------------------------------------------------

def plot_activations(acts: Activations, image: ArrayLike, classes: Sequence[str] | None = None, columns: int = 8,
                     max_maps: int = 64, path: str | os.PathLike | None = None) -> Figure:
    """The image first, then every feature map of ``acts`` (an :class:`Activations`),
    before and after the ReLU when there is one."""
    stages: list[tuple[str | None, np.ndarray]] = [(acts.layer, acts.before)]
    if acts.after is not None:
        stages.append((acts.after_layer, acts.after))
    fig_rows = 0
    for _, maps in stages:
        maps = _as_maps(maps)[:max_maps]
        fig_rows += _grid(len(maps) + 1, columns)[0]
    fig = new_figure(1.2 * columns + 1.0, 1.2 * fig_rows + 0.8 * len(stages) + 0.5)
    # atleast_1d also takes the single SubFigure of one stage (its stub does not say so).
    subfigs = np.atleast_1d(fig.subfigures(len(stages), 1, height_ratios=[  # type: ignore[arg-type]
        _grid(len(_as_maps(m)[:max_maps]) + 1, columns)[0] for _, m in stages]))
    for sub, (name, maps) in zip(subfigs, stages):
        maps = _as_maps(maps)[:max_maps]
        _map_grid(sub, maps, f"{name}: {len(maps)} feature maps", columns, first_image=image)
    if acts.prediction is not None:
        p = cast(np.ndarray, acts.probabilities)[acts.prediction]  # set along with the prediction
        fig.suptitle(f"predicted {_class_name(classes, acts.prediction)} ({p:.1%})", fontsize=11)
    return _finish(fig, path)


def _as_maps(values: ArrayLike) -> np.ndarray:
    """Feature maps (C, h, w) as they are; a flat layer's D values as one (1, D) strip."""
    values = np.asarray(values)
    return values if values.ndim == 3 else values.reshape(1, 1, -1)


# -- top images -----------------------------------------------------------

def _show_crop(ax: Axes, top: TopImages, rank: int) -> None:
    """A receptive-field crop on a canvas of the whole field, so that crops at
    the border keep the size and place of the others; what lies beyond the
    image is hatched grey."""
    crop = np.asarray(top.crops[rank])
    fields = top.fields if top.fields is not None else top.boxes
    f_top, f_left, f_bottom, f_right = (int(v) for v in fields[rank])
    t, l, b, r = (int(v) for v in top.boxes[rank])
    shown = display_image(crop)
    canvas_shape = (f_bottom - f_top, f_right - f_left) + shown.shape[2:]
    if canvas_shape[:2] == shown.shape[:2]:
        _show_image(ax, crop)
        return
    canvas = np.full(canvas_shape, 0.5)
    canvas[t - f_top:b - f_top, l - f_left:r - f_left] = shown
    ax.imshow(canvas, cmap="gray" if canvas.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    height, width = canvas_shape[:2]
    inside = np.zeros((height, width), dtype=bool)
    inside[t - f_top:b - f_top, l - f_left:r - f_left] = True
    ax.contourf((~inside).astype(float), levels=[0.5, 1.5], colors="none", hatches=["////"])
    ax.add_patch(Rectangle((l - f_left - 0.5, t - f_top - 0.5), r - l, b - t, fill=False,
                           edgecolor="red", linewidth=0.8))
    _clean(ax, "")


def plot_top_images(top: TopImages, data: np.ndarray, labels: Sequence[int] | np.ndarray | None = None,
                    classes: Sequence[str] | None = None, columns: int = 10,
                    path: str | os.PathLike | None = None) -> Figure:
    """The top-k images of a unit with the unit's receptive field boxed, and the crops."""
    k = len(top.indices)
    rows, cols = _grid(k, columns)
    fig = new_figure(max(1.2 * cols, 6.5), 2.6 * rows + 0.6)
    full, crops = fig.subfigures(2, 1)  # type: ignore[misc]  # two rows: an array of two SubFigures
    axes = full.subplots(rows, cols, squeeze=False)
    crop_axes = crops.subplots(rows, cols, squeeze=False)
    for rank, index in enumerate(top.indices):
        image = np.asarray(data[int(index)])
        label = "" if labels is None else f" {_class_name(classes, labels[int(index)])}"
        ax = axes.flat[rank]
        _show_image(ax, image, f"#{int(index)}{label}\n{top.values[rank]:.2f}")
        t, l, b, r = top.boxes[rank]
        if (b - t, r - l) != image.shape[-2:]:
            ax.add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, edgecolor="red", linewidth=1.2))
        _show_crop(crop_axes.flat[rank], top, rank)
    for ax in list(axes.flat[k:]) + list(crop_axes.flat[k:]):
        ax.axis("off")
    full.suptitle("images (value of the unit; red: receptive field at the maximum)", fontsize=9)
    crops.suptitle("receptive-field crops, all the field's size (hatched: beyond the image border)", fontsize=9)
    fig.suptitle(f"top {k} of {top.count} images for unit {top.unit} of {top.layer}", fontsize=11)
    return _finish(fig, path)


# -- codes and embeddings -----------------------------------------------------

def plot_clusters(clusters: Clusters, data: np.ndarray, which: Iterable[int] | None = None, per_cluster: int = 12,
                  labels: Sequence[int] | np.ndarray | None = None, classes: Sequence[str] | None = None,
                  path: str | os.PathLike | None = None) -> Figure:
    """One row per cluster: the images nearest its k-means centre."""
    which = list(range(len(clusters.members))) if which is None else list(which)
    fig = new_figure(1.0 * per_cluster + 1.5, 1.05 * len(which) + 0.6)
    axes = fig.subplots(len(which), per_cluster, squeeze=False)
    for row, c in enumerate(which):
        members = clusters.nearest(c, per_cluster)
        for col in range(per_cluster):
            ax = axes[row, col]
            if col < len(members):
                index = int(members[col])
                title = None if labels is None else _class_name(classes, labels[index])
                _show_image(ax, np.asarray(data[index]), title)
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(f"cluster {c}\n({len(clusters.members[c])})", fontsize=8)
    fig.suptitle(f"k-means clusters of the codes: {per_cluster} images nearest each centre", fontsize=11)
    return _finish(fig, path)


def plot_embedding(points: ArrayLike, labels: ArrayLike, classes: Sequence[str] | None = None,
                   title: str = "t-SNE of the codes", path: str | os.PathLike | None = None) -> Figure:
    """Scatter of a 2-D embedding, one colour per class."""
    points = np.asarray(points)
    labels = np.asarray(labels)
    fig = new_figure(7.5, 6.5)
    ax = fig.subplots()
    palette = _palette(int(labels.max()) + 1)
    for k in np.unique(labels):
        chosen = labels == k
        ax.scatter(points[chosen, 0], points[chosen, 1], s=9, color=palette[int(k)], label=_class_name(classes, k))
    ax.legend(fontsize=8, markerscale=2, loc="best", title="class")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("dimension 1")
    ax.set_ylabel("dimension 2")
    return _finish(fig, path)


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_embedding_grid(grid: np.ndarray, data: np.ndarray, title: str = "t-SNE of the codes, snapped to a grid",
                        path: str | os.PathLike | None = None) -> Figure:
    """Thumbnails of ``data`` placed on the lattice returned by ``snap_to_grid``."""
    rows, cols = grid.shape
    first = np.asarray(data[int(grid[grid >= 0][0])])
    h, w = first.shape[-2:]
    canvas = np.ones((rows * h, cols * w) + (() if first.shape[0] == 1 else (3,)))
    for i in range(rows):
        for j in range(cols):
            if grid[i, j] >= 0:
                canvas[i * h:(i + 1) * h, j * w:(j + 1) * w] = display_image(np.asarray(data[int(grid[i, j])]))
    fig = new_figure(min(12, 0.3 * cols + 1), min(12, 0.3 * rows + 1))
    ax = fig.subplots()
    ax.imshow(canvas, cmap="gray" if canvas.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    _clean(ax, title, fontsize=11)
    return _finish(fig, path)


# -- occlusion ------------------------------------------------------------------

def plot_occlusion(maps: OcclusionMaps, images: np.ndarray, classes: Sequence[str] | None = None,
                   path: str | os.PathLike | None = None) -> Figure:
    """Per image: the image, the true-class probability as a heat map over it, and
    the most probable class for each position of the patch."""
    n = len(maps.target)
    fig = new_figure(11.0, 3.4 * n + 0.4)
    axes = fig.subplots(n, 3, squeeze=False)
    n_classes = int(max(maps.top_class.max(), maps.target.max())) + 1
    if classes is not None:
        n_classes = max(n_classes, len(classes))
    palette = ListedColormap(_palette(n_classes))
    for i in range(n):
        image = np.asarray(images[i])
        name = _class_name(classes, maps.target[i])
        _show_image(axes[i, 0], image, f"{name}: p = {maps.baseline_probability[i]:.3f} unoccluded")
        ax = axes[i, 1]
        grey = image.shape[0] == 1
        if not grey:
            ax.imshow(display_image(image), interpolation="nearest")
        # Each map on its own range: a confident image's probabilities all lie
        # near 1, and on a fixed 0-1 scale its map would look flat.
        pixel_map = maps.pixel_map(image.shape)[i]
        low, high = float(np.nanmin(pixel_map)), float(np.nanmax(pixel_map))
        if high - low < 1e-6:
            low, high = low - 5e-7, high + 5e-7
        heat = ax.imshow(pixel_map, cmap=HEAT_CMAP, vmin=low, vmax=high,
                         alpha=1.0 if grey else 0.6, interpolation="nearest")
        if grey:
            _outline(ax, image)
        _clean(ax, f"p({name}) with the patch over each pixel{' (white: outline)' if grey else ''}\n"
                   f"patch {maps.patch[0]}x{maps.patch[1]}, stride {maps.stride[0]}; "
                   f"range {np.nanmin(pixel_map):.4f} to {np.nanmax(pixel_map):.4f}")
        bar = fig.colorbar(heat, ax=ax, fraction=0.046)
        bar.set_label(f"p({name}), this map's range", fontsize=9)
        ax = axes[i, 2]
        grid = ax.imshow(maps.top_class[i], cmap=palette, vmin=-0.5, vmax=n_classes - 0.5, interpolation="nearest")
        cells = maps.top_class[i]
        if cells.size <= 256:
            # Labels as large as the cells allow, on a white box so that they
            # read on any colour of the palette.
            size = max(6.0, min(11.0, 110.0 / max(cells.shape)))
            for (j, k), c in np.ndenumerate(cells):
                ax.text(k, j, _class_name(classes, c)[:3], ha="center", va="center", fontsize=size, color="black",
                        bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "alpha": 0.6, "linewidth": 0})
        _clean(ax, "most probable class, patch at grid cell (row, col)")
        bar = fig.colorbar(grid, ax=ax, fraction=0.046, ticks=range(n_classes))
        bar.ax.set_yticklabels([_class_name(classes, c) for c in range(n_classes)], fontsize=9)
    fig.suptitle("occlusion sensitivity", fontsize=12)
    return _finish(fig, path)


def _outline(ax: Axes, image: ArrayLike) -> None:
    """Draw the contour of a grey image's bright parts over a heat map."""
    shown = display_image(image)
    if shown.max() > shown.min():
        ax.contour(shown, levels=[0.5 * (shown.max() + shown.min())], colors="white", linewidths=1.0)


# -- attributions --------------------------------------------------------------

def attribution_map(attributions: ArrayLike, signed: bool = False) -> np.ndarray:
    """One (N, H, W) map per example: max over channels of ``|a|``, or the
    channel sum keeping the sign when ``signed``."""
    attributions = np.asarray(attributions, dtype=np.float64)
    if signed:
        return attributions.sum(axis=1)
    return A.channel_max(np.abs(attributions))


def plot_attributions(images: np.ndarray, results: Mapping[str, np.ndarray],
                      targets: Sequence[int] | np.ndarray | None = None, classes: Sequence[str] | None = None,
                      signed: Collection[str] = (), path: str | os.PathLike | None = None) -> Figure:
    """A row per image: the image, then one map per method.

    ``results`` maps a method name to its attributions (N, C', H, W);
    methods named in ``signed`` are drawn on a signed scale, the others as
    the max over channels of the absolute value.
    """
    n = len(images)
    names = list(results)
    fig = new_figure(2.6 * (len(names) + 1), 2.5 * n + 0.5)
    axes = fig.subplots(n, len(names) + 1, squeeze=False)
    for i in range(n):
        target = "" if targets is None else f"target {_class_name(classes, targets[i])}"
        _show_image(axes[i, 0], images[i], target)
        for col, name in enumerate(names, start=1):
            ax = axes[i, col]
            m = attribution_map(results[name][i:i + 1], signed=name in signed)[0]
            vmin, vmax, is_signed = _limits(m)
            shown = ax.imshow(m, cmap="bwr" if is_signed else "hot", vmin=vmin, vmax=vmax, interpolation="nearest")
            _clean(ax, name)
            fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.suptitle("attribution maps (|a| max over channels unless signed)", fontsize=11)
    return _finish(fig, path)


# -- segmentation ---------------------------------------------------------------

def plot_segmentation(image: ArrayLike, saliency: ArrayLike, mask: np.ndarray, title: str | None = None,
                      path: str | os.PathLike | None = None) -> Figure:
    """Image, saliency map and the GrabCut mask over the image."""
    fig = new_figure(9.0, 3.4)
    axes = fig.subplots(1, 3)
    _show_image(axes[0], image, title or "image")
    shown = axes[1].imshow(saliency, cmap="hot", interpolation="nearest")
    _clean(axes[1], "saliency (|gradient|, max over channels)")
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    base = display_image(image)
    if base.ndim == 2:
        base = np.repeat(base[:, :, None], 3, axis=2)
    overlay = base * 0.35
    overlay[mask] = base[mask] * 0.5 + np.array([0.5, 0.0, 0.0])
    axes[2].imshow(np.clip(overlay, 0, 1), interpolation="nearest")
    _clean(axes[2], f"GrabCut object mask ({mask.mean():.0%} of the image)")
    fig.suptitle("segmentation seeded by the saliency map", fontsize=11)
    return _finish(fig, path)


# -- receptive fields -------------------------------------------------------------

def plot_receptive_fields(fields: Sequence[EffectiveField], columns: int = 4,
                          path: str | os.PathLike | None = None) -> Figure:
    """Each layer's effective receptive field with its theoretical box."""
    rows, cols = _grid(len(fields), columns)
    fig = new_figure(3.0 * cols + 0.6, 3.0 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    shown = None
    for ax, field in zip(axes.flat, fields):
        shown = ax.imshow(field.map, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        t, l, b, r = field.box
        ax.add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, edgecolor="red", linewidth=1.2))
        th, tw = field.theoretical
        _clean(ax, f"{field.layer} unit {field.unit}\ntheoretical {th}x{tw}, "
                   f"effective ~{field.effective:.1f} ({field.mass:.0%})")
    for ax in axes.flat[len(fields):]:
        ax.axis("off")
    if shown is not None:
        fig.colorbar(shown, ax=axes, shrink=0.8, fraction=0.03, label="mean |gradient| (max 1)")
    fig.suptitle("effective receptive field of a central unit (red: theoretical field)", fontsize=11)
    return _finish(fig, path)
