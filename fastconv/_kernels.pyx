"""Compiled kernels: the C code in src_c/ behind the API of fastconv.reference.

Every public function here has the name, arguments, results and errors of its
NumPy twin in ``fastconv.reference`` (whose docstrings are the specification)
and follows one pattern: validate with ``fastconv._checks`` -> make the inputs
C-contiguous -> allocate the results with NumPy -> release the GIL -> run C
on raw pointers -> return the arrays.

Convolutions and fully connected layers multiply with a register-tiled matrix
kernel of their own (src_c/gemm.inc), never BLAS, so that one OpenMP team
does all the work.
"""
import os

import numpy as np

cimport numpy as cnp
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.limits cimport INT_MAX
from libc.stdint cimport int64_t

from . import _checks

cnp.import_array()

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

BACKEND_NAME = "compiled"
KERNELS = tuple(__all__)
GEMM = "own register-tiled kernel (AVX-512, AVX2 or baseline x86-64, see set_isa)"
# The instruction-set variants of the hot loops (src_c/fc_target.h), by their
# index in C.
ISA_NAMES = ("baseline", "avx2", "avx512")

cdef extern from *:
    """
    #ifdef FASTCONV_PLANT
    #define FC_PLANTED_FAULT FASTCONV_PLANT
    #else
    #define FC_PLANTED_FAULT ""
    #endif
    """
    const char *FC_PLANTED_FAULT

# A fault built in on purpose to check that the tests catch it (setup.py,
# FASTCONV_PLANT; debug builds only), or None: never set in a normal build.
PLANTED_FAULT = FC_PLANTED_FAULT.decode() or None
if PLANTED_FAULT:
    import warnings
    warnings.warn(f"fastconv was built with the planted fault {PLANTED_FAULT!r} (FASTCONV_PLANT), "
                  "to check that the tests catch it: its results are wrong", RuntimeWarning)

ctypedef fused real:
    float
    double


# ---------------------------------------------------------------------------
# Threads

def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(fc_openmp_enabled())


def set_openmp_threads(n):
    """Run the kernels' parallel loops on n threads (no effect without OpenMP)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"number of threads must be a positive int, got {n!r}")
    fc_set_num_threads(<int>min(int(n), INT_MAX))


def get_openmp_threads():
    """Threads the kernels' parallel loops use; 1 without OpenMP."""
    return fc_get_num_threads()


def set_winograd(enabled):
    """Let stride-1 3x3 convolutions go through Winograd F(2x2, 3x3) where a
    cost model says it is faster (True, the default), keep every
    convolution on the direct kernel (False), or send every stride-1 3x3
    convolution through Winograd whatever its size ("always": for the tests,
    which must reach the narrow layers and small planes the cost model never
    picks); returns the previous setting. For the tests and benchmarks that
    compare the paths."""
    if isinstance(enabled, str):
        if enabled != "always":
            raise ValueError(f"set_winograd takes True, False or 'always', got {enabled!r}")
        mode = FC_WINOGRAD_ALWAYS
    else:
        mode = FC_WINOGRAD_AUTO if enabled else FC_WINOGRAD_OFF
    previous = fc_winograd_enabled()
    fc_set_winograd(mode)
    return "always" if previous == FC_WINOGRAD_ALWAYS else previous == FC_WINOGRAD_AUTO


# ---------------------------------------------------------------------------
# Instruction-set variants

def isa_compiled():
    """Names of the variants this build has, widest first: all three with GCC
    on x86-64, else ("baseline",)."""
    return tuple(ISA_NAMES[i] for i in reversed(range(len(ISA_NAMES))) if fc_isa_compiled(i))


def isa_supported():
    """Names of the variants this build has and this CPU runs, widest first."""
    return tuple(ISA_NAMES[i] for i in reversed(range(len(ISA_NAMES))) if fc_isa_supported(i))


def get_isa():
    """Name of the variant in use."""
    return ISA_NAMES[fc_get_isa()]


def set_isa(name):
    """Run the hot loops' `name` variant ("avx512", "avx2" or "baseline"; None
    or "auto": the default, AVX-512 where the CPU has it, else baseline, or
    AVX2 on a Haswell, as target_clones picked); returns the previous
    one. A variant this build or CPU lacks is a ValueError, never a switch.
    Kernels running in other threads may finish on the previous variant."""
    previous = get_isa()
    if name is None or name == "auto":
        index = fc_isa_best()
    elif isinstance(name, str) and name in ISA_NAMES:
        index = ISA_NAMES.index(name)
    else:
        raise ValueError(f"isa must be one of {ISA_NAMES[::-1]}, 'auto' or None, got {name!r}")
    if not fc_isa_compiled(index):
        raise ValueError(f"isa {name!r} is not in this build, which has only "
                         f"{', '.join(isa_compiled())} (variants need GCC on x86-64)")
    if fc_set_isa(index) != 0:
        raise ValueError(f"isa {name!r} is not supported by this CPU, which runs "
                         f"{', '.join(isa_supported())}")
    return previous


def _isa_from_environment():
    """FASTCONV_ISA, read once when the kernels load: a variant to force."""
    value = os.environ.get("FASTCONV_ISA", "").strip()
    if value:
        try:
            set_isa(value)
        except ValueError as e:
            raise ValueError(f"FASTCONV_ISA={value!r}: {e}") from None


_isa_from_environment()


# ---------------------------------------------------------------------------
# Helpers run with the GIL: validation, allocation, geometry

cdef inline bint _is_single(object a):
    return cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT


cdef object _c_array(object a, dtype=None):
    """a as a C-contiguous and aligned array: C reads it through typed pointers,
    and NumPy's C-contiguous flag says nothing of alignment."""
    return np.require(a, dtype, ("C_CONTIGUOUS", "ALIGNED"))


cdef inline void *_data(object a):
    """The data pointer of a contiguous ndarray, NULL for None."""
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef object _new(shape, dtype, bint zeroed=False):
    """A fresh C-contiguous array, refused with ValueError (not a crash, not an
    overflowed size) when its byte count does not fit the address space."""
    dtype = np.dtype(dtype)
    count = 1
    for extent in shape:
        count *= int(extent)
    if count * dtype.itemsize > PY_SSIZE_T_MAX:
        raise ValueError(f"an array of shape {tuple(shape)} and dtype {dtype} is too large")
    return np.zeros(shape, dtype) if zeroed else np.empty(shape, dtype)


cdef fc_window _window(h, w, geometry) except *:
    """The C description of a window geometry returned by _checks.window_geometry.

    Index arithmetic in C reaches (h + 2*ph) * (w + 2*pw), which must stay far
    from the int64 limit; a stride only matters when it is used at least once.
    """
    kh, kw, sh, sw, ph, pw, oh, ow = geometry
    if (h + 2 * ph + 1) * (w + 2 * pw + 1) >= 2 ** 62:
        raise ValueError(f"padding {(ph, pw)} on a {h}x{w} input is too large")
    cdef fc_window g
    g.h, g.w = h, w
    g.kh, g.kw = kh, kw
    g.sh = sh if oh > 1 else 1
    g.sw = sw if ow > 1 else 1
    g.ph, g.pw = ph, pw
    g.oh, g.ow = oh, ow
    return g


# ---------------------------------------------------------------------------
# Typed entry points to C: one name for both float types

cdef inline void _im2col(real *cols, const real *x, int64_t n_images, int64_t channels,
                         const fc_window *g, int64_t ld) noexcept nogil:
    if real is float:
        fc_im2col_f32(cols, x, n_images, channels, g, ld)
    else:
        fc_im2col_f64(cols, x, n_images, channels, g, ld)


cdef inline void _col2im(real *x, const real *cols, int64_t n_images, int64_t channels,
                         const fc_window *g, int64_t ld) noexcept nogil:
    if real is float:
        fc_col2im_f32(x, cols, n_images, channels, g, ld)
    else:
        fc_col2im_f64(x, cols, n_images, channels, g, ld)


# ---------------------------------------------------------------------------
# im2col / col2im

def im2col(x, kernel_size, stride=1, padding=0):
    """Unfold x (N, C, H, W) into cols (C*KH*KW, N*OH*OW)."""
    _checks.float_array(x, "x", 4)
    _checks.nonempty_batch(x)
    geometry = _checks.window_geometry(x.shape, kernel_size, stride, padding)
    kh, kw, _, _, _, _, oh, ow = geometry
    cols = _new((x.shape[1] * kh * kw, x.shape[0] * oh * ow), x.dtype)
    cdef int64_t n = x.shape[0], c = x.shape[1]
    cdef fc_window g = _window(x.shape[2], x.shape[3], geometry)
    xc = _c_array(x)
    if _is_single(xc):
        _im2col_run(<float>0, cols, xc, n, c, &g)
    else:
        _im2col_run(<double>0, cols, xc, n, c, &g)
    return cols


cdef void _im2col_run(real tag, object cols, object x, int64_t n, int64_t c,
                      const fc_window *g):
    cdef real *pc = <real *>_data(cols)
    cdef const real *px = <const real *>_data(x)
    with nogil:
        _im2col(pc, px, n, c, g, n * g.oh * g.ow)


def col2im(cols, x_shape, kernel_size, stride=1, padding=0):
    """Adjoint of im2col: scatter-add cols (C*KH*KW, N*OH*OW) back into (N, C, H, W)."""
    _checks.float_array(cols, "cols", 2)
    shape = _checks.image_shape(x_shape)
    geometry = _checks.window_geometry(shape, kernel_size, stride, padding)
    kh, kw, _, _, _, _, oh, ow = geometry
    _checks.matching_shape(cols, "cols", (shape[1] * kh * kw, shape[0] * oh * ow),
                           f"im2col of {tuple(x_shape)}")
    cdef int64_t n = shape[0], c = shape[1]
    cdef fc_window g = _window(shape[2], shape[3], geometry)
    cc = _c_array(cols)
    x = _new(shape, cols.dtype, zeroed=True)
    if _is_single(cc):
        _col2im_run(<float>0, x, cc, n, c, &g)
    else:
        _col2im_run(<double>0, x, cc, n, c, &g)
    return x


cdef void _col2im_run(real tag, object x, object cols, int64_t n, int64_t c,
                      const fc_window *g):
    cdef real *px = <real *>_data(x)
    cdef const real *pc = <const real *>_data(cols)
    with nogil:
        _col2im(px, pc, n, c, g, n * g.oh * g.ow)


# ---------------------------------------------------------------------------
# Convolution

cdef class _ConvCache:
    """What conv2d_backward needs from conv2d_forward; opaque to callers.

    The input is kept rather than its im2col matrix: the backward pass unfolds
    each image again, one at a time, which costs less than holding a matrix
    KH*KW times the size of x from the forward to the backward pass.
    """
    cdef object x
    cdef object weight
    cdef tuple x_shape
    cdef tuple y_shape
    cdef fc_window window
    cdef bint has_bias
    cdef int64_t groups


def conv2d_forward(x, weight, bias, stride=1, padding=0, groups=1):
    """y = conv(x, weight) + bias.

    x (N, C, H, W), weight (F, C/groups, KH, KW), bias (F,) or None -> y (N, F, OH, OW), cache.
    The channels are split into ``groups`` consecutive groups, and so are the
    filters: filter f sees channels g*C/groups .. (g+1)*C/groups - 1 of group
    g = f // (F/groups) only. groups divides C and F; groups = C is the
    depthwise convolution.
    """
    geometry = _checks.conv_args(x, weight, bias, stride, padding, groups)
    cdef _ConvCache cache = _ConvCache()
    cache.window = _window(x.shape[2], x.shape[3], geometry)
    cache.groups = int(groups)
    cdef fc_window *g = &cache.window
    cdef int64_t n = x.shape[0], c = x.shape[1], f = weight.shape[0]
    y = _new((n, f, g.oh, g.ow), x.dtype)
    cache.x = _c_array(x)
    cache.weight = _c_array(weight)
    bc = None if bias is None else _c_array(bias)
    cdef int status
    if _is_single(y):
        status = _conv_forward_run(<float>0, y, cache.x, cache.weight, bc, g, n, c, f, cache.groups)
    else:
        status = _conv_forward_run(<double>0, y, cache.x, cache.weight, bc, g, n, c, f, cache.groups)
    if status != 0:
        raise MemoryError("no memory for the convolution's scratch")
    cache.x_shape = tuple(x.shape)
    cache.y_shape = y.shape
    cache.has_bias = bias is not None
    return y, cache


cdef int _conv_forward_run(real tag, object y, object x, object weight, object bias,
                           const fc_window *g, int64_t n, int64_t c, int64_t f, int64_t groups):
    cdef real *py = <real *>_data(y)
    cdef const real *px = <const real *>_data(x)
    cdef const real *pw = <const real *>_data(weight)
    cdef const real *pb = <const real *>_data(bias)
    cdef int status
    with nogil:
        if real is float:
            status = fc_conv_forward_f32(py, px, pw, pb, n, c, f, groups, g)
        else:
            status = fc_conv_forward_f64(py, px, pw, pb, n, c, f, groups, g)
    return status


_CONV_PATHS = {FC_CONV_SHIFTED: "shifted", FC_CONV_UNFOLDED: "unfolded", FC_CONV_WINOGRAD: "winograd",
               FC_CONV_DEPTHWISE: "depthwise"}


def conv2d_path(x, weight, stride=1, padding=0, groups=1):
    """The path conv2d_forward(x, weight, None, stride, padding, groups) takes:
    "depthwise" (one input channel a group: the direct kernel of
    src_c/depthwise.inc), "winograd" (Winograd F(2x2, 3x3), see set_winograd),
    "shifted" (stride 1: the matrix kernel reading taps from the padded image)
    or "unfolded" (other strides: the matrix kernel on im2col's columns). A
    grouped convolution takes the path of one of its groups, once per group."""
    geometry = _checks.conv_args(x, weight, None, stride, padding, groups)
    cdef fc_window g = _window(x.shape[2], x.shape[3], geometry)
    cdef int64_t n = x.shape[0], c = x.shape[1], f = weight.shape[0], count = int(groups)
    if x.dtype == np.float32:
        return _CONV_PATHS[fc_conv_path_f32(n, c, f, count, &g)]
    return _CONV_PATHS[fc_conv_path_f64(n, c, f, count, &g)]


def conv2d_uses_winograd(x, weight, stride=1, padding=0, groups=1):
    """Whether conv2d_forward(x, weight, ...) goes through Winograd F(2x2, 3x3)
    rather than the direct kernel (see set_winograd). Its input gradient is the
    forward convolution of dy with the flipped filters, decided the same way."""
    return conv2d_path(x, weight, stride, padding, groups) == "winograd"


def conv2d_backward(dy, cache, need_dx=True, need_params=True):
    """Gradients of conv2d_forward: dy (N, F, OH, OW) -> dx, dweight, dbias.

    dx is None when need_dx is False; dweight and dbias are None when
    need_params is False, and dbias is None for a convolution without bias.
    """
    if not isinstance(cache, _ConvCache):
        raise TypeError(
            f"cache must be the one returned by conv2d_forward, got {type(cache).__name__}"
        )
    cdef _ConvCache cc = cache
    _checks.float_array(dy, "dy", 4)
    _checks.same_dtype(cc.weight, dy, "dy")
    _checks.matching_shape(dy, "dy", cc.y_shape, "the convolution output")
    dweight = _new(np.shape(cc.weight), dy.dtype) if need_params else None
    dbias = _new((cc.y_shape[1],), dy.dtype) if cc.has_bias and need_params else None
    dx = _new(cc.x_shape, dy.dtype) if need_dx else None
    dyc = _c_array(dy)
    cdef int status
    if _is_single(dyc):
        status = _conv_backward_run(<float>0, dx, dweight, dbias, dyc, cc)
    else:
        status = _conv_backward_run(<double>0, dx, dweight, dbias, dyc, cc)
    if status != 0:
        raise MemoryError("no memory for the convolution gradients' scratch")
    return dx, dweight, dbias


cdef int _conv_backward_run(real tag, object dx, object dweight, object dbias, object dy,
                            _ConvCache cache):
    cdef const fc_window *g = &cache.window
    cdef int64_t n = cache.x_shape[0], c = cache.x_shape[1], f = cache.y_shape[1]
    cdef real *pdx = <real *>_data(dx)
    cdef real *pdw = <real *>_data(dweight)
    cdef real *pdb = <real *>_data(dbias)
    cdef const real *pdy = <const real *>_data(dy)
    cdef const real *px = <const real *>_data(cache.x)
    cdef const real *pw = <const real *>_data(cache.weight)
    cdef int64_t groups = cache.groups
    cdef int status
    with nogil:
        if real is float:
            status = fc_conv_backward_f32(pdx, pdw, pdb, pdy, px, pw, n, c, f, groups, g)
        else:
            status = fc_conv_backward_f64(pdx, pdw, pdb, pdy, px, pw, n, c, f, groups, g)
    return status


# ---------------------------------------------------------------------------
# Fully connected

cdef class _LinearCache:
    """What linear_backward needs from linear_forward; opaque to callers."""
    cdef object x
    cdef object weight
    cdef bint has_bias


def linear_forward(x, weight, bias=None):
    """y = x @ weight.T + bias.

    x (N, in_features), weight (out_features, in_features), bias
    (out_features,) or None -> y (N, out_features), cache.
    """
    _checks.linear_args(x, weight, bias)
    cdef _LinearCache cache = _LinearCache()
    cache.x = _c_array(x)
    cache.weight = _c_array(weight)
    cache.has_bias = bias is not None
    bc = None if bias is None else _c_array(bias)
    y = _new((x.shape[0], weight.shape[0]), x.dtype)
    cdef int status
    if _is_single(y):
        status = _linear_forward_run(<float>0, y, cache.x, cache.weight, bc)
    else:
        status = _linear_forward_run(<double>0, y, cache.x, cache.weight, bc)
    if status != 0:
        raise MemoryError("no memory for the fully connected layer's scratch")
    return y, cache


cdef int _linear_forward_run(real tag, object y, object x, object weight, object bias):
    cdef real *py = <real *>_data(y)
    cdef const real *px = <const real *>_data(x)
    cdef const real *pw = <const real *>_data(weight)
    cdef const real *pb = <const real *>_data(bias)
    cdef int64_t n = x.shape[0], in_f = x.shape[1], out_f = weight.shape[0]
    cdef int status
    with nogil:
        if real is float:
            status = fc_linear_forward_f32(py, px, pw, pb, n, in_f, out_f)
        else:
            status = fc_linear_forward_f64(py, px, pw, pb, n, in_f, out_f)
    return status


def linear_backward(dy, cache, need_dx=True, need_params=True):
    """Gradients of linear_forward: dy (N, out_features) -> dx, dweight, dbias.

    dx is None when need_dx is False; dweight and dbias are None when
    need_params is False, and dbias is None for a layer without bias.
    """
    if not isinstance(cache, _LinearCache):
        raise TypeError(
            f"cache must be the one returned by linear_forward, got {type(cache).__name__}"
        )
    cdef _LinearCache lc = cache
    _checks.float_array(dy, "dy", 2)
    _checks.same_dtype(lc.weight, dy, "dy")
    _checks.matching_shape(dy, "dy", (lc.x.shape[0], lc.weight.shape[0]), "the layer output")
    dweight = _new(lc.weight.shape, dy.dtype) if need_params else None
    dbias = _new((lc.weight.shape[0],), dy.dtype) if lc.has_bias and need_params else None
    dx = _new(lc.x.shape, dy.dtype) if need_dx else None
    dyc = _c_array(dy)
    cdef int status
    if _is_single(dyc):
        status = _linear_backward_run(<float>0, dx, dweight, dbias, dyc, lc)
    else:
        status = _linear_backward_run(<double>0, dx, dweight, dbias, dyc, lc)
    if status != 0:
        raise MemoryError("no memory for the fully connected layer's gradient scratch")
    return dx, dweight, dbias


cdef int _linear_backward_run(real tag, object dx, object dweight, object dbias, object dy,
                              _LinearCache cache):
    cdef real *pdx = <real *>_data(dx)
    cdef real *pdw = <real *>_data(dweight)
    cdef real *pdb = <real *>_data(dbias)
    cdef const real *pdy = <const real *>_data(dy)
    cdef const real *px = <const real *>_data(cache.x)
    cdef const real *pw = <const real *>_data(cache.weight)
    cdef int64_t n = cache.x.shape[0], in_f = cache.x.shape[1], out_f = cache.weight.shape[0]
    cdef int status
    with nogil:
        if real is float:
            status = fc_linear_backward_f32(pdx, pdw, pdb, pdy, px, pw, n, in_f, out_f)
        else:
            status = fc_linear_backward_f64(pdx, pdw, pdb, pdy, px, pw, n, in_f, out_f)
    return status


# ---------------------------------------------------------------------------
# Pooling

def maxpool2d_forward(x, kernel_size, stride=None, padding=0):
    """Max over each window of x (N, C, H, W), padded with -inf.

    Returns y (N, C, OH, OW) and argmax (N, C, OH, OW) int64: the flat index
    h*W + w in the (unpadded) input plane of each maximum. Ties go to the
    first maximum in row-major window order.
    """
    geometry = _checks.pool_args(x, kernel_size, stride, padding)
    cdef int64_t planes = x.shape[0] * x.shape[1]
    cdef fc_window g = _window(x.shape[2], x.shape[3], geometry)
    xc = _c_array(x)
    y = _new((x.shape[0], x.shape[1], g.oh, g.ow), x.dtype)
    argmax = _new(y.shape, np.int64)
    if _is_single(xc):
        _maxpool_forward_run(<float>0, y, argmax, xc, planes, &g)
    else:
        _maxpool_forward_run(<double>0, y, argmax, xc, planes, &g)
    return y, argmax


cdef void _maxpool_forward_run(real tag, object y, object argmax, object x, int64_t planes,
                               const fc_window *g):
    cdef real *py = <real *>_data(y)
    cdef int64_t *pa = <int64_t *>_data(argmax)
    cdef const real *px = <const real *>_data(x)
    with nogil:
        if real is float:
            fc_maxpool_forward_f32(py, pa, px, planes, g)
        else:
            fc_maxpool_forward_f64(py, pa, px, planes, g)


def maxpool2d_backward(dy, argmax, x_shape):
    """Route dy (N, C, OH, OW) to the argmax positions of an input of shape x_shape."""
    _checks.float_array(dy, "dy", 4)
    if not isinstance(argmax, np.ndarray) or argmax.dtype.kind not in "iu":
        raise TypeError(
            f"argmax must be an integer numpy.ndarray, got "
            f"{getattr(argmax, 'dtype', type(argmax).__name__)}"
        )
    _checks.matching_shape(argmax, "argmax", dy.shape, "the pooled output")
    n, c, h, w = _checks.image_shape(x_shape)
    if (n, c) != dy.shape[:2] or h < 1 or w < 1:
        raise ValueError(
            f"x_shape {tuple(x_shape)} does not fit dy of shape {dy.shape} "
            f"(expected ({dy.shape[0]}, {dy.shape[1]}, H, W) with H, W positive)"
        )
    dyc = _c_array(dy)
    argmax_c = _c_array(argmax, np.int64)
    dx = _new((n, c, h, w), dy.dtype, zeroed=True)
    cdef int64_t planes = n * c, in_plane = h * w, out_plane = dy.shape[2] * dy.shape[3]
    cdef int64_t outside
    if _is_single(dyc):
        outside = _maxpool_backward_run(<float>0, dx, dyc, argmax_c, planes, in_plane, out_plane)
    else:
        outside = _maxpool_backward_run(<double>0, dx, dyc, argmax_c, planes, in_plane, out_plane)
    if outside:
        raise ValueError(
            f"argmax: {outside} of its {argmax.size} indices fall outside the {h}x{w} input plane"
        )
    return dx


cdef int64_t _maxpool_backward_run(real tag, object dx, object dy, object argmax,
                                   int64_t planes, int64_t in_plane, int64_t out_plane):
    """The number of argmax values outside the plane (skipped)."""
    cdef real *pdx = <real *>_data(dx)
    cdef const real *pdy = <const real *>_data(dy)
    cdef const int64_t *pa = <const int64_t *>_data(argmax)
    cdef int64_t outside
    with nogil:
        if real is float:
            outside = fc_maxpool_backward_f32(pdx, pdy, pa, planes, in_plane, out_plane)
        else:
            outside = fc_maxpool_backward_f64(pdx, pdy, pa, planes, in_plane, out_plane)
    return outside


def avgpool2d_forward(x, kernel_size, stride=None, padding=0):
    """Mean over each window of x, zero padding counted in the divisor (PyTorch's default)."""
    geometry = _checks.pool_args(x, kernel_size, stride, padding)
    cdef int64_t planes = x.shape[0] * x.shape[1]
    cdef fc_window g = _window(x.shape[2], x.shape[3], geometry)
    xc = _c_array(x)
    y = _new((x.shape[0], x.shape[1], g.oh, g.ow), x.dtype)
    if _is_single(xc):
        _avgpool_forward_run(<float>0, y, xc, planes, &g)
    else:
        _avgpool_forward_run(<double>0, y, xc, planes, &g)
    return y


cdef void _avgpool_forward_run(real tag, object y, object x, int64_t planes,
                               const fc_window *g):
    cdef real *py = <real *>_data(y)
    cdef const real *px = <const real *>_data(x)
    with nogil:
        if real is float:
            fc_avgpool_forward_f32(py, px, planes, g)
        else:
            fc_avgpool_forward_f64(py, px, planes, g)


def avgpool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0):
    """Spread dy (N, C, OH, OW) evenly over each window of an input of shape x_shape."""
    _checks.float_array(dy, "dy", 4)
    n, c, h, w = _checks.image_shape(x_shape)
    geometry = _checks.pool_geometry((n, c, h, w), kernel_size, stride, padding)
    _, _, _, _, _, _, oh, ow = geometry
    _checks.matching_shape(dy, "dy", (n, c, oh, ow), "the pooled output")
    cdef fc_window g = _window(h, w, geometry)
    cdef int64_t planes = n * c
    dyc = _c_array(dy)
    dx = _new((n, c, h, w), dy.dtype, zeroed=True)
    if _is_single(dyc):
        _avgpool_backward_run(<float>0, dx, dyc, planes, &g)
    else:
        _avgpool_backward_run(<double>0, dx, dyc, planes, &g)
    return dx


cdef void _avgpool_backward_run(real tag, object dx, object dy, int64_t planes,
                                const fc_window *g):
    cdef real *pdx = <real *>_data(dx)
    cdef const real *pdy = <const real *>_data(dy)
    with nogil:
        if real is float:
            fc_avgpool_backward_f32(pdx, pdy, planes, g)
        else:
            fc_avgpool_backward_f64(pdx, pdy, planes, g)


# ---------------------------------------------------------------------------
# Batch normalization

cdef class _BatchNormCache:
    """What batchnorm2d_backward needs from batchnorm2d_forward_train; opaque to callers.

    The input is kept, with the statistics in double, rather than the
    normalized input: the backward pass recomputes it (in double), which
    costs less than writing, holding and reading a copy the size of x.
    """
    cdef object x
    cdef object stats
    cdef object inv_std
    cdef object weight
    cdef bint relu_input


def batchnorm2d_forward_train(x, weight, bias, eps=1e-5, relu_input=False):
    """Normalize each channel of x with its batch statistics.

    Returns y, batch mean (C,), biased batch variance (C,) and a cache. The
    statistics are accumulated in float64 whatever the input dtype. With
    relu_input=True the input is relu_forward(x): the ReLU before a batch
    norm, fused into its pass.
    """
    _checks.batchnorm_params(x, weight, bias, eps)
    _checks.flag(relu_input, "relu_input")
    cdef int64_t n = x.shape[0], c = x.shape[1], plane = x.shape[2] * x.shape[3]
    cdef double eps_value = float(eps)
    xc = _c_array(x)
    wc = _c_array(weight)
    bc = _c_array(bias)
    y = _new(x.shape, x.dtype)
    stats = _new((2, c), np.float64)
    mean = _new((c,), x.dtype)
    var = _new((c,), x.dtype)
    inv_std = _new((c,), x.dtype)
    cdef int relu = 1 if relu_input else 0
    if _is_single(xc):
        _batchnorm_train_run(<float>0, y, stats, mean, var, inv_std, xc, wc, bc, eps_value,
                             n, c, plane, relu)
    else:
        _batchnorm_train_run(<double>0, y, stats, mean, var, inv_std, xc, wc, bc, eps_value,
                             n, c, plane, relu)
    cdef _BatchNormCache cache = _BatchNormCache()
    cache.x = xc
    cache.stats = stats
    cache.inv_std = inv_std
    cache.weight = wc
    cache.relu_input = relu
    return y, mean, var, cache


cdef void _batchnorm_train_run(real tag, object y, object stats, object mean, object var,
                               object inv_std, object x, object weight, object bias,
                               double eps, int64_t n, int64_t c, int64_t plane, int relu):
    cdef real *py = <real *>_data(y)
    cdef double *ps = <double *>_data(stats)
    cdef real *pm = <real *>_data(mean)
    cdef real *pv = <real *>_data(var)
    cdef real *pi = <real *>_data(inv_std)
    cdef const real *px = <const real *>_data(x)
    cdef const real *pw = <const real *>_data(weight)
    cdef const real *pb = <const real *>_data(bias)
    with nogil:
        if real is float:
            fc_batchnorm_forward_train_f32(py, ps, pm, pv, pi, px, pw, pb, eps, n, c, plane, relu)
        else:
            fc_batchnorm_forward_train_f64(py, ps, pm, pv, pi, px, pw, pb, eps, n, c, plane, relu)


def batchnorm2d_forward_eval(x, weight, bias, running_mean, running_var, eps=1e-5):
    """Normalize each channel of x with the running statistics."""
    _checks.batchnorm_params(x, weight, bias, eps)
    cdef int64_t n = x.shape[0], c = x.shape[1], plane = x.shape[2] * x.shape[3]
    for name, p in (("running_mean", running_mean), ("running_var", running_var)):
        _checks.float_array(p, name, 1)
        _checks.matching_shape(p, name, (c,), "one value per channel")
    xc = _c_array(x)
    wc = _c_array(weight)
    bc = _c_array(bias)
    # The running statistics may be kept in another float type; reference.py
    # converts them to the input's type the same way.
    mc = _c_array(running_mean, x.dtype)
    vc = _c_array(running_var, x.dtype)
    y = _new(x.shape, x.dtype)
    if _is_single(xc):
        _batchnorm_eval_run(<float>eps, y, xc, wc, bc, mc, vc, n, c, plane)
    else:
        _batchnorm_eval_run(<double>eps, y, xc, wc, bc, mc, vc, n, c, plane)
    return y


cdef void _batchnorm_eval_run(real eps, object y, object x, object weight, object bias,
                              object running_mean, object running_var, int64_t n, int64_t c,
                              int64_t plane):
    cdef real *py = <real *>_data(y)
    cdef const real *px = <const real *>_data(x)
    cdef const real *pw = <const real *>_data(weight)
    cdef const real *pb = <const real *>_data(bias)
    cdef const real *pm = <const real *>_data(running_mean)
    cdef const real *pv = <const real *>_data(running_var)
    with nogil:
        if real is float:
            fc_batchnorm_forward_eval_f32(py, px, pw, pb, pm, pv, eps, n, c, plane)
        else:
            fc_batchnorm_forward_eval_f64(py, px, pw, pb, pm, pv, eps, n, c, plane)


def batchnorm2d_backward(dy, cache, through_relu=False):
    """Gradients of batchnorm2d_forward_train: dy -> dx, dweight, dbias.

    dx is the gradient with respect to the batch norm's input; after a
    forward pass with relu_input=True, through_relu=True gives it with
    respect to x instead, through the ReLU (relu_backward fused in).
    """
    if not isinstance(cache, _BatchNormCache):
        raise TypeError(
            f"cache must be the one returned by batchnorm2d_forward_train, "
            f"got {type(cache).__name__}"
        )
    cdef _BatchNormCache bn = cache
    _checks.flag(through_relu, "through_relu")
    if through_relu and not bn.relu_input:
        raise ValueError("through_relu=True needs the cache of a forward pass with relu_input=True")
    _checks.float_array(dy, "dy", 4)
    _checks.same_dtype(bn.x, dy, "dy")
    _checks.matching_shape(dy, "dy", bn.x.shape, "the batch-norm output")
    cdef int64_t n = dy.shape[0], c = dy.shape[1], plane = dy.shape[2] * dy.shape[3]
    dyc = _c_array(dy)
    dx = _new(dy.shape, dy.dtype)
    dweight = _new((c,), dy.dtype)
    dbias = _new((c,), dy.dtype)
    cdef int mask = 1 if through_relu else 0
    if _is_single(dyc):
        _batchnorm_backward_run(<float>0, dx, dweight, dbias, dyc, bn, n, c, plane, mask)
    else:
        _batchnorm_backward_run(<double>0, dx, dweight, dbias, dyc, bn, n, c, plane, mask)
    return dx, dweight, dbias


cdef void _batchnorm_backward_run(real tag, object dx, object dweight, object dbias,
                                  object dy, _BatchNormCache cache, int64_t n, int64_t c,
                                  int64_t plane, int mask):
    cdef real *pdx = <real *>_data(dx)
    cdef real *pdw = <real *>_data(dweight)
    cdef real *pdb = <real *>_data(dbias)
    cdef const real *pdy = <const real *>_data(dy)
    cdef const real *px = <const real *>_data(cache.x)
    cdef const double *ps = <const double *>_data(cache.stats)
    cdef const real *pw = <const real *>_data(cache.weight)
    cdef const real *pi = <const real *>_data(cache.inv_std)
    cdef int relu = cache.relu_input
    with nogil:
        if real is float:
            fc_batchnorm_backward_f32(pdx, pdw, pdb, pdy, px, ps, pw, pi, n, c, plane, relu, mask)
        else:
            fc_batchnorm_backward_f64(pdx, pdw, pdb, pdy, px, ps, pw, pi, n, c, plane, relu, mask)


# ---------------------------------------------------------------------------
# ReLU and ReLU6

def relu_forward(x):
    """max(x, 0); NaN stays NaN."""
    _checks.float_array(x, "x")
    cdef int64_t size = x.size
    xc = _c_array(x)
    y = _new(x.shape, x.dtype)
    if _is_single(xc):
        _relu_forward_run(<float>0, y, xc, size)
    else:
        _relu_forward_run(<double>0, y, xc, size)
    return y


cdef void _relu_forward_run(real tag, object y, object x, int64_t size):
    cdef real *py = <real *>_data(y)
    cdef const real *px = <const real *>_data(x)
    with nogil:
        if real is float:
            fc_relu_forward_f32(py, px, size)
        else:
            fc_relu_forward_f64(py, px, size)


def relu_backward(dy, y):
    """dy where the ReLU's output y is positive, else 0."""
    _checks.float_array(dy, "dy")
    _checks.float_array(y, "y")
    _checks.same_dtype(dy, y, "y")
    _checks.matching_shape(y, "y", dy.shape, "the ReLU output")
    cdef int64_t size = dy.size
    dyc = _c_array(dy)
    yc = _c_array(y)
    dx = _new(dy.shape, dy.dtype)
    if _is_single(dyc):
        _relu_backward_run(<float>0, dx, dyc, yc, size)
    else:
        _relu_backward_run(<double>0, dx, dyc, yc, size)
    return dx


cdef void _relu_backward_run(real tag, object dx, object dy, object y, int64_t size):
    cdef real *pdx = <real *>_data(dx)
    cdef const real *pdy = <const real *>_data(dy)
    cdef const real *py = <const real *>_data(y)
    with nogil:
        if real is float:
            fc_relu_backward_f32(pdx, pdy, py, size)
        else:
            fc_relu_backward_f64(pdx, pdy, py, size)


def conv2d_epilogue(y, relu=False, scale=None, shift=None):
    """A convolution's evaluation-mode output pass, in place on y (N, C, H, W):
    y = max(y, 0) if relu, then y * scale[c] + shift[c] if scale and shift
    (C,) are given (both or neither). Returns y."""
    cdef int do_relu = 1 if _checks.channel_epilogue(y, relu, scale, shift) else 0
    cdef int64_t n = y.shape[0], c = y.shape[1], plane = y.shape[2] * y.shape[3]
    sc = None if scale is None else _c_array(scale)
    sh = None if shift is None else _c_array(shift)
    if _is_single(y):
        _epilogue_run(<float>0, y, sc, sh, n, c, plane, do_relu)
    else:
        _epilogue_run(<double>0, y, sc, sh, n, c, plane, do_relu)
    return y


cdef void _epilogue_run(real kind, object y, object scale, object shift, int64_t n, int64_t c,
                        int64_t plane, int relu):
    cdef real *py = <real *>_data(y)
    cdef const real *ps = <const real *>_data(scale)
    cdef const real *pt = <const real *>_data(shift)
    with nogil:
        if real is float:
            fc_channel_epilogue_f32(py, ps, pt, n, c, plane, relu)
        else:
            fc_channel_epilogue_f64(py, ps, pt, n, c, plane, relu)


def epilogue_maxpool(y, kernel_size, stride=None, padding=0, relu=False, scale=None, shift=None):
    """A convolution's evaluation-mode output pass followed by a max-pool:
    the max over each window (padded with -inf) of y (N, C, H, W) after
    conv2d_epilogue's ReLU and affine map, in one read of y, which is left
    unchanged; no argmax. The same values as conv2d_epilogue, then
    maxpool2d_forward."""
    cdef int do_relu = 1 if _checks.channel_epilogue(y, relu, scale, shift, in_place=False) else 0
    geometry = _checks.pool_args(y, kernel_size, stride, padding)
    cdef fc_window g = _window(y.shape[2], y.shape[3], geometry)
    cdef int64_t n = y.shape[0], c = y.shape[1]
    yc = _c_array(y)
    out = _new((n, c, g.oh, g.ow), y.dtype)
    sc = None if scale is None else _c_array(scale)
    sh = None if shift is None else _c_array(shift)
    if _is_single(yc):
        _epilogue_maxpool_run(<float>0, out, yc, sc, sh, n, c, &g, do_relu)
    else:
        _epilogue_maxpool_run(<double>0, out, yc, sc, sh, n, c, &g, do_relu)
    return out


cdef void _epilogue_maxpool_run(real kind, object out, object y, object scale, object shift, int64_t n,
                                int64_t c, const fc_window *g, int relu):
    cdef real *po = <real *>_data(out)
    cdef const real *py = <const real *>_data(y)
    cdef const real *ps = <const real *>_data(scale)
    cdef const real *pt = <const real *>_data(shift)
    with nogil:
        if real is float:
            fc_epilogue_maxpool_f32(po, py, ps, pt, n, c, g, relu)
        else:
            fc_epilogue_maxpool_f64(po, py, ps, pt, n, c, g, relu)


def relu6_forward(x):
    """min(max(x, 0), 6); NaN stays NaN."""
    _checks.float_array(x, "x")
    cdef int64_t size = x.size
    xc = _c_array(x)
    y = _new(x.shape, x.dtype)
    if _is_single(xc):
        _relu6_forward_run(<float>0, y, xc, size)
    else:
        _relu6_forward_run(<double>0, y, xc, size)
    return y


cdef void _relu6_forward_run(real tag, object y, object x, int64_t size):
    cdef real *py = <real *>_data(y)
    cdef const real *px = <const real *>_data(x)
    with nogil:
        if real is float:
            fc_relu6_forward_f32(py, px, size)
        else:
            fc_relu6_forward_f64(py, px, size)


def relu6_backward(dy, y):
    """dy where the ReLU6's output y lies strictly between 0 and 6, else 0."""
    _checks.float_array(dy, "dy")
    _checks.float_array(y, "y")
    _checks.same_dtype(dy, y, "y")
    _checks.matching_shape(y, "y", dy.shape, "the ReLU6 output")
    cdef int64_t size = dy.size
    dyc = _c_array(dy)
    yc = _c_array(y)
    dx = _new(dy.shape, dy.dtype)
    if _is_single(dyc):
        _relu6_backward_run(<float>0, dx, dyc, yc, size)
    else:
        _relu6_backward_run(<double>0, dx, dyc, yc, size)
    return dx


cdef void _relu6_backward_run(real tag, object dx, object dy, object y, int64_t size):
    cdef real *pdx = <real *>_data(dx)
    cdef const real *pdy = <const real *>_data(dy)
    cdef const real *py = <const real *>_data(y)
    with nogil:
        if real is float:
            fc_relu6_backward_f32(pdx, pdy, py, size)
        else:
            fc_relu6_backward_f64(pdx, pdy, py, size)


# ---------------------------------------------------------------------------
# Optimizers

def adam_update(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, step):
    """One step of Adam (PyTorch's bias correction and eps placement), in place:

        exp_avg += (1 - beta1) * (grad - exp_avg)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
        param -= lr / (1 - beta1^step) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps)

    each operation rounded to the arrays' dtype in this order. ``step`` counts
    from 1. param, exp_avg and exp_avg_sq must be writeable and C-contiguous.
    """
    scalars = _checks.adam_args(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, step)
    gc = _c_array(grad)
    if _is_single(param):
        _adam_update_run(<float>0, param, gc, exp_avg, exp_avg_sq, scalars)
    else:
        _adam_update_run(<double>0, param, gc, exp_avg, exp_avg_sq, scalars)


cdef void _adam_update_run(real tag, object param, object grad, object exp_avg, object exp_avg_sq,
                           tuple scalars):
    cdef real *pp = <real *>_data(param)
    cdef const real *pg = <const real *>_data(grad)
    cdef real *pm = <real *>_data(exp_avg)
    cdef real *pv = <real *>_data(exp_avg_sq)
    cdef int64_t size = param.size
    cdef double one_minus_beta1 = scalars[0], beta2 = scalars[1], one_minus_beta2 = scalars[2]
    cdef double correction2 = scalars[3], eps = scalars[4], step_size = scalars[5]
    with nogil:
        if real is float:
            fc_adam_update_f32(pp, pg, pm, pv, size, one_minus_beta1, beta2, one_minus_beta2,
                               correction2, eps, step_size)
        else:
            fc_adam_update_f64(pp, pg, pm, pv, size, one_minus_beta1, beta2, one_minus_beta2,
                               correction2, eps, step_size)


# ---------------------------------------------------------------------------
# GELU

def gelu_forward(x):
    """x * Phi(x), Phi the standard normal distribution function (the erf
    form, torch.nn.GELU's default); NaN stays NaN."""
    _checks.float_array(x, "x")
    cdef int64_t size = x.size
    xc = _c_array(x)
    y = _new(x.shape, x.dtype)
    if _is_single(xc):
        _gelu_forward_run(<float>0, y, xc, size)
    else:
        _gelu_forward_run(<double>0, y, xc, size)
    return y


cdef void _gelu_forward_run(real tag, object y, object x, int64_t size):
    cdef real *py = <real *>_data(y)
    cdef const real *px = <const real *>_data(x)
    with nogil:
        if real is float:
            fc_gelu_forward_f32(py, px, size)
        else:
            fc_gelu_forward_f64(py, px, size)


def gelu_backward(dy, x):
    """dy * (Phi(x) + x * phi(x)), x the GELU's input and phi the standard normal density."""
    _checks.float_array(dy, "dy")
    _checks.float_array(x, "x")
    _checks.same_dtype(dy, x, "x")
    _checks.matching_shape(x, "x", dy.shape, "the GELU input")
    cdef int64_t size = dy.size
    dyc = _c_array(dy)
    xc = _c_array(x)
    dx = _new(dy.shape, dy.dtype)
    if _is_single(dyc):
        _gelu_backward_run(<float>0, dx, dyc, xc, size)
    else:
        _gelu_backward_run(<double>0, dx, dyc, xc, size)
    return dx


cdef void _gelu_backward_run(real tag, object dx, object dy, object x, int64_t size):
    cdef real *pdx = <real *>_data(dx)
    cdef const real *pdy = <const real *>_data(dy)
    cdef const real *px = <const real *>_data(x)
    with nogil:
        if real is float:
            fc_gelu_backward_f32(pdx, pdy, px, size)
        else:
            fc_gelu_backward_f64(pdx, pdy, px, size)
