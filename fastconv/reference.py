"""Pure-NumPy twin of every compiled kernel: the tests' oracle and the 'numpy' backend.

Each function here has a compiled counterpart in ``fastconv._kernels`` with
the same name, arguments, results and errors, so a model runs unchanged on
either backend (``fastconv.set_backend('numpy' | 'compiled')``).

Everything is vectorized: im2col reads strided views, the convolutions are
single BLAS matmuls, and the only Python loops run over the KH*KW kernel
offsets, never over pixels.

Conventions shared by both backends
-----------------------------------
* Arrays are NCHW, float32 or float64; inputs of any memory layout are
  accepted (non-contiguous, negative strides, Fortran order) and results are
  fresh C-contiguous arrays of the input's dtype.
* ``kernel_size``, ``stride`` and ``padding`` are an int or an (h, w) pair.
  Output size: OH = 1 + (H + 2*PH - KH) // SH, OW likewise.
* ``cols`` (im2col's result) has shape (C*KH*KW, N*OH*OW): row
  c*KH*KW + i*KW + j holds kernel tap (i, j) of channel c, column
  n*OH*OW + oh*OW + ow holds output pixel (oh, ow) of image n, so that
  ``weight.reshape(F, -1) @ cols`` is the convolution.
* Caches returned by forward functions are opaque: pass them back to the
  matching backward function of the same backend.
* NaN and inf propagate as in NumPy: ``relu(nan) = nan``, max-pooling
  selects a NaN in its window (the first one) and batch norm of a channel
  containing a NaN is NaN throughout that channel.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from fastconv import _checks

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Union

    # kernel_size, stride, padding: an int or an (h, w) pair.
    _IntOrPair = Union[int, Sequence[int]]

__all__ = [
    "im2col", "col2im",
    "conv2d_forward", "conv2d_backward",
    "linear_forward", "linear_backward",
    "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward",
    "batchnorm2d_forward_train", "batchnorm2d_forward_eval", "batchnorm2d_backward",
    "relu_forward", "relu_backward",
    "conv2d_epilogue", "epilogue_maxpool",
    "relu6_forward", "relu6_backward",
    "adam_update",
    "gelu_forward", "gelu_backward",
]

BACKEND_NAME = "numpy"

# The kernels in __all__ take their types in comments: their signatures must
# stay equal to those of their compiled twins, which carry no annotations.


def _pad(x: np.ndarray, ph: int, pw: int, value: float = 0.0) -> np.ndarray:
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _windows(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int) -> np.ndarray:
    """Strided view (N, C, KH, KW, OH, OW) of the padded input xp; no copy."""
    n, c, _, _ = xp.shape
    s0, s1, s2, s3 = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, shape=(n, c, kh, kw, oh, ow),
        strides=(s0, s1, s2, s3, s2 * sh, s3 * sw), writeable=False,
    )


def im2col(x, kernel_size, stride=1, padding=0):
    # type: (np.ndarray, _IntOrPair, _IntOrPair, _IntOrPair) -> np.ndarray
    """Unfold x (N, C, H, W) into cols (C*KH*KW, N*OH*OW)."""
    _checks.float_array(x, "x", 4)
    _checks.nonempty_batch(x)
    kh, kw, sh, sw, ph, pw, oh, ow = _checks.window_geometry(x.shape, kernel_size, stride, padding)
    n, c = x.shape[:2]
    win = _windows(_pad(x, ph, pw), kh, kw, sh, sw, oh, ow)
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    cols[...] = win.transpose(1, 2, 3, 0, 4, 5)
    return cols.reshape(c * kh * kw, n * oh * ow)


def col2im(cols, x_shape, kernel_size, stride=1, padding=0):
    # type: (np.ndarray, Sequence[int], _IntOrPair, _IntOrPair, _IntOrPair) -> np.ndarray
    """Adjoint of im2col: scatter-add cols (C*KH*KW, N*OH*OW) back into (N, C, H, W)."""
    _checks.float_array(cols, "cols", 2)
    n, c, h, w = _checks.image_shape(x_shape)
    kh, kw, sh, sw, ph, pw, oh, ow = _checks.window_geometry((n, c, h, w), kernel_size, stride, padding)
    _checks.matching_shape(cols, "cols", (c * kh * kw, n * oh * ow), f"im2col of {tuple(x_shape)}")
    blocks = cols.reshape(c, kh, kw, n, oh, ow).transpose(3, 0, 1, 2, 4, 5)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += blocks[:, :, i, j]
    return np.ascontiguousarray(xp[:, :, ph:ph + h, pw:pw + w])


def conv2d_forward(x, weight, bias, stride=1, padding=0, groups=1):
    # type: (np.ndarray, np.ndarray, np.ndarray | None, _IntOrPair, _IntOrPair, int) -> tuple[np.ndarray, tuple]
    """y = conv(x, weight) + bias.

    x (N, C, H, W), weight (F, C/groups, KH, KW), bias (F,) or None -> y (N, F, OH, OW), cache.
    The channels are split into ``groups`` consecutive groups, and so are the
    filters: filter f sees channels g*C/groups .. (g+1)*C/groups - 1 of group
    g = f // (F/groups) only. groups divides C and F; groups = C is the
    depthwise convolution.
    """
    kh, kw, sh, sw, ph, pw, oh, ow = _checks.conv_args(x, weight, bias, stride, padding, groups)
    groups = int(groups)
    n = x.shape[0]
    f = weight.shape[0]
    # im2col's rows run channel by channel, so each group's rows are one block.
    cols = im2col(x, (kh, kw), (sh, sw), (ph, pw)).reshape(groups, -1, n * oh * ow)
    out = weight.reshape(groups, f // groups, -1) @ cols
    y = out.reshape(f, n, oh, ow).transpose(1, 0, 2, 3)
    if bias is not None:
        y = y + bias.reshape(1, f, 1, 1)
    y = np.ascontiguousarray(y)
    cache = (x.shape, y.shape, cols, weight, (kh, kw), (sh, sw), (ph, pw), bias is not None, groups)
    return y, cache


def conv2d_backward(dy, cache, need_dx=True, need_params=True):
    # type: (np.ndarray, tuple, bool, bool) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]
    """Gradients of conv2d_forward: dy (N, F, OH, OW) -> dx, dweight, dbias.

    dx is None when need_dx is False; dweight and dbias are None when
    need_params is False, and dbias is None for a convolution without bias.
    """
    x_shape, y_shape, cols, weight, kernel, stride, padding, has_bias, groups = cache
    _checks.float_array(dy, "dy", 4)
    _checks.matching_shape(dy, "dy", y_shape, "the convolution output")
    f = weight.shape[0]
    dy_t = dy.transpose(1, 0, 2, 3).reshape(groups, f // groups, -1)
    dweight = dbias = dx = None
    if need_params:
        dweight = (dy_t @ cols.transpose(0, 2, 1)).reshape(weight.shape)
        dbias = dy.sum(axis=(0, 2, 3)) if has_bias else None
    if need_dx:
        dcols = weight.reshape(groups, f // groups, -1).transpose(0, 2, 1) @ dy_t
        dx = col2im(dcols.reshape(-1, dcols.shape[-1]), x_shape, kernel, stride, padding)
    return dx, dweight, dbias


def linear_forward(x, weight, bias=None):
    # type: (np.ndarray, np.ndarray, np.ndarray | None) -> tuple[np.ndarray, tuple]
    """y = x @ weight.T + bias.

    x (N, in_features), weight (out_features, in_features), bias
    (out_features,) or None -> y (N, out_features), cache.
    """
    _checks.linear_args(x, weight, bias)
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y, (x, weight, bias is not None)


def linear_backward(dy, cache, need_dx=True, need_params=True):
    # type: (np.ndarray, tuple, bool, bool) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]
    """Gradients of linear_forward: dy (N, out_features) -> dx, dweight, dbias.

    dx is None when need_dx is False; dweight and dbias are None when
    need_params is False, and dbias is None for a layer without bias.
    """
    x, weight, has_bias = cache
    _checks.float_array(dy, "dy", 2)
    _checks.same_dtype(weight, dy, "dy")
    _checks.matching_shape(dy, "dy", (x.shape[0], weight.shape[0]), "the layer output")
    dweight = dy.T @ x if need_params else None
    dbias = dy.sum(axis=0) if need_params and has_bias else None
    dx = dy @ weight if need_dx else None
    return dx, dweight, dbias


def maxpool2d_forward(x, kernel_size, stride=None, padding=0):
    # type: (np.ndarray, _IntOrPair, _IntOrPair | None, _IntOrPair) -> tuple[np.ndarray, np.ndarray]
    """Max over each window of x (N, C, H, W), padded with -inf.

    Returns y (N, C, OH, OW) and argmax (N, C, OH, OW) int64: the flat index
    h*W + w in the (unpadded) input plane of each maximum. Ties go to the
    first maximum in row-major window order; the padding is never the
    maximum: a window of -inf points to its first tap inside the plane.
    """
    kh, kw, sh, sw, ph, pw, oh, ow = _checks.pool_args(x, kernel_size, stride, padding)
    n, c, h, w = x.shape
    win = _windows(_pad(x, ph, pw, -np.inf), kh, kw, sh, sw, oh, ow)
    flat = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c, oh, ow, kh * kw)
    tap = flat.argmax(axis=-1)
    y = np.take_along_axis(flat, tap[..., None], axis=-1)[..., 0]
    if ph or pw:
        inside = _windows(_pad(np.ones((1, 1, h, w), bool), ph, pw, False), kh, kw, sh, sw, oh, ow)
        first_inside = inside.transpose(0, 1, 4, 5, 2, 3).reshape(1, 1, oh, ow, kh * kw).argmax(axis=-1)
        tap = np.where(y == -np.inf, first_inside, tap)
    rows = np.arange(oh).reshape(oh, 1) * sh + tap // kw - ph
    cols = np.arange(ow).reshape(1, ow) * sw + tap % kw - pw
    argmax = (rows * w + cols).astype(np.int64)
    return np.ascontiguousarray(y), argmax


def maxpool2d_backward(dy, argmax, x_shape):
    # type: (np.ndarray, np.ndarray, Sequence[int]) -> np.ndarray
    """Route dy (N, C, OH, OW) to the argmax positions of an input of shape x_shape."""
    _checks.float_array(dy, "dy", 4)
    _checks.matching_shape(argmax, "argmax", dy.shape, "the pooled output")
    n, c, h, w = _checks.image_shape(x_shape)
    if (n, c) != dy.shape[:2]:
        raise ValueError(
            f"x_shape {tuple(x_shape)} does not fit dy of shape {dy.shape} "
            f"(expected ({dy.shape[0]}, {dy.shape[1]}, H, W) with H, W positive)"
        )
    outside = np.count_nonzero((argmax < 0) | (argmax >= h * w))
    if outside:
        raise ValueError(
            f"argmax: {outside} of its {argmax.size} indices fall outside the {h}x{w} input plane"
        )
    plane = (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1)
    dx = np.bincount((argmax + plane).ravel(), weights=dy.ravel(), minlength=n * c * h * w)
    return dx.astype(dy.dtype, copy=False).reshape(n, c, h, w)


def avgpool2d_forward(x, kernel_size, stride=None, padding=0):
    # type: (np.ndarray, _IntOrPair, _IntOrPair | None, _IntOrPair) -> np.ndarray
    """Mean over each window of x, zero padding counted in the divisor (PyTorch's default)."""
    kh, kw, sh, sw, ph, pw, oh, ow = _checks.pool_args(x, kernel_size, stride, padding)
    win = _windows(_pad(x, ph, pw), kh, kw, sh, sw, oh, ow)
    return np.ascontiguousarray(win.mean(axis=(2, 3), dtype=x.dtype))


def avgpool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0):
    # type: (np.ndarray, Sequence[int], _IntOrPair, _IntOrPair | None, _IntOrPair) -> np.ndarray
    """Spread dy (N, C, OH, OW) evenly over each window of an input of shape x_shape."""
    _checks.float_array(dy, "dy", 4)
    n, c, h, w = _checks.image_shape(x_shape)
    kh, kw, sh, sw, ph, pw, oh, ow = _checks.pool_geometry((n, c, h, w), kernel_size, stride, padding)
    _checks.matching_shape(dy, "dy", (n, c, oh, ow), "the pooled output")
    share = dy / (kh * kw)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += share
    return np.ascontiguousarray(xp[:, :, ph:ph + h, pw:pw + w])


def batchnorm2d_forward_train(x, weight, bias, eps=1e-5, relu_input=False):
    # type: (np.ndarray, np.ndarray, np.ndarray, float, bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]
    """Normalize each channel of x with its batch statistics.

    Returns y, batch mean (C,), biased batch variance (C,) and a cache. The
    statistics are accumulated in float64 whatever the input dtype. With
    relu_input=True the input is relu_forward(x): the ReLU before a batch
    norm, fused into its pass.
    """
    _checks.batchnorm_params(x, weight, bias, eps)
    _checks.flag(relu_input, "relu_input")
    relu_of = x if relu_input else None
    if relu_input:
        x = relu_forward(x)
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    centered = x - mean.reshape(1, -1, 1, 1)  # float64
    var = np.mean(centered * centered, axis=(0, 2, 3))
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = (centered * inv_std.reshape(1, -1, 1, 1)).astype(x.dtype, copy=False)
    y = xhat * weight.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)
    cache = (xhat, inv_std.astype(x.dtype), weight, relu_of)
    return y, mean.astype(x.dtype), var.astype(x.dtype), cache


def batchnorm2d_forward_eval(x, weight, bias, running_mean, running_var, eps=1e-5):
    # type: (np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float) -> np.ndarray
    """Normalize each channel of x with the running statistics."""
    _checks.batchnorm_params(x, weight, bias, eps)
    c = x.shape[1]
    for name, p in (("running_mean", running_mean), ("running_var", running_var)):
        _checks.float_array(p, name, 1)
        _checks.matching_shape(p, name, (c,), "one value per channel")
    scale = weight / np.sqrt(running_var.astype(x.dtype) + x.dtype.type(eps))
    shift = bias - running_mean.astype(x.dtype) * scale
    return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def batchnorm2d_backward(dy, cache, through_relu=False):
    # type: (np.ndarray, tuple, bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]
    """Gradients of batchnorm2d_forward_train: dy -> dx, dweight, dbias.

    dx is the gradient with respect to the batch norm's input; after a
    forward pass with relu_input=True, through_relu=True gives it with
    respect to x instead, through the ReLU (relu_backward fused in).
    """
    xhat, inv_std, weight, relu_of = cache
    _checks.flag(through_relu, "through_relu")
    if through_relu and relu_of is None:
        raise ValueError("through_relu=True needs the cache of a forward pass with relu_input=True")
    _checks.float_array(dy, "dy", 4)
    _checks.matching_shape(dy, "dy", xhat.shape, "the batch-norm output")
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    dbias = dy.sum(axis=(0, 2, 3), dtype=np.float64)
    dweight = np.einsum("nchw,nchw->c", dy, xhat, dtype=np.float64)
    scale = (weight * inv_std / m).reshape(1, -1, 1, 1)
    dx = scale * (m * dy - dbias.reshape(1, -1, 1, 1).astype(dy.dtype)
                  - xhat * dweight.reshape(1, -1, 1, 1).astype(dy.dtype))
    dx = dx.astype(dy.dtype, copy=False)
    if through_relu:
        dx = relu_backward(dx, relu_of)
    return dx, dweight.astype(dy.dtype), dbias.astype(dy.dtype)


def relu_forward(x):
    # type: (np.ndarray) -> np.ndarray
    """max(x, 0); NaN stays NaN."""
    _checks.float_array(x, "x")
    return np.maximum(x, 0)


def relu_backward(dy, y):
    # type: (np.ndarray, np.ndarray) -> np.ndarray
    """dy where the ReLU's output y is positive, else 0."""
    _checks.float_array(dy, "dy")
    _checks.matching_shape(y, "y", dy.shape, "the ReLU output")
    return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)


def conv2d_epilogue(y, relu=False, scale=None, shift=None):
    # type: (np.ndarray, bool, Union[np.ndarray, None], Union[np.ndarray, None]) -> np.ndarray
    """A convolution's evaluation-mode output pass, in place on y (N, C, H, W):
    y = max(y, 0) if relu, then y * scale[c] + shift[c] if scale and shift
    (C,) are given (both or neither). Returns y."""
    relu = _checks.channel_epilogue(y, relu, scale, shift)
    if relu:
        np.maximum(y, 0, out=y)
    if scale is not None and shift is not None:  # both or neither, as checked
        y *= scale.reshape(1, -1, 1, 1)
        y += shift.reshape(1, -1, 1, 1)
    return y


def epilogue_maxpool(y, kernel_size, stride=None, padding=0, relu=False, scale=None, shift=None):
    # type: (np.ndarray, _IntOrPair, _IntOrPair | None, _IntOrPair, bool, Union[np.ndarray, None], Union[np.ndarray, None]) -> np.ndarray
    """A convolution's evaluation-mode output pass followed by a max-pool:
    conv2d_epilogue on a copy of y (N, C, H, W), then maxpool2d_forward's
    values (no argmax). y is left unchanged."""
    relu = _checks.channel_epilogue(y, relu, scale, shift, in_place=False)
    _checks.pool_args(y, kernel_size, stride, padding)
    return maxpool2d_forward(conv2d_epilogue(np.array(y, order="C"), relu, scale, shift),
                             kernel_size, stride, padding)[0]


def relu6_forward(x):
    # type: (np.ndarray) -> np.ndarray
    """min(max(x, 0), 6); NaN stays NaN."""
    _checks.float_array(x, "x")
    return np.minimum(np.maximum(x, 0), 6).astype(x.dtype, copy=False)


def relu6_backward(dy, y):
    # type: (np.ndarray, np.ndarray) -> np.ndarray
    """dy where the ReLU6's output y lies strictly between 0 and 6, else 0."""
    _checks.float_array(dy, "dy")
    _checks.matching_shape(y, "y", dy.shape, "the ReLU6 output")
    return np.where((y > 0) & (y < 6), dy, 0).astype(dy.dtype, copy=False)


def adam_update(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, step):
    # type: (np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float, float, float, int) -> None
    """One step of Adam (PyTorch's bias correction and eps placement), in place:

        exp_avg += (1 - beta1) * (grad - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
        param -= lr / (1 - beta1^step) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps)

    each operation rounded to the arrays' dtype in this order. ``step`` counts
    from 1. param, exp_avg and exp_avg_sq must be writeable and C-contiguous.
    """
    one_minus_beta1, beta2, one_minus_beta2, correction2, eps, step_size = _checks.adam_args(
        param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, step)
    tmp = np.empty_like(param)
    np.subtract(grad, exp_avg, out=tmp)
    tmp *= one_minus_beta1
    exp_avg += tmp
    exp_avg_sq *= beta2
    np.multiply(grad, one_minus_beta2, out=tmp)
    tmp *= grad
    exp_avg_sq += tmp
    np.sqrt(exp_avg_sq, out=tmp)
    tmp /= correction2
    tmp += eps
    np.divide(exp_avg, tmp, out=tmp)
    tmp *= step_size
    param -= tmp


def _normal_cdf(x):
    # type: (np.ndarray) -> np.ndarray
    """Phi(x) in float64, as erfc(-x / sqrt(2)) / 2: no cancellation in the
    lower tail. The standard library's erfc, element by element, rather than
    SciPy's: importing scipy.special creates ufuncs that live until the
    process ends, which the leak sanitizer run (tools/sanitize.sh) reports."""
    erfc = np.frompyfunc(math.erfc, 1, 1)
    return 0.5 * np.asarray(erfc(-np.asarray(x, dtype=np.float64) / math.sqrt(2.0)), dtype=np.float64)


def gelu_forward(x):
    # type: (np.ndarray) -> np.ndarray
    """x * Phi(x), Phi the standard normal distribution function (the erf
    form, torch.nn.GELU's default); NaN stays NaN."""
    _checks.float_array(x, "x")
    with np.errstate(invalid="ignore"):  # -inf * 0: NaN, as in the compiled kernel
        return (x * _normal_cdf(x)).astype(x.dtype, copy=False)


def gelu_backward(dy, x):
    # type: (np.ndarray, np.ndarray) -> np.ndarray
    """dy * (Phi(x) + x * phi(x)), x the GELU's input and phi the standard normal density."""
    _checks.float_array(dy, "dy")
    _checks.float_array(x, "x")
    _checks.same_dtype(dy, x, "x")
    _checks.matching_shape(x, "x", dy.shape, "the GELU input")
    with np.errstate(over="ignore", invalid="ignore"):  # x^2 of a huge x is inf; inf * 0 is NaN
        density = np.exp(-0.5 * np.square(x, dtype=np.float64)) / np.sqrt(2 * np.pi)
        return (dy * (_normal_cdf(x) + x * density)).astype(dy.dtype, copy=False)
