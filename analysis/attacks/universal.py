"""Universal adversarial perturbations: one perturbation, the same for every
image, that changes the network's decision on most of them (Moosavi-Dezfooli
et al. 2017, "Universal adversarial perturbations").

Moosavi-Dezfooli et al. build it by running DeepFool image after image and
projecting the sum on the eps-ball. Here it is found the way Shafahi et al.
2020 ("Universal adversarial training") do: stochastic gradient ascent on
the perturbation, with sign steps and the projection after each, over
mini-batches of the images, on the cross-entropy clipped at ``clip`` so
that the images already fooled stop pulling the perturbation their way.
That needs one gradient per image and batch instead of a DeepFool run per
image, and reaches comparable fooling rates.

:func:`universal_perturbation` returns the perturbation (C, H, W);
:func:`fooling_rate` measures it on other images; :class:`UniversalPerturbation`
is the same as an :class:`~fastconv.analysis.attacks.Attack`, which fits one
perturbation to the whole batch it is called on.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from fastconv import _checks
from fastconv.analysis import _common as C
from fastconv.analysis.attacks import methods as A
from fastconv.nn.losses import softmax

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    import fastconv

__all__ = ["universal_perturbation", "fooling_rate", "UniversalPerturbation"]


def universal_perturbation(model: fastconv.Model, x: np.ndarray, y: ArrayLike | None = None, eps: float = 8 / 255,
                           epochs: int = 5, batch_size: int = 32, alpha: float | None = None, clip: float = 10.0,
                           seed: np.random.Generator | int | None = 0,
                           progress: Callable[[str], object] | None = None) -> np.ndarray:
    """One L-infinity perturbation of size ``eps`` (shape x.shape[1:]) that
    raises the loss of the labels y (default: the model's predictions) on all
    of the [0, 1] images x.

    ``epochs`` passes over x in shuffled mini-batches of ``batch_size``
    (from ``seed``); each batch moves the perturbation by ``alpha`` (default
    eps / 4) along the sign of the gradient of the batch's summed
    cross-entropy, each image's clipped at ``clip``, then clips it to the
    eps-ball.
    """
    x = A.check_pixels(model, x)
    eps = A._eps(eps)
    epochs = _checks.positive_int(epochs, "epochs")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    step = eps / 4 if alpha is None else A._number(alpha, "alpha", 0.0, strict=True)
    clip = A._number(clip, "clip", 0.0, strict=True)
    n = x.shape[0]
    num_classes = A._num_classes(model, x.shape)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    delta = np.zeros(x.shape[1:], dtype=x.dtype)
    with C.evaluating(model):
        pixels = A._PixelModel(model)
        if y is None:
            labels = model.predict(pixels.inputs(x)).argmax(axis=1).astype(np.intp)
        else:
            labels = A._class_array(y, n, num_classes, "label")
        for epoch in range(epochs):
            order = rng.permutation(n)
            for start, stop in C.batches(n, batch_size):
                chosen = order[start:stop]
                xb = np.clip(x[chosen] + delta, 0, 1)
                logits = pixels.logits(xb)
                p = softmax(logits.astype(np.float64), axis=1)
                rows = np.arange(len(chosen))
                loss = -np.log(np.maximum(p[rows, labels[chosen]], 1e-300))
                # Images whose loss passed the clip are fooled enough: they no longer steer.
                dlogits = A._cross_entropy_ascent(logits, labels[chosen], None) * (loss < clip)[:, None]
                grad = pixels.input_gradient(dlogits, x.shape[1]).sum(axis=0)
                delta = np.clip(delta + x.dtype.type(step) * np.sign(grad).astype(x.dtype), -eps, eps)
            if progress:
                progress(f"epoch {epoch + 1}: fooling rate {fooling_rate(model, x, delta):.4f}")
    return delta


def fooling_rate(model: fastconv.Model, x: np.ndarray, delta: np.ndarray, batch_size: int = 256) -> float:
    """The fraction of the [0, 1] images x whose predicted class changes when
    ``delta`` (one perturbation, shape x.shape[1:]) is added (and the result
    clipped to [0, 1])."""
    x = A.check_pixels(model, x)
    delta = np.asarray(delta)
    if delta.shape != x.shape[1:]:
        raise ValueError(f"delta must have the shape of one image, {x.shape[1:]}, got {delta.shape}")
    clean = A.predict_pixels(model, x, batch_size).argmax(axis=1)
    moved = A.predict_pixels(model, np.clip(x + delta.astype(x.dtype), 0, 1), batch_size).argmax(axis=1)
    return float((clean != moved).mean())


class UniversalPerturbation(A.Attack):
    """The universal perturbation as an attack: called on a batch, it fits one
    perturbation to all of it (:func:`universal_perturbation`) and returns
    the batch with it added; the perturbation stays in ``delta``. Untargeted
    only."""

    name = "universal"

    def __init__(self, model: fastconv.Model, eps: float = 8 / 255, epochs: int = 5, alpha: float | None = None,
                 clip: float = 10.0, seed: np.random.Generator | int | None = 0, batch_size: int = 32) -> None:
        super().__init__(model, batch_size)
        self.eps = A._eps(eps)
        self.epochs = _checks.positive_int(epochs, "epochs")
        self.alpha = None if alpha is None else A._number(alpha, "alpha", 0.0, strict=True)
        self.clip = A._number(clip, "clip", 0.0, strict=True)
        self.seed = seed
        self._delta: np.ndarray | None = None

    @property
    def delta(self) -> np.ndarray | None:
        """The perturbation fitted by the last call (None before the first)."""
        return self._delta

    def __call__(self, x: np.ndarray, y: ArrayLike | None = None, target: ArrayLike | None = None) -> np.ndarray:
        if target is not None:
            raise ValueError("the universal perturbation is untargeted; call it without target")
        x = A.check_pixels(self.model, x)
        self._delta = universal_perturbation(self.model, x, y, self.eps, self.epochs, self.batch_size, self.alpha,
                                             self.clip, self._rng())
        return np.clip(x + self._delta, 0, 1).astype(x.dtype)


A.ATTACKS["universal"] = UniversalPerturbation
