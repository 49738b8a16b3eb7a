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


# ---------------------------------------------------------------------------
# Initializations that need no random numbers: identity and data-dependent.

__all__ += ["dirac_", "patch_whitening_"]


def dirac_(array: np.ndarray, groups: int = 1) -> np.ndarray:
    """Fill a convolution weight ``(out, in, *kernel)`` so that the convolution
    passes its input through: zeros, and a 1 at the kernel's centre from
    input channel d to output channel d of each group (``torch.nn.init.dirac_``).

    Output channels past the input's are left zero. Apply it to a slice,
    ``dirac_(weight[:in_channels])``, for the partial identity the airbench
    networks start from: the first filters copy the input, the rest keep
    their random initialization.
    """
    _target(array)
    if array.ndim not in (3, 4, 5):
        raise ValueError(f"dirac_ needs a convolution weight of 3 to 5 dimensions, got shape {array.shape}")
    groups = _checks.positive_int(groups, "groups")
    if array.shape[0] % groups:
        raise ValueError(f"{array.shape[0]} output channels do not split into {groups} groups")
    per_group = array.shape[0] // groups
    centre = tuple(k // 2 for k in array.shape[2:])
    array[...] = 0
    for g in range(groups):
        for d in range(min(per_group, array.shape[1])):
            array[(g * per_group + d, d) + centre] = 1
    return array


def patch_whitening_(array: np.ndarray, images: np.ndarray, eps: float = 5e-4,
                     chunk: int = 512) -> np.ndarray:
    """Fill a convolution weight (2*D, C, KH, KW), D = C*KH*KW, with the
    whitening filters of the images' KH x KW patches, as the first layer of
    the airbench networks (Jordan, 2024).

    The covariance of every patch of ``images`` (N, C, H, W, the network's
    normalized input) is computed in float64; filter i is its i-th
    eigenvector, largest eigenvalue first, divided by sqrt(eigenvalue + eps),
    and filter D + i is its negation, so that a rectifying activation after
    the layer loses neither sign. The first D filters map the patches to
    components of variance eigenvalue / (eigenvalue + eps): about 1 where
    the images vary, and the rarer directions damped rather than blown up.
    An eigenvector's sign is arbitrary; NumPy's is kept.
    """
    _target(array)
    if array.ndim != 4:
        raise ValueError(f"patch_whitening_ needs a convolution weight (out, in, KH, KW), got shape {array.shape}")
    out_channels, channels, kh, kw = array.shape
    dim = channels * kh * kw
    if out_channels != 2 * dim:
        raise ValueError(f"a whitening layer of {channels} channels and {kh}x{kw} patches has {2 * dim} "
                         f"filters (each eigenvector and its negation), got {out_channels}")
    _checks.float_array(images, "images", 4)
    if images.shape[1] != channels:
        raise ValueError(f"images have {images.shape[1]} channels, the weight takes {channels}")
    if images.shape[2] < kh or images.shape[3] < kw:
        raise ValueError(f"images of {images.shape[2]}x{images.shape[3]} pixels hold no {kh}x{kw} patch")
    eps = _checks.real_number(eps, "eps", low_open=True)
    chunk = _checks.positive_int(chunk, "chunk")
    total = np.zeros(dim)
    products = np.zeros((dim, dim))
    count = 0
    for start in range(0, len(images), chunk):
        windows = np.lib.stride_tricks.sliding_window_view(images[start:start + chunk], (kh, kw), axis=(2, 3))
        # (n, C, OH, OW, KH, KW) -> one row per patch, in the weight's (C, KH, KW) order
        patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, dim).astype(np.float64)
        total += patches.sum(axis=0)
        products += patches.T @ patches
        count += len(patches)
    if count < 2:
        raise ValueError(f"{count} patch is too few for a covariance")
    mean = total / count
    covariance = (products - count * np.outer(mean, mean)) / (count - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues = np.maximum(eigenvalues[order], 0.0)
    filters = (eigenvectors[:, order] / np.sqrt(eigenvalues + eps)).T.reshape(dim, channels, kh, kw)
    array[:dim] = filters
    array[dim:] = -filters
    return array
