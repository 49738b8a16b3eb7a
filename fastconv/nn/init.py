"""Weight initializations, filled in place from a ``numpy.random.Generator``.

The distributions follow PyTorch's ``torch.nn.init``: for a weight of shape
``(out, in, *kernel)``, ``fan_in = in * prod(kernel)`` and ``fan_out = out * prod(kernel)``.

Every function takes ``rng``: a ``numpy.random.Generator``, an int seed or
None (fresh OS entropy), and returns the array it filled.
"""
from __future__ import annotations

import math

import numpy as np

from fastconv import _checks

__all__ = [
    "as_generator", "calculate_gain", "fans",
    "kaiming_normal_", "kaiming_uniform_", "xavier_normal_", "xavier_uniform_", "uniform_",
]

_NONLINEARITIES = ("linear", "conv2d", "sigmoid", "tanh", "relu", "leaky_relu")
_MODES = ("fan_in", "fan_out")


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A numpy Generator from a Generator, an int seed or None."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {rng!r}")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain that keeps activations' variance stable through `nonlinearity`.

    ``param`` is the negative slope of 'leaky_relu' (default 0.01).
    """
    if nonlinearity in ("linear", "conv2d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise TypeError(f"negative slope must be a number, got {slope!r}")
        return math.sqrt(2.0 / (1.0 + slope ** 2))
    raise ValueError(f"nonlinearity must be one of {_NONLINEARITIES}, got {nonlinearity!r}")


def fans(array: np.ndarray) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shaped ``(out, in, *kernel)``."""
    if array.ndim < 2:
        raise ValueError(f"fan in and fan out need an array of at least 2 dimensions, got shape {array.shape}")
    receptive_field = int(np.prod(array.shape[2:], dtype=np.int64))
    return array.shape[1] * receptive_field, array.shape[0] * receptive_field


def _target(array: np.ndarray) -> np.ndarray:
    _checks.float_array(array, "array")
    if array.size == 0:
        raise ValueError(f"cannot initialize an empty array of shape {array.shape}")
    return array


def _fan(array: np.ndarray, mode: str) -> int:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    fan_in, fan_out = fans(array)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(array: np.ndarray, rng: np.random.Generator | int | None, low: float, high: float) -> np.ndarray:
    """Fill with U(low, high)."""
    _target(array)
    array[...] = as_generator(rng).uniform(low, high, size=array.shape)
    return array


def kaiming_uniform_(array: np.ndarray, rng: np.random.Generator | int | None, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu") -> np.ndarray:
    """He initialization, uniform: U(-b, b) with b = gain * sqrt(3 / fan)."""
    _target(array)
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / _fan(array, mode))
    return uniform_(array, rng, -bound, bound)


def kaiming_normal_(array: np.ndarray, rng: np.random.Generator | int | None, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu") -> np.ndarray:
    """He initialization, normal: N(0, std^2) with std = gain / sqrt(fan)."""
    _target(array)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(array, mode))
    array[...] = as_generator(rng).normal(0.0, std, size=array.shape)
    return array


def xavier_uniform_(array: np.ndarray, rng: np.random.Generator | int | None, gain: float = 1.0) -> np.ndarray:
    """Glorot initialization, uniform: U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out))."""
    _target(array)
    fan_in, fan_out = fans(array)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(array, rng, -bound, bound)


def xavier_normal_(array: np.ndarray, rng: np.random.Generator | int | None, gain: float = 1.0) -> np.ndarray:
    """Glorot initialization, normal: std = gain * sqrt(2 / (fan_in + fan_out))."""
    _target(array)
    fan_in, fan_out = fans(array)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    array[...] = as_generator(rng).normal(0.0, std, size=array.shape)
    return array
