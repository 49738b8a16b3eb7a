"""HOG beside the network's own code: what different images share.

Histograms of oriented gradients (Dalal & Triggs) were the features of
choice before convolutional networks, and they too map very different
images to nearly the same descriptor (the lecture's HOG example). For each
query image :func:`compare_hog` gives its HOG glyphs (scikit-image's
``hog(..., visualize=True)``), the database image with the nearest HOG
descriptor (another image the descriptor barely tells apart) and the
network's inversion of the query's code at a layer
(:func:`fastconv.analysis.invert`): what each representation keeps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np

from fastconv import _checks
from fastconv.analysis import _common as C

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from matplotlib.figure import Figure

    import fastconv
    from fastconv.analysis.optimize.methods import Inversion


def _skimage_hog():  # type: ignore[no-untyped-def]
    try:
        from skimage.feature import hog
    except ImportError:
        raise ImportError("HOG needs scikit-image: pip install fastconv[hog] (or scikit-image)") from None
    return hog


def default_cell(image_size: Sequence[int]) -> int:
    """A HOG cell side giving about eight cells across the image's shorter side, at least 4 pixels."""
    return max(4, min(int(v) for v in image_size) // 8)


def hog_descriptors(images: np.ndarray, cell: int | None = None, orientations: int = 9, block: int = 2,
                    visualize: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """HOG descriptors (N, D) of images (N, C, H, W), and with ``visualize`` their
    glyph images (N, H, W).

    ``cell`` is the side of a cell in pixels (default :func:`default_cell`),
    ``block`` the side of a normalization block in cells (L2-Hys). Colour
    images use the channel with the strongest gradient at each pixel, as
    Dalal & Triggs do.
    """
    hog = _skimage_hog()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be shaped (N, C, H, W) with C in (1, 3), got {images.shape}")
    cell = default_cell(images.shape[2:]) if cell is None else _checks.positive_int(cell, "cell")
    orientations = _checks.positive_int(orientations, "orientations")
    block = _checks.positive_int(block, "block")
    if cell * block > min(images.shape[2:]):
        raise ValueError(f"a block of {block} x {block} cells of {cell} pixels does not fit "
                         f"in images of {images.shape[2]} x {images.shape[3]}")
    features, glyphs = [], []
    for image in images:
        pixels = image.astype(np.float64) / (255.0 if image.dtype == np.uint8 else 1.0)
        channel_axis = None if pixels.shape[0] == 1 else -1
        pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
        result = hog(pixels, orientations=orientations, pixels_per_cell=(cell, cell),
                     cells_per_block=(block, block), block_norm="L2-Hys", visualize=visualize,
                     channel_axis=channel_axis)
        if visualize:
            features.append(result[0])
            glyphs.append(result[1])
        else:
            features.append(result)
    return np.stack(features), (np.stack(glyphs) if visualize else None)


@dataclass
class HogComparison:
    """For each query: its HOG glyphs, the database image nearest in HOG, and the
    network's inversion of its code.

    ``glyphs`` (N, H, W); ``nearest`` (N,) indexes the database (its first
    ``count`` images), ``nearest_glyphs`` are that image's glyphs,
    ``hog_distance`` the Euclidean distance of the two descriptors and
    ``pixel_distance`` the RMS difference of the two images in [0, 1];
    ``inversions`` reconstruct each query from its code at ``layer``.
    """

    layer: str
    glyphs: np.ndarray
    nearest: np.ndarray
    nearest_glyphs: np.ndarray
    hog_distance: np.ndarray
    pixel_distance: np.ndarray
    inversions: list[Inversion]
    count: int


def _unit_pixels(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    return images.astype(np.float64) / (255.0 if images.dtype == np.uint8 else 1.0)


def compare_hog(model: fastconv.Model, queries: np.ndarray, database: np.ndarray, layer: str | None = None,
                cell: int | None = None, limit: int | None = None, steps: int = 200,
                seed: int | None = 0) -> HogComparison:
    """Compare HOG and the network's code at ``layer`` on ``queries`` (N, C, H, W),
    uint8 or floats in [0, 1].

    The HOG neighbour is searched among the first ``limit`` images of
    ``database`` (same layout), leaving out any image equal to the query;
    the inversion runs ``steps`` evaluations of
    :func:`fastconv.analysis.invert` (L-BFGS with its default priors).
    ``layer`` defaults to the input of the last Linear layer.
    """
    from fastconv.analysis.optimize.methods import invert
    from fastconv.analysis.visualize.embedding import default_code_layer

    layer = default_code_layer(model) if layer is None else layer
    C.check_layer(model, layer)
    total = len(database) if limit is None else min(len(database), _checks.positive_int(limit, "limit"))
    if total == 0:
        raise ValueError("the database holds no images")
    stored = np.asarray(database[:total])
    asked = np.asarray(queries)
    if stored.shape[1:] != asked.shape[1:]:
        raise ValueError(f"queries of shape {asked.shape[1:]} and database images of shape {stored.shape[1:]} differ")
    query_features, glyphs = hog_descriptors(asked, cell=cell, visualize=True)
    stored_features, _ = hog_descriptors(stored, cell=cell)
    distances = np.sqrt(((query_features[:, None, :] - stored_features[None, :, :]) ** 2).sum(axis=2))
    query_pixels, stored_pixels = _unit_pixels(asked), _unit_pixels(stored)
    same = (query_pixels.reshape(len(asked), 1, -1) == stored_pixels.reshape(1, total, -1)).all(axis=2)
    distances[same] = np.inf
    if np.isinf(distances).all(axis=1).any():
        raise ValueError("the database holds no image other than the query")
    nearest = distances.argmin(axis=1)
    _, nearest_glyphs = hog_descriptors(stored[nearest], cell=cell, visualize=True)
    pixel_distance = np.sqrt(((query_pixels - stored_pixels[nearest]) ** 2).reshape(len(asked), -1).mean(axis=1))
    inversions = [invert(model, image, layer, steps=steps, seed=seed, progress=False) for image in query_pixels]
    return HogComparison(layer=layer, glyphs=cast("np.ndarray", glyphs), nearest=nearest,
                         nearest_glyphs=cast("np.ndarray", nearest_glyphs),
                         hog_distance=distances[np.arange(len(asked)), nearest], pixel_distance=pixel_distance,
                         inversions=inversions, count=total)


def plot_hog(result: HogComparison, queries: np.ndarray, database: np.ndarray,
             path: str | os.PathLike | None = None) -> Figure:
    """A row per query: the image, its HOG glyphs, the database image nearest in
    HOG with its glyphs, and the network's reconstruction from its code."""
    from fastconv.analysis.visualize import figures as F

    n = len(queries)
    fig = F.new_figure(10.5, 2.2 * n + 0.6)
    axes = fig.subplots(n, 5, squeeze=False)
    for row in range(n):
        index = int(result.nearest[row])
        F._show_image(axes[row, 0], np.asarray(queries[row]), "image")
        axes[row, 1].imshow(result.glyphs[row], cmap="gray", interpolation="nearest")
        F._clean(axes[row, 1], "its HOG")
        F._show_image(axes[row, 2], np.asarray(database[index]),
                      f"nearest HOG: #{index}\npixel RMS {result.pixel_distance[row]:.2f}")
        axes[row, 3].imshow(result.nearest_glyphs[row], cmap="gray", interpolation="nearest")
        F._clean(axes[row, 3], f"its HOG (distance {result.hog_distance[row]:.2f})")
        inversion = result.inversions[row]
        F._show_image(axes[row, 4], inversion.image,
                      f"from the {result.layer} code\n(relative error {inversion.relative_error:.2f})")
    fig.suptitle(f"HOG (nearest of {result.count} images by descriptor) beside the network's inversion "
                 f"of its {result.layer} code", fontsize=10)
    return F._finish(fig, path)
