"""Argument checks shared by both backends, so that they reject the same input
with the same message.

Every error a user can trigger names the offending value. Shapes are NCHW.
"""
from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from numpy.typing import ArrayLike

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def pair(value: Any, name: str) -> tuple[int, int]:
    """Normalize an int or a 2-sequence of ints to a tuple (a, b)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    for v in (a, b):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(a), int(b)


def float_array(x: object, name: str, ndim: int | None = None) -> np.ndarray:
    """Return x as an ndarray of float32 or float64 (never cast), checking its ndim."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    return x


def same_dtype(ref: np.ndarray, other: np.ndarray, name: str) -> None:
    if other.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {other.dtype} but the input is {ref.dtype}")


def nonempty_batch(x: np.ndarray, name: str = "x") -> None:
    if x.size == 0:
        raise ValueError(f"{name} has a zero-size dimension: shape {x.shape}")


def window_geometry(x_shape: Sequence[int], kernel_size: int | Sequence[int], stride: int | Sequence[int],
                    padding: int | Sequence[int],
                    what: str = "kernel") -> tuple[int, int, int, int, int, int, int, int]:
    """Check a sliding-window geometry and return (KH, KW, SH, SW, PH, PW, OH, OW).

    OH = 1 + (H + 2*PH - KH) // SH, OW likewise.
    """
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size must be positive, got {(kh, kw)}")
    if sh < 1 or sw < 1:
        raise ValueError(f"stride must be positive, got {(sh, sw)}")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be non-negative, got {(ph, pw)}")
    # Python ints: a NumPy int32 extent would wrap around in h + 2 * ph.
    h, w = operator.index(x_shape[-2]), operator.index(x_shape[-1])
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ValueError(
            f"{what} {(kh, kw)} is larger than the padded input {(h + 2 * ph, w + 2 * pw)} "
            f"(input {(h, w)}, padding {(ph, pw)})"
        )
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (w + 2 * pw - kw) // sw + 1
    return kh, kw, sh, sw, ph, pw, oh, ow


# Values past which a convolution's per-image buffers are refused. 2**48 floats
# is a petabyte, more than any machine holds, and every size derived from one
# of them (times a thread count, a vector width, an item size) stays far below
# 2**63: the C kernels compute such sizes in int64, and a product that wrapped
# around would give them a buffer too small for what they write into it.
LARGEST_IMAGE_BUFFER = 2 ** 48


def _input_weight_bias(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, ndim: int, inputs: str,
                      groups: int = 1) -> None:
    """The checks a convolution and a fully connected layer share: x and weight
    ndim-D arrays of one float dtype, a nonempty batch, weight's axis 1 times
    ``groups`` matching x's (its `inputs`: channels or features), weight's
    axis 0 a multiple of ``groups``, bias (weight.shape[0],) or None."""
    float_array(x, "x", ndim)
    float_array(weight, "weight", ndim)
    same_dtype(x, weight, "weight")
    nonempty_batch(x)
    if weight.size == 0:
        raise ValueError(f"weight has a zero-size dimension: shape {weight.shape}")
    if x.shape[1] != weight.shape[1] * groups:
        with_groups = f" with groups {groups}" if groups != 1 else ""
        raise ValueError(
            f"input has {x.shape[1]} {inputs} but weight {weight.shape}{with_groups} "
            f"expects {weight.shape[1] * groups}"
        )
    if weight.shape[0] % groups:
        raise ValueError(f"weight {weight.shape} has {weight.shape[0]} filters, "
                         f"which is not divisible by groups {groups}")
    if bias is not None:
        float_array(bias, "bias", 1)
        same_dtype(x, bias, "bias")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has shape {bias.shape}, expected ({weight.shape[0]},)")


def conv_groups(groups: object, in_channels: int, out_channels: int) -> int:
    """``groups`` as an int >= 1 that divides both in_channels and out_channels:
    a TypeError for a non-integer, a ValueError naming the count it does not divide."""
    count = positive_int(groups, "groups")
    for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
        if channels % count:
            raise ValueError(f"{name} {channels} is not divisible by groups {count}")
    return count


def conv_args(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int | Sequence[int],
              padding: int | Sequence[int], groups: int = 1) -> tuple[int, int, int, int, int, int, int, int]:
    """Validate a convolution call of weight (F, C/groups, KH, KW) on x (N, C, H, W)
    split into ``groups`` groups of channels; return the window geometry."""
    groups = positive_int(groups, "groups")
    _input_weight_bias(x, weight, bias, 4, "channels", groups)
    geometry = window_geometry(x.shape, weight.shape[2:], stride, padding)
    kh, kw, sh, sw, ph, pw, oh, ow = geometry
    _, c, h, w = x.shape
    f = weight.shape[0]
    buffers = {
        "padded image": c * (h + 2 * ph) * (w + 2 * pw),
        "unfolded image": c * kh * kw * oh * ow,
        "output on the padded width": f * oh * (w + 2 * pw),
        "padded output gradient": f * (oh + 2 * kh) * (ow + 2 * kw),
    }
    for what, size in buffers.items():
        if size > LARGEST_IMAGE_BUFFER:
            raise ValueError(
                f"convolving {(c, h, w)} images with a {(kh, kw)} kernel, stride {(sh, sw)} and "
                f"padding {(ph, pw)} needs a {what} of {size} values: too large"
            )
    return geometry


def linear_args(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> None:
    """Validate a fully connected layer's call: x (N, in_features), weight
    (out_features, in_features), bias (out_features,) or None."""
    _input_weight_bias(x, weight, bias, 2, "features")
    # The compiled kernel holds x and y transposed, the batch padded to whole
    # vectors and x's rows one vector more (at most 31 more values a row).
    padded_batch = x.shape[0] + 32
    if max(weight.shape) * padded_batch > LARGEST_IMAGE_BUFFER:
        raise ValueError(
            f"a batch of {x.shape[0]} through a {weight.shape[1]} -> {weight.shape[0]} layer "
            f"needs a transposed batch of {max(weight.shape) * padded_batch} values: too large"
        )


def image_shape(x_shape: Sequence[int], name: str = "x_shape") -> tuple[int, ...]:
    """x_shape (N, C, H, W) as a tuple of four positive Python ints.

    For the backward kernels that are told the input's shape rather than given
    the input: a float, a bool or a fifth entry is refused, never truncated.
    """
    try:
        values = tuple(x_shape)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of 4 ints (N, C, H, W), got {x_shape!r}") from None
    if len(values) != 4:
        raise ValueError(f"{name} must have 4 entries (N, C, H, W), got {x_shape!r}")
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be a sequence of 4 ints (N, C, H, W), got {x_shape!r}")
    shape = tuple(int(v) for v in values)
    if min(shape) < 1:
        raise ValueError(f"{name} must be positive, got {shape}")
    return shape


def pool_geometry(x_shape: Sequence[int], kernel_size: int | Sequence[int], stride: int | Sequence[int] | None,
                  padding: int | Sequence[int]) -> tuple[int, int, int, int, int, int, int, int]:
    """Check a pooling window over planes of x_shape[-2:]; stride None means stride =
    kernel_size. Needs the shape only, so a backward pass can check an input that
    is too large to exist."""
    if stride is None:
        stride = kernel_size
    geometry = window_geometry(x_shape, kernel_size, stride, padding, what="pooling window")
    kh, kw, _, _, ph, pw, _, _ = geometry
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"padding {(ph, pw)} must be at most half the pooling window {(kh, kw)}")
    return geometry


def pool_args(x: np.ndarray, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None,
              padding: int | Sequence[int]) -> tuple[int, int, int, int, int, int, int, int]:
    """Validate a pooling call; stride None means stride = kernel_size."""
    float_array(x, "x", 4)
    nonempty_batch(x)
    return pool_geometry(x.shape, kernel_size, stride, padding)


def matching_shape(a: object, a_name: str, shape: Sequence[int], what: str) -> None:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{a_name} must be a numpy.ndarray, got {type(a).__name__}")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{a_name} has shape {a.shape}, expected {tuple(shape)} ({what})")


def channel_epilogue(y: object, relu: object, scale: object, shift: object, in_place: bool = True) -> bool:
    """Check the arguments of conv2d_epilogue (and, ``in_place`` False, the
    epilogue part of epilogue_maxpool's); returns relu as a bool."""
    y = float_array(y, "y", 4)
    nonempty_batch(y, "y")
    if in_place and not (y.flags.c_contiguous and y.flags.writeable and y.flags.aligned):
        raise ValueError("y must be a C-contiguous, aligned and writeable array: the epilogue works in place")
    relu = flag(relu, "relu")
    if (scale is None) != (shift is None):
        given, missing = ("scale", "shift") if shift is None else ("shift", "scale")
        raise ValueError(f"scale and shift go together: {given} is given and {missing} is None (NoneType)")
    for name, p in (("scale", scale), ("shift", shift)):
        if p is not None:
            array = float_array(p, name, 1)
            same_dtype(y, array, name)
            if array.shape[0] != y.shape[1]:
                raise ValueError(f"{name} has shape {array.shape} but y has {y.shape[1]} channels")
    return relu


def batchnorm_params(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> None:
    float_array(x, "x", 4)
    nonempty_batch(x)
    c = x.shape[1]
    for name, p in (("weight", gamma), ("bias", beta)):
        float_array(p, name, 1)
        same_dtype(x, p, name)
        if p.shape[0] != c:
            raise ValueError(f"{name} has shape {p.shape} but the input has {c} channels")
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"eps must be a positive number, got {eps!r}")
    # The kernels use eps as a C double: an int beyond its range is refused here.
    try:
        float(eps)
    except OverflowError:
        raise ValueError(f"eps is too large for a float, got {eps!r}") from None
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")


def real_number(value: object, name: str, low: float = 0.0, high: float = math.inf, low_open: bool = False,
                high_open: bool = False) -> float:
    """value as a Python float in [low, high], either end open on request:
    TypeError unless a real number, ValueError naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float, got {value!r}") from None
    if not ((low < number if low_open else low <= number)
            and (number < high if high_open else number <= high)):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return number


def adam_args(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray, lr: float,
              beta1: float, beta2: float, eps: float, step: int) -> tuple[float, float, float, float, float, float]:
    """Validate an Adam update; return its scalars (1 - beta1, beta2, 1 - beta2,
    sqrt(1 - beta2**step), eps, lr / (1 - beta1**step)) as Python floats.

    param, exp_avg and exp_avg_sq are updated in place, so they must be
    writeable and C-contiguous, and no two of the four arrays may overlap.
    """
    float_array(param, "param")
    a: np.ndarray | str  # an array in the first two loops, a name in the third
    for name, a in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        float_array(a, name)
        same_dtype(param, a, name)
        matching_shape(a, name, param.shape, "the parameter")
    for name, a in (("param", param), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if not (a.flags.c_contiguous and a.flags.writeable and a.flags.aligned):
            raise ValueError(f"{name} is updated in place and must be a writeable, aligned, "
                             f"C-contiguous array; got one with strides {a.strides}")
    arrays = {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    names = list(arrays)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if arrays[a].size and np.may_share_memory(arrays[a], arrays[b]):
                raise ValueError(f"{a} and {b} share memory; Adam needs four separate arrays")
    lr = real_number(lr, "lr", -math.inf)
    if not math.isfinite(lr):
        raise ValueError(f"lr must be finite, got {lr!r}")
    beta1 = real_number(beta1, "beta1", 0.0, 1.0, high_open=True)
    beta2 = real_number(beta2, "beta2", 0.0, 1.0, high_open=True)
    eps = real_number(eps, "eps", 0.0, math.inf, high_open=True)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be a positive int, got {step!r}")
    step = int(step)
    return (1.0 - beta1, beta2, 1.0 - beta2, math.sqrt(1.0 - beta2 ** step), eps,
            lr / (1.0 - beta1 ** step))


def flag(value: object, name: str) -> bool:
    """``value`` as a bool; anything but a bool (an int included) is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        # An array's repr shows its values, not what it is: name its type and shape.
        got = f"an ndarray of shape {value.shape}" if isinstance(value, np.ndarray) else repr(value)
        raise TypeError(f"{name} must be a bool, got {got}")
    return bool(value)


def positive_int(value: object, name: str) -> int:
    """``value`` as an int >= 1: a TypeError for a non-integer (a bool or a float
    included), a ValueError for zero or a negative number."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def class_indices(values: ArrayLike, name: str, shape: Sequence[int], num_classes: int,
                  context: str = "") -> np.ndarray:
    """``values`` as an intp array of class indices of the given shape.

    TypeError unless integers; ValueError for another shape (``context`` says
    what fixes it), or naming the first index outside [0, num_classes). Used
    for training labels and attack targets.
    """
    array = np.asarray(values)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {array.dtype}")
    if array.shape != tuple(shape):
        raise ValueError(f"{name} has shape {array.shape}, expected {tuple(shape)}{context}")
    outside = np.flatnonzero((array < 0) | (array >= num_classes))
    if outside.size:
        i = int(outside[0])
        raise ValueError(f"{name} {int(array.flat[i])} at index {i} is out of range for "
                         f"{num_classes} classes (valid: 0 to {num_classes - 1})")
    return array.astype(np.intp, copy=False)
