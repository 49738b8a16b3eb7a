"""A small activation atlas (Carter et al. 2019, "Activation Atlas").

The activations of one layer over many images are laid out in two
dimensions (UMAP when umap-learn is installed, else t-SNE), a grid is laid
over the layout, and each cell that holds enough activations is drawn as
the feature visualization of their mean: the image whose activation points
along that mean vector (:func:`~fastconv.analysis.optimize.methods.direction_visualization`).
Neighbouring cells show what the layer sees as neighbouring.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fastconv import _checks
from fastconv.analysis import _common as C
from fastconv.analysis.optimize import methods as M
from fastconv.analysis.optimize import parametrize as P

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

    from matplotlib.figure import Figure

    import fastconv

__all__ = ["Atlas", "EMBEDDINGS", "layer_activations", "embed_activations", "activation_atlas", "plot_atlas"]

EMBEDDINGS = ("auto", "umap", "tsne")


def layer_activations(model: fastconv.Model, data: np.ndarray, layer: str, positions: str | int = "mean",
                      limit: int | None = None, batch_size: int = 128, seed: int | None = 0,
                      transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Activation vectors (M, C) of ``layer`` over the first ``limit`` images of ``data``.

    ``positions='mean'``: one vector per image, the mean over positions;
    an int k: the vectors at k positions drawn at random in each image (as
    Carter et al. sample them). A flat layer gives one vector per image
    either way. ``data`` are raw images, normalized by the model's own
    statistics unless ``transform`` is given.
    """
    C.check_layer(model, layer)
    if positions != "mean" and not (C.is_int(positions) and int(positions) >= 1):
        raise ValueError(f"positions must be 'mean' or a positive int (positions drawn per image), got {positions!r}")
    total = len(data) if limit is None else min(len(data), _checks.positive_int(limit, "limit"))
    if total == 0:
        raise ValueError("data holds no images")
    transform = transform if transform is not None else C.Normalizer.from_model(model)
    rng = P.check_seed(seed)
    chunks = []
    with C.evaluating(model):
        for start, stop in C.batches(total, batch_size):
            x = transform(np.asarray(data[start:stop]))
            C.check_images(model, x, "data")
            out = model.forward(x, until=layer).astype(np.float64)
            if out.ndim == 2:
                chunks.append(out)
            elif positions == "mean":
                chunks.append(out.mean(axis=(2, 3)))
            else:
                n, c, h, w = out.shape
                flat = out.reshape(n, c, h * w)
                picked = rng.integers(0, h * w, (n, int(positions)))
                chunks.append(np.take_along_axis(flat, picked[:, None, :], axis=2).transpose(0, 2, 1).reshape(-1, c))
    return np.concatenate(chunks)


def embed_activations(activations: np.ndarray, method: str = "auto", seed: int | None = 0) -> tuple[np.ndarray, str]:
    """2-D layout (M, 2) of activation vectors and the method used: UMAP
    (cosine metric, as Carter et al.) when ``method`` is 'umap', or 'auto'
    and umap-learn is installed; else t-SNE of scikit-learn."""
    M._check_choice(method, EMBEDDINGS, "method")
    if method in ("auto", "umap"):
        try:
            import umap
        except ImportError:
            if method == "umap":
                raise ImportError("method='umap' needs umap-learn (pip install umap-learn); "
                                  "method='tsne' needs only scikit-learn") from None
        else:
            reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed)
            return np.asarray(reducer.fit_transform(activations), dtype=np.float64), "umap"
    from fastconv.analysis.visualize.embedding import embed

    return embed(activations, method="tsne", seed=seed), "tsne"


@dataclass
class Atlas:
    """An activation atlas of ``layer``.

    ``points`` (M, 2) is the layout of the M activation vectors
    ``activations`` (M, C), made by ``method``; the grid has ``shape``
    (rows, cols) over the layout's bounding box. ``cells`` (K, 2) are the
    (row, col) of the K cells drawn (row 0 at the top), ``counts`` (K,) how
    many activations fell in each, ``directions`` (K, C) their means and
    ``images`` (K, C_in, H, W) their feature visualizations. ``values``
    (K,) is each direction's objective on its image, ``start_values`` (K,)
    on the start image.
    """

    layer: str
    method: str
    shape: tuple[int, int]
    points: np.ndarray
    activations: np.ndarray
    cells: np.ndarray
    counts: np.ndarray
    directions: np.ndarray
    images: np.ndarray
    values: np.ndarray
    start_values: np.ndarray


def _grid_cells(points: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(M, 2) (row, col) of each point in a rows x cols grid over their bounding box, y upwards."""
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    unit = (points - low) / span
    col = np.minimum((unit[:, 0] * cols).astype(int), cols - 1)
    row = np.minimum(((1.0 - unit[:, 1]) * rows).astype(int), rows - 1)
    return np.stack([row, col], axis=1)


def activation_atlas(model: fastconv.Model, data: np.ndarray, layer: str, grid: int | tuple[int, int] = 6,
                     positions: str | int = "mean", limit: int | None = 1000, min_count: int = 3,
                     method: str = "auto", cosine_power: float = 1.0, seed: int | None = 0,
                     activations: np.ndarray | None = None, **options: Any) -> Atlas:
    """An activation atlas of ``layer`` over the images ``data``.

    Activations from :func:`layer_activations` (``positions``, ``limit``;
    or pass them as ``activations`` (M, C)) are laid out by
    :func:`embed_activations` (``method``); a ``grid`` x ``grid`` (or
    (rows, cols)) lattice over the layout's bounding box groups them, and
    every cell with at least ``min_count`` of them is rendered by
    :func:`~fastconv.analysis.optimize.methods.direction_visualization` of
    their mean with ``cosine_power`` (the activation averaged over
    positions), all cells in one batch. ``options`` go to the feature
    visualization (``steps``, ``lr``, ``jitter``, ``parametrization``, ...).
    """
    rows, cols = (grid, grid) if C.is_int(grid) else C.check_pair(grid, "grid")
    rows, cols = _checks.positive_int(rows, "grid"), _checks.positive_int(cols, "grid")
    min_count = _checks.positive_int(min_count, "min_count")
    if activations is None:
        activations = layer_activations(model, data, layer, positions=positions, limit=limit, seed=seed)
    else:
        activations = np.asarray(activations, dtype=np.float64)
        if activations.ndim != 2:
            raise ValueError(f"activations must be shaped (M, C), got {activations.shape}")
    points, used = embed_activations(activations, method=method, seed=seed)
    where = _grid_cells(points, rows, cols)
    flat = where[:, 0] * cols + where[:, 1]
    counts = np.bincount(flat, minlength=rows * cols)
    kept = np.flatnonzero(counts >= min_count)
    if len(kept) == 0:
        raise ValueError(f"no cell of the {rows}x{cols} grid holds {min_count} activations; "
                         "use a coarser grid, a lower min_count or more images")
    directions = np.stack([activations[flat == k].mean(axis=0) for k in kept])
    if np.any(np.abs(directions).sum(axis=1) == 0):
        raise ValueError(f"some cells' mean activation at {layer!r} is all zeros; pick a layer whose units fire")
    result = M.direction_visualization(model, layer, directions, cosine_power=cosine_power, seed=seed, **options)
    return Atlas(layer=layer, method=used, shape=(rows, cols), points=points, activations=activations,
                 cells=np.stack([kept // cols, kept % cols], axis=1), counts=counts[kept],
                 directions=directions, images=result.images, values=result.values,
                 start_values=result.history["objective"][0])


def plot_atlas(atlas: Atlas, labels: np.ndarray | None = None, classes: list[str] | None = None,
               title: str | None = None, path: str | os.PathLike | None = None) -> Figure:
    """The atlas's cells at their places in the grid, beside the layout of
    the activations (coloured by ``labels``, the class of each activation's
    image, when given)."""
    from fastconv.analysis.visualize.figures import _clean, _finish, display_image, new_figure

    rows, cols = atlas.shape
    fig = new_figure(1.2 * cols + 5.0, max(1.2 * rows, 4.0) + 0.6)
    left, right = fig.subfigures(1, 2, width_ratios=[1.2 * cols, 5.0])
    axes = left.subplots(rows, cols, squeeze=False, gridspec_kw={"wspace": 0.02, "hspace": 0.02})
    for ax in axes.flat:
        _clean(ax)
        ax.set_facecolor("white")
        for side in ax.spines.values():
            side.set_visible(False)
    for (r, c), image, count in zip(atlas.cells, atlas.images, atlas.counts):
        shown = display_image(image)
        axes[r, c].imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        axes[r, c].text(0.02, 0.02, str(count), transform=axes[r, c].transAxes, fontsize=6, color="white",
                        bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    left.suptitle(f"each cell: the image whose {atlas.layer} activation points\nalong the cell's mean "
                  "(count in the corner)", fontsize=9)
    ax = right.subplots()
    if labels is not None and len(labels) == len(atlas.points):
        scatter = ax.scatter(atlas.points[:, 0], atlas.points[:, 1], c=labels, cmap="tab10", s=4)
        if classes is not None:
            handles, _ = scatter.legend_elements()
            names = [classes[int(k)] for k in np.unique(labels)]
            ax.legend(handles, names, fontsize=6, loc="best", markerscale=0.6)
    else:
        ax.scatter(atlas.points[:, 0], atlas.points[:, 1], s=4, color="tab:blue")
    low, high = atlas.points.min(axis=0), atlas.points.max(axis=0)
    for x in np.linspace(low[0], high[0], cols + 1):
        ax.axvline(x, color="grey", linewidth=0.5, alpha=0.5)
    for y in np.linspace(low[1], high[1], rows + 1):
        ax.axhline(y, color="grey", linewidth=0.5, alpha=0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{atlas.method.upper() if atlas.method == 'umap' else 't-SNE'} of "
                 f"{len(atlas.points)} activations, with the grid", fontsize=9)
    fig.suptitle(title or f"activation atlas of {atlas.layer}", fontsize=11)
    return _finish(fig, path)
