"""Classification losses with PyTorch's semantics, and (log-)softmax.

A loss is called on a batch, returns a Python float, and ``backward()`` then
returns the gradient of that value w.r.t. the loss's input::

    loss = CrossEntropyLoss()
    value = loss(logits, labels)
    model.backward(loss.backward())
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from fastconv import _checks

if TYPE_CHECKING:
    from typing import Any

    from numpy.typing import ArrayLike

__all__ = ["softmax", "log_softmax", "CrossEntropyLoss", "NLLLoss"]

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


class _CrossEntropyCache(NamedTuple):
    log_probs: np.ndarray
    labels: np.ndarray


class _NLLCache(NamedTuple):
    shape: tuple  # of the log-probabilities, whose values the gradient does not need
    dtype: np.dtype
    labels: np.ndarray


class _Loss:
    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self._cache: _CrossEntropyCache | _NLLCache | None = None

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
        """Gradient of the last value w.r.t. the loss's input."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before the loss was computed")
        return self._gradient(self._cache)

    def _gradient(self, cache: Any) -> np.ndarray:
        raise NotImplementedError


class CrossEntropyLoss(_Loss):
    """-log softmax(logits)[label], averaged (reduction='mean') or summed over the batch.

    logits (N, K) float32/float64, labels (N,) ints in [0, K).
    """

    def __call__(self, logits: np.ndarray, labels: ArrayLike) -> float:
        """The loss of ``logits`` (N, K) for ``labels`` (N,); keeps what ``backward()`` needs."""
        labels = self._check(logits, labels, "logits")
        log_probs = log_softmax(logits, axis=1)
        rows = np.arange(logits.shape[0])
        self._cache = _CrossEntropyCache(log_probs, labels)
        return self._reduce(log_probs[rows, labels])

    forward = __call__

    def _gradient(self, cache: _CrossEntropyCache) -> np.ndarray:
        grad = np.exp(cache.log_probs)
        grad[np.arange(grad.shape[0]), cache.labels] -= 1
        grad *= self._scale(grad.shape[0], grad.dtype)
        return grad


class NLLLoss(_Loss):
    """-log_probs[label], averaged (reduction='mean') or summed over the batch.

    log_probs (N, K), e.g. the output of a LogSoftmax layer; labels (N,) ints in [0, K).
    """

    def __call__(self, log_probs: np.ndarray, labels: ArrayLike) -> float:
        """The loss of ``log_probs`` (N, K) for ``labels`` (N,); keeps what ``backward()`` needs."""
        labels = self._check(log_probs, labels, "log_probs")
        self._cache = _NLLCache(log_probs.shape, log_probs.dtype, labels)
        return self._reduce(log_probs[np.arange(log_probs.shape[0]), labels])

    forward = __call__

    def _gradient(self, cache: _NLLCache) -> np.ndarray:
        n = cache.shape[0]
        grad = np.zeros(cache.shape, dtype=cache.dtype)
        grad[np.arange(n), cache.labels] = -self._scale(n, cache.dtype)
        return grad
