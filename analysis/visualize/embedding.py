"""Codes: the features a layer computes for many images, grouped and mapped.

* :func:`default_code_layer` is the layer whose codes the classifier reads.
* :func:`layer_features` streams images through the model and returns the
  flattened output of one layer, (N, D).
* :func:`cluster` groups those codes with k-means; images near each centre
  show what the network considers alike.
* :func:`embed` maps them to 2-D with t-SNE (faithful to neighbourhoods,
  slower) or PCA (the fast, linear option).
* :func:`snap_to_grid` assigns embedded points to the cells of a lattice,
  one image per cell, so the map can be drawn as a grid of thumbnails.

Clustering and embedding use scikit-learn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment

from fastconv import _checks
from fastconv.analysis import _common as C

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import ArrayLike

    import fastconv


def _sklearn() -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ImportError(
            "clustering and embeddings need scikit-learn: pip install scikit-learn"
        ) from None


def default_code_layer(model: fastconv.Model) -> str:
    """The layer whose codes the classifier reads: the input of the last Linear
    layer (the layer before it); for a model without one, the last layer but one."""
    from fastconv.nn import layers as L

    names = C.layer_names(model)
    linear = [i for i, (_, layer) in enumerate(model.named_layers()) if isinstance(layer, L.Linear)]
    if linear and linear[-1] > 0:
        return names[linear[-1] - 1]
    return names[-2] if len(names) > 1 else names[-1]


def layer_features(model: fastconv.Model, data: np.ndarray, layer: str, batch_size: int = 256,
                   transform: Callable[[np.ndarray], np.ndarray] | None = None,
                   limit: int | None = None) -> np.ndarray:
    """Flattened output of ``layer`` for each image of ``data``: (N, D) float64.

    ``data`` and ``transform`` are as in :func:`fastconv.analysis.top_images`.
    """
    C.check_layer(model, layer)
    total = len(data) if limit is None else min(len(data), _checks.positive_int(limit, "limit"))
    if total == 0:
        raise ValueError("data holds no images")
    if transform is None:
        sample = np.asarray(data[:1])
        transform = C.Normalizer.from_model(model) if sample.dtype == np.uint8 else (lambda b: b)
    chunks = []
    with C.evaluating(model):
        for start, stop in C.batches(total, batch_size):
            x = transform(np.asarray(data[start:stop]))
            C.check_images(model, x, "data")
            out = model.forward(x, until=layer)
            chunks.append(out.reshape(out.shape[0], -1).astype(np.float64))
    return np.concatenate(chunks)


@dataclass
class Clusters:
    """k-means of N codes: ``labels`` (N,), ``centers`` (k, D), and for each
    cluster the indices of its members sorted by distance to the centre."""

    labels: np.ndarray
    centers: np.ndarray
    members: list[np.ndarray]

    def nearest(self, cluster: int, count: int) -> np.ndarray:
        return self.members[cluster][:count]


def cluster(features: ArrayLike, n_clusters: int = 10, seed: int | None = 0) -> Clusters:
    """k-means (scikit-learn) of ``features`` (N, D) into ``n_clusters`` groups."""
    _sklearn()
    from sklearn.cluster import KMeans

    features = _check_features(features)
    n_clusters = _checks.positive_int(n_clusters, "n_clusters")
    if n_clusters > len(features):
        raise ValueError(f"n_clusters {n_clusters} exceeds the number of codes {len(features)}")
    km = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit(features)
    distances = np.linalg.norm(features - km.cluster_centers_[km.labels_], axis=1)
    members = []
    for c in range(n_clusters):
        idx = np.flatnonzero(km.labels_ == c)
        members.append(idx[np.argsort(distances[idx], kind="stable")])
    return Clusters(km.labels_.astype(np.int64), km.cluster_centers_, members)


def embed(features: ArrayLike, method: str = "tsne", seed: int | None = 0, perplexity: float = 30.0,
          pca_dims: int = 50) -> np.ndarray:
    """2-D map of ``features`` (N, D): 'tsne' or 'pca'. Returns (N, 2).

    Before t-SNE the codes are reduced to ``pca_dims`` dimensions with PCA,
    which keeps the structure and makes t-SNE much faster.
    """
    _sklearn()
    from sklearn.decomposition import PCA

    features = _check_features(features)
    n = len(features)
    if n < 3:
        raise ValueError(f"an embedding needs at least 3 codes, got {n}")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    if method != "tsne":
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    from sklearn.manifold import TSNE

    dims = min(pca_dims, n, features.shape[1])
    if features.shape[1] > dims:
        features = PCA(n_components=dims, random_state=seed).fit_transform(features)
    perplexity = min(float(perplexity), (n - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def snap_to_grid(points: ArrayLike, rows: int, cols: int) -> np.ndarray:
    """Place points (N, 2) on a rows x cols lattice, one per cell at most.

    Both are scaled to the unit square and cells are assigned to points so
    that the total distance moved is smallest (Hungarian algorithm). Returns
    a (rows, cols) int array of point indices, -1 for an empty cell.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be shaped (N, 2), got {points.shape}")
    rows = _checks.positive_int(rows, "rows")
    cols = _checks.positive_int(cols, "cols")
    lo, hi = points.min(axis=0), points.max(axis=0)
    unit = (points - lo) / np.where(hi > lo, hi - lo, 1.0)
    gy, gx = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
    cells = np.stack([gx.ravel(), 1.0 - gy.ravel()], axis=1)
    cost = np.linalg.norm(cells[:, None, :] - unit[None, :, :], axis=2)
    cell_idx, point_idx = linear_sum_assignment(cost)
    grid = np.full(rows * cols, -1, dtype=np.int64)
    grid[cell_idx] = point_idx
    return grid.reshape(rows, cols)


def _check_features(features: ArrayLike) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be shaped (N, D) with N > 0, got {features.shape}")
    return features
