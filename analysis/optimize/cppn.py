"""Fooling images that are not noise: evolved compositional patterns.

Nguyen, Yosinski & Clune 2015 ("Deep neural networks are easily fooled")
evolve images that a network classifies with high confidence although no
person would name them. Their images are drawn by a CPPN, a compositional
pattern-producing network: a small network from pixel coordinates to a
colour, whose units apply different functions (sine, Gaussian, sigmoid,
...), so that the images it draws have symmetry, repetition and smooth
gradients rather than noise. The search needs no gradient of the model,
only its outputs: MAP-Elites keeps the best image found so far for every
target class, and each generation mutates elites picked at random.

* :class:`CPPN`: a fixed-topology coordinate network (x, y, r, bias) ->
  colour with a randomly drawn function per hidden unit; its genome is the
  weights and the functions, mutated by Gaussian weight noise and by
  swapping functions.
* :class:`Gratings`: regular patterns, a sum of a few periodic gratings
  (sine, square or triangle waves of any orientation, frequency, phase and
  colour) through a sigmoid: stripes, plaids and checkerboards.
* :func:`evolve_fooling`: the search, for several target classes at once.
* :func:`plot_fooling`: the images with the class the model sees and its
  confidence, and the best confidence per generation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fastconv import _checks
from fastconv.analysis import _common as C
from fastconv.analysis.optimize import methods as M
from fastconv.analysis.optimize import parametrize as P

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Sequence

    from matplotlib.figure import Figure

    import fastconv

__all__ = ["CPPN", "Gratings", "Fooling", "GENERATORS", "evolve_fooling", "plot_fooling"]


def _gaussian(z: np.ndarray) -> np.ndarray:
    return np.exp(-z ** 2)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


# The functions a CPPN's hidden units draw from: periodic ones give
# repetition, the Gaussian and |z| symmetry, the saturating ones edges.
FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sin": np.sin,
    "cos": np.cos,
    "gaussian": _gaussian,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "abs": np.abs,
    "identity": lambda z: z,
}


def _coordinates(size: tuple[int, int]) -> np.ndarray:
    """(4, H, W): x and y in [-1, 1], the distance r from the centre, and a bias of 1."""
    h, w = size
    yy, xx = np.meshgrid(np.linspace(-1.0, 1.0, h), np.linspace(-1.0, 1.0, w), indexing="ij")
    return np.stack([xx, yy, np.sqrt(xx ** 2 + yy ** 2), np.ones_like(xx)])


class Generator(Protocol):
    """What :func:`evolve_fooling` needs of an image generator."""

    name: str

    def random(self, rng: np.random.Generator) -> Any: ...

    def mutate(self, genome: Any, rng: np.random.Generator) -> Any: ...

    def render(self, genome: Any) -> np.ndarray: ...


@dataclass
class _CPPNGenome:
    weights: list[np.ndarray]
    functions: list[np.ndarray]


class CPPN:
    """A compositional pattern-producing network drawing (C, H, W) images.

    ``hidden`` units per layer for ``depth`` layers, from the inputs (x, y,
    r, 1); each hidden unit applies one function of :data:`FUNCTIONS`,
    drawn at random, to a weighted sum of the previous layer (with a bias);
    the output layer's sigmoid gives each channel in (0, 1). Weights start
    as N(0, ``weight_scale``^2) / sqrt(fan-in) times a few, so the first
    images already have structure. A mutation adds N(0, ``sigma``^2) to
    each weight with probability ``rate`` and redraws each unit's function
    with probability ``rate`` / 4.
    """

    name = "cppn"

    def __init__(self, channels: int, size: int | tuple[int, int], hidden: int = 8, depth: int = 3,
                 weight_scale: float = 2.0, sigma: float = 0.3, rate: float = 0.2) -> None:
        self.channels = _checks.positive_int(channels, "channels")
        self.size = C.check_pair(size, "size")
        self.hidden = _checks.positive_int(hidden, "hidden")
        self.depth = _checks.positive_int(depth, "depth")
        self.weight_scale = P.check_positive(weight_scale, "weight_scale")
        self.sigma = P.check_positive(sigma, "sigma")
        self.rate = P.check_positive(rate, "rate")
        if self.rate > 1:
            raise ValueError(f"rate is a probability and must be at most 1, got {rate!r}")
        self.inputs = _coordinates(self.size).reshape(4, -1)
        self.names = list(FUNCTIONS)

    def random(self, rng: np.random.Generator) -> _CPPNGenome:
        widths = [4] + [self.hidden] * self.depth + [self.channels]
        # one extra input column: each layer's bias
        weights = [rng.normal(0.0, self.weight_scale / np.sqrt(n_in), (n_out, n_in + 1))
                   for n_in, n_out in zip(widths[:-1], widths[1:])]
        functions = [rng.integers(0, len(self.names), self.hidden) for _ in range(self.depth)]
        return _CPPNGenome(weights, functions)

    def mutate(self, genome: _CPPNGenome, rng: np.random.Generator) -> _CPPNGenome:
        weights = [w + np.where(rng.random(w.shape) < self.rate, rng.normal(0.0, self.sigma, w.shape), 0.0)
                   for w in genome.weights]
        functions = [np.where(rng.random(f.shape) < self.rate / 4, rng.integers(0, len(self.names), f.shape), f)
                     for f in genome.functions]
        return _CPPNGenome(weights, functions)

    def render(self, genome: _CPPNGenome) -> np.ndarray:
        a = self.inputs
        for w, chosen in zip(genome.weights[:-1], genome.functions):
            z = w[:, :-1] @ a + w[:, -1:]
            a = np.empty_like(z)
            for k, name in enumerate(self.names):
                rows = chosen == k
                if rows.any():
                    a[rows] = FUNCTIONS[name](z[rows])
        out = genome.weights[-1][:, :-1] @ a + genome.weights[-1][:, -1:]
        return _sigmoid(out).reshape((self.channels,) + self.size)


WAVES = ("sine", "square", "triangle")


@dataclass
class _GratingsGenome:
    frequency: np.ndarray   # (K,) cycles across the image
    angle: np.ndarray       # (K,) radians
    phase: np.ndarray       # (K,) radians
    amplitude: np.ndarray   # (K, C)
    wave: np.ndarray        # (K,) index into WAVES
    bias: np.ndarray        # (C,)


class Gratings:
    """Regular patterns: ``count`` periodic gratings summed and squashed.

    Grating k is a sine, square or triangle wave of ``frequency`` cycles
    across the image (1 to ``max_frequency``) along ``angle``, shifted by
    ``phase``, with an amplitude per channel (its colour); the image is the
    sigmoid of their sum plus a bias per channel. A mutation moves every
    parameter by Gaussian noise of ``sigma`` times its own scale and
    redraws a grating's wave form with probability 0.05.
    """

    name = "pattern"

    def __init__(self, channels: int, size: int | tuple[int, int], count: int = 3, max_frequency: float = 8.0,
                 sigma: float = 0.15) -> None:
        self.channels = _checks.positive_int(channels, "channels")
        self.size = C.check_pair(size, "size")
        self.count = _checks.positive_int(count, "count")
        self.max_frequency = P.check_positive(max_frequency, "max_frequency")
        if self.max_frequency < 1:
            raise ValueError(f"max_frequency must be at least 1 cycle across the image, got {max_frequency!r}")
        self.sigma = P.check_positive(sigma, "sigma")
        coordinates = _coordinates(self.size)
        self.x, self.y = coordinates[0] / 2.0, coordinates[1] / 2.0   # one unit across the image

    def random(self, rng: np.random.Generator) -> _GratingsGenome:
        k, c = self.count, self.channels
        return _GratingsGenome(frequency=rng.uniform(1.0, self.max_frequency, k),
                               angle=rng.uniform(0.0, np.pi, k), phase=rng.uniform(0.0, 2 * np.pi, k),
                               amplitude=rng.normal(0.0, 2.0, (k, c)), wave=rng.integers(0, len(WAVES), k),
                               bias=rng.normal(0.0, 0.5, c))

    def mutate(self, genome: _GratingsGenome, rng: np.random.Generator) -> _GratingsGenome:
        s, k = self.sigma, self.count
        return _GratingsGenome(
            frequency=np.clip(genome.frequency + rng.normal(0.0, s * self.max_frequency / 4, k),
                              1.0, self.max_frequency),
            angle=genome.angle + rng.normal(0.0, s * np.pi / 4, k),
            phase=genome.phase + rng.normal(0.0, s * np.pi, k),
            amplitude=genome.amplitude + rng.normal(0.0, s * 2.0, genome.amplitude.shape),
            wave=np.where(rng.random(k) < 0.05, rng.integers(0, len(WAVES), k), genome.wave),
            bias=genome.bias + rng.normal(0.0, s, genome.bias.shape))

    def render(self, genome: _GratingsGenome) -> np.ndarray:
        total = np.zeros((self.channels,) + self.size)
        for k in range(self.count):
            along = np.cos(genome.angle[k]) * self.x + np.sin(genome.angle[k]) * self.y
            theta = 2 * np.pi * genome.frequency[k] * along + genome.phase[k]
            form = WAVES[int(genome.wave[k])]
            if form == "sine":
                wave = np.sin(theta)
            elif form == "square":
                wave = np.sign(np.sin(theta))
            else:
                wave = 2.0 / np.pi * np.arcsin(np.sin(theta))
            total += genome.amplitude[k][:, None, None] * wave[None]
        return _sigmoid(total + genome.bias[:, None, None])


GENERATORS = {"cppn": CPPN, "pattern": Gratings}


@dataclass
class Fooling:
    """Evolved images for each target class.

    ``images`` (K, C, H, W) in [0, 1], the best found for ``targets[k]``;
    ``confidences`` (K,) the model's probability of that target on it;
    ``history['confidence']`` (generations + 1, K) the best probability per
    target after the first population and after each generation;
    ``evaluations`` images the model classified in all.
    """

    generator: str
    targets: list[int]
    threshold: float
    images: np.ndarray
    confidences: np.ndarray
    genomes: list[Any]
    evaluations: int
    history: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def reached(self) -> np.ndarray:
        """(K,) bool: whether each target's image passed ``threshold``."""
        return self.confidences >= self.threshold


def _log_odds(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log(p_t / (1 - p_t)) for each image (rows) and target (columns),
    computed from the logits so that it keeps ranking images above p = 0.999."""
    logits = logits.astype(np.float64)
    out = np.empty((len(logits), len(targets)))
    for k, t in enumerate(targets):
        others = np.delete(logits, t, axis=1)
        top = others.max(axis=1, keepdims=True)
        out[:, k] = logits[:, t] - (top[:, 0] + np.log(np.exp(others - top).sum(axis=1)))
    return out


def evolve_fooling(model: fastconv.Model, targets: int | Sequence[int] | None = None, generator: str = "cppn",
                   generations: int = 200, population: int = 32, threshold: float = 0.99,
                   size: int | tuple[int, int] | None = None, seed: int | None = 0,
                   progress: bool | None = None, **generator_options: Any) -> Fooling:
    """Evolve images the model gives each of ``targets`` with high confidence.

    MAP-Elites (Mouret & Clune 2015), as Nguyen et al. used it: an archive
    holds the best genome found for each target class, scored by the log
    odds of its probability; each generation draws ``population`` elites at
    random, mutates them, classifies the children and lets a child replace
    the elite of every target it scores better on. The first population is
    random. The search stops after ``generations`` generations, or as soon
    as every target's elite reaches ``threshold``. Only the model's outputs
    are used, never its gradient.

    ``targets``: a class, a list of classes, or None for every class.
    ``generator``: 'cppn' (:class:`CPPN`) or 'pattern' (:class:`Gratings`),
    built with ``generator_options``. ``size``: the images' (H, W); default
    the model's input size.
    """
    M._check_choice(generator, tuple(GENERATORS), "generator")
    if not C.is_int(generations) or generations < 0:
        raise ValueError(f"generations must be a non-negative int, got {generations!r}")
    population = _checks.positive_int(population, "population")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) \
            or not 0 < threshold < 1:
        raise ValueError(f"threshold is a probability and must lie strictly between 0 and 1, got {threshold!r}")
    rng = P.check_seed(seed)
    one_shape = M.input_shape(model, size)
    layer = M.logits_layer(model)
    probe = M.output_shape(model, layer, (1,) + one_shape)
    if len(probe) != 2:
        raise ValueError(f"the model's last layer {layer!r} outputs shape {probe[1:]}, not class scores")
    chosen = list(range(probe[1])) if targets is None else targets
    units = M._unit_list(chosen, layer, probe, "class")
    classes = np.array([u[0] for u in units])
    if len(set(classes.tolist())) != len(classes):
        raise ValueError(f"targets must not repeat a class, got {classes.tolist()}")
    maker = GENERATORS[generator](one_shape[0], one_shape[1:], **generator_options)
    space = P.PixelSpace(model)
    threshold_odds = np.log(threshold / (1 - threshold))

    def score(genomes: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        images = np.stack([maker.render(g) for g in genomes])
        logits = model.forward(space.to_input(images), until=layer)
        return images, _log_odds(logits, classes)

    with C.evaluating(model), P.progress_bar(generations, f"evolving {generator} images", progress) as bar:
        genomes = [maker.random(rng) for _ in range(population)]
        images, odds = score(genomes)
        best = odds.argmax(axis=0)
        elites = [genomes[i] for i in best]
        elite_images = images[best]
        elite_odds = odds[best, np.arange(len(classes))]
        trace = [elite_odds.copy()]
        evaluations = population
        for _ in range(generations):
            if np.all(elite_odds >= threshold_odds):
                break
            parents = rng.integers(0, len(elites), population)
            children = [maker.mutate(elites[p], rng) for p in parents]
            images, odds = score(children)
            evaluations += population
            winner = odds.argmax(axis=0)
            better = odds[winner, np.arange(len(classes))] > elite_odds
            for k in np.flatnonzero(better):
                elites[k] = children[winner[k]]
                elite_images[k] = images[winner[k]]
                elite_odds[k] = odds[winner[k], k]
            trace.append(elite_odds.copy())
            bar.update(1)
            bar.set_postfix(reached=f"{int(np.sum(elite_odds >= threshold_odds))}/{len(classes)}", refresh=False)
    confidence = 1.0 / (1.0 + np.exp(-np.array(trace)))
    return Fooling(generator=generator, targets=classes.tolist(), threshold=float(threshold), images=elite_images,
                   confidences=confidence[-1], genomes=elites, evaluations=evaluations,
                   history={"confidence": confidence})


def plot_fooling(result: Fooling, classes: Sequence[str] | None = None, columns: int = 10, title: str | None = None,
                 path: str | os.PathLike | None = None) -> Figure:
    """The evolved image of each target, titled with the target and the
    model's confidence in it, above the best confidence per generation."""
    from fastconv.analysis.optimize.figures import _show
    from fastconv.analysis.visualize.figures import _class_name, _finish, _grid, new_figure

    n = len(result.targets)
    rows, cols = _grid(n, columns)
    fig = new_figure(1.6 * cols + 0.4, 1.8 * rows + 3.0)
    tiles, curves = fig.subfigures(2, 1, height_ratios=[1.8 * rows, 2.6])
    axes = tiles.subplots(rows, cols, squeeze=False)
    for k, target in enumerate(result.targets):
        _show(axes.flat[k], result.images[k], f"{_class_name(classes, target)}\n{result.confidences[k]:.2%}")
    for ax in axes.flat[n:]:
        ax.axis("off")
    kind = "CPPN images" if result.generator == "cppn" else "regular patterns"
    reached = int(result.reached.sum())
    tiles.suptitle(title or f"evolved {kind} and the model's confidence in each target "
                            f"({reached} of {n} at {result.threshold:.0%} or more, "
                            f"{result.evaluations:,} images classified)", fontsize=10)
    ax = curves.subplots()
    confidence = result.history["confidence"]
    for k, target in enumerate(result.targets):
        ax.plot(np.arange(len(confidence)), confidence[:, k], linewidth=1, label=_class_name(classes, target))
    ax.axhline(result.threshold, color="red", linestyle="--", linewidth=1)
    ax.set_xlabel("generation")
    ax.set_ylabel("best confidence in the target")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=min(n, 10), loc="lower right")
    return _finish(fig, path)
