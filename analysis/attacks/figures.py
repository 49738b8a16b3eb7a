"""Figures of adversarial examples and of robustness (matplotlib, Agg, PNG).

Like :mod:`fastconv.analysis.visualize.figures`, each ``plot_*`` function returns a Figure and, given
``path``, writes it there atomically. Images are [0, 1] pixels (N, C, H, W)
and are drawn on that fixed scale, so that noise, a photo and its
adversarial version are shown alike.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fastconv.analysis import _common as C
from fastconv.analysis.attacks import methods as A
from fastconv.analysis.visualize.figures import _class_name, _clean, _finish, new_figure
from fastconv.nn.losses import softmax

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from numpy.typing import ArrayLike

    import fastconv

__all__ = ["plot_adversarial", "plot_autoattack", "plot_fooling_images", "plot_robustness", "plot_templates",
           "plot_loss_history", "plot_perturbation_transfer", "plot_detection_roc", "plot_survival", "plot_substitute"]

NORM_TITLES = {"linf": "L-infinity", "l2": "L2"}
LINE_STYLES = ("-", "--", ":", "-.")


def _pixels_for_display(image: ArrayLike) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, 3), clipped."""
    image = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def _show_pixels(ax: Axes, image: ArrayLike, title: str | None = None) -> None:
    shown = _pixels_for_display(image)
    ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    _clean(ax, title)


def _confidences(model: fastconv.Model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = softmax((A.predict_pixels(model, x)).astype(np.float64), axis=1)
    return p.argmax(axis=1), p.max(axis=1), p


def _describe(classes: Sequence[str] | None, k: int, confidence: float) -> str:
    return f"{_class_name(classes, k)} ({confidence:.1%})"


def plot_adversarial(model: fastconv.Model, x: np.ndarray, x_adv: np.ndarray, y: ArrayLike | None = None,
                     target: ArrayLike | None = None, classes: Sequence[str] | None = None,
                     amplify: float | None = None, title: str | None = None,
                     path: str | os.PathLike | None = None) -> Figure:
    """One row per image: the original, the perturbation (amplified), the
    adversarial image, each with what ``model`` makes of it.

    The perturbation is drawn as 0.5 + amplify * (x_adv - x), grey meaning
    no change; ``amplify`` defaults to the factor that brings the largest
    change of the figure to half the grey range. ``y`` (true labels) and
    ``target`` (the class aimed at) go into the titles when given.
    """
    x = A.check_pixels(model, x)
    x_adv = A.check_pixels(model, x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x_adv has shape {x_adv.shape} but x has shape {x.shape}")
    classes = classes if classes is not None else C.meta_classes(model)
    n = x.shape[0]
    delta = x_adv.astype(np.float64) - x.astype(np.float64)
    largest = float(np.abs(delta).max())
    if amplify is None:
        amplify = 0.5 / largest if largest > 0 else 1.0
    amplify = A._number(amplify, "amplify", 0.0, strict=True)
    y = None if y is None else np.broadcast_to(np.asarray(y), (n,))
    target = None if target is None else np.broadcast_to(np.asarray(target), (n,))
    before, before_conf, _ = _confidences(model, x)
    after, after_conf, p_after = _confidences(model, x_adv)
    fig = new_figure(7.2, 2.3 * n + 0.6)
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        truth = "" if y is None else f"label {_class_name(classes, y[i])}\n"
        _show_pixels(axes[i, 0], x[i], f"{truth}original: {_describe(classes, before[i], before_conf[i])}")
        l2 = float(np.sqrt(np.square(delta[i]).sum()))
        linf = float(np.abs(delta[i]).max())
        _show_pixels(axes[i, 1], 0.5 + amplify * delta[i],
                     f"perturbation x{amplify:.3g}\nL2 {l2:.2f}, L-inf {linf:.3f}")
        aim = "" if target is None else f"target {_class_name(classes, target[i])}: {p_after[i, target[i]]:.1%}\n"
        _show_pixels(axes[i, 2], x_adv[i], f"{aim}adversarial: {_describe(classes, after[i], after_conf[i])}")
    fig.suptitle(title or "original + perturbation = adversarial example", fontsize=10)
    return _finish(fig, path)


def plot_fooling_images(model: fastconv.Model, images: np.ndarray, classes: Sequence[str] | None = None,
                        columns: int = 10, title: str | None = None, path: str | os.PathLike | None = None) -> Figure:
    """A grid of images, each titled with the class ``model`` sees in it and
    its confidence (fooling images made from noise, for instance)."""
    images = A.check_pixels(model, images, "images")
    classes = classes if classes is not None else C.meta_classes(model)
    predicted, confidence, _ = _confidences(model, images)
    n = images.shape[0]
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    fig = new_figure(1.5 * columns + 0.2, 1.7 * rows + 0.6)
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            _show_pixels(ax, images[i], _describe(classes, predicted[i], confidence[i]))
        else:
            ax.axis("off")
    fig.suptitle(title or "what the network sees, with its confidence", fontsize=10)
    return _finish(fig, path)


def _as_models(curves: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{model label: robustness_curve result} from one result or a mapping of them."""
    if not isinstance(curves, dict):
        raise TypeError(f"curves must be a robustness_curve result or a dict of them, got {type(curves).__name__}")
    if "curves" in curves:
        return {"": curves}
    for label, result in curves.items():
        if not isinstance(result, dict) or "curves" not in result:
            raise ValueError(f"curves[{label!r}] is not a robustness_curve result")
    if not curves:
        raise ValueError("no curves to plot")
    return curves


def plot_robustness(curves: dict[str, Any], title: str | None = None,
                    path: str | os.PathLike | None = None) -> Figure:
    """Accuracy against perturbation size, one line per attack, one panel per
    norm (L-infinity, L2).

    ``curves`` is a :func:`~fastconv.analysis.robustness_curve` result, or
    {model label: result} to compare models (e.g. a standard and an
    adversarially trained one): the same colour for an attack, one line
    style per model.
    """
    models = _as_models(curves)
    norms = [norm for norm in ("linf", "l2")
             if any(c["norm"] == norm for r in models.values() for c in r["curves"].values())]
    if not norms:
        raise ValueError("the results hold no curve")
    attacks = []
    for result in models.values():
        attacks += [label for label in result["curves"] if label not in attacks]
    colours = {label: f"C{i % 10}" for i, label in enumerate(attacks)}
    fig = new_figure(5.2 * len(norms) + 0.4, 4.2)
    axes = fig.subplots(1, len(norms), squeeze=False)[0]
    for ax, norm in zip(axes, norms):
        for m, (model_label, result) in enumerate(models.items()):
            style = LINE_STYLES[m % len(LINE_STYLES)]
            for label, curve in result["curves"].items():
                if curve["norm"] != norm:
                    continue
                name = label if not model_label else f"{label}, {model_label}"
                ax.plot(curve["eps"], curve["accuracy"], style, marker="o", markersize=3,
                        color=colours[label], label=name)
        ax.set_xlabel(f"{NORM_TITLES[norm]} size of the perturbation (pixels in [0, 1])")
        ax.set_ylabel("accuracy on the adversarial images")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"{NORM_TITLES[norm]} attacks", fontsize=10)
        ax.legend(fontsize=7)
    sizes = sorted({r["images"] for r in models.values()})
    fig.suptitle(title or f"Accuracy under attack ({', '.join(map(str, sizes))} images)", fontsize=11)
    return _finish(fig, path)


def plot_autoattack(reports: dict[str, Any], title: str | None = None,
                    path: str | os.PathLike | None = None) -> Figure:
    """Robust accuracy along AutoAttack's sequence, one group of bars per model.

    ``reports`` is an :meth:`~fastconv.analysis.AutoAttack.evaluate` report,
    or {model label: report}. Each group shows the clean accuracy, then the
    robust accuracy after each component (the images each one broke are
    gone from the next bar); hatched bars, when the reports have them, give
    each component's robust accuracy alone.
    """
    if not isinstance(reports, dict):
        raise TypeError(f"reports must be an AutoAttack report or a dict of them, got {type(reports).__name__}")
    models = {"": reports} if "sequence" in reports else reports
    if not models or not all(isinstance(r, dict) and "sequence" in r for r in models.values()):
        raise ValueError("reports must be AutoAttack.evaluate reports (with a 'sequence')")
    stages = ["clean"] + [step["attack"] for step in next(iter(models.values()))["sequence"]]
    fig = new_figure(1.6 + 1.3 * len(stages) * len(models), 4.2)
    ax = fig.subplots()
    width = 0.8 / len(models)
    for m, (label, report) in enumerate(models.items()):
        after = [report["clean_accuracy"]] + [step["robust_accuracy"] for step in report["sequence"]]
        positions = np.arange(len(stages)) + (m - (len(models) - 1) / 2) * width
        bars = ax.bar(positions, after, width * 0.9, color=f"C{m}", label=(label or "model") + ": the sequence")
        ax.bar_label(bars, labels=[f"{a:.1%}" for a in after], fontsize=7)
        alone = report.get("individual")
        if alone:
            values = [alone[name]["robust_accuracy"] for name in stages[1:]]
            ax.bar(positions[1:], values, width * 0.9, fill=False, hatch="//", edgecolor=f"C{m}",
                   label=(label or "model") + ": each attack alone")
    ax.set_xticks(np.arange(len(stages)), ["clean"] + [f"after {s}" for s in stages[1:]])
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.08)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    first = next(iter(models.values()))
    fig.suptitle(title or f"AutoAttack, L-infinity eps {first['eps']:.4g} ({first['images']} images)", fontsize=11)
    return _finish(fig, path)


def plot_templates(templates: ArrayLike, classes: Sequence[str] | None = None, title: str | None = None,
                   path: str | os.PathLike | None = None) -> Figure:
    """The templates of a linear classifier (K, C, H, W), one tile per class:
    single-channel ones on a signed scale (red raises the class score, blue
    lowers it), colour ones each stretched to its own range."""
    templates = np.asarray(templates, dtype=np.float64)
    if templates.ndim != 4 or templates.shape[1] not in (1, 3):
        raise ValueError(f"templates must be shaped (K, C, H, W) with C in (1, 3), got {templates.shape}")
    k = templates.shape[0]
    columns = min(k, 10)
    rows = -(-k // columns)
    fig = new_figure(1.5 * columns + 0.8, 1.7 * rows + 0.6)
    axes = fig.subplots(rows, columns, squeeze=False)
    image = None
    limit = float(np.abs(templates).max()) or 1.0
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.axis("off")
            continue
        t = templates[i]
        if t.shape[0] == 1:
            image = ax.imshow(t[0], cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")
        else:
            lo, hi = t.min(), t.max()
            ax.imshow(((t - lo) / (hi - lo if hi > lo else 1.0)).transpose(1, 2, 0), interpolation="nearest")
        _clean(ax, _class_name(classes, i))
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, fraction=0.02)
    fig.suptitle(title or "templates of a linear classifier (one weight row per class)", fontsize=10)
    return _finish(fig, path)


# ------------------------------------------------------------------ the seeds' experiments


def plot_loss_history(curves: dict[str, ArrayLike], ylabel: str = "loss", title: str | None = None,
                      secondary: dict[str, ArrayLike] | None = None, log: bool = False,
                      path: str | os.PathLike | None = None) -> Figure:
    """Curves of an attack's objective against its steps: {label: values}
    (an attack's ``loss_history``, or the terms of its ``loss_parts``),
    on a log scale with ``log`` (for positive values);
    ``secondary`` curves (a probability, say) go on a second axis on the right."""
    if not curves:
        raise ValueError("no curve to plot")
    fig = new_figure(6.4, 4.0)
    ax = fig.subplots()
    for i, (label, values) in enumerate(curves.items()):
        values = np.asarray(values, dtype=np.float64)
        ax.plot(np.arange(1, len(values) + 1), values, color=f"C{i}", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        right = ax.twinx()
        for j, (label, values) in enumerate(secondary.items()):
            values = np.asarray(values, dtype=np.float64)
            right.plot(np.arange(1, len(values) + 1), values, ":", color=f"C{len(curves) + j}", label=label)
        right.set_ylabel(", ".join(secondary))
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize=7)
    ax.set_title(title or "the attack's objective at each step", fontsize=10)
    return _finish(fig, path)


def plot_perturbation_transfer(model: fastconv.Model, result: dict[str, Any], classes: Sequence[str] | None = None,
                               title: str | None = None, path: str | os.PathLike | None = None) -> Figure:
    """For each row of a :func:`~fastconv.analysis.attacks.generation.perturbation_transfer`
    result, a 2x2 grid: the image and its adversarial version (top), the
    perturbation and the other image with it added (bottom), each titled
    with the model's prediction and confidence."""
    classes = classes if classes is not None else C.meta_classes(model)
    x, n = result["x"], len(result["x"])
    delta = np.asarray(result["perturbation"], dtype=np.float64)
    largest = float(np.abs(delta).max())
    amplify = 0.5 / largest if largest > 0 else 1.0
    shown = {name: _confidences(model, result[name]) for name in ("x", "x_adv", "other", "other_adv")}
    fig = new_figure(3.3 * n + 0.2, 4.0)
    panels = fig.subfigures(1, n, squeeze=False)[0]
    for i, panel in enumerate(panels):
        axes = panel.subplots(2, 2)

        def label(name: str, what: str, i: int = i) -> str:
            predicted, confidence, _ = shown[name]
            return f"{what}\n{_describe(classes, predicted[i], confidence[i])}"

        _show_pixels(axes[0, 0], x[i], label("x", "image"))
        _show_pixels(axes[0, 1], result["x_adv"][i], label("x_adv", "image + perturbation"))
        _show_pixels(axes[1, 0], 0.5 + amplify * delta[i], f"perturbation x{amplify:.3g}")
        _show_pixels(axes[1, 1], result["other_adv"][i],
                     label("other_adv", f"other image + perturbation\n(alone: "
                           f"{_describe(classes, shown['other'][0][i], shown['other'][1][i])})"))
    fig.suptitle(title or "one image's perturbation added to another image", fontsize=10)
    return _finish(fig, path)


def plot_detection_roc(rocs: dict[str, dict[str, Any]], title: str | None = None,
                       path: str | os.PathLike | None = None) -> Figure:
    """ROC curves of a detector of adversarial images, one per attack:
    {label: :func:`~fastconv.analysis.attacks.detect.detection_roc` result}, AUC in the legend."""
    if not rocs:
        raise ValueError("no ROC curve to plot")
    fig = new_figure(5.0, 4.6)
    ax = fig.subplots()
    for i, (label, roc) in enumerate(rocs.items()):
        ax.plot(roc["fpr"], roc["tpr"], color=f"C{i}",
                label=f"{label}: AUC {roc['auc']:.3f} ({roc['adversarial']} adversarial, {roc['natural']} natural)")
        if "detection_rate" in roc:
            ax.plot([roc["false_positive_rate"]], [roc["detection_rate"]], "o", color=f"C{i}", markersize=5)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set_xlabel("false positive rate (natural images flagged)")
    ax.set_ylabel("true positive rate (adversarial images flagged)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or "detecting adversarial images", fontsize=10)
    return _finish(fig, path)


def plot_survival(model: fastconv.Model, images: dict[str, np.ndarray], transformed: dict[str, np.ndarray],
                  rates: dict[str, float], classes: Sequence[str] | None = None, title: str | None = None,
                  path: str | os.PathLike | None = None) -> Figure:
    """Adversarial images under random transformations: one row per kind of
    image ({label: (N, C, H, W)}), the image then the same transformations
    of it ({label: (K, C, H, W)}), each titled with the prediction; the
    row's title gives its survival rate ``rates[label]``."""
    classes = classes if classes is not None else C.meta_classes(model)
    rows = list(images)
    columns = 1 + max(len(transformed[label]) for label in rows)
    fig = new_figure(1.45 * columns + 0.3, 1.9 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, label in enumerate(rows):
        predicted, confidence, _ = _confidences(model, images[label][:1])
        _show_pixels(axes[r, 0], images[label][0],
                     f"{label}\n{rates[label]:.0%} survive\n{_describe(classes, predicted[0], confidence[0])}")
        predicted, confidence, _ = _confidences(model, transformed[label])
        for c in range(1, columns):
            if c - 1 < len(transformed[label]):
                _show_pixels(axes[r, c], transformed[label][c - 1],
                             _describe(classes, predicted[c - 1], confidence[c - 1]))
            else:
                axes[r, c].axis("off")
    fig.suptitle(title or "adversarial images under random transformations", fontsize=10)
    return _finish(fig, path)


def plot_substitute(info: dict[str, Any], transfers: dict[str, dict[str, Any]], baseline: float | None = None,
                    title: str | None = None, path: str | os.PathLike | None = None) -> Figure:
    """A black-box attack through a substitute: the substitute's agreement with
    the victim after each round (left, against the victim queries), and for
    each attack on the substitute ({label: :func:`~fastconv.analysis.transfer`
    result}) how often it fools the substitute and the victim (right), with
    ``baseline`` (how often random noise of the same size fools the victim)
    as a dashed line."""
    fig = new_figure(9.6, 3.9)
    left, right = fig.subplots(1, 2)
    sizes = info["set_sizes"]
    left.plot(sizes, info["agreement"], marker="o")
    left.set_xscale("log", base=2)
    left.set_xlabel("training set of the round (victim queries so far)")
    left.set_ylabel("agreement with the victim's labels")
    left.set_ylim(0, 1.02)
    left.grid(alpha=0.3)
    left.set_title("substitute training (Jacobian augmentation)", fontsize=9)
    labels = list(transfers)
    positions = np.arange(len(labels))
    fooled_source = [t["source"]["success_rate"] for t in transfers.values()]
    rates = [t["transfer_rate"] for t in transfers.values()]
    right.bar(positions - 0.2, fooled_source, 0.4, label="substitute fooled (white box)")
    right.bar(positions + 0.2, rates, 0.4, label="victim fooled too (transfer rate)")
    if baseline is not None:
        right.axhline(baseline, linestyle="--", color="grey", label="victim fooled by random noise of that size")
    right.set_xticks(positions, labels, fontsize=8)
    right.set_ylim(0, 1.02)
    right.set_ylabel("share of the images")
    right.legend(fontsize=7)
    right.grid(alpha=0.3, axis="y")
    right.set_title("adversarial examples of the substitute shown to the victim", fontsize=9)
    fig.suptitle(title or "a black-box attack through a substitute", fontsize=10)
    return _finish(fig, path)
