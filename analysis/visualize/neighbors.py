"""Nearest neighbours in a layer's code space: which training images the
network considers closest to a query image.

The lecture's fc7 retrieval: images whose codes (the input of the classifier
by default) are near each other look alike to the network, even when their
pixels differ. Distances are Euclidean between flattened codes, found with
scikit-learn's :class:`~sklearn.neighbors.NearestNeighbors`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fastconv import _checks
from fastconv.analysis.visualize.embedding import _sklearn, default_code_layer, layer_features

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Sequence

    from matplotlib.figure import Figure

    import fastconv


@dataclass
class Neighbors:
    """The ``k`` nearest database images of each query, nearest first.

    ``indices`` (Q, k) index the database (its first ``count`` images);
    ``distances`` (Q, k) are the Euclidean distances between the codes of
    ``layer``.
    """

    layer: str
    indices: np.ndarray
    distances: np.ndarray
    count: int

    def label_agreement(self, query_labels: np.ndarray, database_labels: np.ndarray) -> float:
        """The share of retrieved neighbours whose label is the query's."""
        query_labels = np.asarray(query_labels)
        if query_labels.shape != (self.indices.shape[0],):
            raise ValueError(f"query_labels must hold one label per query ({self.indices.shape[0]}), "
                             f"got shape {query_labels.shape}")
        retrieved = np.asarray(database_labels)[self.indices]
        return float(np.mean(retrieved == query_labels[:, None]))


def nearest_neighbors(model: fastconv.Model, queries: np.ndarray, database: np.ndarray, layer: str | None = None,
                      k: int = 8, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                      limit: int | None = None, batch_size: int = 256) -> Neighbors:
    """The ``k`` images of ``database`` whose codes at ``layer`` are nearest to each query's.

    ``queries`` and ``database`` are images (N, C, H, W), uint8 (normalized
    with the model's statistics) or model input, or pass ``transform`` as in
    :func:`fastconv.analysis.top_images`; ``layer`` defaults to the input of
    the last Linear layer (:func:`default_code_layer`); ``limit`` searches the
    first ``limit`` database images only.
    """
    _sklearn()
    from sklearn.neighbors import NearestNeighbors

    k = _checks.positive_int(k, "k")
    layer = default_code_layer(model) if layer is None else layer
    stored = layer_features(model, database, layer, batch_size=batch_size, transform=transform, limit=limit)
    if k > len(stored):
        raise ValueError(f"k={k} is more than the {len(stored)} database images searched")
    asked = layer_features(model, queries, layer, batch_size=batch_size, transform=transform)
    search = NearestNeighbors(n_neighbors=k).fit(stored)
    distances, indices = search.kneighbors(asked)
    return Neighbors(layer=layer, indices=indices.astype(np.int64), distances=distances, count=len(stored))


def plot_neighbors(result: Neighbors, queries: np.ndarray, database: np.ndarray,
                   query_labels: Sequence[int] | np.ndarray | None = None,
                   database_labels: Sequence[int] | np.ndarray | None = None,
                   classes: Sequence[str] | None = None, path: str | os.PathLike | None = None) -> Figure:
    """One row per query: the query image, then its neighbours nearest first,
    each titled with its class and distance (red when its class is not the query's)."""
    from fastconv.analysis.visualize import figures as F

    n, k = result.indices.shape
    fig = F.new_figure(1.1 * (k + 1) + 0.8, 1.25 * n + 0.7)
    axes = fig.subplots(n, k + 1, squeeze=False)
    for row in range(n):
        own = None if query_labels is None else int(query_labels[row])
        F._show_image(axes[row, 0], np.asarray(queries[row]),
                      "query" if own is None else f"query: {F._class_name(classes, own)}")
        axes[row, 0].patch.set_edgecolor("black")
        for col in range(k):
            index = int(result.indices[row, col])
            ax = axes[row, col + 1]
            label = None if database_labels is None else int(database_labels[index])
            name = "" if label is None else F._class_name(classes, label) + "\n"
            F._show_image(ax, np.asarray(database[index]), f"{name}d={result.distances[row, col]:.3g}")
            if own is not None and label is not None and label != own:
                ax.title.set_color("red")
    fig.suptitle(f"the {k} nearest of {result.count} images by their {result.layer} codes "
                 f"(Euclidean; red: another class)", fontsize=10)
    return F._finish(fig, path)
