"""Classification losses with PyTorch's semantics, and (log-)softmax.

A loss is called on a batch and returns its value, a :class:`LossValue`: a
Python float that can also backpropagate itself through the model that
computed the loss's input, as in PyTorch::

    loss_fn = CrossEntropyLoss()
    loss = loss_fn(model(x), labels)
    loss.backward()                       # gradients land in the model
    print(f"{loss:.4f}", loss.item())

The explicit way does the same in two steps: ``loss_fn.backward()`` returns
the gradient of the last value w.r.t. the loss's input, and the model
backpropagates it::

    loss_fn(model.forward(x), labels)
    model.backward(loss_fn.backward())
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from fastconv import _checks
from fastconv.nn.model import _Output, _output_source

if TYPE_CHECKING:
    from typing import Any

    from numpy.typing import ArrayLike

__all__ = ["softmax", "log_softmax", "CrossEntropyLoss", "NLLLoss", "LossValue"]

_REDUCTIONS = ("mean", "sum")


def _scores(array: np.ndarray, name: str) -> np.ndarray:
    _checks.float_array(array, name)
    _checks.nonempty_batch(array, name)
    return array


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(logits)) along ``axis``, stable for large logits."""
    _scores(logits, "logits")
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(logits) normalized along ``axis``, stable for large logits."""
    _scores(logits, "logits")
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _check_labels(labels: ArrayLike, scores: np.ndarray, name: str) -> np.ndarray:
    n, k = scores.shape
    return _checks.class_indices(labels, "label", (n,), k, context=f" for {name} of shape {scores.shape}")


def _check_probabilities(targets: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Class probabilities (N, K) for ``logits`` (N, K), in the logits' dtype."""
    if targets.shape != logits.shape:
        raise ValueError(f"class probabilities have shape {targets.shape}, expected the logits' shape {logits.shape}")
    if targets.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"class probabilities must be float32 or float64, got dtype {targets.dtype} "
                        "(one-hot rows as floats, or the class indices as an (N,) array)")
    bad = np.flatnonzero(~(targets >= 0) | ~np.isfinite(targets))
    if bad.size:
        where = np.unravel_index(int(bad[0]), targets.shape)
        raise ValueError(f"class probability {targets[where]} at index {tuple(int(i) for i in where)} "
                         "is not a finite number >= 0")
    return targets.astype(logits.dtype, copy=False)


class _CrossEntropyCache(NamedTuple):
    log_probs: np.ndarray
    labels: np.ndarray  # class indices (N,), or class probabilities (N, K)


class _NLLCache(NamedTuple):
    shape: tuple  # of the log-probabilities, whose values the gradient does not need
    dtype: np.dtype
    labels: np.ndarray


class LossValue(float):
    """What a loss returns: its value as a Python float, which also knows how
    to backpropagate itself, PyTorch-style.

    ``float(loss)``, ``loss.item()``, printing, formatting, arithmetic and
    comparisons work as on any float (their results are plain floats), and
    so do pickling and copying, which keep the number alone.

    ``loss.backward()`` sends the loss's gradient back through the model
    whose ``forward`` (or ``model(x)``) returned the loss's input, adding
    the parameter gradients into the model as ``model.backward(
    loss_fn.backward(), input_grad=False)`` does, bit for bit (the input
    gradient, which training does not need, is not computed; the explicit
    call gives it). The model is the one that returned that very array: a
    pass through ``forward(x, until=name)`` backpropagates from layer
    ``name``. RuntimeError, saying why, when backward cannot be right: the
    input was not an array a model's forward returned (a copy, a slice or a
    result computed from one, or ``predict``'s output, which keeps nothing
    for backward), the model has run another forward pass since, or the
    loss has been called again since.
    """

    # The loss and the number of its call that gave this value, rather than
    # the call's own cache, and the model by weak reference: values kept for a
    # plot hold no arrays and no model.
    _loss: _Loss
    _call: int
    _source: _Output | None

    def __new__(cls, value: float, loss: _Loss, source: _Output | None) -> LossValue:
        self = super().__new__(cls, value)
        self._loss = loss
        self._call = loss._calls
        self._source = source
        return self

    def item(self) -> float:
        """The value as a plain Python float, as ``float(loss)``."""
        return float(self)

    def backward(self) -> None:
        """Backpropagate this value through the model that computed the loss's
        input; the parameter gradients are added into the model's."""
        model = self._source.model() if self._source is not None else None
        if self._source is None or model is None:
            raise RuntimeError(
                "loss.backward() cannot tell which model computed the loss's input (or that model is gone): "
                "call the loss on the very array model(x) or model.forward(x) returned (not a copy, a slice or "
                "a result computed from it, nor predict's output, which keeps nothing for backward), or "
                "backpropagate explicitly with model.backward(loss_fn.backward())"
            )
        if model._forward_count != self._source.forward_count:
            raise RuntimeError(
                "the model has run another forward pass since it computed this loss's input, and its layers now "
                "hold that pass: call loss.backward() before the next forward pass"
            )
        passes = model._layer_passes(self._source.until)
        if passes != self._source.layer_passes:
            name = next(name for (name, _), now, then in zip(model.named_layers(), passes, self._source.layer_passes)
                        if now != then)
            raise RuntimeError(
                f"layer {name!r} has run another forward pass since the model computed this loss's input (it is "
                "shared with another model, a slice of this one say), and now holds that pass: call "
                "loss.backward() before running the layer again"
            )
        if self._loss._calls != self._call:
            raise RuntimeError(
                f"the {type(self._loss).__name__} has been called again since it gave this value: "
                "call backward() on its latest value"
            )
        model.backward(self._loss.backward(), start=self._source.until, input_grad=False)

    def __reduce__(self) -> tuple[type[float], tuple[float]]:
        return float, (float(self),)


class _Loss:
    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self._cache: _CrossEntropyCache | _NLLCache | None = None
        self._calls = 0  # how many values this loss has given, so that each knows whether it is the last

    def _value(self, value: float, scores: np.ndarray) -> LossValue:
        """``value`` as the LossValue of this call, whose input was ``scores``."""
        self._calls += 1
        return LossValue(value, self, _output_source(scores))

    def _check(self, scores: np.ndarray, labels: ArrayLike, name: str) -> np.ndarray:
        _checks.float_array(scores, name, 2)
        _checks.nonempty_batch(scores, name)
        return _check_labels(labels, scores, name)

    def _reduce(self, picked: np.ndarray) -> float:
        total = -picked.sum(dtype=np.float64)
        return float(total / picked.shape[0] if self.reduction == "mean" else total)

    def _scale(self, n: int, dtype: np.dtype) -> np.floating:
        return dtype.type(1.0 / n if self.reduction == "mean" else 1.0)

    def backward(self) -> np.ndarray:
        """Gradient of the last value w.r.t. the loss's input (for ``model.backward``)."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before the loss was computed")
        return self._gradient(self._cache)

    def _gradient(self, cache: Any) -> np.ndarray:
        raise NotImplementedError


class CrossEntropyLoss(_Loss):
    """-log softmax(logits)[label], averaged (reduction='mean') or summed over the batch.

    logits (N, K) float32/float64; labels (N,) ints in [0, K), or, as in
    PyTorch, class probabilities: a float array (N, K) of one-hot rows or
    soft targets (mixup, distillation, smoothed labels), for which the loss
    of row i is -sum_k labels[i, k] * log softmax(logits[i])[k] and the mean
    divides by N. The probabilities are taken in the logits' dtype.

    ``label_smoothing`` eps in [0, 1] mixes the targets with the uniform
    distribution as PyTorch's does: a label k becomes the probabilities
    (1 - eps) on k plus eps / K on every class, and class probabilities t
    become (1 - eps) * t + eps / K.
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(reduction)
        self.label_smoothing = _checks.real_number(label_smoothing, "label_smoothing", 0.0, 1.0)

    def __call__(self, logits: np.ndarray, labels: ArrayLike) -> LossValue:
        """The loss of ``logits`` (N, K) for ``labels``, class indices (N,) or
        class probabilities (N, K); keeps what ``backward()`` needs."""
        eps = self.label_smoothing
        targets = np.asarray(labels)
        if targets.ndim == 2:  # never class indices
            _checks.float_array(logits, "logits", 2)
            _checks.nonempty_batch(logits, "logits")
            targets = _check_probabilities(targets, logits)
            if eps:
                targets = targets * targets.dtype.type(1 - eps) + targets.dtype.type(eps / targets.shape[1])
            log_probs = log_softmax(logits, axis=1)
            self._cache = _CrossEntropyCache(log_probs, targets)
            return self._value(self._reduce((targets * log_probs).sum(axis=1)), logits)
        targets = self._check(logits, labels, "logits")
        log_probs = log_softmax(logits, axis=1)
        rows = np.arange(logits.shape[0])
        if eps:
            # The smoothed targets' loss without making them: (1 - eps) times
            # the label's term plus eps times the mean over the classes.
            picked = (1 - eps) * log_probs[rows, targets] + eps * log_probs.mean(axis=1, dtype=np.float64)
            self._cache = _CrossEntropyCache(log_probs, targets)
            return self._value(self._reduce(picked), logits)
        self._cache = _CrossEntropyCache(log_probs, targets)
        return self._value(self._reduce(log_probs[rows, targets]), logits)

    forward = __call__

    def _gradient(self, cache: _CrossEntropyCache) -> np.ndarray:
        grad = np.exp(cache.log_probs)
        if cache.labels.ndim == 2:
            # d/dz of -sum_k t_k log softmax(z)_k is softmax(z) * sum_k t_k - t
            grad *= cache.labels.sum(axis=1, keepdims=True)
            grad -= cache.labels
        else:
            eps = self.label_smoothing
            if eps:
                grad -= grad.dtype.type(eps / grad.shape[1])
            grad[np.arange(grad.shape[0]), cache.labels] -= grad.dtype.type(1 - eps)
        grad *= self._scale(grad.shape[0], grad.dtype)
        return grad


class NLLLoss(_Loss):
    """-log_probs[label], averaged (reduction='mean') or summed over the batch.

    log_probs (N, K), e.g. the output of a LogSoftmax layer; labels (N,) ints in [0, K).
    """

    def __call__(self, log_probs: np.ndarray, labels: ArrayLike) -> LossValue:
        """The loss of ``log_probs`` (N, K) for ``labels`` (N,); keeps what ``backward()`` needs."""
        labels = self._check(log_probs, labels, "log_probs")
        self._cache = _NLLCache(log_probs.shape, log_probs.dtype, labels)
        return self._value(self._reduce(log_probs[np.arange(log_probs.shape[0]), labels]), log_probs)

    forward = __call__

    def _gradient(self, cache: _NLLCache) -> np.ndarray:
        n = cache.shape[0]
        grad = np.zeros(cache.shape, dtype=cache.dtype)
        grad[np.arange(n), cache.labels] = -self._scale(n, cache.dtype)
        return grad
