"""Figures of a training run, written as PNG files with matplotlib's Agg renderer.

Each function draws one figure on a fresh ``matplotlib.figure.Figure`` (no
pyplot, so no global state and no display is needed) and writes it
atomically: a temporary file in the target folder, then a rename.

* ``plot_history``: training and validation loss and accuracy per epoch.
* ``plot_predictions``: random test images with the predicted class, its
  probability and the true class.
* ``plot_confusion``: the confusion matrix, counts and row-normalized colours.
* ``plot_samples``: a random sample of the training set with labels.

Images are uint8 (N, C, H, W) as the data sets give them, with C = 1 or 3.
"""
from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np

from fastconv._files import atomic_write, check_replaceable, make_parent

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from matplotlib.figure import Figure
    from numpy.typing import ArrayLike

__all__ = ["plot_history", "plot_predictions", "plot_confusion", "plot_samples", "save"]

CORRECT_COLOUR = "#1a7f37"
WRONG_COLOUR = "#cf222e"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | os.PathLike, tight: bool = False) -> Path:
    """Write ``fig`` to ``path`` as PNG, atomically, creating its folder; return the path.

    ``tight`` trims the blank margins around what is drawn (at the cost of
    drawing the figure twice): for figures whose axes keep a fixed aspect.
    """
    target = make_parent(check_replaceable(path, (".png",)))
    options: dict[str, Any] = {"bbox_inches": "tight", "pad_inches": 0.15} if tight else {}
    atomic_write(target, lambda f: fig.savefig(f, format="png", **options))
    return target


def _margins(fig: Figure, left: float, right: float, bottom: float, top: float, **spacing: float) -> None:
    """Fixed margins in inches: cheaper than a tight bounding box, which draws the figure twice."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, **spacing)


def _as_image(image: ArrayLike) -> tuple[np.ndarray, str | None]:
    """(C, H, W) uint8 -> what imshow wants: (H, W) for grey, (H, W, 3) for colour."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 1:
        return image[0], "gray"
    if image.ndim == 3 and image.shape[0] == 3:
        return image.transpose(1, 2, 0), None
    raise ValueError(f"expected a (1, H, W) or (3, H, W) image, got shape {image.shape}")


def _grid(count: int, columns: int) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return int(np.ceil(count / columns)), columns


def _pick(n: int, count: int, seed: np.random.Generator | int | None) -> np.ndarray:
    return np.random.default_rng(seed).choice(n, size=min(count, n), replace=False)


def _suptitle(fig: Figure, text: str, fontsize: float = 12) -> None:
    """A figure title wrapped to the figure's width, so a long data set name stays readable."""
    width = int(fig.get_size_inches()[0] * 130 / fontsize)
    lines = [textwrap.fill(line, width) for line in text.split("\n")]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def plot_history(history: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                 title: str = "Training history") -> Path:
    """Loss and accuracy per epoch, training and validation, side by side."""
    if not history:
        raise ValueError("the history is empty: nothing to plot")
    epochs = [r["epoch"] for r in history]
    fig = _figure(11, 4.6)
    _margins(fig, 0.8, 0.2, 0.6, 0.8, wspace=0.25)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, key, label in ((loss_ax, "loss", "Loss"), (acc_ax, "accuracy", "Accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="training (running, during the epoch)")
        val = [r.get(f"val_{key}") for r in history]
        if any(v is not None for v in val):
            ax.plot([e for e, v in zip(epochs, val) if v is not None], [v for v in val if v is not None],
                    "s-", label="validation (end of epoch)")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        ax.set_xticks(epochs if len(epochs) <= 20 else np.linspace(epochs[0], epochs[-1], 10).round())
        ax.grid(True, alpha=0.3)
        ax.legend()
    last = history[-1]
    summary = f"after epoch {last['epoch']}: training accuracy {last['train_accuracy']:.2%}"
    if last.get("val_accuracy") is not None:
        summary += f", validation accuracy {last['val_accuracy']:.2%}"
    _suptitle(fig, f"{title} ({summary})")
    return save(fig, path)


def plot_predictions(images: np.ndarray, labels: ArrayLike, probabilities: ArrayLike, classes: Sequence[str],
                     path: str | os.PathLike, count: int = 16, columns: int = 4,
                     seed: np.random.Generator | int | None = 0,
                     title: str = "Predictions on random test images") -> Path:
    """A grid of random images: predicted class and its probability, and the true class.

    Titles are green when the prediction is right and red when it is wrong.
    """
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels)
    if len(images) != len(labels) or len(labels) != len(probabilities):
        raise ValueError(f"{len(images)} images, {len(labels)} labels and {len(probabilities)} probability rows")
    chosen = _pick(len(images), count, seed)
    rows, columns = _grid(len(chosen), columns)
    fig = _figure(2.3 * columns, 2.6 * rows + 0.8)
    _margins(fig, 0.1, 0.1, 0.1, 1.0, hspace=0.45, wspace=0.15)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    right = 0
    for ax, i in zip(axes, chosen):
        image, cmap = _as_image(images[i])
        predicted = int(np.argmax(probabilities[i]))
        ok = predicted == int(labels[i])
        right += ok
        ax.imshow(image, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"predicted: {classes[predicted]} ({probabilities[i, predicted]:.0%})\n"
                     f"true: {classes[int(labels[i])]}",
                     color=CORRECT_COLOUR if ok else WRONG_COLOUR, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(chosen):]:
        ax.set_axis_off()
    _suptitle(fig, f"{title}: {right} of {len(chosen)} right\n"
                   f"(predicted class with the model's probability for it; green = right, red = wrong)",
              fontsize=10)
    return save(fig, path)


def plot_confusion(matrix: ArrayLike, classes: Sequence[str], path: str | os.PathLike,
                   title: str = "Confusion matrix") -> Path:
    """Counts of (true class, predicted class); colour is the share of each true class."""
    matrix = np.asarray(matrix)
    k = len(classes)
    if matrix.shape != (k, k):
        raise ValueError(f"confusion matrix has shape {matrix.shape}, expected ({k}, {k}) for {k} classes")
    totals = matrix.sum(axis=1, keepdims=True)
    shares = matrix / np.maximum(totals, 1)
    size = max(5.0, 0.6 * k + 2.5)
    fig = _figure(size + 2.0, size + 0.3)
    _margins(fig, 1.5, 0.8, 1.2, 0.8)
    ax = fig.subplots()
    shown = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if shares[i, j] > 0.5 else "black")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    _suptitle(fig, f"{title}\n{int(matrix.sum()):,} images, accuracy {accuracy:.2%}")
    # The matrix is square and the figure is not: trim the blank sides.
    return save(fig, path, tight=True)


def plot_samples(images: np.ndarray, labels: ArrayLike, classes: Sequence[str], path: str | os.PathLike,
                 count: int = 25, columns: int = 5, seed: np.random.Generator | int | None = 0,
                 title: str = "A random sample of the training set") -> Path:
    """A grid of random images with their class names."""
    labels = np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    chosen = _pick(len(images), count, seed)
    rows, columns = _grid(len(chosen), columns)
    fig = _figure(2.0 * columns, 2.1 * rows + 0.6)
    _margins(fig, 0.1, 0.1, 0.1, 0.6, hspace=0.3, wspace=0.15)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, i in zip(axes, chosen):
        image, cmap = _as_image(images[i])
        ax.imshow(image, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(classes[int(labels[i])], fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(chosen):]:
        ax.set_axis_off()
    _suptitle(fig, f"{title} ({len(chosen)} of {len(images):,} images, with their labels)")
    return save(fig, path)
