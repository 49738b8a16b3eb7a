"""One self-contained HTML page about a trained model.

:func:`write_report` (``fastconv report RUN_DIR --out report.html``) runs
the analysis tools on a training run folder and gathers their figures into
a single page, one section per tool: the model summary, the training
curves, predictions, the confusion matrix, filters, activations, top
images, clusters and t-SNE, occlusion, the saliency family, the
attribution sanity checks, class models, inversions, a DeepDream and
adversarial examples with a robustness curve.

The page needs nothing but itself: figures are PNG files embedded as
base64, the style sheet is inline, and there is no script. A section that
raises is shown as a failed section with its error, and the others still
render. ``quick=True`` (:data:`QUICK`) uses fewer images, fewer
optimization steps and a smaller t-SNE sample; any count can be changed
through a :class:`ReportSettings`.

The images come from the run's data set (the one named in the model's
metadata, the test split), normalized as the model was trained; a run
trained with ``--limit`` is shown on the same test images it was evaluated on.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from fastconv.analysis import _common as C
from fastconv.nn import layers as L
from fastconv.nn.losses import softmax
from fastconv.train.rundir import HISTORY_JSON, REPORT, RunDir

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from matplotlib.figure import Figure

    import fastconv
    from fastconv.analysis.optimize.methods import Dream, Inversion, Visualization
    from fastconv.data.datasets import Dataset

__all__ = [
    "ReportSettings", "FULL", "QUICK", "Report", "SectionResult", "SectionSkipped", "SECTIONS", "build_report",
    "write_report",
]


@dataclass(frozen=True)
class ReportSettings:
    """How much each section computes.

    ``images`` test images appear in the per-image sections (occlusion,
    attributions, adversarial examples) and ``activation_images`` in the
    activations; ``top_units`` units of each layer get their ``top_k``
    images out of the first ``search`` test images; ``codes`` images are
    clustered and ``tsne`` of them mapped; ``ig_steps``,
    ``class_model_steps``, ``inversion_steps``, ``dream_*`` and
    ``attack_steps`` are the optimization budgets; ``attack_images`` images
    measure the robustness curve, at the L-infinity sizes ``eps`` (None:
    0 to 0.3 for one-channel images such as MNIST, 0 to 16/255 for colour
    ones). The attribution sanity checks run the ``sanity_methods`` (names
    of :data:`fastconv.analysis.attribution.methods.METHODS`) on
    ``sanity_images`` test images (0: the section has nothing to show).
    """

    images: int = 4
    activation_images: int = 2
    max_maps: int = 64
    top_units: int = 4
    top_k: int = 10
    search: int = 2000
    codes: int = 2000
    clusters: int = 10
    per_cluster: int = 12
    tsne: int = 1000
    ig_steps: int = 50
    class_model_steps: int = 200
    inversion_steps: int = 200
    dream_size: int = 256
    dream_octaves: int = 4
    dream_steps: int = 10
    attack_images: int = 500
    attack_steps: int = 10
    eps: tuple[float, ...] | None = None
    sanity_images: int = 16
    sanity_methods: tuple[str, ...] = ("gradient", "guided-backprop", "gradcam")


FULL = ReportSettings()
QUICK = ReportSettings(
    images=3, activation_images=1, max_maps=32, top_units=2, top_k=8, search=500, codes=500, per_cluster=8,
    tsne=300, ig_steps=16, class_model_steps=60, inversion_steps=40, dream_size=128, dream_octaves=3,
    dream_steps=5, attack_images=100, attack_steps=5, sanity_images=8,
)

GREY_EPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
COLOUR_EPS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)


# -- the run ---------------------------------------------------------------------------------

class Run:
    """A training run folder (a :class:`fastconv.train.RunDir`): its model,
    configuration, history and test images.

    The model, the configuration and the history are read at once, so a
    damaged file stops the report before any section runs. The data set
    (:meth:`RunDir.load_dataset`: ``dataset``, else the one in the model's
    metadata, else the configuration's, with the run's --limit subset of its
    own) and the predictions are loaded on first use, so the sections that do
    not need them still render when the data cannot be found.
    """

    def __init__(self, run_dir: str | os.PathLike, dataset: str | None = None) -> None:
        self.files = RunDir.open(run_dir)
        self.folder = self.files.folder
        self.model = self.files.model
        self.config = self.files.config
        self.history = self.files.history
        self.normalize = C.Normalizer.from_model(self.model)
        self._dataset_option = dataset
        self._dataset: Dataset | None = None
        self._test: tuple[np.ndarray, np.ndarray] | None = None
        self._probabilities: np.ndarray | None = None

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = self.files.load_dataset(self._dataset_option)
        return self._dataset

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        """(raw uint8 images, labels) of the test split the run was evaluated on."""
        if self._test is None:
            raw, labels = self.dataset.x_test, self.dataset.y_test
            if len(raw) == 0:
                raise ValueError(f"the test split of {self.dataset.name} is empty")
            self._test = (raw, np.asarray(labels, dtype=np.int64))
        return self._test

    @property
    def classes(self) -> list[str]:
        classes = C.meta_classes(self.model)
        return classes if classes is not None else list(self.dataset.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one input image."""
        shape = self.model.meta.get("input_shape")
        return tuple(int(v) for v in shape) if shape is not None else tuple(self.dataset.input_shape)

    @property
    def name(self) -> str:
        from fastconv.data.datasets import short_name

        model = self.model.meta.get("model") or self.config.get("model") or self.files.model_path.name
        data = self.model.meta.get("dataset") or self.config.get("dataset") or self._dataset_option
        return f"{model} on {short_name(data)}" if data else model

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the model's outputs on every test image, (N, K)."""
        if self._probabilities is None:
            raw, _ = self.test
            logits = np.concatenate([
                self.model.predict(self.normalize(raw[start:stop]))
                for start, stop in C.batches(len(raw), 256)
            ])
            self._probabilities = softmax(logits.astype(np.float64), axis=1)
        return self._probabilities

    def examples(self, count: int) -> np.ndarray:
        """Indices of ``count`` test images, one per class first (the first image of
        each class, in class order), then the following images."""
        _, labels = self.test
        _, firsts = np.unique(labels, return_index=True)
        rest = np.setdiff1d(np.arange(len(labels)), firsts)
        return np.concatenate([np.sort(firsts), rest])[:count]

    def chosen(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw images, model inputs, labels) of :meth:`examples`."""
        raw, labels = self.test
        index = self.examples(count)
        return raw[index], self.normalize(raw[index]), labels[index]

    def pixels(self, raw: np.ndarray) -> np.ndarray:
        """Raw images as [0, 1] pixels of the model's dtype, as the attacks and optimizers take them."""
        dtype = C.model_dtype(self.model)
        return (raw.astype(np.float64) / self.normalize.scale).astype(dtype)


# -- blocks of a section ---------------------------------------------------------------------

class _Image:
    """A figure as an embedded PNG with a caption."""

    def __init__(self, source: str | os.PathLike | Figure, caption: str | None = None,
                 alt: str | None = None) -> None:
        if isinstance(source, (str, os.PathLike)):
            self.png = Path(source).read_bytes()
        else:
            buffer = io.BytesIO()
            source.savefig(buffer, format="png")
            self.png = buffer.getvalue()
        self.caption = caption
        self.alt = alt or caption or "figure"

    def html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        caption = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(self.alt)}">{caption}</figure>'


class _Text:
    def __init__(self, text: str, kind: str = "p") -> None:
        self.text = text
        self.kind = kind

    def html(self) -> str:
        return f"<{self.kind}>{html.escape(self.text)}</{self.kind}>"


class _Table:
    def __init__(self, header: Sequence[object] | None, rows: Sequence[Sequence[object]],
                 numeric_from: int = 1) -> None:
        self.header = header
        self.rows = rows
        self.numeric_from = numeric_from

    def html(self) -> str:
        def cells(row: Sequence[object], tag: str) -> str:
            return "".join(
                f'<{tag}{" class=num" if i >= self.numeric_from else ""}>{html.escape(str(v))}</{tag}>'
                for i, v in enumerate(row))

        head = f"<thead><tr>{cells(self.header, 'th')}</tr></thead>" if self.header else ""
        body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in self.rows)
        return f"<table>{head}<tbody>{body}</tbody></table>"


# What a section is made of, and what builds a section from (run, settings, scratch folder).
_Block = Union[_Image, _Text, _Table]
_Build = Callable[[Run, ReportSettings, str], list[_Block]]


# -- the sections ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Section:
    """``build(run, settings, scratch)`` returns the section's blocks; ``intro``
    is the sentence that opens it."""

    key: str
    title: str
    intro: str
    build: _Build


SECTIONS: list[Section] = []


def _section(key: str, title: str, intro: str) -> Callable[[_Build], _Build]:
    def register(fn: _Build) -> _Build:
        SECTIONS.append(Section(key, title, intro, fn))
        return fn
    return register


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


@_section("summary", "Model", "The network's layers with the shape of each layer's output and its number of "
                               "parameters, and how the run was set up.")
def _summary(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    config = run.config
    facts = [("run folder", str(run.folder)), ("model", run.model.meta.get("model") or config.get("model") or "")]
    if config:
        facts += [
            ("data set", config.get("dataset", "")),
            ("training", f"{config.get('epochs')} epoch{'' if config.get('epochs') == 1 else 's'}, "
                         f"batch size {config.get('batch_size')}, "
                         f"{config.get('optimizer')} lr {config.get('lr')}, schedule {config.get('schedule')}"
                         + (", augmentation" if config.get("augment") else "")
                         + (f", adversarial {config.get('adversarial')} eps {config.get('adv_eps')}"
                            if config.get("adversarial") else "")),
            ("images used", f"{config['limit']:,} of each split (a fixed random subset)" if config.get("limit")
             else "all"),
        ]
    facts += [("parameters", f"{run.model.num_parameters():,}"),
              ("classes", ", ".join(run.classes))]
    return [_Table(None, facts, numeric_from=2),
            _Text(run.model.summary((1,) + run.input_shape), kind="pre")]


@_section("training", "Training curves", "Loss and accuracy after every epoch of training, on the training "
                                         "images (running mean during the epoch) and on the held-out "
                                         "validation images.")
def _training(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.train.figures import plot_history

    if not run.history:
        raise SectionSkipped(f"{run.files.model_path.name} has no training history ({HISTORY_JSON}): it was not "
                             "trained by 'fastconv train' or 'fastconv demo' (a model saved from Python, or "
                             "imported weights)")
    path = plot_history(run.history, Path(scratch) / "history.png", title=f"Training of {run.name}")
    rows = [(r["epoch"], f"{r['lr']:.3g}" if r.get("lr") is not None else "", _number(r.get("train_loss")),
             _percent(r.get("train_accuracy")), _number(r.get("val_loss")), _percent(r.get("val_accuracy")),
             f"{r['seconds']:.1f}" if r.get("seconds") is not None else "")
            for r in run.history]
    return [_Image(path, alt="loss and accuracy per epoch"),
            _Table(("epoch", "learning rate", "training loss", "training accuracy", "validation loss",
                    "validation accuracy", "seconds"), rows)]


@_section("predictions", "Sample predictions", "Random test images with the class the model predicts, the "
                                               "probability it gives that class, and the true class.")
def _predictions(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.train.figures import plot_predictions

    raw, labels = run.test
    probabilities = run.probabilities
    path = plot_predictions(raw, labels, probabilities, run.classes, Path(scratch) / "predicted.png",
                            title=f"{run.name}, test images")
    right = probabilities.argmax(axis=1) == labels
    confidence = probabilities.max(axis=1)
    text = (f"Accuracy on all {len(labels):,} test images: {right.mean():.2%}. Mean probability of the predicted "
            f"class: {confidence[right].mean():.1%} when the prediction is right")
    text += f", {confidence[~right].mean():.1%} when it is wrong." if not right.all() else "."
    return [_Image(path, alt="predictions on random test images"), _Text(text)]


@_section("confusion", "Confusion matrix", "How often the test images of each true class (rows) are given "
                                           "each predicted class (columns).")
def _confusion(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.train import confusion_matrix
    from fastconv.train.figures import plot_confusion

    _, labels = run.test
    classes = run.classes
    matrix = confusion_matrix(labels, run.probabilities.argmax(axis=1), len(classes))
    path = plot_confusion(matrix, classes, Path(scratch) / "confusion.png", title=f"Confusion matrix of {run.name}")
    errors = matrix.copy()
    np.fill_diagonal(errors, 0)
    worst = [(i, j) for i, j in zip(*np.unravel_index(np.argsort(errors, axis=None)[::-1], errors.shape))
             if errors[i, j] > 0][:5]
    blocks: list[_Block] = [_Image(path, alt="confusion matrix")]
    if worst:
        blocks.append(_Text("Most frequent mistakes: " + ", ".join(
            f"{classes[i]} taken for {classes[j]} ({errors[i, j]})" for i, j in worst) + "."))
    return blocks


@_section("filters", "First-layer filters", "The weights of the first convolution, one tile per filter: "
                                            "the patterns its units look for in the image.")
def _filters(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.analysis.visualize.figures import plot_filters

    return [_Image(plot_filters(run.model), alt="first-layer filters")]


def _tile_columns(count: int, fewest: int = 8, most: int = 12) -> int:
    """Columns for ``count`` tiles that leave the fewest empty slots in the last row."""
    return min(range(fewest, most + 1), key=lambda c: ((-count) % c, -c))


def _plot_vectors(stages: Sequence[tuple[str, np.ndarray, bool]], classes: Sequence[str] | None) -> Figure:
    """Bar charts of the values of fully connected layers for one image, one row
    per layer output; the class scores get the class names."""
    from fastconv.analysis.visualize.figures import _class_name, new_figure

    fig = new_figure(11.0, 2.2 * len(stages) + 0.5)
    axes = np.atleast_1d(fig.subplots(len(stages), 1))
    for ax, (name, values, is_scores) in zip(axes, stages):
        units = np.arange(len(values))
        colours = np.where(values >= 0, "#1f6feb", "#cf222e")
        if len(values) <= 64:
            ax.bar(units, values, width=0.8, color=colours)
        else:
            # One line per unit in a single collection: thousands of bar patches draw slowly.
            ax.vlines(units, 0, values, colors=colours, linewidth=max(0.5, 600 / len(values)))
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlim(-0.6, len(values) - 0.4)
        if is_scores:
            best = int(np.argmax(values))
            ax.set_xticks(units, [_class_name(classes, k) for k in units], fontsize=8)
            ax.set_title(f"{name}: the {len(values)} class scores (highest: {_class_name(classes, best)})", fontsize=9)
        else:
            ax.set_xlabel("unit", fontsize=8)
            ax.set_title(f"{name}: {len(values)} values, {int(np.count_nonzero(values > 0))} positive", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("fully connected layers (blue: positive, red: negative)", fontsize=10)
    return fig


@_section("activations", "Activations of every layer", "What each layer computes for a few test images: "
                                                       "every feature map, before and after its ReLU, then the "
                                                       "values of the fully connected layers.")
def _activations(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.analysis.visualize.feature_maps import activations
    from fastconv.analysis.visualize.figures import plot_activations

    raw, x, labels = run.chosen(settings.activation_images)
    logits = C.layer_names(run.model)[-1]
    blocks: list[_Block] = []
    for i in range(len(x)):
        blocks.append(_Text(f"Test image {i + 1}: a {run.classes[labels[i]]}", kind="h3"))
        # Each layer once: a ReLU is drawn beside the layer feeding it; Flatten
        # and Dropout only reshape or pass their input at test time.
        shown, vectors = set(), []
        for name, layer in run.model.named_layers():
            if name in shown or isinstance(layer, (L.Flatten, L.Dropout)):
                continue
            acts = activations(run.model, x[i], name)
            shown.update({acts.layer, acts.after_layer} - {None})
            if acts.before.ndim == 1:
                vectors.append((acts.layer, acts.before, acts.layer == logits))
                if acts.after is not None:
                    vectors.append((acts.after_layer, acts.after, acts.after_layer == logits))
                continue
            maps = min(settings.max_maps, len(acts.before))
            figure = plot_activations(acts, raw[i], classes=run.classes, max_maps=maps,
                                      columns=_tile_columns(maps + 1))
            blocks.append(_Image(figure, alt=f"feature maps of {acts.layer}"))
        if vectors:
            blocks.append(_Image(_plot_vectors(vectors, run.classes), alt="values of the fully connected layers"))
    return blocks


def _unit_layers(model: fastconv.Model) -> list[str]:
    """The convolutions and the hidden fully connected layers (not the class scores)."""
    pairs = model.named_layers()
    linear = [name for name, layer in pairs if isinstance(layer, L.Linear)]
    return [name for name, layer in pairs
            if isinstance(layer, L.Conv2d) or (isinstance(layer, L.Linear) and name != linear[-1])]


def _busiest_units(model: fastconv.Model, x: np.ndarray, layer: str, count: int) -> list[int]:
    """``count`` units of ``layer`` taken evenly from the more active half of its
    units (ranked by their largest value, averaged over x), the most active
    first: a unit that never fires has no top images worth showing."""
    with C.evaluating(model):
        out = model.forward(x, until=layer).astype(np.float64)
    strength = out.reshape(out.shape[0], out.shape[1], -1).max(axis=2).mean(axis=0)
    order = np.argsort(-strength, kind="stable")
    picks = np.unique(np.linspace(0, len(order) // 2, min(count, len(order))).round().astype(int))
    return [int(order[p]) for p in picks]


@_section("top-images", "Top activating images", "For a few units of each layer, the test images that "
                                                 "excite the unit most, with the part of the image the unit sees.")
def _top_images(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.analysis.visualize.figures import plot_top_images
    from fastconv.analysis.visualize.units import top_images

    raw, labels = run.test
    sample = run.normalize(raw[:min(len(raw), 256)])
    blocks: list[_Block] = []
    for layer in _unit_layers(run.model):
        for unit in _busiest_units(run.model, sample, layer, settings.top_units):
            top = top_images(run.model, raw, layer, unit, k=settings.top_k, transform=run.normalize,
                             limit=settings.search)
            blocks.append(_Image(plot_top_images(top, raw, labels=labels, classes=run.classes),
                                 alt=f"top images of unit {unit} of {layer}"))
    return blocks


@_section("clusters", "Clusters and the t-SNE map", "The codes the classifier reads (the input of the last "
                                                    "layer) for many test images, grouped by k-means and laid out "
                                                    "in two dimensions by t-SNE.")
def _clusters(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.analysis.visualize.embedding import (
        cluster,
        default_code_layer,
        embed,
        layer_features,
        snap_to_grid,
    )
    from fastconv.analysis.visualize.figures import plot_clusters, plot_embedding, plot_embedding_grid

    raw, labels = run.test
    layer = default_code_layer(run.model)
    codes = layer_features(run.model, raw, layer, transform=run.normalize, limit=settings.codes)
    groups = cluster(codes, n_clusters=min(settings.clusters, len(codes)))
    blocks: list[_Block] = [_Image(plot_clusters(groups, raw, per_cluster=settings.per_cluster, labels=labels,
                                                 classes=run.classes),
                                   caption=f"k-means of the {layer} codes of {len(codes):,} test images, "
                                           "with the images nearest each centre and their labels")]
    count = min(settings.tsne, len(codes))
    points = embed(codes[:count], method="tsne")
    blocks.append(_Image(plot_embedding(points, labels[:count], classes=run.classes,
                                        title=f"t-SNE of {layer} codes ({count} test images)"),
                         alt="t-SNE map coloured by class"))
    side = max(2, int(np.sqrt(count * 0.8)))
    blocks.append(_Image(plot_embedding_grid(snap_to_grid(points, side, side), raw,
                                             title=f"the same map with each image at its place ({side}x{side} grid)"),
                         alt="t-SNE map of thumbnails"))
    return blocks


@_section("occlusion", "Occlusion maps", "How the probability of the true class changes as a patch of the "
                                         "average colour hides each part of the image, and which class wins then.")
def _occlusion(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.analysis.attribution.occlusion import occlusion_maps
    from fastconv.analysis.visualize.figures import plot_occlusion

    raw, x, labels = run.chosen(settings.images)
    side = min(x.shape[2:])
    stride = 2 if side >= 16 else 1
    patch = max(2, round(3 * side / 8))
    patch += (side - patch) % stride  # so that the patches reach the last row and column
    # Zero input is the data set's mean colour: the patch removes information without adding an edge of its own.
    maps = occlusion_maps(run.model, x, labels.tolist(), patch=patch, stride=stride, fill=0.0)
    return [_Image(plot_occlusion(maps, raw, classes=run.classes), alt="occlusion maps")]


@_section("attribution", "Saliency, deconvnet, guided backprop, Grad-CAM and Integrated Gradients",
          "Five ways of asking which pixels the true class's score depends on, side by side for the same images.")
def _attribution(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.analysis.attribution import methods as A
    from fastconv.analysis.visualize.figures import plot_attributions

    raw, x, labels = run.chosen(settings.images)
    targets = labels.tolist()
    layer = A.default_gradcam_layer(run.model)
    results = {
        "saliency": A.Saliency(run.model).attribute(x, targets),
        "deconvnet": A.Deconvnet(run.model).attribute(x, targets),
        "guided backprop": A.GuidedBackprop(run.model).attribute(x, targets),
        f"Grad-CAM ({layer})": A.GradCAM(run.model, layer).attribute(x, targets),
        "integrated gradients": A.IntegratedGradients(run.model).attribute(x, targets, steps=settings.ig_steps),
    }
    figure = plot_attributions(raw, results, targets=targets, classes=run.classes, signed={"integrated gradients"})
    return [_Image(figure, alt="attribution maps"),
            _Text("Integrated gradients keep their sign (red raises the score, blue lowers it); the others show "
                  f"magnitudes. Integrated gradients use {settings.ig_steps} steps from a zero (mean-colour) "
                  "baseline.")]


@_section("sanity", "Attribution sanity checks",
          "Whether the attribution maps depend on what the network learned, and whether they rank the pixels "
          "the class's probability depends on first.")
def _sanity(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.analysis.attribution.figures import plot_sanity
    from fastconv.analysis.attribution.sanity import named_method, sanity_checks

    if settings.sanity_images == 0:
        raise SectionSkipped("the settings ask for 0 images (sanity_images)")
    _, x, labels = run.chosen(settings.sanity_images)
    methods = {name: named_method(name) for name in settings.sanity_methods}
    results = sanity_checks(run.model, x, labels.tolist(), methods)
    layers = next(iter(results.checks.values())).layers
    rows = [(name, _number(top, 3), _number(every, 3), _number(deletion, 3), _number(insertion, 3))
            for name, top, every, deletion, insertion in results.rows()]
    return [
        _Image(plot_sanity(results.checks, results.deletion, results.insertion),
               alt="rank correlation as layers are randomized; deletion and insertion AUC per method"),
        _Table(("method", "rank correlation, top layer random", "all layers random", "deletion AUC",
                "insertion AUC"), rows),
        _Text(f"On {len(x)} test images, for their true class. Left and first columns: the {len(layers)} layers "
              f"with parameters ({layers[0]} first) are re-initialized one after the other, and each method's "
              "map (sum of absolute values over channels) is compared with the trained model's by Spearman "
              "rank correlation, averaged over the images (Adebayo et al. 2018): a map that explains the "
              "model falls towards 0, one that keeps its correlation shows the image more than the model. "
              "Right and last columns: the pixels are set to the mean colour (deletion) or put back into a "
              "blurred copy (insertion) in the order of the map, and the area under the class's probability "
              "is measured (Petsiuk et al. 2018): lower is better for deletion, higher for insertion; the "
              "random row is a map of noise, the mark to beat."),
    ]


def _class_models(model: fastconv.Model, count: int, settings: ReportSettings,
                  size: tuple[int, int] | None = None) -> Visualization:
    from fastconv.analysis.optimize.methods import class_model

    return class_model(model, list(range(count)), size=size, steps=settings.class_model_steps, blur_every=4,
                       progress=False)


@_section("class-models", "Class model visualizations", "For each class, the image that the network scores "
                                                        "highest for it, grown by gradient ascent from a blank image.")
def _class_models_section(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.analysis.optimize.figures import plot_class_models

    _, height, width = run.input_shape
    result = _class_models(run.model, len(run.classes), settings, size=(height, width))
    return [_Image(plot_class_models(result, classes=run.classes), alt="class model visualizations"),
            _Text(f"{settings.class_model_steps} steps with L2 decay and a blur every 4 steps (Simonyan et al., "
                  "Yosinski et al.).")]


def _inversions(model: fastconv.Model, image: np.ndarray, settings: ReportSettings) -> list[Inversion]:
    from fastconv.analysis.optimize.methods import invert_layers

    return invert_layers(model, image, steps=settings.inversion_steps, progress=False)


@_section("inversions", "Inversions per layer", "A test image rebuilt from nothing but its code at each layer: "
                                                "what each layer keeps of the image and what it throws away.")
def _inversions_section(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.analysis.optimize.figures import plot_inversions

    raw, _, _ = run.chosen(1)
    results = _inversions(run.model, raw[0].astype(np.float64) / run.normalize.scale, settings)
    # At most six layers a row, beside the original, so that a deep network's rows stay legible.
    rows = [[results[k] for k in part] for part in np.array_split(np.arange(len(results)), -(-len(results) // 6))]
    blocks: list[_Block] = [_Image(plot_inversions(row), alt="inversions per layer") for row in rows]
    blocks.append(_Text(f"{settings.inversion_steps} evaluations of L-BFGS per layer, with total-variation and "
                        "alpha-norm priors (Mahendran and Vedaldi)."))
    return blocks


def _dream(model: fastconv.Model, settings: ReportSettings) -> Dream:
    from fastconv.analysis.optimize.methods import deep_dream, load_image
    from fastconv.analysis.optimize.style import default_content_layer

    image = load_image("grace_hopper", channels=C.input_channels(model) or 3, size=settings.dream_size)
    return deep_dream(model, image, default_content_layer(model), steps=settings.dream_steps,
                      octaves=settings.dream_octaves, progress=False)


@_section("dream", "DeepDream", "A photograph changed to amplify whatever a middle layer of the network "
                                "already sees in it.")
def _dream_section(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.analysis.optimize.figures import plot_dream

    return [_Image(plot_dream([_dream(run.model, settings)]), alt="DeepDream"),
            _Text(f"{settings.dream_octaves} octaves of {settings.dream_steps} steps on the sample photograph "
                  "of Grace Hopper that ships with matplotlib.")]


def _eps_list(run: Run, settings: ReportSettings) -> list[float]:
    if settings.eps is not None:
        return list(settings.eps)
    return list(GREY_EPS if run.input_shape[0] == 1 else COLOUR_EPS)


def _eps_labels(eps_list: Sequence[float]) -> dict[float, str]:
    """How the sizes read best: k/255 (grey levels) when they all are whole
    levels, as small colour perturbations are usually quoted; decimals otherwise."""
    levels = [e * 255 for e in eps_list]
    if all(abs(v - round(v)) < 1e-6 for v in levels) and max(levels) <= 32:
        return {e: f"{round(v)}/255" if v else "0" for e, v in zip(eps_list, levels)}
    return {e: f"{e:.3g}" for e in eps_list}


def _adversarial_examples(model: fastconv.Model, x: np.ndarray, y: np.ndarray, eps: float,
                          settings: ReportSettings) -> np.ndarray:
    from fastconv.analysis.attacks.methods import PGD

    return PGD(model, eps=eps, steps=settings.attack_steps)(x, y)


def _robustness(model: fastconv.Model, x: np.ndarray, y: np.ndarray, eps_list: Sequence[float],
                settings: ReportSettings) -> dict[str, Any]:
    from fastconv.analysis.attacks.robustness import robustness_curve

    return robustness_curve(model, x, y, ["fgsm", "pgd"], eps_list,
                            attack_options={"pgd": {"steps": settings.attack_steps}})


@_section("adversarial", "Adversarial examples and robustness", "Test images changed by a small, deliberately "
                                                                "chosen perturbation until the model gets them "
                                                                "wrong, and the accuracy as the perturbation grows.")
def _adversarial(run: Run, settings: ReportSettings, scratch: str) -> list[_Block]:
    from fastconv.analysis.attacks.figures import plot_adversarial, plot_robustness

    all_raw, all_labels = run.test
    count = min(settings.attack_images, len(all_raw))
    curves = _robustness(run.model, run.pixels(all_raw[:count]), all_labels[:count], _eps_list(run, settings),
                         settings)
    pgd = curves["curves"]["pgd"]
    label = _eps_labels(pgd["eps"])
    broken = [e for e, a in zip(pgd["eps"], pgd["accuracy"]) if e > 0 and a <= 0.1]
    eps = broken[0] if broken else pgd["eps"][-1]
    why = ("the smallest size at which PGD leaves at most 10% of the images right" if broken
           else "the largest size measured; PGD never brought the accuracy down to 10%")
    raw, _, labels = run.chosen(settings.images)
    x = run.pixels(raw)
    x_adv = _adversarial_examples(run.model, x, labels, eps, settings)
    rows = [(label[e],) + tuple(_percent(c["accuracy"][k]) for c in curves["curves"].values())
            for k, e in enumerate(pgd["eps"])]
    return [
        _Image(plot_adversarial(run.model, x, x_adv, labels, classes=run.classes,
                                title=f"PGD, {settings.attack_steps} steps, L-infinity eps {label[eps]}: "
                                      "original + perturbation = adversarial example"),
               alt="adversarial examples"),
        _Image(plot_robustness(curves, title=f"Accuracy under attack ({count} test images)"),
               alt="robustness curve"),
        _Table(("L-infinity eps (pixels in [0, 1])",)
               + tuple(f"accuracy under {name.upper()}" for name in curves["curves"]), rows),
        _Text(f"FGSM takes one step; PGD takes {settings.attack_steps} from a random start in the eps-ball. "
              f"The examples above use eps {label[eps]}, {why}."),
    ]


# -- running the sections and writing the page -----------------------------------------------------

class SectionSkipped(Exception):
    """Raised by a section that has nothing to show for this run (say, training
    curves of a model without a history); the page prints the reason as a note."""


@dataclass
class SectionResult:
    """What one section produced: its blocks, or the error and traceback it
    raised, or the reason it had nothing to show (``skipped``)."""

    section: Section
    blocks: list[_Block] = field(default_factory=list)
    error: str | None = None
    trace: str | None = None
    skipped: str | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass
class Report:
    """The page (``html``), each section's result, and where it was written (``path``)."""

    html: str
    results: list[SectionResult]
    seconds: float
    path: Path | None = None

    @property
    def failures(self) -> list[SectionResult]:
        return [r for r in self.results if r.failed]

    @property
    def skipped(self) -> list[SectionResult]:
        return [r for r in self.results if r.skipped is not None]


def _chosen_sections(sections: Collection[str] | None) -> list[Section]:
    if sections is None:
        return list(SECTIONS)
    keys = [s.key for s in SECTIONS]
    unknown = [k for k in sections if k not in keys]
    if unknown:
        raise ValueError(f"unknown report section(s) {unknown}; the sections are {keys}")
    return [s for s in SECTIONS if s.key in sections]


def build_report(run_dir: str | os.PathLike, quick: bool = False, settings: ReportSettings | None = None,
                 sections: Collection[str] | None = None, dataset: str | None = None,
                 progress: bool | None = None) -> Report:
    """Run every section on the run in ``run_dir`` and return the :class:`Report`.

    ``quick`` picks :data:`QUICK` rather than :data:`FULL`; ``settings`` (a
    :class:`ReportSettings`) overrides both. ``sections`` (a list of keys of
    :data:`SECTIONS`) keeps only those. ``dataset`` names the data set when
    the model's metadata does not. ``progress``: a bar across the sections
    on a terminal (None), always (True) or never (False).
    """
    from tqdm.auto import tqdm

    chosen = _chosen_sections(sections)
    if settings is None:
        settings = QUICK if quick else FULL
    if not isinstance(settings, ReportSettings):
        raise TypeError(f"settings must be a ReportSettings, got {type(settings).__name__}")
    started = time.perf_counter()
    run = Run(run_dir, dataset=dataset)
    results: list[SectionResult] = []
    with tempfile.TemporaryDirectory(prefix="fastconv-report-") as scratch, \
            tqdm(chosen, desc="report", unit="section", leave=False, dynamic_ncols=True,
                 disable=None if progress is None else not progress) as bar:
        for section in bar:
            bar.set_postfix_str(section.title[:40], refresh=True)
            result = SectionResult(section)
            begun = time.perf_counter()
            try:
                result.blocks = section.build(run, settings, scratch)
            except SectionSkipped as reason:
                result.skipped = str(reason)
            except Exception as error:  # noqa: BLE001 -- a failed section is reported on the page
                result.error = f"{type(error).__name__}: {error}"
                result.trace = traceback.format_exc()
            result.seconds = time.perf_counter() - begun
            results.append(result)
    seconds = time.perf_counter() - started
    page = _page(run, settings, results, seconds)
    return Report(html=page, results=results, seconds=seconds)


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike, quick: bool = False,
                 settings: ReportSettings | None = None, sections: Collection[str] | None = None,
                 dataset: str | None = None, progress: bool | None = None) -> Report:
    """:func:`build_report` and write the page to ``out`` (atomically); returns the :class:`Report`."""
    from fastconv._files import atomic_write, check_replaceable, make_parent

    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the path of the HTML file to write, e.g. {out / REPORT}")
    # Before the minutes of work, not after: a path that cannot be written is refused now.
    make_parent(check_replaceable(out, (".html", ".htm")))
    report = build_report(run_dir, quick=quick, settings=settings, sections=sections, dataset=dataset,
                          progress=progress)
    atomic_write(out, lambda f: f.write(report.html.encode("utf-8")))
    report.path = out
    return report


STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2328; background: #f6f8fa; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 0 0 6px; padding-top: 8px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
.meta { color: #59636e; margin: 0 0 16px; }
nav ol { columns: 2; margin: 8px 0 24px; padding-left: 22px; }
nav a { color: #0969da; text-decoration: none; }
nav a:hover { text-decoration: underline; }
nav .failed-mark { color: #cf222e; font-weight: 600; }
section { border-top: 1px solid #d1d9e0; padding: 18px 0 8px; }
p.intro { font-size: 16px; color: #1f2328; margin: 0 0 12px; }
figure { margin: 12px 0 18px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { text-align: center; color: #59636e; font-size: 13px; margin-top: 4px; }
pre { background: #f6f8fa; border: 1px solid #d1d9e0; border-radius: 6px; padding: 10px 12px;
      font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; overflow-x: auto; }
table { border-collapse: collapse; margin: 10px 0 14px; font-size: 14px; }
th, td { border: 1px solid #d1d9e0; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.timing { color: #8c959f; font-size: 12px; text-align: right; margin: 0; }
section.failed { border-left: 4px solid #cf222e; background: #ffebe9; padding-left: 14px; padding-right: 14px; }
.error { color: #82071e; font-weight: 600; }
.skipped { color: #57606a; font-style: italic; }
details summary { cursor: pointer; color: #59636e; }
"""


def _anchor(section: Section) -> str:
    return f"section-{section.key}"


def _section_html(number: int, result: SectionResult) -> str:
    section = result.section
    parts = [f'<section id="{_anchor(section)}"{" class=failed" if result.failed else ""}>',
             f"<h2>{number}. {html.escape(section.title)}</h2>",
             f'<p class="intro">{html.escape(section.intro)}</p>']
    if result.failed:
        assert result.error is not None and result.trace is not None  # build_report sets both for a failed section
        parts += [f'<p class="error">This section failed: {html.escape(result.error)}</p>',
                  f"<details><summary>traceback</summary><pre>{html.escape(result.trace)}</pre></details>"]
    elif result.skipped is not None:
        parts.append(f'<p class="skipped">Nothing to show: {html.escape(result.skipped)}.</p>')
    else:
        parts += [block.html() for block in result.blocks]
    parts.append(f'<p class="timing">{result.seconds:.1f} s</p></section>')
    return "\n".join(parts)


def _page(run: Run, settings: ReportSettings, results: Sequence[SectionResult], seconds: float) -> str:
    failed = sum(r.failed for r in results)
    mode = "quick" if settings == QUICK else "full" if settings == FULL else "custom"
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    toc = "".join(
        f'<li><a href="#{_anchor(r.section)}">{html.escape(r.section.title)}</a>'
        f'{" <span class=failed-mark>(failed)</span>" if r.failed else ""}'
        f'{" (nothing to show)" if r.skipped is not None else ""}</li>' for r in results)
    skipped = sum(r.skipped is not None for r in results)
    status = f"{len(results)} sections" + (f", {failed} failed" if failed else "") + (
        f", {skipped} with nothing to show" if skipped else "")
    body = "\n".join(_section_html(k, r) for k, r in enumerate(results, start=1))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(run.name)}: fastconv report</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<h1>{html.escape(run.name)}</h1>
<p class="meta">A look inside the network in {html.escape(str(run.files.model_path))}: {status}, {mode} settings,
made by fastconv in {seconds:.0f} s on {stamp}.</p>
<nav><ol>{toc}</ol></nav>
{body}
</main>
</body>
</html>
"""
