"""How good an attribution map is: deletion and insertion curves (Petsiuk et
al. 2018) and the cascading model-parameter randomization test (Adebayo et
al. 2018).

* Deletion: the pixels are removed (set to a baseline) in the order of the
  map, most important first, and the target class's probability is recorded
  after each step; a faithful map makes it fall fast, so a small area under
  the curve (AUC) is good. Insertion starts from a blurred copy and puts the
  pixels back in the same order; a large AUC is good.
* Cascading randomization: the parameterized layers are re-initialized one
  after the other, from the output towards the input, and after each step
  the maps are recomputed on the same images; a method whose maps explain
  the model should change as its weights are destroyed, so the Spearman
  rank correlation with the trained model's maps should fall.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, stats

from fastconv import _checks
from fastconv.analysis import _common as C
from fastconv.nn import layers as L
from fastconv.nn.losses import softmax

if TYPE_CHECKING:
    from collections.abc import Callable

    import fastconv
    from fastconv.analysis.attribution.methods import AttributionMethod

REDUCTIONS = ("sum", "abs")


def pixel_map(attributions: np.ndarray, reduce: str = "sum") -> np.ndarray:
    """Collapse (N, C, H, W) attributions to one value per pixel, (N, H, W):
    the signed sum over channels (``'sum'``) or the sum of absolute values (``'abs'``)."""
    if attributions.ndim != 4:
        raise ValueError(f"attributions must be shaped (N, C, H, W), got {attributions.shape}")
    if reduce == "sum":
        return attributions.sum(axis=1)
    if reduce == "abs":
        return np.abs(attributions).sum(axis=1)
    raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")


@dataclass
class PerturbationCurve:
    """A deletion or insertion curve: ``fractions`` (steps + 1,) of the pixels
    changed, ``scores`` (N, steps + 1) the target's probability after each
    step, and ``auc`` (N,) the trapezoid area under each curve."""

    mode: str
    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray


def perturbation_curve(model: fastconv.Model, x: np.ndarray, target: C.Target, attributions: np.ndarray,
                       mode: str = "deletion", steps: int = 32, baseline: np.ndarray | None = None,
                       blur_sigma: float = 5.0, reduce: str = "sum", batch_size: int = 256) -> PerturbationCurve:
    """The deletion or insertion curve of ``attributions`` (shaped like x, or (N, H, W)) for ``target``.

    ``baseline`` is what a deleted pixel becomes, or the image insertion
    starts from: by default zeros for deletion (the mean pixel of a model
    trained on normalized images) and a Gaussian blur of x with standard
    deviation ``blur_sigma`` pixels for insertion.
    """
    C.check_images(model, x)
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    steps = _checks.positive_int(steps, "steps")
    n, channels, h, w = x.shape
    ranking = attributions if attributions.ndim == 3 else pixel_map(attributions, reduce)
    if ranking.shape != (n, h, w):
        raise ValueError(f"attributions of shape {attributions.shape} do not fit images of shape {x.shape}")
    if baseline is None:
        baseline = (np.zeros_like(x) if mode == "deletion"
                    else ndimage.gaussian_filter(x, sigma=(0, 0, blur_sigma, blur_sigma), mode="nearest"))
    baseline = np.broadcast_to(np.asarray(baseline, x.dtype), x.shape)
    targets = C.target_list(target, n, "a perturbation curve")
    order = np.argsort(-ranking.reshape(n, -1), axis=1, kind="stable")
    counts = np.round(np.linspace(0, h * w, steps + 1)).astype(int)
    start, end = (x, baseline) if mode == "deletion" else (baseline, x)
    # rank[i, p]: the position of pixel p in example i's order.
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(h * w)[None].repeat(n, axis=0), axis=1)
    images = np.empty((steps + 1,) + x.shape, x.dtype)
    for k, count in enumerate(counts):
        changed = (rank < count).reshape(n, 1, h, w)
        images[k] = np.where(changed, end, start)
    probs = softmax(model.predict(images.reshape((-1,) + x.shape[1:]), batch_size=batch_size).astype(np.float64))
    probs = probs.reshape(steps + 1, n, -1)
    scores = np.stack([probs[:, i, int(t)] for i, t in enumerate(targets)])
    fractions = counts / (h * w)
    auc = ((scores[:, 1:] + scores[:, :-1]) / 2 * np.diff(fractions)).sum(axis=1)
    return PerturbationCurve(mode, fractions, scores, auc)


def _randomize(layer: L.Layer, rng: np.random.Generator) -> None:
    """Re-initialize a layer's parameters: a convolution or linear layer as
    when it is built, any other (batch norm) with Gaussian values of the
    trained values' mean and standard deviation."""
    if isinstance(layer, (L.Conv2d, L.Linear)):
        fresh = type(layer)(**layer.config(), seed=rng)
        for key, value in fresh.params.items():
            layer.params[key][...] = value
        return
    for value in layer.params.values():
        value[...] = rng.normal(float(value.mean()), float(value.std()), value.shape)


def randomization_order(model: fastconv.Model) -> list[str]:
    """The layers with parameters, from the output towards the input."""
    return [name for name, layer in reversed(model.named_layers()) if layer.params]


@dataclass
class SanityCheck:
    """The cascading randomization test of one method: ``layers`` in the
    order they were randomized (each step keeps the ones before it random),
    ``correlations`` (len(layers), N) the Spearman rank correlation of each
    example's map with the trained model's, and ``maps`` (len(layers) + 1, N,
    H, W) the maps compared, the trained model's first."""

    layers: list[str]
    correlations: np.ndarray
    maps: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        return self.correlations.mean(axis=1)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each pair of rows of a and b (N, ...); 0 for a constant row."""
    out = np.empty(a.shape[0])
    for i in range(a.shape[0]):
        u, v = a[i].ravel(), b[i].ravel()
        out[i] = 0.0 if np.ptp(u) == 0 or np.ptp(v) == 0 else stats.spearmanr(u, v).statistic
    return out


def cascading_randomization(model: fastconv.Model, method: Callable[[fastconv.Model], AttributionMethod],
                            x: np.ndarray, target: C.Target, reduce: str = "abs",
                            seed: np.random.Generator | int | None = 0,
                            layers: list[str] | None = None) -> SanityCheck:
    """Adebayo et al.'s cascading model-parameter randomization for one method.

    ``method(model)`` builds the attribution method on a model (say
    ``Saliency`` or ``lambda m: GradCAM(m, "relu3")``); it is built on a copy
    whose layers are randomized cumulatively in the order of ``layers``
    (default :func:`randomization_order`, top layer first). ``target`` is
    fixed (the classes of the trained model, say), so the maps answer the
    same question at every step. The model itself is not changed.
    """
    C.check_images(model, x)
    order = randomization_order(model) if layers is None else list(layers)
    for name in order:
        if not C.check_layer(model, name).params:
            raise ValueError(f"layer {name!r} has no parameters to randomize")
    rng = np.random.default_rng(seed)
    copy = model.astype(C.model_dtype(model)).eval()
    maps = [pixel_map(method(copy).attribute(x, target), reduce)]
    for name in order:
        _randomize(copy.layer(name), rng)
        maps.append(pixel_map(method(copy).attribute(x, target), reduce))
    stacked = np.stack(maps)
    correlations = np.stack([spearman(stacked[0], m) for m in stacked[1:]])
    return SanityCheck(order, correlations, stacked)
