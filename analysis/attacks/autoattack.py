"""AutoAttack: the ensemble of parameter-free attacks that robustness numbers
are reported with (Croce & Hein 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks").

Its components, each an :class:`~fastconv.analysis.attacks.Attack` under the
L-infinity norm, called like the others (``attack(x, y=None, target=None)``
on [0, 1] pixels):

:class:`APGD`
    Auto-PGD: PGD with momentum and a step size that halves, restarting
    from the best point so far, when the loss stops climbing; on the
    cross-entropy (``loss="ce"``, APGD-CE) or on the difference of logits
    ratio (``loss="dlr"``, APGD-DLR), which does not change when the logits
    are rescaled.
:class:`APGDT`
    APGD on the targeted DLR loss, once towards each of the ``targets``
    classes the model ranks highest after the true one.
:class:`FAB`
    Fast adaptive boundary attack (Croce & Hein 2020, "Minimally distorted
    adversarial examples with a fast adaptive boundary attack"): steps to
    the linearized decision boundary, biased towards the original image, for
    the smallest perturbation that changes the decision; targeted over the
    top classes (FAB-T) in the standard suite.
:class:`Square`
    Square attack (Andriushchenko et al. 2020): random search over square
    patches at the corners of the eps-ball, using the model's scores only:
    no gradient, so gradient masking does not fool it.

:class:`AutoAttack` runs the standard sequence, APGD-CE, APGD-T, FAB-T,
Square, each on the images the ones before did not break, and reports the
robust accuracy after each (:meth:`AutoAttack.evaluate`).

The algorithms follow the papers; what the papers leave open is said where
it is decided.
"""
from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from fastconv import _checks
from fastconv.analysis.attacks import methods as A
from fastconv.nn.losses import log_softmax

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    import fastconv

__all__ = [
    "APGD", "APGDDLR", "APGDT", "FAB", "Square", "AutoAttack",
    "dlr_loss", "targeted_dlr_loss", "apgd_checkpoints", "linf_boundary_step", "square_fraction",
]

# The denominators of the DLR losses vanish when the top logits are equal.
_DLR_FLOOR = 1e-12

# (value per image, gradient w.r.t. the logits) of the objective an attack climbs.
Objective = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


# ------------------------------------------------------------------ losses


def _check_logits(logits: np.ndarray, labels: np.ndarray, least: int, what: str) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < least:
        raise ValueError(f"{what} needs logits (N, classes) with at least {least} classes, got shape {z.shape}")
    if labels.shape != (z.shape[0],):
        raise ValueError(f"{what} needs one label per row of the logits, got {labels.shape} for {z.shape}")
    return z


def dlr_loss(logits: np.ndarray, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The difference of logits ratio, per image, and its gradient w.r.t. the logits:

        DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)

    with z_pi1 >= z_pi2 >= z_pi3 the sorted logits. Positive once the image
    is misclassified; unchanged when the logits are shifted or scaled, so a
    network with huge logits does not saturate it the way it saturates the
    cross-entropy. Needs at least 3 classes.
    """
    y = np.asarray(y, dtype=np.intp)
    z = _check_logits(logits, y, 3, "the DLR loss")
    rows = np.arange(z.shape[0])
    order = np.argsort(-z, axis=1, kind="stable")
    others = z.copy()
    others[rows, y] = -np.inf
    rival = others.argmax(axis=1)
    margin = z[rows, y] - z[rows, rival]
    scale = z[rows, order[:, 0]] - z[rows, order[:, 2]] + _DLR_FLOOR
    value = -margin / scale
    grad = np.zeros_like(z)
    np.add.at(grad, (rows, y), -1 / scale)
    np.add.at(grad, (rows, rival), 1 / scale)
    # d/dz of 1/scale: the top and the third logit
    np.add.at(grad, (rows, order[:, 0]), margin / scale**2)
    np.add.at(grad, (rows, order[:, 2]), -margin / scale**2)
    return value, grad


def targeted_dlr_loss(logits: np.ndarray, y: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The targeted DLR loss, per image, and its gradient w.r.t. the logits:

        -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)

    which rises as the target t overtakes the label y. Needs at least 4 classes.
    """
    y = np.asarray(y, dtype=np.intp)
    target = np.asarray(target, dtype=np.intp)
    z = _check_logits(logits, y, 4, "the targeted DLR loss")
    rows = np.arange(z.shape[0])
    order = np.argsort(-z, axis=1, kind="stable")
    margin = z[rows, y] - z[rows, target]
    scale = z[rows, order[:, 0]] - (z[rows, order[:, 2]] + z[rows, order[:, 3]]) / 2 + _DLR_FLOOR
    value = -margin / scale
    grad = np.zeros_like(z)
    np.add.at(grad, (rows, y), -1 / scale)
    np.add.at(grad, (rows, target), 1 / scale)
    np.add.at(grad, (rows, order[:, 0]), margin / scale**2)
    np.add.at(grad, (rows, order[:, 2]), -margin / scale**2 / 2)
    np.add.at(grad, (rows, order[:, 3]), -margin / scale**2 / 2)
    return value, grad


def _cross_entropy(logits: np.ndarray, y: np.ndarray | None, target: np.ndarray | None) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """The cross-entropy of y (untargeted) or minus that of the target, and its gradient."""
    z = logits.astype(np.float64)
    rows = np.arange(z.shape[0])
    own = target if target is not None else y
    value = -log_softmax(z, axis=1)[rows, own]
    grad = A._cross_entropy_ascent(z, y, target)
    return (value, grad) if target is None else (-value, grad)


def _margin(logits: np.ndarray, own: np.ndarray) -> np.ndarray:
    """z_own - max_{i != own} z_i: negative once another class wins."""
    z = logits.astype(np.float64)
    rows = np.arange(z.shape[0])
    others = z.copy()
    others[rows, own] = -np.inf
    return z[rows, own] - others.max(axis=1)


def _succeeded(logits: np.ndarray, y: np.ndarray | None, target: np.ndarray | None) -> np.ndarray:
    predicted = logits.argmax(axis=1)
    return predicted == target if target is not None else predicted != y


def _reached(logits: np.ndarray, y: np.ndarray, target: np.ndarray | None) -> np.ndarray:
    """Success of a call aimed at ``target`` if given, else away from the labels y."""
    return _succeeded(logits, None if target is not None else y, target)


def _ranked_classes(logits: np.ndarray, rank: int) -> np.ndarray:
    """The class each image's logits rank ``rank``-th (1: the top one)."""
    return np.argsort(-logits.astype(np.float64), axis=1, kind="stable")[:, rank - 1].astype(np.intp)


def _project(x_new: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    return np.clip(x + np.clip(x_new - x, -eps, eps), 0, 1).astype(x.dtype)


def _random_start(x: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x + rng.uniform(-eps, eps, size=x.shape).astype(x.dtype), 0, 1)


# ------------------------------------------------------------------ APGD


# A run attacks the images at the given indices: (x_adv for them, which succeeded).
Run = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def _until_broken(x: np.ndarray, runs: Iterable[Run]) -> np.ndarray:
    """Apply ``runs`` in turn, each to the images the ones before left
    unbroken; an image keeps the first successful result, or else the last
    run's. Restarts and AutoAttack's targets are all this loop."""
    x_adv = x.copy()
    left = np.arange(x.shape[0])
    for run in runs:
        if left.size == 0:
            break
        result, found = run(left)
        x_adv[left] = result
        left = left[~found]
    return x_adv


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD decides whether to halve its step:
    w_j = ceil(p_j * steps) with p_0 = 0, p_1 = 0.22 and
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); the intervals shrink
    from 22% of the budget to 6%."""
    steps = _checks.positive_int(steps, "steps")
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    points = sorted({math.ceil(q * steps - 1e-9) for q in p[1:] if q < 1})
    return [w for w in points if 0 < w < steps]


def _apgd_run(pixels: A._PixelModel, x: np.ndarray, start: np.ndarray, objective: Objective,
              success: Callable[[np.ndarray], np.ndarray], eps: float, steps: int,
              rho: float) -> tuple[np.ndarray, np.ndarray]:
    """One run of APGD from ``start``: (x_adv, succeeded). x_adv is the first
    successful iterate of an image, else the point of highest objective."""
    n, channels = x.shape[0], x.shape[1]
    momentum = 0.75
    checkpoints = set(apgd_checkpoints(steps))
    eta = np.full(n, 2 * eps)
    shape = (-1,) + (1,) * (x.ndim - 1)

    def evaluate(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits = pixels.logits(points)
        value, dlogits = objective(logits)
        return value, pixels.input_gradient(dlogits, channels), success(logits)

    x_k = start.copy()
    value, grad, won = evaluate(x_k)
    found = won.copy()
    x_adv = x.copy()
    x_adv[found] = x_k[found]
    best_value, x_best, grad_best = value.copy(), x_k.copy(), grad.copy()
    x_prev = x_k.copy()
    increases = np.zeros(n)
    last_checkpoint, eta_then, best_then = 0, eta.copy(), best_value.copy()
    for k in range(steps):
        if found.all():
            break  # later iterates cannot change what is returned
        step = (eta.reshape(shape) * np.sign(grad)).astype(x.dtype)
        z = _project(x_k + step, x, eps)
        if k == 0:
            x_new = z
        else:
            x_new = _project(x_k + momentum * (z - x_k) + (1 - momentum) * (x_k - x_prev), x, eps)
        new_value, new_grad, won = evaluate(x_new)
        fresh = won & ~found
        x_adv[fresh] = x_new[fresh]
        found |= won
        increases += new_value > value
        better = new_value > best_value
        best_value[better], x_best[better], grad_best[better] = new_value[better], x_new[better], new_grad[better]
        x_prev, x_k, value, grad = x_k, x_new, new_value, new_grad
        if k + 1 in checkpoints:
            # Halve the step where the objective rose in fewer than rho of the
            # steps since the last checkpoint, or where neither the step nor the
            # best value moved; those images go back to their best point.
            stalled = (eta == eta_then) & (best_value == best_then)
            halve = (increases < rho * (k + 1 - last_checkpoint)) | stalled
            eta_then = eta.copy()
            eta[halve] /= 2
            x_k[halve], x_prev[halve], grad[halve] = x_best[halve], x_best[halve], grad_best[halve]
            value[halve] = best_value[halve]
            increases[:] = 0
            last_checkpoint, best_then = k + 1, best_value.copy()
    x_adv[~found] = x_best[~found]
    return x_adv, found


class APGD(A.Attack):
    """Auto-PGD under L-infinity (Croce & Hein 2020), on the cross-entropy
    (``loss="ce"``) or the DLR loss (``loss="dlr"``).

    ``steps`` iterations: the first a plain projected sign step of size
    2 * eps, the next ones with momentum 0.75. At the checkpoints of
    :func:`apgd_checkpoints` an image's step halves, and it restarts from
    its best point, if its loss rose in fewer than ``rho`` of the steps
    since the last checkpoint or neither its step nor its best loss changed.
    Each of the ``restarts`` runs starts at a uniformly random point of the
    eps-ball (from ``seed``) and works on the images not broken yet.

    Returns, per image, the first iterate that succeeded, else the point of
    highest loss. Targeted (``target=``), the cross-entropy of the target is
    lowered or the targeted DLR loss raised (the label y is then the
    model's prediction).
    """

    name = "apgd-ce"

    def __init__(self, model: fastconv.Model, eps: float = 8 / 255, steps: int = 100, loss: str = "ce",
                 restarts: int = 1, rho: float = 0.75, seed: np.random.Generator | int | None = 0,
                 batch_size: int = 256) -> None:
        super().__init__(model, batch_size)
        if loss not in ("ce", "dlr"):
            raise ValueError(f"loss must be 'ce' or 'dlr', got {loss!r}")
        self.eps = A._eps(eps)
        self.steps = _checks.positive_int(steps, "steps")
        self.loss = loss
        self.restarts = _checks.positive_int(restarts, "restarts")
        self.rho = A._number(rho, "rho", 0.0)
        if self.rho > 1:
            raise ValueError(f"rho must be a fraction in [0, 1], got {rho!r}")
        self.seed = seed

    def _objective(self, y: np.ndarray, target: np.ndarray | None) -> Objective:
        if self.loss == "ce":
            return lambda logits: _cross_entropy(logits, None if target is not None else y, target)
        if target is not None:
            return lambda logits: targeted_dlr_loss(logits, y, target)
        return lambda logits: dlr_loss(logits, y)

    def _attack(self, pixels: A._PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        labels = y if y is not None else pixels.logits(x).argmax(axis=1).astype(np.intp)

        def run(left: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            xs, ys, ts = x[left], labels[left], None if target is None else target[left]
            return _apgd_run(pixels, xs, _random_start(xs, self.eps, rng), self._objective(ys, ts),
                             functools.partial(_reached, y=ys, target=ts), self.eps, self.steps, self.rho)

        return _until_broken(x, itertools.repeat(run, self.restarts))


class APGDDLR(APGD):
    """APGD on the DLR loss (APGD-DLR): :class:`APGD` with ``loss="dlr"``."""

    name = "apgd-dlr"

    def __init__(self, model: fastconv.Model, eps: float = 8 / 255, steps: int = 100, restarts: int = 1,
                 rho: float = 0.75, seed: np.random.Generator | int | None = 0, batch_size: int = 256) -> None:
        super().__init__(model, eps, steps, "dlr", restarts, rho, seed, batch_size)


class APGDT(A.Attack):
    """Targeted APGD on the DLR loss (APGD-T in AutoAttack).

    Untargeted (no ``target``), it runs once towards each of the ``targets``
    classes the model ranks highest for the clean image after the top one
    (the 2nd, 3rd, ... most likely), each run on the images not broken yet:
    an image is broken once it is misclassified. With ``target`` it runs
    towards that class, and succeeds when the model says it.
    """

    name = "apgd-t"

    def __init__(self, model: fastconv.Model, eps: float = 8 / 255, steps: int = 100, targets: int = 9,
                 restarts: int = 1, rho: float = 0.75, seed: np.random.Generator | int | None = 0,
                 batch_size: int = 256) -> None:
        super().__init__(model, batch_size)
        self.eps = A._eps(eps)
        self.steps = _checks.positive_int(steps, "steps")
        self.targets = _checks.positive_int(targets, "targets")
        self.restarts = _checks.positive_int(restarts, "restarts")
        self.rho = A._number(rho, "rho", 0.0)
        self.seed = seed

    def _attack(self, pixels: A._PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        clean = pixels.logits(x)
        labels = y if y is not None else clean.argmax(axis=1).astype(np.intp)
        if clean.shape[1] < 4:
            raise ValueError(f"APGD-T's loss needs at least 4 classes; this model has {clean.shape[1]}")
        if target is not None:
            goals = [target]
        else:
            goals = [_ranked_classes(clean, rank) for rank in range(2, min(self.targets + 1, clean.shape[1]) + 1)]

        def run(left: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            xs, ys, ts = x[left], labels[left], goal[left]
            aim = ts if target is not None else None
            return _apgd_run(pixels, xs, _random_start(xs, self.eps, rng),
                             functools.partial(targeted_dlr_loss, y=ys, target=ts),
                             functools.partial(_reached, y=ys, target=aim), self.eps, self.steps, self.rho)

        return _until_broken(x, (functools.partial(run, goal=goal) for goal in goals for _ in range(self.restarts)))


# ------------------------------------------------------------------ FAB


def linf_boundary_step(point: np.ndarray, w: np.ndarray, value: np.ndarray) -> np.ndarray:
    """The smallest step in L-infinity onto a hyperplane, inside the box [0, 1].

    For each image i: the delta of least max-norm with
    <w_i, delta> = -value_i (value_i: the hyperplane's function at point_i)
    and point_i + delta in [0, 1]. Moving coordinate j by t in the direction
    sign(-value_i * w_ij), until it reaches the box, changes the function by
    sum_j |w_ij| min(t, room_ij): a piecewise-linear function of t, solved
    exactly over the sorted rooms. Where even the whole box does not reach
    the hyperplane, the step goes as far as the box allows.
    """
    n = point.shape[0]
    p = point.reshape(n, -1).astype(np.float64)
    w2 = w.reshape(n, -1).astype(np.float64)
    need = -np.asarray(value, dtype=np.float64)
    direction = np.sign(w2) * np.sign(need)[:, None]
    room = np.where(direction > 0, 1 - p, np.where(direction < 0, p, 0.0))
    room = np.maximum(room, 0.0)
    weight = np.abs(w2) * (direction != 0)
    order = np.argsort(room, axis=1)
    room_sorted = np.take_along_axis(room, order, axis=1)
    weight_sorted = np.take_along_axis(weight, order, axis=1)
    reached_sorted = np.cumsum(weight_sorted * room_sorted, axis=1)
    weight_cum = np.cumsum(weight_sorted, axis=1)
    total = weight_cum[:, -1:]
    # reach(t) at t = each sorted room: saturated coordinates plus t times the rest
    reach = reached_sorted + room_sorted * (total - weight_cum)
    goal = np.abs(need)
    k = (reach < goal[:, None]).sum(axis=1)
    feasible = k < p.shape[1]
    rows = np.arange(n)
    below = np.maximum(k - 1, 0)
    saturated = np.where(k > 0, reached_sorted[rows, below], 0.0)
    free = np.where(k > 0, total[:, 0] - weight_cum[rows, below], total[:, 0])
    t = np.where(goal > 0, (goal - saturated) / np.maximum(free, 1e-300), 0.0)
    t = np.where(feasible, t, np.inf)
    delta = direction * np.minimum(t[:, None], room)
    return delta.reshape(point.shape)


class FAB(A.Attack):
    """Fast adaptive boundary attack under L-infinity (Croce & Hein 2020).

    Each of ``steps`` iterations linearizes, at the current point x_i, the
    boundary between the label c and a class s (the target, or for the
    untargeted attack the class whose linearized boundary is nearest,
    |f_s| / ||grad f_s||_1 with f_s = z_s - z_c), and takes its smallest
    L-infinity steps onto that hyperplane in [0, 1]: delta from x_i and
    delta_0 from the original x. The next point is

        x_{i+1} = clip((1 - a)(x_i + eta delta) + a (x + eta delta_0), 0, 1),
        a = min(||delta|| / (||delta|| + ||delta_0||), alpha_max),

    a pull towards x that keeps the perturbation small. A point that
    succeeds is kept if smaller than the best so far, and the search steps
    back towards x: x_{i+1} = (1 - beta) x + beta x_{i+1}. The first of the
    ``restarts`` runs starts at x, the next ones at random points of the
    eps-ball (from ``seed``).

    FAB looks for the smallest perturbation, but is used here at a budget:
    an image whose smallest perturbation found is larger than ``eps`` comes
    back unchanged. With ``targets`` (FAB-T, the standard suite's version),
    an untargeted call runs towards each of the ``targets`` classes ranked
    highest after the top one, and keeps the smallest success; with
    ``targets=None`` it is the untargeted FAB, which needs the gradient of
    every class at every step.
    """

    name = "fab-t"

    def __init__(self, model: fastconv.Model, eps: float = 8 / 255, steps: int = 100, targets: int | None = 9,
                 restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                 seed: np.random.Generator | int | None = 0, batch_size: int = 256) -> None:
        super().__init__(model, batch_size)
        self.eps = A._eps(eps)
        self.steps = _checks.positive_int(steps, "steps")
        self.targets = None if targets is None else _checks.positive_int(targets, "targets")
        self.restarts = _checks.positive_int(restarts, "restarts")
        self.alpha_max = A._number(alpha_max, "alpha_max", 0.0)
        if self.alpha_max > 1:
            raise ValueError(f"alpha_max must be a fraction in [0, 1], got {alpha_max!r}")
        self.eta = A._number(eta, "eta", 1.0)
        self.beta = A._number(beta, "beta", 0.0, strict=True)
        if self.beta > 1:
            raise ValueError(f"beta must be a fraction in (0, 1], got {beta!r}")
        self.seed = seed
        if targets is None:
            self.name = "fab"

    def _boundary(self, pixels: A._PixelModel, points: np.ndarray, own: np.ndarray,
                  goal: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(f, grad f) of the boundary to step to, at points: f = z_s - z_own."""
        n, channels = points.shape[0], points.shape[1]
        logits = pixels.logits(points).astype(np.float64)
        rows = np.arange(n)
        if goal is not None:
            seed = np.zeros_like(logits)
            seed[rows, goal] += 1
            seed[rows, own] -= 1
            return logits[rows, goal] - logits[rows, own], pixels.input_gradient(seed, channels).astype(np.float64)
        num_classes = logits.shape[1]
        grads = np.empty((num_classes,) + points.shape)
        for k in range(num_classes):
            if k > 0:
                pixels.logits(points)  # the forward pass each backward goes through
            seed = np.zeros_like(logits)
            seed[:, k] = 1
            grads[k] = pixels.input_gradient(seed, channels)
        f = logits - logits[rows, own][:, None]
        w = grads - grads[own, rows][None]
        dual = np.abs(w.reshape(num_classes, n, -1)).sum(axis=2).T
        distance = np.abs(f) / (dual + 1e-12)
        distance[rows, own] = np.inf
        s = distance.argmin(axis=1)
        return f[rows, s], w[s, rows]

    def _run(self, pixels: A._PixelModel, x: np.ndarray, own: np.ndarray, goal: np.ndarray | None,
             aim: np.ndarray | None, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One run: (best successful point, its L-infinity size; inf where none)."""
        n = x.shape[0]
        shape = (-1,) + (1,) * (x.ndim - 1)
        best = x.copy()
        size = np.full(n, np.inf)
        x_i = start.copy()
        for _ in range(self.steps):
            f, w = self._boundary(pixels, x_i, own, goal)
            delta = linf_boundary_step(x_i, w, f)
            # the same hyperplane, seen from the original image
            f_orig = f + (w * (x - x_i)).reshape(n, -1).sum(axis=1)
            delta_orig = linf_boundary_step(x, w, f_orig)
            d_now = np.abs(delta.reshape(n, -1)).max(axis=1)
            d_orig = np.abs(delta_orig.reshape(n, -1)).max(axis=1)
            total = d_now + d_orig
            a = np.where(total > 0, np.minimum(d_now / np.where(total > 0, total, 1), self.alpha_max), 0.0)
            a = a.reshape(shape)
            moved = (1 - a) * (x_i + self.eta * delta) + a * (x + self.eta * delta_orig)
            x_i = np.clip(moved, 0, 1).astype(x.dtype)
            won = _succeeded(pixels.logits(x_i), own if aim is None else None, aim)
            norm = np.abs((x_i.astype(np.float64) - x).reshape(n, -1)).max(axis=1)
            smaller = won & (norm < size)
            best[smaller], size[smaller] = x_i[smaller], norm[smaller]
            x_i[won] = ((1 - self.beta) * x[won] + self.beta * x_i[won]).astype(x.dtype)
        return best, size

    def _attack(self, pixels: A._PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        clean = pixels.logits(x)
        own = y if y is not None else clean.argmax(axis=1).astype(np.intp)
        if target is not None:
            goals: list[np.ndarray | None] = [target]
        elif self.targets is None:
            goals = [None]
        else:
            goals = [_ranked_classes(clean, rank) for rank in range(2, min(self.targets + 1, clean.shape[1]) + 1)]
        best = x.copy()
        size = np.full(x.shape[0], np.inf)
        for goal in goals:
            for restart in range(self.restarts):
                start = x if restart == 0 else _random_start(x, self.eps, rng)
                candidate, length = self._run(pixels, x, own, goal, target, start)
                smaller = length < size
                best[smaller], size[smaller] = candidate[smaller], length[smaller]
        within = size <= self.eps
        return np.where(within.reshape((-1,) + (1,) * (x.ndim - 1)), best, x).astype(x.dtype)


# ------------------------------------------------------------------ Square


def square_fraction(step: int, queries: int, p_init: float) -> float:
    """The fraction of the image a Square attack's patch covers at a step: p_init
    halved at fixed points of a 10,000-query schedule, rescaled to ``queries``."""
    it = int(step / queries * 10000)
    for k, threshold in enumerate((10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)):
        if it <= threshold:
            return p_init / 2**k
    return p_init / 512


class Square(A.Attack):
    """Square attack under L-infinity (Andriushchenko et al. 2020): a random
    search that asks the model only for its scores.

    It starts from vertical stripes of +-eps (one random sign per column
    and channel) and, for up to ``queries`` queries, sets a square window
    of each image's perturbation to +-eps (one random sign per channel),
    the window's side shrinking along :func:`square_fraction` from
    ``p_init`` of the image; a change is kept when it lowers the margin
    z_y - max_{i != y} z_i (targeted: max_{i != t} z_i - z_t). An image
    stops once the margin is negative. No gradient is ever computed.
    """

    name = "square"

    def __init__(self, model: fastconv.Model, eps: float = 8 / 255, queries: int = 5000, p_init: float = 0.8,
                 restarts: int = 1, seed: np.random.Generator | int | None = 0, batch_size: int = 256) -> None:
        super().__init__(model, batch_size)
        self.eps = A._eps(eps)
        self.queries = _checks.positive_int(queries, "queries")
        self.p_init = A._number(p_init, "p_init", 0.0, strict=True)
        if self.p_init > 1:
            raise ValueError(f"p_init must be a fraction in (0, 1], got {p_init!r}")
        self.restarts = _checks.positive_int(restarts, "restarts")
        self.seed = seed

    def _loss(self, logits: np.ndarray, y: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        return -_margin(logits, target) if target is not None else _margin(logits, y)

    def _run(self, pixels: A._PixelModel, x: np.ndarray, y: np.ndarray, target: np.ndarray | None,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n, channels, height, width = x.shape
        eps = x.dtype.type(self.eps)
        stripes = rng.choice(np.array([-eps, eps], dtype=x.dtype), size=(n, channels, 1, width))
        x_best = np.clip(x + stripes, 0, 1)
        loss = self._loss(pixels.logits(x_best), y, target)
        for step in range(1, self.queries):
            active = np.flatnonzero(loss >= 0)
            if active.size == 0:
                break
            side = int(round(math.sqrt(square_fraction(step, self.queries, self.p_init) * height * width)))
            side = min(max(side, 1), min(height, width) - 1) if min(height, width) > 1 else 1
            xa, xb = x[active], x_best[active]
            rows = rng.integers(0, height - side + 1, (active.size, 1, 1, 1))
            cols = rng.integers(0, width - side + 1, (active.size, 1, 1, 1))
            across, down = np.arange(width)[None, None, None, :], np.arange(height)[None, None, :, None]
            window = (down >= rows) & (down < rows + side) & (across >= cols) & (across < cols + side)
            candidate = xb
            redraw = np.ones(active.size, dtype=bool)
            # Draw again where the new window equals the current one: a query that would change nothing.
            for _ in range(10):
                signs = rng.choice(np.array([-eps, eps], dtype=x.dtype), size=(active.size, channels, 1, 1))
                proposal = np.where(window & redraw[:, None, None, None], np.clip(xa + signs, 0, 1), candidate)
                candidate = proposal
                redraw &= ~np.any(np.abs(proposal - xb) > 1e-7, axis=(1, 2, 3))
                if not redraw.any():
                    break
            new_loss = self._loss(pixels.logits(candidate), y[active],
                                  None if target is None else target[active])
            better = new_loss < loss[active]
            x_best[active[better]] = candidate[better]
            loss[active[better]] = new_loss[better]
        return x_best, loss < 0

    def _attack(self, pixels: A._PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        labels = y if y is not None else pixels.logits(x).argmax(axis=1).astype(np.intp)

        def run(left: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self._run(pixels, x[left], labels[left], None if target is None else target[left], rng)

        return _until_broken(x, itertools.repeat(run, self.restarts))


# ------------------------------------------------------------------ the standard sequence


class AutoAttack(A.Attack):
    """AutoAttack's standard version under L-infinity: APGD-CE, APGD-T,
    FAB-T and Square at one eps, each run on the images the ones before
    left correctly classified (Croce & Hein 2020).

    The paper's budgets are the defaults: 100 iterations of APGD-CE, of
    APGD-T towards each of 9 targets and of FAB-T towards each of 9
    targets, and 5,000 queries of Square, one restart each. ``steps`` and
    ``queries`` change them (the quick settings of a test or a preview).

    Called as an attack, it returns the adversarial images (the first
    component's success for each image, or the image itself where all
    failed); :meth:`evaluate` also reports the robust accuracy after each
    component.
    """

    name = "autoattack"

    def __init__(self, model: fastconv.Model, eps: float = 8 / 255, steps: int = 100, queries: int = 5000,
                 targets: int = 9, seed: np.random.Generator | int | None = 0, batch_size: int = 256) -> None:
        super().__init__(model, batch_size)
        self.eps = A._eps(eps)
        self.steps = _checks.positive_int(steps, "steps")
        self.queries = _checks.positive_int(queries, "queries")
        self.targets = _checks.positive_int(targets, "targets")
        self.seed = seed

    def components(self) -> list[A.Attack]:
        """The standard sequence, built on this attack's model, eps and budgets."""
        options = {"seed": self.seed, "batch_size": self.batch_size}
        return [
            APGD(self.model, self.eps, self.steps, loss="ce", **options),
            APGDT(self.model, self.eps, self.steps, targets=self.targets, **options),
            FAB(self.model, self.eps, self.steps, targets=self.targets, **options),
            Square(self.model, self.eps, self.queries, **options),
        ]

    def evaluate(self, x: np.ndarray, y: ArrayLike, individual: bool = False,
                 progress: Callable[[str], object] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Run the sequence on images x with labels y; return (x_adv, report).

        The report holds ``images``, ``eps``, ``clean_accuracy``,
        ``robust_accuracy`` (after the whole sequence) and ``sequence``: per
        component, in order, its name, the robust accuracy after it and its
        seconds. With ``individual``, ``individual`` also holds each
        component's robust accuracy when it runs alone on every image.
        """
        x = A.check_pixels(self.model, x)
        n = x.shape[0]
        labels = A._class_array(y, n, A._num_classes(self.model, x.shape), "label")
        robust = A.predict_pixels(self.model, x, self.batch_size).argmax(axis=1) == labels
        report: dict[str, Any] = {"images": int(n), "eps": self.eps, "clean_accuracy": float(robust.mean()),
                                  "sequence": []}
        if progress:
            progress(f"clean: {report['clean_accuracy']:.4f}")
        x_adv = x.copy()
        for attack in self.components():
            started = time.perf_counter()
            left = np.flatnonzero(robust)
            if left.size:
                attempt = attack(x[left], labels[left])
                broken = A.predict_pixels(self.model, attempt, self.batch_size).argmax(axis=1) != labels[left]
                x_adv[left[broken]] = attempt[broken]
                robust[left[broken]] = False
            report["sequence"].append({"attack": attack.name, "robust_accuracy": float(robust.mean()),
                                       "seconds": time.perf_counter() - started})
            if progress:
                progress(f"after {attack.name}: {robust.mean():.4f}")
        report["robust_accuracy"] = float(robust.mean())
        if individual:
            correct = A.predict_pixels(self.model, x, self.batch_size).argmax(axis=1) == labels
            report["individual"] = {}
            for attack in self.components():
                started = time.perf_counter()
                held = correct.copy()
                left = np.flatnonzero(correct)
                if left.size:
                    attempt = attack(x[left], labels[left])
                    held[left] = A.predict_pixels(self.model, attempt, self.batch_size).argmax(axis=1) == labels[left]
                report["individual"][attack.name] = {"robust_accuracy": float(held.mean()),
                                                     "seconds": time.perf_counter() - started}
                if progress:
                    progress(f"{attack.name} alone: {held.mean():.4f}")
        return x_adv, report

    def _attack(self, pixels: A._PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        if target is not None:
            raise ValueError("AutoAttack's standard sequence is untargeted; call it without target")
        labels = y if y is not None else pixels.logits(x).argmax(axis=1).astype(np.intp)
        x_adv = x.copy()
        robust = pixels.logits(x).argmax(axis=1) == labels
        for attack in self.components():
            left = np.flatnonzero(robust)
            if left.size == 0:
                break
            attempt = attack._attack(pixels, x[left], labels[left], None, attack._rng())
            broken = pixels.logits(attempt).argmax(axis=1) != labels[left]
            x_adv[left[broken]] = attempt[broken]
            robust[left[broken]] = False
        return x_adv


A.ATTACKS.update({"apgd-ce": APGD, "apgd-dlr": APGDDLR, "apgd-t": APGDT, "fab-t": FAB, "square": Square,
                  "autoattack": AutoAttack})
