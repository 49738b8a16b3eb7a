"""Argument checks shared by both backends, so that they reject the same input
with the same message.

Every error a user can trigger names the offending value. Shapes are NCHW.
"""
import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def pair(value, name):
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


def float_array(x, name, ndim=None):
    """Return x as an ndarray of float32 or float64 (never cast), checking its ndim."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    return x


def same_dtype(ref, other, name):
    if other.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {other.dtype} but the input is {ref.dtype}")


def nonempty_batch(x, name="x"):
    if x.size == 0:
        raise ValueError(f"{name} has a zero-size dimension: shape {x.shape}")


def window_geometry(x_shape, kernel_size, stride, padding, what="kernel"):
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
    h, w = x_shape[-2], x_shape[-1]
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ValueError(
            f"{what} {(kh, kw)} is larger than the padded input {(h + 2 * ph, w + 2 * pw)} "
            f"(input {(h, w)}, padding {(ph, pw)})"
        )
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (w + 2 * pw - kw) // sw + 1
    return kh, kw, sh, sw, ph, pw, oh, ow


def conv_args(x, weight, bias, stride, padding):
    """Validate a convolution call; return the window geometry."""
    float_array(x, "x", 4)
    float_array(weight, "weight", 4)
    same_dtype(x, weight, "weight")
    nonempty_batch(x)
    if weight.size == 0:
        raise ValueError(f"weight has a zero-size dimension: shape {weight.shape}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"input has {x.shape[1]} channels but weight {weight.shape} expects {weight.shape[1]}"
        )
    if bias is not None:
        float_array(bias, "bias", 1)
        same_dtype(x, bias, "bias")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has shape {bias.shape}, expected ({weight.shape[0]},)")
    return window_geometry(x.shape, weight.shape[2:], stride, padding)


def pool_args(x, kernel_size, stride, padding):
    """Validate a pooling call; stride None means stride = kernel_size."""
    float_array(x, "x", 4)
    nonempty_batch(x)
    if stride is None:
        stride = kernel_size
    geometry = window_geometry(x.shape, kernel_size, stride, padding, what="pooling window")
    kh, kw, _, _, ph, pw, _, _ = geometry
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"padding {(ph, pw)} must be at most half the pooling window {(kh, kw)}")
    return geometry


def matching_shape(a, a_name, shape, what):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{a_name} has shape {a.shape}, expected {tuple(shape)} ({what})")


def batchnorm_params(x, gamma, beta, eps):
    float_array(x, "x", 4)
    nonempty_batch(x)
    c = x.shape[1]
    for name, p in (("weight", gamma), ("bias", beta)):
        float_array(p, name, 1)
        same_dtype(x, p, name)
        if p.shape[0] != c:
            raise ValueError(f"{name} has shape {p.shape} but the input has {c} channels")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
