"""Both quality measures of :mod:`~fastconv.analysis.attribution.metrics` for
several attribution methods on the same images, beside a random map: what
``fastconv viz sanity`` prints and the report's "Attribution sanity checks"
section shows.

Each method is given as a factory, ``method(model)`` returning an object
with the ``attribute`` verb, because the cascading randomization builds it
again on each randomized copy of the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fastconv.analysis import _common as C
from fastconv.analysis.attribution import metrics

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import fastconv
    from fastconv.analysis.attribution.methods import AttributionMethod

    MethodFactory = Callable[[fastconv.Model], AttributionMethod]

RANDOM = "random"


@dataclass
class SanityResults:
    """``checks``: the :class:`~fastconv.analysis.attribution.metrics.SanityCheck`
    of each method; ``deletion`` and ``insertion``: the mean AUC over the
    images of each method and of a random map (key :data:`RANDOM`, last)."""

    checks: dict[str, metrics.SanityCheck] = field(default_factory=dict)
    deletion: dict[str, float] = field(default_factory=dict)
    insertion: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, float | None, float | None, float, float]]:
        """(method, mean rank correlation with the top layer random, with every layer
        random, deletion AUC, insertion AUC) per method, the random map last (no correlations)."""
        out: list[tuple[str, float | None, float | None, float, float]] = []
        for name in self.deletion:
            check = self.checks.get(name)
            top, every = (None, None) if check is None else (float(check.mean[0]), float(check.mean[-1]))
            out.append((name, top, every, self.deletion[name], self.insertion[name]))
        return out


def random_map(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The baseline map: Gaussian noise shaped like x, so its pixel order is random."""
    return np.random.default_rng(seed).normal(size=x.shape).astype(x.dtype)


def sanity_checks(model: fastconv.Model, x: np.ndarray, target: C.Target, methods: Mapping[str, MethodFactory],
                  seed: int = 0, steps: int = 32) -> SanityResults:
    """Cascading randomization and deletion/insertion AUCs of each of ``methods``
    (name -> factory) on the images x (normalized model inputs) for ``target``,
    and the AUCs of :func:`random_map`.

    The rank correlations compare the sum of |attribution| over channels
    (:func:`metrics.cascading_randomization`'s default); the deletion and
    insertion orders use the signed sum, :func:`metrics.perturbation_curve`'s
    default, so a pixel that lowers the score comes last. ``seed`` seeds the
    re-initialized layers and the random map; ``steps`` is the number of
    steps of each deletion and insertion curve. The model is not changed.
    """
    C.check_images(model, x)
    if not methods:
        raise ValueError("methods is empty: give at least one attribution method")
    if RANDOM in methods:
        raise ValueError(f"{RANDOM!r} is the name of the random-map baseline, not a method name")
    results = SanityResults()
    for name, factory in methods.items():
        maps = factory(model).attribute(x, target)
        results.checks[name] = metrics.cascading_randomization(model, factory, x, target, seed=seed)
        _areas(results, name, model, x, target, maps, steps)
    _areas(results, RANDOM, model, x, target, random_map(x, seed), steps)
    return results


def _areas(results: SanityResults, name: str, model: fastconv.Model, x: np.ndarray, target: C.Target,
           maps: np.ndarray, steps: int) -> None:
    for mode, table in (("deletion", results.deletion), ("insertion", results.insertion)):
        table[name] = float(metrics.perturbation_curve(model, x, target, maps, mode, steps=steps).auc.mean())


def named_method(name: str) -> MethodFactory:
    """The factory of an attribution method of
    :data:`~fastconv.analysis.attribution.methods.METHODS` by name, with its
    default options (Grad-CAM and guided Grad-CAM at the model's
    :func:`~fastconv.analysis.attribution.methods.default_gradcam_layer`)."""
    from fastconv.analysis.attribution.methods import METHODS, default_gradcam_layer

    if name not in METHODS:
        raise ValueError(f"unknown attribution method {name!r}; the methods are {sorted(METHODS)}")
    kind = METHODS[name]
    if name in ("gradcam", "guided-gradcam"):
        return lambda model: kind(model, default_gradcam_layer(model))
    return lambda model: kind(model)
