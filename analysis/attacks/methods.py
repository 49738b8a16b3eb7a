"""Adversarial examples: small changes to an image that change what a network says.

Every attack is an object built once on a model and called many times,
``attack(x, y=None, target=None) -> x_adv``, in the manner of torchattacks::

    x_adv = PGD(model, eps=8/255, alpha=2/255, steps=10)(x, y)
    x_adv = IterativeTargeted(model, confidence=0.99)(x, target=3)

x is a batch (N, C, H, W) of images in pixel space, floats in [0, 1], of
the model's dtype; x_adv has the same shape and stays in [0, 1]. The
model's normalization (``model.meta['normalization']``, see
:class:`~fastconv.analysis.Normalizer`) is applied inside, so perturbation
sizes are in pixel units whatever the model was trained on: eps = 8/255 is
eight grey levels.

Untargeted attacks push each image away from its label ``y`` (by default
the class the model predicts for it); with ``target`` (one class for the
whole batch, or one per image) they pull it towards that class instead.

The attacks reach the model through its public API only: ``forward``,
``backward`` (the gradient with respect to the input) and ``eval()``. They
leave the model in the mode they found it in, with its parameter gradients
unchanged.

References: Goodfellow et al. 2015 (FGSM), Kurakin et al. 2017 (BIM), Madry
et al. 2018 (PGD), Dong et al. 2018 (MI-FGSM), Moosavi-Dezfooli et al. 2016 (DeepFool), Carlini &
Wagner 2017 (CW L2).
"""
from __future__ import annotations

import copy
import math
import numbers
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fastconv import _checks
from fastconv.analysis import _common as C
from fastconv.nn.losses import log_softmax, softmax

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike
    from typing_extensions import Self

    import fastconv

__all__ = [
    "Attack", "FGSM", "BIM", "PGD", "PGDL2", "MIFGSM", "IterativeTargeted", "DeepFool", "CarliniWagnerL2",
    "ATTACKS", "make_attack", "check_pixels", "loss_gradient", "predict_pixels",
]

# Room for the rounding of a normalize-then-undo round trip, so that data
# which is in [0, 1] up to float error is not refused.
_PIXEL_TOLERANCE = 1e-6


# ------------------------------------------------------------------ checks


def _number(value: float, name: str, minimum: float = 0.0, strict: bool = False, allow_inf: bool = False) -> float:
    """A real number >= minimum (> minimum if strict); ValueError naming the value otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum:g}, got {value!r}")
    return value


def _eps(value: float, name: str = "eps") -> float:
    return _number(value, name, 0.0)


def check_pixels(model: fastconv.Model, x: np.ndarray, name: str = "x") -> np.ndarray:
    """Check that x is a batch the model accepts, of pixels in [0, 1]; return it.

    The message of an out-of-range batch names the offending value and where
    it is, since the usual mistake is to pass normalized model inputs or
    0..255 pixels instead of [0, 1] pixels.
    """
    C.check_images(model, x, name)
    if not np.all(np.isfinite(x)):
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise ValueError(f"{name} holds {x[index]} at index {index}; images must be finite")
    lo, hi = float(x.min()), float(x.max())
    if lo < -_PIXEL_TOLERANCE or hi > 1 + _PIXEL_TOLERANCE:
        bad = x.min() if lo < -_PIXEL_TOLERANCE else x.max()
        index = tuple(int(i) for i in np.argwhere(x == bad)[0])
        raise ValueError(
            f"{name} holds the value {float(bad):g} at index {index}, outside [0, 1]: attacks take "
            f"pixels scaled to [0, 1] (divide uint8 images by 255; do not pass normalized inputs, "
            f"the model's normalization is applied inside)"
        )
    return x


def _class_array(values: ArrayLike, n: int, num_classes: int, name: str) -> np.ndarray:
    """An int array of n classes in [0, num_classes), from one class or one per image."""
    if C.is_int(values):
        # is_int narrows values to an int: mypy cannot tell, as it does not follow the fastconv.analysis imports.
        values = [values] * n  # type: ignore[assignment]
    return _checks.class_indices(values, name, (n,), num_classes, context=" (one class, or one per image)")


# ------------------------------------------------------------------ the model in pixel space


class _PixelModel:
    """The model as a function of [0, 1] pixels: normalization, forward, backward.

    Used inside ``C.evaluating(model)`` so that the forward passes run in
    eval mode and the backward passes leave no trace in the model's gradients.
    """

    def __init__(self, model: fastconv.Model) -> None:
        self.model = model
        self.dtype = C.model_dtype(model)
        self.normalizer = C.Normalizer.from_model(model)

    def _stats(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self.normalizer.per_channel(channels)
        return mean.astype(self.dtype), std.astype(self.dtype)

    def inputs(self, x: np.ndarray) -> np.ndarray:
        mean, std = self._stats(x.shape[1])
        return ((x - mean) / std).astype(self.dtype, copy=False)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.model.forward(self.inputs(x))

    def input_gradient(self, dlogits: np.ndarray, channels: int) -> np.ndarray:
        """Gradient w.r.t. the pixels of the last forward, given the one w.r.t. its logits."""
        _, std = self._stats(channels)
        return self.model.backward(dlogits.astype(self.dtype, copy=False), param_grads=False) / std




def _one_hot(classes: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(classes), num_classes))
    out[np.arange(len(classes)), classes] = 1.0
    return out


def _cross_entropy_ascent(logits: np.ndarray, y: np.ndarray | None, target: np.ndarray | None) -> np.ndarray:
    """Per-example gradient w.r.t. the logits of the objective an attack climbs:
    the cross-entropy of the label y (untargeted) or minus that of the target."""
    p = softmax(logits.astype(np.float64), axis=1)
    if target is None:
        return p - _one_hot(cast(np.ndarray, y), p.shape[1])  # an untargeted call has labels
    return _one_hot(target, p.shape[1]) - p


def _cross_entropy(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy of ``classes`` under the logits."""
    return -log_softmax(logits.astype(np.float64), axis=1)[np.arange(len(logits)), classes]


def _per_example(values: np.ndarray, n: int) -> np.ndarray:
    return values.reshape(n, -1)


def _l2(values: np.ndarray) -> np.ndarray:
    n = values.shape[0]
    return np.sqrt(np.square(_per_example(values.astype(np.float64), n)).sum(axis=1))


def _broadcast(per_example: np.ndarray, ndim: int) -> np.ndarray:
    return per_example.reshape((-1,) + (1,) * (ndim - 1))


def _l2_normalized(g: np.ndarray) -> np.ndarray:
    norms = _l2(g)
    scale = np.where(norms > 0, 1.0 / np.maximum(norms, 1e-300), 0.0)
    return g * _broadcast(scale, g.ndim).astype(g.dtype)


def _project_l2(delta: np.ndarray, eps: float) -> np.ndarray:
    norms = _l2(delta)
    factor = np.minimum(1.0, eps / np.maximum(norms, 1e-300))
    return delta * _broadcast(factor, delta.ndim).astype(delta.dtype)


def predict_pixels(model: fastconv.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of the model (eval mode) for [0, 1] pixel images x."""
    check_pixels(model, x)
    pixels = _PixelModel(model)
    return model.predict(pixels.inputs(x), batch_size=batch_size)


def loss_gradient(model: fastconv.Model, x: np.ndarray, y: ArrayLike | None = None,
                  target: ArrayLike | None = None) -> np.ndarray:
    """Gradient w.r.t. the pixels x of the cross-entropy of the labels y
    (untargeted), or of minus the cross-entropy of ``target``; the direction
    in which FGSM, BIM and PGD move. Shaped like x.
    """
    x = check_pixels(model, x)
    with C.evaluating(model):
        pixels = _PixelModel(model)
        y, target = _resolve_labels(y, target, pixels, x, _num_classes(model, x.shape))
        logits = pixels.logits(x)
        return pixels.input_gradient(_cross_entropy_ascent(logits, y, target), x.shape[1])


def _resolve_labels(y: ArrayLike | None, target: ArrayLike | None, pixels: _PixelModel, x: np.ndarray,
                    num_classes: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(y, target) as class arrays checked against the model's classes: y is
    None in a targeted call, and the model's predictions when not given."""
    n = x.shape[0]
    if target is not None:
        target = _class_array(target, n, num_classes, "target")
        if y is not None:
            _class_array(y, n, num_classes, "label")
        return None, target
    if y is None:
        return pixels.logits(x).argmax(axis=1).astype(np.intp), None
    return _class_array(y, n, num_classes, "label"), None


def _num_classes(model: fastconv.Model, x_shape: Sequence[int]) -> int:
    """Size of the model's output for inputs of shape x_shape, from the layers' shapes alone."""
    shape = list(model.output_shapes(x_shape).values())[-1]
    if len(shape) != 2:
        raise ValueError(f"attacks need a classifier with outputs (N, classes); this model outputs shape {shape}")
    return int(shape[1])


# ------------------------------------------------------------------ base class


class Attack:
    """Base class: the model, the batch loop, input checks and the label/target logic.

    Subclasses implement ``_attack(pixels, x, y, target, rng) -> x_adv`` for
    one batch of checked inputs, with y the labels to move away from (None
    in a targeted call) and target the classes to reach (None when untargeted).

    ``norm`` is the distance the attack measures perturbations with ('linf'
    or 'l2'); ``minimal`` is True for attacks that look for the smallest
    perturbation that succeeds rather than the most harmful one of size eps.

    After each call, ``loss_history`` holds one value per step of the attack:
    the mean over the images of the objective it works on at that step
    (``loss_name`` says which; None for an attack that records none, whose
    history stays empty). An image that stopped early keeps its last
    value; when batches stop after different numbers of steps, the later
    steps average over the batches that reached them.
    """

    name = "attack"
    norm = "linf"
    minimal = False
    loss_name: str | None = None

    def __init__(self, model: fastconv.Model, batch_size: int = 256) -> None:
        if not hasattr(model, "forward") or not hasattr(model, "backward"):
            raise TypeError(f"model must be a fastconv Sequential, got {type(model).__name__}")
        self.model = model
        self.batch_size = _checks.positive_int(batch_size, "batch_size")

    def __repr__(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if k not in ("model",) and not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

    def with_eps(self, eps: float) -> Self:
        """A copy of this attack with another eps (for attacks bounded by one)."""
        if not hasattr(self, "eps"):
            raise ValueError(f"{type(self).__name__} has no eps: it looks for the smallest perturbation itself")
        clone = copy.copy(self)
        clone.eps = _eps(eps)
        return clone

    def _rng(self) -> np.random.Generator:
        seed = getattr(self, "seed", None)
        return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def __call__(self, x: np.ndarray, y: ArrayLike | None = None, target: ArrayLike | None = None) -> np.ndarray:
        """Adversarial versions of the images x ((N, C, H, W), pixels in [0, 1]).

        y: the true labels (an int or N ints); default: the model's predictions.
        target: a class (or N classes) to reach; None for an untargeted attack.
        """
        x = check_pixels(self.model, x)
        n = x.shape[0]
        if y is not None and not C.is_int(y):
            y = np.asarray(y)
            if y.shape != (n,):
                raise ValueError(f"y must be one label or {n} labels (one per image), got shape {y.shape}")
        if target is not None and not C.is_int(target):
            target = np.asarray(target)
            if target.shape != (n,):
                raise ValueError(f"target must be one class or {n} classes (one per image), got shape {target.shape}")
        rng = self._rng()
        num_classes = _num_classes(self.model, x.shape)
        out = np.empty_like(x)
        self._loss_sums: list[float] = []
        self._loss_counts: list[int] = []
        self._part_sums: dict[str, list[float]] = {}
        with C.evaluating(self.model):
            pixels = _PixelModel(self.model)
            for start, stop in C.batches(n, self.batch_size):
                xb = np.clip(x[start:stop], 0, 1)
                # y and target are arrays here unless they are None or one class.
                yb = y if y is None or C.is_int(y) else cast(np.ndarray, y)[start:stop]
                tb = target if target is None or C.is_int(target) else cast(np.ndarray, target)[start:stop]
                yb, tb = _resolve_labels(yb, tb, pixels, xb, num_classes)
                out[start:stop] = self._attack(pixels, xb, yb, tb, rng)
        counts = np.maximum(np.asarray(self._loss_counts), 1)
        self._loss_history = np.asarray(self._loss_sums) / counts
        self._loss_parts = {name: np.asarray(sums) / counts for name, sums in self._part_sums.items()}
        return out

    @property
    def loss_history(self) -> np.ndarray:
        """The objective's mean at each step of the last call (empty before the first)."""
        return getattr(self, "_loss_history", np.zeros(0))

    @property
    def loss_parts(self) -> dict[str, np.ndarray]:
        """The terms of an objective that has several, each like ``loss_history`` (empty for most attacks)."""
        return dict(getattr(self, "_loss_parts", {}))

    def _record(self, step: int, losses: np.ndarray, **parts: np.ndarray) -> None:
        """Add the per-image values of the objective at ``step`` (0-based), and of its
        terms if it has several, to ``loss_history`` and ``loss_parts``."""
        while len(self._loss_sums) <= step:
            self._loss_sums.append(0.0)
            self._loss_counts.append(0)
        self._loss_sums[step] += float(np.sum(losses))
        self._loss_counts[step] += int(np.size(losses))
        for name, values in parts.items():
            sums = self._part_sums.setdefault(name, [])
            sums.extend([0.0] * (step + 1 - len(sums)))
            sums[step] += float(np.sum(values))

    def _attack(self, pixels: _PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


# ------------------------------------------------------------------ gradient-sign family


class FGSM(Attack):
    """Fast gradient sign method: one step of size eps along the sign of the
    gradient of the loss, x_adv = clip(x + eps * sign(grad), 0, 1).

    Targeted, it steps down the loss of the target class instead.
    """

    name = "fgsm"
    loss_name = "cross-entropy of the label (untargeted, rises) or of the target (targeted, falls)"

    def __init__(self, model: fastconv.Model, eps: float = 8 / 255, batch_size: int = 256) -> None:
        super().__init__(model, batch_size)
        self.eps = _eps(eps)

    def _attack(self, pixels: _PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        logits = pixels.logits(x)
        self._record(0, _cross_entropy(logits, cast(np.ndarray, y if target is None else target)))
        grad = pixels.input_gradient(_cross_entropy_ascent(logits, y, target), x.shape[1])
        return np.clip(x + x.dtype.type(self.eps) * np.sign(grad), 0, 1).astype(x.dtype)


class PGD(Attack):
    """Projected gradient descent under the L-infinity norm (Madry et al.).

    From a uniformly random point of the eps-ball around x (``random_start``,
    drawn from ``seed``: an int for the same start at every call, or a
    numpy Generator), ``steps`` steps of size ``alpha`` along the sign of the
    gradient, each followed by a projection on the eps-ball and on [0, 1].
    ``alpha`` defaults to 2.5 * eps / steps, enough to cross the ball.
    """

    name = "pgd"
    loss_name = "cross-entropy of the label (untargeted, rises) or of the target (targeted, falls)"

    def __init__(self, model: fastconv.Model, eps: float = 8 / 255, alpha: float | None = None, steps: int = 10,
                 random_start: bool = True, seed: np.random.Generator | int | None = 0, batch_size: int = 256) -> None:
        super().__init__(model, batch_size)
        self.eps = _eps(eps)
        self.alpha = None if alpha is None else _number(alpha, "alpha", 0.0, strict=True)
        self.steps = _checks.positive_int(steps, "steps")
        self.random_start = bool(random_start)
        self.seed = seed

    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else 2.5 * self.eps / self.steps

    def _start(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.uniform(-self.eps, self.eps, size=x.shape).astype(x.dtype)
        return np.clip(x + noise, 0, 1)

    def _step(self, grad: np.ndarray, alpha: float) -> np.ndarray:
        return alpha * np.sign(grad)

    def _project(self, delta: np.ndarray) -> np.ndarray:
        return np.clip(delta, -self.eps, self.eps)

    def _attack(self, pixels: _PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        alpha = x.dtype.type(self.step_size())
        x_adv = self._start(x, rng) if self.random_start else x.copy()
        for step in range(self.steps):
            logits = pixels.logits(x_adv)
            self._record(step, _cross_entropy(logits, cast(np.ndarray, y if target is None else target)))
            grad = pixels.input_gradient(_cross_entropy_ascent(logits, y, target), x.shape[1])
            delta = self._project(x_adv + self._step(grad, alpha) - x)
            x_adv = np.clip(x + delta, 0, 1).astype(x.dtype)
        return x_adv


class BIM(PGD):
    """Basic iterative method (Kurakin et al.): PGD under L-infinity without
    the random start, ``steps`` steps of ``alpha`` clipped to the eps-ball."""

    name = "bim"

    def __init__(self, model: fastconv.Model, eps: float = 8 / 255, alpha: float | None = None, steps: int = 10,
                 batch_size: int = 256) -> None:
        super().__init__(model, eps, alpha, steps, random_start=False, batch_size=batch_size)


class PGDL2(PGD):
    """PGD under the L2 norm: steps of L2 length ``alpha`` along the gradient,
    projected on the L2 ball of radius eps (the whole image's norm, in pixel
    units) and on [0, 1]; the random start is uniform in that ball."""

    name = "pgd-l2"
    norm = "l2"

    def __init__(self, model: fastconv.Model, eps: float = 1.0, alpha: float | None = None, steps: int = 10,
                 random_start: bool = True, seed: np.random.Generator | int | None = 0, batch_size: int = 256) -> None:
        super().__init__(model, eps, alpha, steps, random_start, seed, batch_size)

    def _start(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = x.shape[0]
        direction = _l2_normalized(rng.standard_normal(x.shape))
        # radius eps * u^(1/d) makes the point uniform in the ball's volume
        radius = self.eps * rng.uniform(0, 1, n) ** (1.0 / _per_example(x, n).shape[1])
        return np.clip(x + (direction * _broadcast(radius, x.ndim)).astype(x.dtype), 0, 1)

    def _step(self, grad: np.ndarray, alpha: float) -> np.ndarray:
        return alpha * _l2_normalized(grad)

    def _project(self, delta: np.ndarray) -> np.ndarray:
        return _project_l2(delta, self.eps)


class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al. 2018): BIM whose steps follow the
    sign of an accumulated gradient, g <- decay * g + grad / ||grad||_1, so
    that the direction keeps its course across steps instead of following
    each step's local gradient; this is what makes its examples transfer
    better to other models.

    ``steps`` steps of ``alpha`` (default eps / steps, the paper's choice),
    each clipped to the eps-ball around x and to [0, 1]; no random start.
    """

    name = "mi-fgsm"
    loss_name = "cross-entropy of the label (untargeted, rises) or of the target (targeted, falls)"

    def __init__(self, model: fastconv.Model, eps: float = 8 / 255, alpha: float | None = None, steps: int = 10,
                 decay: float = 1.0, batch_size: int = 256) -> None:
        super().__init__(model, batch_size)
        self.eps = _eps(eps)
        self.alpha = None if alpha is None else _number(alpha, "alpha", 0.0, strict=True)
        self.steps = _checks.positive_int(steps, "steps")
        self.decay = _number(decay, "decay", 0.0)

    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else self.eps / self.steps

    def _attack(self, pixels: _PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        alpha = x.dtype.type(self.step_size())
        n = x.shape[0]
        momentum = np.zeros(x.shape, dtype=np.float64)
        x_adv = x.copy()
        for step in range(self.steps):
            logits = pixels.logits(x_adv)
            self._record(step, _cross_entropy(logits, cast(np.ndarray, y if target is None else target)))
            grad = pixels.input_gradient(_cross_entropy_ascent(logits, y, target), x.shape[1]).astype(np.float64)
            l1 = np.abs(_per_example(grad, n)).sum(axis=1)
            momentum = self.decay * momentum + grad / _broadcast(np.maximum(l1, 1e-300), x.ndim)
            delta = np.clip(x_adv + alpha * np.sign(momentum).astype(x.dtype) - x, -self.eps, self.eps)
            x_adv = np.clip(x + delta, 0, 1).astype(x.dtype)
        return x_adv


class IterativeTargeted(Attack):
    """Climb the log-probability of the target class with normalized gradient
    steps until the model gives it ``confidence`` (e.g. 0.99), or ``steps``
    steps have been taken: the iterative attack that turns any image, or
    noise, into any class.

    Each step moves every still-unfinished image by ``alpha`` times the
    gradient divided by its root mean square, so the step has the same size
    in every image whatever the gradient's scale; images that reached the
    confidence stop moving. ``eps`` (None: unbounded) bounds the change in
    L-infinity. Untargeted, each image climbs towards whichever wrong class
    is most probable at that step, until that class reaches ``confidence``.
    """

    name = "iterative"
    loss_name = "cross-entropy of the class each image climbs towards (falls)"

    def __init__(self, model: fastconv.Model, confidence: float = 0.99, alpha: float = 0.01, steps: int = 200,
                 eps: float | None = None, batch_size: int = 256) -> None:
        super().__init__(model, batch_size)
        self.confidence = _number(confidence, "confidence", 0.0, strict=True)
        if self.confidence >= 1:
            raise ValueError(f"confidence must be a probability below 1, got {confidence!r}")
        self.alpha = _number(alpha, "alpha", 0.0, strict=True)
        self.steps = _checks.positive_int(steps, "steps")
        self.eps = None if eps is None else _eps(eps)

    def _goal(self, logits: np.ndarray, y: np.ndarray | None, target: np.ndarray | None) -> np.ndarray:
        if target is not None:
            return target
        ranked = logits.astype(np.float64).copy()
        ranked[np.arange(len(cast(np.ndarray, y))), y] = -np.inf  # an untargeted call has labels
        return ranked.argmax(axis=1).astype(np.intp)

    def _attack(self, pixels: _PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        x_adv = x.copy()
        active = np.arange(x.shape[0])
        channels = x.shape[1]
        losses = np.zeros(x.shape[0])
        for step in range(self.steps + 1):
            xa = x_adv[active]
            logits = pixels.logits(xa)
            goal = self._goal(logits, None if y is None else y[active], None if target is None else target[active])
            unfinished = softmax(logits.astype(np.float64), axis=1)[np.arange(len(active)), goal] < self.confidence
            if step == self.steps or not unfinished.any():
                break
            losses[active] = _cross_entropy(logits, goal)
            self._record(step, losses)
            if not unfinished.all():
                active, goal, xa = active[unfinished], goal[unfinished], xa[unfinished]
                logits = pixels.logits(xa)  # the forward pass the gradient goes back through
            grad = pixels.input_gradient(_cross_entropy_ascent(logits, None, goal), channels)
            rms = np.sqrt(np.square(_per_example(grad.astype(np.float64), len(active))).mean(axis=1))
            scale = (self.alpha / np.maximum(rms, 1e-12)).astype(x.dtype)
            moved = xa + grad * _broadcast(scale, x.ndim)
            if self.eps is not None:
                moved = x[active] + np.clip(moved - x[active], -self.eps, self.eps)
            x_adv[active] = np.clip(moved, 0, 1)
        return x_adv


# ------------------------------------------------------------------ minimal-perturbation attacks


class DeepFool(Attack):
    """DeepFool (Moosavi-Dezfooli et al.): repeatedly linearize the classifier
    around the current point and jump to the nearest linearized decision
    boundary, until the prediction changes (or reaches ``target``).

    The perturbation is an L2 one close to the smallest that changes the
    decision; ``overshoot`` pushes it slightly past the boundary. The classes
    considered are the ``candidates`` most probable for the clean image
    (None: all). Images already misclassified are returned unchanged.
    """

    name = "deepfool"
    norm = "l2"
    minimal = True
    loss_name = ("logit of the original class minus the highest other (untargeted), or minus the "
                 "target's (targeted); falls below zero where the decision changes")

    def __init__(self, model: fastconv.Model, steps: int = 50, overshoot: float = 0.02,
                 candidates: int | None = None, batch_size: int = 256) -> None:
        super().__init__(model, batch_size)
        self.steps = _checks.positive_int(steps, "steps")
        self.overshoot = _number(overshoot, "overshoot", 0.0)
        self.candidates = None if candidates is None else _checks.positive_int(candidates, "candidates")

    @staticmethod
    def _class_gradients(pixels: _PixelModel, classes: np.ndarray, x_shape: tuple[int, ...],
                         num_classes: int) -> np.ndarray:
        """Gradient of each listed logit w.r.t. the pixels, (K, N, C, H, W), reusing one forward."""
        n = x_shape[0]
        grads = np.empty((classes.shape[1],) + x_shape, dtype=np.float64)
        rows = np.arange(n)
        for j in range(classes.shape[1]):
            seed = np.zeros((n, num_classes))
            seed[rows, classes[:, j]] = 1.0
            grads[j] = pixels.input_gradient(seed, x_shape[1])
        return grads

    @staticmethod
    def _margin(logits: np.ndarray, source: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        z = logits.astype(np.float64)
        rows = np.arange(len(z))
        if target is not None:
            return z[rows, source] - z[rows, target]
        others = z.copy()
        others[rows, source] = -np.inf
        return z[rows, source] - others.max(axis=1)

    def _attack(self, pixels: _PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        n = x.shape[0]
        logits = pixels.logits(x)
        num_classes = logits.shape[1]
        source = logits.argmax(axis=1) if y is None else y
        if target is not None:
            classes = np.stack([source, target], axis=1)
        else:
            order = np.argsort(-logits, axis=1)
            k = num_classes if self.candidates is None else min(self.candidates, num_classes)
            others = [row[row != s][:k - 1] for row, s in zip(order, source)]
            classes = np.concatenate([source[:, None], np.array(others)], axis=1)
        total = np.zeros(x.shape, dtype=np.float64)
        x_adv = x.copy()
        active = np.arange(n)
        margins = np.zeros(n)
        for step in range(self.steps):
            logits = pixels.logits(x_adv[active])
            predicted = logits.argmax(axis=1)
            unfinished = predicted != target[active] if target is not None else predicted == source[active]
            if not unfinished.any():
                break
            margins[active] = self._margin(logits, source[active], None if target is None else target[active])
            self._record(step, margins)
            if not unfinished.all():
                active = active[unfinished]
                logits = pixels.logits(x_adv[active])  # the forward pass the gradients go back through
            cls = classes[active]
            grads = self._class_gradients(pixels, cls, (len(active),) + x.shape[1:], num_classes)
            rows = np.arange(len(active))
            # linearized distance to the boundary with each candidate class k:
            # |Z_k - Z_source| / ||grad Z_k - grad Z_source||
            w = grads[1:] - grads[:1]
            f = (logits[rows[None], cls[:, 1:].T] - logits[rows, cls[:, 0]][None]).astype(np.float64)
            w_norm = np.sqrt(np.square(w.reshape(w.shape[0], len(active), -1)).sum(axis=2)) + 1e-12
            nearest = (np.abs(f) / w_norm).argmin(axis=0)
            step = (np.abs(f[nearest, rows]) + 1e-4) / np.square(w_norm[nearest, rows])
            total[active] += w[nearest, rows] * _broadcast(step, x.ndim)
            x_adv[active] = np.clip(x[active] + (1 + self.overshoot) * total[active], 0, 1)
        return x_adv.astype(x.dtype)


class CarliniWagnerL2(Attack):
    """Carlini & Wagner's L2 attack: minimize ||x_adv - x||^2 + c * f(x_adv)
    over x_adv = (tanh(w) + 1) / 2, which keeps the pixels in [0, 1].

    f works on the logits Z, not on probabilities, so a saturated softmax
    (a distilled network) does not hide the gradient: untargeted
    f = max(Z_y - max_{i != y} Z_i, -kappa), targeted
    f = max(max_{i != t} Z_i - Z_t, -kappa). Adam (``lr``) runs ``steps``
    steps for each constant c, which a binary search over
    ``binary_search_steps`` rounds adjusts per image, starting from
    ``initial_const``. The result is the smallest successful x_adv found;
    an image for which none succeeded is returned unchanged.

    The default lr, 0.1, is ten times Carlini and Wagner's: pixels at 0 or 1
    (most of a digit) start where tanh is flat, and a short budget of steps
    must still be able to move them.
    """

    name = "cw"
    norm = "l2"
    minimal = True
    loss_name = "||x_adv - x||^2 + c * f(x_adv), the steps of every constant one after another"

    def __init__(self, model: fastconv.Model, c: float | None = None, initial_const: float = 1.0,
                 kappa: float = 0.0, steps: int = 100, lr: float = 0.1, binary_search_steps: int = 5,
                 abort_early: bool = True, batch_size: int = 256) -> None:
        super().__init__(model, batch_size)
        if c is not None:
            initial_const, binary_search_steps = c, 1
        self.initial_const = _number(initial_const, "initial_const", 0.0, strict=True)
        self.kappa = _number(kappa, "kappa", 0.0)
        self.steps = _checks.positive_int(steps, "steps")
        self.lr = _number(lr, "lr", 0.0, strict=True)
        self.binary_search_steps = _checks.positive_int(binary_search_steps, "binary_search_steps")
        self.abort_early = bool(abort_early)

    def _margin(self, logits: np.ndarray, y: np.ndarray | None,
                target: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """f and its gradient w.r.t. the logits, per image."""
        z = logits.astype(np.float64)
        rows = np.arange(z.shape[0])
        own = target if target is not None else cast(np.ndarray, y)
        others = z.copy()
        others[rows, own] = -np.inf
        rival = others.argmax(axis=1)
        gap = z[rows, rival] - z[rows, own]
        f = -gap if target is None else gap
        grad = np.zeros_like(z)
        active = f > -self.kappa
        sign = -1.0 if target is None else 1.0
        grad[rows[active], rival[active]] += sign
        grad[rows[active], own[active]] -= sign
        return np.maximum(f, -self.kappa), grad

    def _succeeded(self, logits: np.ndarray, y: np.ndarray | None, target: np.ndarray | None) -> np.ndarray:
        predicted = logits.argmax(axis=1)
        return predicted == target if target is not None else predicted != y

    def _attack(self, pixels: _PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        n = x.shape[0]
        x64 = x.astype(np.float64)
        w0 = np.arctanh(np.clip(2 * x64 - 1, -1 + 1e-4, 1 - 1e-4))
        const = np.full(n, self.initial_const)
        lower, upper = np.zeros(n), np.full(n, np.inf)
        best_l2 = np.full(n, np.inf)
        best = x.copy()
        beta1, beta2 = 0.9, 0.999
        taken = 0
        for _ in range(self.binary_search_steps):
            w = w0.copy()
            m, v = np.zeros_like(w), np.zeros_like(w)
            succeeded = np.zeros(n, dtype=bool)
            previous = np.inf
            check_every = max(1, self.steps // 10)
            for step in range(1, self.steps + 1):
                x_adv = (np.tanh(w) + 1) / 2
                candidate = x_adv.astype(x.dtype)
                logits = pixels.logits(candidate)
                f, dlogits = self._margin(logits, y, target)
                diff = x_adv - x64
                l2_sq = np.square(diff.reshape(n, -1)).sum(axis=1)
                won = self._succeeded(logits, y, target) & (f <= -self.kappa + 1e-12 if self.kappa else True)
                improved = won & (l2_sq < best_l2)
                best_l2[improved] = l2_sq[improved]
                best[improved] = candidate[improved]
                succeeded |= won
                per_image = l2_sq + const * f
                self._record(taken, per_image)
                taken += 1
                loss = float(per_image.sum())
                dx = 2 * diff + pixels.input_gradient(dlogits * const[:, None], x.shape[1])
                grad = dx * (1 - np.square(np.tanh(w))) / 2
                m = beta1 * m + (1 - beta1) * grad
                v = beta2 * v + (1 - beta2) * np.square(grad)
                m_hat = m / (1 - beta1 ** step)
                v_hat = v / (1 - beta2 ** step)
                w -= self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)
                if self.abort_early and step % check_every == 0:
                    if loss > previous * 0.9999:
                        break
                    previous = loss
            upper = np.where(succeeded, np.minimum(upper, const), upper)
            lower = np.where(succeeded, lower, np.maximum(lower, const))
            const = np.where(np.isfinite(upper), (lower + upper) / 2, const * 10)
        return best


# ------------------------------------------------------------------ by name


ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "bim": BIM,
    "pgd": PGD,
    "pgd-l2": PGDL2,
    "mi-fgsm": MIFGSM,
    "iterative": IterativeTargeted,
    "deepfool": DeepFool,
    "cw": CarliniWagnerL2,
}


def make_attack(name: str, model: fastconv.Model, eps: float | None = None, **options: Any) -> Attack:
    """The attack called ``name`` (a key of ATTACKS) on ``model``, with eps for
    the attacks bounded by one (ignored by DeepFool and CW, which look for the
    smallest perturbation themselves) and any constructor options."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    cls = ATTACKS[name]
    if eps is not None and not cls.minimal:
        options["eps"] = eps
    return cls(model, **options)
