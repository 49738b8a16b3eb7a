"""Figures for the image-optimization tools (:mod:`~fastconv.analysis.optimize`,
:mod:`~fastconv.analysis.optimize.style`).

Like :mod:`~fastconv.analysis.visualize.figures`, each ``plot_*`` function returns a
:class:`matplotlib.figure.Figure` drawn on the Agg canvas and, given
``path``, writes it there atomically as PNG. Optimized images are pixels in
[0, 1] and are shown as they are, except class models and feature
visualizations, whose few strong pixels would leave the rest grey: those
are stretched to their own range, as the titles say.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.ticker import MaxNLocator

from fastconv.analysis.visualize.figures import _class_name, _clean, _finish, _grid, display_image, new_figure

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from numpy.typing import ArrayLike

    from fastconv.analysis.optimize.methods import Dream, Inversion, ToClass, Visualization
    from fastconv.analysis.optimize.style import Stylized


def _pixels(image: ArrayLike) -> np.ndarray:
    """(C, H, W) in [0, 1] -> what imshow takes, without rescaling."""
    image = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def _show(ax: Axes, image: ArrayLike, title: str | None = None, stretch: bool = False, fontsize: float = 8) -> None:
    shown = display_image(np.asarray(image, dtype=np.float64)) if stretch else _pixels(image)
    ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    _clean(ax, title, fontsize=fontsize)


def _unit_name(unit: tuple[int, ...]) -> str:
    return f"channel {unit[0]}" if len(unit) == 1 else f"unit {tuple(unit)}"


def plot_class_models(result: Visualization, classes: Sequence[str] | None = None, columns: int = 5,
                      path: str | os.PathLike | None = None) -> Figure:
    """Each class model of a :func:`class_model` result, with its final score
    and probability, and the scores along the optimization."""
    n = len(result.units)
    rows, cols = _grid(n, columns)
    fig = new_figure(2.0 * cols, 2.1 * rows + 2.6)
    tiles, curves = fig.subfigures(2, 1, height_ratios=[2.1 * rows, 2.4])
    axes = tiles.subplots(rows, cols, squeeze=False)
    probability = result.history.get("probability")
    for k, unit in enumerate(result.units):
        p = f", p {probability[-1, k]:.2f}" if probability is not None else ""
        _show(axes.flat[k], result.images[k], f"{_class_name(classes, unit[0])}\nscore {result.values[k]:.1f}{p}",
              stretch=True)
    for ax in axes.flat[n:]:
        ax.axis("off")
    tiles.suptitle(f"class models: images that maximize each class score at {result.layer} "
                   "(each tile stretched to its own range)", fontsize=10)
    ax = curves.subplots()
    steps = np.arange(1, len(result.history["objective"]) + 1)
    for k, unit in enumerate(result.units):
        ax.plot(steps, result.history["objective"][:, k], label=_class_name(classes, unit[0]), linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("class score (pre-softmax)")
    ax.legend(fontsize=7, ncol=min(n, 10), loc="lower right")
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def plot_feature_grid(grid: Mapping[str, Visualization], path: str | os.PathLike | None = None,
                      title: str | None = None) -> Figure:
    """One row per layer of a :func:`feature_grid` result: the image that
    maximizes each chosen channel, with the channel's final mean activation."""
    layers = list(grid)
    cols = max(len(result.units) for result in grid.values())
    fig = new_figure(1.6 * cols + 0.8, 1.75 * len(layers) + 0.6)
    axes = fig.subplots(len(layers), cols, squeeze=False)
    for row, layer in enumerate(layers):
        result = grid[layer]
        for k, unit in enumerate(result.units):
            _show(axes[row, k], result.images[k], f"{_unit_name(unit)}: {result.values[k]:.2f}", stretch=True,
                  fontsize=7)
        for ax in axes[row, len(result.units):]:
            ax.axis("off")
        axes[row, 0].set_ylabel(layer, fontsize=9)
    whole = all(len(unit) == 1 for result in grid.values() for unit in result.units)
    objective = "a channel's mean activation" if whole else "one unit (channel, row, column)"
    fig.suptitle(title or f"feature visualization: images that maximize {objective} "
                          "(its value after the title; each tile stretched to its own range)", fontsize=10)
    return _finish(fig, path)


def plot_to_class(result: ToClass, classes: Sequence[str] | None = None,
                  path: str | os.PathLike | None = None) -> Figure:
    """The image before and after, the change, and p(target) per step."""
    fig = new_figure(13.0, 3.4)
    axes = fig.subplots(1, 4, width_ratios=[1, 1, 1, 1.6])
    history = result.history
    target = _class_name(classes, result.target)
    _show(axes[0], result.original, f"original: predicted {_class_name(classes, history['predicted'][0])}\n"
                                    f"p({target}) = {history['probability'][0]:.3f}")
    _show(axes[1], result.image, f"after {result.steps} steps: predicted "
                                 f"{_class_name(classes, history['predicted'][-1])}\n"
                                 f"p({target}) = {history['probability'][-1]:.3f}")
    change = (np.asarray(result.image) - np.asarray(result.original)).sum(axis=0)
    limit = float(np.abs(change).max()) or 1.0
    shown = axes[2].imshow(change, cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")
    _clean(axes[2], f"change (sum over channels)\nL2 {np.linalg.norm(change):.2f}, max |.| {limit:.2f}")
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    ax = axes[3]
    ax.plot(np.arange(len(history["probability"])), history["probability"], marker=".", label=f"p({target})")
    ax.axhline(result.threshold, color="red", linestyle="--", linewidth=1, label=f"threshold {result.threshold:g}")
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("probability")
    ax.set_title("reached the threshold" if result.reached else "did not reach the threshold", fontsize=9)
    ax.legend(fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    fig.suptitle(f"pushing an image towards class {target}", fontsize=11)
    return _finish(fig, path)


def plot_inversions(results: Sequence[Inversion], path: str | os.PathLike | None = None) -> Figure:
    """The original, then the reconstruction from each layer's code, with the
    code's relative error and the pixel MSE against the original."""
    n = len(results)
    fig = new_figure(2.2 * (n + 1), 2.9)
    axes = fig.subplots(1, n + 1, squeeze=False)[0]
    _show(axes[0], results[0].original, "original")
    for ax, result in zip(axes[1:], results):
        mse = float(np.mean((np.asarray(result.image) - np.asarray(result.original)) ** 2))
        _show(ax, result.image, f"{result.layer}\ncode error {result.relative_error:.3f}\npixel MSE {mse:.4f}")
    fig.suptitle("feature inversion: the image reconstructed from each layer's code "
                 "(total-variation and alpha-norm priors)", fontsize=10)
    return _finish(fig, path)


def plot_dream(results: Dream | Sequence[Dream], path: str | os.PathLike | None = None) -> Figure:
    """The original, then each :class:`Dream` of it (one per layer)."""
    results = results if isinstance(results, (list, tuple)) else [results]
    n = len(results)
    h, w = np.asarray(results[0].original).shape[1:]
    width = 4.2 * (n + 1)
    fig = new_figure(width, width / (n + 1) * h / w + 0.8)
    axes = fig.subplots(1, n + 1, squeeze=False)[0]
    _show(axes[0], results[0].original, f"original {w}x{h}", fontsize=9)
    for ax, result in zip(axes[1:], results):
        steps = int(np.sum(result.history["octave"] == 0))
        _show(ax, result.image, f"DeepDream at {result.layer}\n{len(result.sizes)} octaves x {steps} steps",
              fontsize=9)
    fig.suptitle("DeepDream: gradient ascent on the squared activations of a layer", fontsize=11)
    return _finish(fig, path)


def plot_style(result: Stylized, content: ArrayLike | None, style: ArrayLike, path: str | os.PathLike | None = None,
               title: str | None = None) -> Figure:
    """Content (if any), style and result images, then the loss and its parts
    at every evaluation."""
    images = ([("content", content)] if content is not None else []) + [("style", style)]
    label = "texture" if content is None else "result"
    fig = new_figure(3.4 * (len(images) + 2), 3.9)
    axes = fig.subplots(1, len(images) + 2, width_ratios=[1] * (len(images) + 1) + [1.5])
    for ax, (name, image) in zip(axes, images):
        _show(ax, image, f"{name} {np.asarray(image).shape[2]}x{np.asarray(image).shape[1]}", fontsize=9)
    _show(axes[len(images)], result.image,
          f"{label} after {result.evaluations} evaluations\n({result.method}, {result.seconds:.0f} s)", fontsize=9)
    ax = axes[-1]
    evaluations = np.arange(1, result.evaluations + 1)
    ax.semilogy(evaluations, result.history["loss"], label="total", color="black")
    for part in ("content", "style", "tv"):
        values = result.history[part]
        if np.any(values > 0):
            ax.semilogy(evaluations, values, label=part, linewidth=1)
    ax.set_xlabel("evaluation")
    ax.set_ylabel("loss (parts unweighted)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    layers = ", ".join(result.style_layers)
    if content is None:
        default_title = f"texture synthesis (style statistics at {layers})"
    else:
        default_title = f"neural style transfer (content at {result.content_layer}, style at {layers})"
    fig.suptitle(title or default_title, fontsize=10)
    return _finish(fig, path)


def plot_optimizer_comparison(results: Mapping[str, Stylized | Inversion], path: str | os.PathLike | None = None,
                              title: str = "the same loss under the same budget of evaluations") -> Figure:
    """Loss against evaluations (best so far) for several runs, e.g.
    {'L-BFGS': result, 'Adam': result}, with each run's final image."""
    names = list(results)
    fig = new_figure(3.0 * len(names) + 5.0, 3.6)
    axes = fig.subplots(1, len(names) + 1, width_ratios=[1] * len(names) + [1.8])
    for ax, name in zip(axes, names):
        result = results[name]
        _show(ax, result.image, f"{name}: loss {np.min(result.history['loss']):.4g}", fontsize=9)
    ax = axes[-1]
    for name in names:
        losses = np.asarray(results[name].history["loss"])
        ax.semilogy(np.arange(1, len(losses) + 1), np.minimum.accumulate(losses), label=name)
    ax.set_xlabel("evaluations of the loss and its gradient")
    ax.set_ylabel("lowest loss so far")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


def _direction_name(direction: np.ndarray, terms: int = 3) -> str:
    """The largest weights of a direction, e.g. '1.0 c3 + 0.5 c7 + ...'."""
    order = np.argsort(-np.abs(direction))
    shown = [k for k in order[:terms] if direction[k] != 0]
    text = " ".join(f"{'-' if direction[k] < 0 else '+'} {abs(direction[k]):.2g} c{k}" for k in shown)
    text = text[2:] if text.startswith("+ ") else text
    return text + (" ..." if np.count_nonzero(direction) > len(shown) else "")


def plot_directions(result: Visualization, columns: int = 8, title: str | None = None,
                    path: str | os.PathLike | None = None) -> Figure:
    """Each image of a :func:`~fastconv.analysis.optimize.methods.direction_visualization`
    result, titled with its direction's largest weights and its final objective."""
    if result.directions is None:
        raise ValueError("the result has no directions: draw a unit visualization with plot_feature_grid")
    n = len(result.images)
    rows, cols = _grid(n, columns)
    # wide enough for the title when there are only one or two images
    fig = new_figure(max(1.8 * cols + 0.4, 5.5), 1.9 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k in range(n):
        _show(axes.flat[k], result.images[k], f"{_direction_name(result.directions[k])}\n"
                                              f"objective {result.values[k]:.3g}", stretch=True, fontsize=7)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.suptitle(title or f"images pushed along directions of {result.layer}'s channels\n"
                          "(each tile stretched to its own range)", fontsize=10)
    return _finish(fig, path)
