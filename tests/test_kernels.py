"""The compiled kernels (fastconv._kernels) against their NumPy twins (fastconv.reference).

Every kernel is run on random shapes (N=1, C=1, odd sizes, strides 1-3, padding
0-2, non-square kernels) in float32 and float64 and compared with the twin;
then the awkward inputs: memory layouts, NaN, ties, bad arguments, threads.
"""
import inspect
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastconv import _kernels as fast
from fastconv import reference as ref

# Every test, once per instruction-set variant this CPU runs (tests/conftest.py).
pytestmark = pytest.mark.every_isa

DTYPES = (np.float32, np.float64)

# Both backends sum the same terms in different orders (BLAS blocking, double
# versus pairwise accumulation), so they may differ by a few ulps of the sum of
# the terms' absolute values. That sum, not the result, sets the scale: a
# result can cancel to near zero while its terms are large. The tolerance is
# therefore rtol * (|expected| + magnitude), magnitude being the largest such
# sum over the output. 1e-4 is ~800 float32 ulps and 1e-10 ~500k float64 ulps:
# ample for the sums made here (up to 12,800 terms, whose rounding errors grow
# like the square root of their number), yet far below the size of any
# indexing or arithmetic mistake.
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}

property_test = settings(max_examples=60, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])


def assert_close(actual, expected, magnitude=0.0):
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert actual.flags.c_contiguous
    rtol = RTOL[expected.dtype]
    atol = rtol * float(np.max(magnitude, initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def random_array(rng, shape, dtype, scale=1.0, offset=0.0):
    return np.asarray(offset + scale * rng.standard_normal(shape), dtype=dtype)


@st.composite
def windows(draw, pooling=False):
    """Shape and window geometry of a sliding-window kernel call."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    if pooling:
        ph, pw = draw(st.integers(0, min(2, kh // 2))), draw(st.integers(0, min(2, kw // 2)))
    else:
        ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    return {
        "n": draw(st.integers(1, 3)),
        "c": draw(st.integers(1, 4)),
        "h": draw(st.integers(max(1, kh - 2 * ph), 9)),
        "w": draw(st.integers(max(1, kw - 2 * pw), 9)),
        "kernel": (kh, kw),
        "stride": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "padding": (ph, pw),
        "dtype": draw(st.sampled_from(DTYPES)),
        "seed": seed,
        "rng": np.random.default_rng(seed),
    }


def x_of(case, **kwargs):
    return random_array(case["rng"], (case["n"], case["c"], case["h"], case["w"]), case["dtype"],
                        **kwargs)


def outputs(result):
    """The arrays of a kernel's result, whether one array or a tuple of them."""
    return result if isinstance(result, tuple) else (result,)


# ---------------------------------------------------------------------------
# The module's interface

def test_api_matches_reference():
    assert fast.BACKEND_NAME == "compiled"
    assert set(fast.KERNELS) == set(ref.__all__)
    assert isinstance(fast.GEMM, str) and fast.GEMM
    for name in ref.__all__:
        assert inspect.signature(getattr(fast, name)) == inspect.signature(getattr(ref, name)), name


def test_thread_settings_round_trip():
    before = fast.get_openmp_threads()
    try:
        fast.set_openmp_threads(1)
        assert fast.get_openmp_threads() == 1
        fast.set_openmp_threads(2)
        assert fast.get_openmp_threads() == (2 if fast.openmp_enabled() else 1)
    finally:
        fast.set_openmp_threads(before)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
            fast.set_openmp_threads(bad)


# ---------------------------------------------------------------------------
# im2col / col2im

@property_test
@given(windows())
def test_im2col_matches_reference(case):
    x = x_of(case)
    args = (case["kernel"], case["stride"], case["padding"])
    expected = ref.im2col(x, *args)
    actual = fast.im2col(x, *args)
    assert_close(actual, expected)
    np.testing.assert_array_equal(actual, expected)


@property_test
@given(windows())
def test_col2im_matches_reference(case):
    x_shape = (case["n"], case["c"], case["h"], case["w"])
    args = (case["kernel"], case["stride"], case["padding"])
    cols_shape = ref.im2col(np.zeros(x_shape, case["dtype"]), *args).shape
    cols = random_array(case["rng"], cols_shape, case["dtype"])
    assert_close(fast.col2im(cols, x_shape, *args), ref.col2im(cols, x_shape, *args),
                 ref.col2im(np.abs(cols), x_shape, *args))


@property_test
@given(windows())
def test_col2im_is_the_adjoint_of_im2col(case):
    x = x_of(case).astype(np.float64)
    args = (case["kernel"], case["stride"], case["padding"])
    cols = fast.im2col(x, *args)
    c = case["rng"].standard_normal(cols.shape)
    lhs = np.vdot(cols, c)
    rhs = np.vdot(x, fast.col2im(c, x.shape, *args))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12 * np.vdot(np.abs(cols), np.abs(c)))


# ---------------------------------------------------------------------------
# Convolution

def check_conv(x, weight, bias, stride, padding, groups=1):
    """Forward and backward of both backends; magnitudes from the twin run on |values|."""
    y, cache = fast.conv2d_forward(x, weight, bias, stride, padding, groups)
    y_ref, cache_ref = ref.conv2d_forward(x, weight, bias, stride, padding, groups)
    abs_bias = None if bias is None else np.abs(bias)
    y_abs, cache_abs = ref.conv2d_forward(np.abs(x), np.abs(weight), abs_bias, stride, padding, groups)
    assert_close(y, y_ref, y_abs)

    dy = random_array(np.random.default_rng(y.size), y.shape, y.dtype)
    grads = fast.conv2d_backward(dy, cache)
    grads_ref = ref.conv2d_backward(dy, cache_ref)
    grads_abs = ref.conv2d_backward(np.abs(dy), cache_abs)
    for got, want, magnitude in zip(grads, grads_ref, grads_abs):
        if want is None:
            assert got is None
        else:
            assert_close(got, want, magnitude)

    dx, dweight, dbias = fast.conv2d_backward(dy, cache, need_dx=False)
    assert dx is None
    assert_close(dweight, grads_ref[1], grads_abs[1])
    assert (dbias is None) == (bias is None)

    # The input gradient alone: the same bits as with the parameter gradients.
    for kernels, cache_of, full in ((fast, cache, grads), (ref, cache_ref, grads_ref)):
        dx, dweight, dbias = kernels.conv2d_backward(dy, cache_of, need_params=False)
        assert dweight is None and dbias is None
        np.testing.assert_array_equal(dx, full[0])


@property_test
@given(windows(), st.integers(1, 5), st.booleans())
def test_conv2d_matches_reference(case, filters, with_bias):
    rng, dtype = case["rng"], case["dtype"]
    x = x_of(case)
    weight = random_array(rng, (filters, case["c"]) + case["kernel"], dtype)
    bias = random_array(rng, (filters,), dtype) if with_bias else None
    check_conv(x, weight, bias, case["stride"], case["padding"])


@property_test
@given(windows(), st.integers(1, 4), st.booleans(), st.integers(16, 40), st.integers(16, 40))
def test_conv2d_on_large_planes_matches_reference(case, filters, with_bias, h, w):
    # Planes the size of real images, where im2col rows run for hundreds of pixels.
    case.update(h=h, w=w, n=min(case["n"], 2))
    rng, dtype = case["rng"], case["dtype"]
    weight = random_array(rng, (filters, case["c"]) + case["kernel"], dtype)
    bias = random_array(rng, (filters,), dtype) if with_bias else None
    check_conv(x_of(case), weight, bias, case["stride"], case["padding"])


def check_linear(x, weight, bias):
    """The compiled fully connected layer against its twin, forward and backward."""
    y, cache = fast.linear_forward(x, weight, bias)
    y_ref, cache_ref = ref.linear_forward(x, weight, bias)
    abs_bias = None if bias is None else np.abs(bias)
    y_abs, cache_abs = ref.linear_forward(np.abs(x), np.abs(weight), abs_bias)
    assert_close(y, y_ref, y_abs)
    dy = random_array(np.random.default_rng(y.size), y.shape, y.dtype)
    grads = fast.linear_backward(dy, cache)
    grads_ref = ref.linear_backward(dy, cache_ref)
    grads_abs = ref.linear_backward(np.abs(dy), cache_abs)
    assert (grads[2] is None) == (bias is None)
    for got, want, magnitude in zip(grads, grads_ref, grads_abs):
        if want is not None:
            assert_close(got, want, magnitude)
    # Either gradient alone: the same bits as both together.
    dx, dweight, dbias = fast.linear_backward(dy, cache, need_params=False)
    assert dweight is None and dbias is None
    np.testing.assert_array_equal(dx, grads[0])
    dx, dweight, dbias = fast.linear_backward(dy, cache, need_dx=False)
    assert dx is None
    np.testing.assert_array_equal(dweight, grads[1])


@property_test
@given(st.integers(1, 70), st.integers(1, 70), st.integers(1, 70), st.sampled_from(DTYPES),
       st.booleans(), st.integers(0, 2 ** 32 - 1))
def test_linear_matches_reference(n, in_features, out_features, dtype, with_bias, seed):
    # Up to four vectors of each extent, with every tail past whole vectors.
    rng = np.random.default_rng(seed)
    x = random_array(rng, (n, in_features), dtype)
    weight = random_array(rng, (out_features, in_features), dtype)
    bias = random_array(rng, (out_features,), dtype) if with_bias else None
    check_linear(x, weight, bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, in_features, out_features", [
    (128, 1568, 500),  # mnist2's fc1: several depth blocks, threads on rows and columns
    (1, 3000, 700),    # one image through a wide layer
    (129, 260, 3),     # fewer outputs than a vector
])
def test_linear_on_layer_sizes_matches_reference(dtype, n, in_features, out_features):
    rng = np.random.default_rng(n)
    check_linear(random_array(rng, (n, in_features), dtype),
                 random_array(rng, (out_features, in_features), dtype),
                 random_array(rng, (out_features,), dtype))


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_keeps_nan_and_inf_to_their_rows_and_columns(dtype, special):
    # The compiled kernel pads the batch and the features with zeros to whole
    # vectors; an inf times such a zero is NaN, which must stay in the padding.
    rng = np.random.default_rng(3)
    x = random_array(rng, (5, 19), dtype)
    x[2, 7] = special
    weight = random_array(rng, (17, 19), dtype)
    y, cache = fast.linear_forward(x, weight)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref.linear_forward(x, weight)[0]))
    assert np.isfinite(np.delete(y, 2, axis=0)).all()
    dy = random_array(rng, y.shape, dtype)
    dx, dweight, _ = fast.linear_backward(dy, cache)
    want_dx, want_dweight, _ = ref.linear_backward(dy, ref.linear_forward(x, weight)[1])
    np.testing.assert_array_equal(np.isnan(dweight), np.isnan(want_dweight))
    np.testing.assert_array_equal(np.isinf(dweight), np.isinf(want_dweight))
    assert np.isfinite(np.delete(dweight, 7, axis=1)).all()
    assert np.isfinite(dx).all()


def adam_arrays(rng, shape, dtype):
    """param, grad, exp_avg, exp_avg_sq of an Adam step, grad with zeros and ties."""
    grad = random_array(rng, shape, dtype)
    grad.flat[::5] = 0
    return [random_array(rng, shape, dtype), grad, random_array(rng, shape, dtype, 0.1),
            np.abs(random_array(rng, shape, dtype, 0.01))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (3, 5), (4096,), (4097,), (500, 1568)])
def test_adam_update_gives_the_twins_bits(dtype, shape):
    # The compiled pass rounds each operation in the twin's order; a fused
    # multiply-add anywhere would change the last bit of some elements.
    rng = np.random.default_rng(len(shape) + shape[0])
    ours = adam_arrays(rng, shape, dtype)
    twins = [a.copy() for a in ours]
    for step, (lr, beta1, beta2, eps) in enumerate([(1e-3, 0.9, 0.999, 1e-8), (0.05, 0.5, 0.9, 1e-3),
                                                     (1e-3, 0.0, 0.0, 1e-12)], start=1):
        fast.adam_update(ours[0], ours[1], ours[2], ours[3], lr, beta1, beta2, eps, step)
        ref.adam_update(twins[0], twins[1], twins[2], twins[3], lr, beta1, beta2, eps, step)
        for got, want in zip(ours, twins):
            np.testing.assert_array_equal(got, want)
    assert not np.array_equal(ours[0], adam_arrays(np.random.default_rng(len(shape) + shape[0]),
                                                   shape, dtype)[0])


@pytest.mark.skipif(not fast.openmp_enabled(), reason="built without OpenMP")
def test_adam_update_gives_the_same_bits_on_any_thread_count():
    results = []
    before = fast.get_openmp_threads()
    try:
        for threads in (1, 2, 3):
            fast.set_openmp_threads(threads)
            arrays = adam_arrays(np.random.default_rng(5), (300_001,), np.float32)
            fast.adam_update(*arrays, 1e-3, 0.9, 0.999, 1e-8, 7)
            results.append(arrays)
    finally:
        fast.set_openmp_threads(before)
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kernels", [fast, ref], ids=["compiled", "numpy"])
def test_adam_update_refuses_state_it_cannot_update_in_place(kernels):
    param, grad, exp_avg, exp_avg_sq = adam_arrays(np.random.default_rng(1), (4, 6), f32)
    with pytest.raises(ValueError, match="exp_avg is updated in place.*strides"):
        kernels.adam_update(param, grad, np.asfortranarray(exp_avg), exp_avg_sq, 1e-3, 0.9, 0.999, 1e-8, 1)
    read_only = param.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="param is updated in place"):
        kernels.adam_update(read_only, grad, exp_avg, exp_avg_sq, 1e-3, 0.9, 0.999, 1e-8, 1)
    with pytest.raises(ValueError, match="grad and exp_avg share memory"):
        kernels.adam_update(param, exp_avg, exp_avg, exp_avg_sq, 1e-3, 0.9, 0.999, 1e-8, 1)
    with pytest.raises(ValueError, match="beta2 must be in"):
        kernels.adam_update(param, grad, exp_avg, exp_avg_sq, 1e-3, 0.9, 1.0, 1e-8, 1)
    with pytest.raises(ValueError, match="step must be a positive int, got 0"):
        kernels.adam_update(param, grad, exp_avg, exp_avg_sq, 1e-3, 0.9, 0.999, 1e-8, 0)
    with pytest.raises(TypeError, match="float64"):
        kernels.adam_update(param, grad.astype(f64), exp_avg, exp_avg_sq, 1e-3, 0.9, 0.999, 1e-8, 1)
    # A non-contiguous gradient is fine: it is only read.
    kernels.adam_update(param, np.asfortranarray(grad), exp_avg, exp_avg_sq, 1e-3, 0.9, 0.999, 1e-8, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("plane", [(7, 4), (32, 24)])
def test_conv2d_pointwise_fast_path(dtype, with_bias, plane):
    rng = np.random.default_rng(3)
    x = random_array(rng, (3, 5) + plane, dtype)
    weight = random_array(rng, (6, 5, 1, 1), dtype)
    bias = random_array(rng, (6,), dtype) if with_bias else None
    check_conv(x, weight, bias, 1, 0)


@pytest.mark.skipif(not fast.openmp_enabled(), reason="built without OpenMP")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plane", [(14, 14), (16, 16), (13, 11)])
@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_pointwise_on_one_image_shared_among_threads(dtype, plane, groups):
    # One image on two threads: a 1x1 stride-1 layer multiplies the image in
    # place, its columns split among the threads, and the columns past the
    # last whole vector (none on 16x16) go through a small buffer. Each
    # group's product is large enough to start the threads (src_c/threads.c).
    rng = np.random.default_rng(13)
    x = random_array(rng, (1, 128) + plane, dtype)
    weight = random_array(rng, (128, 128 // groups, 1, 1), dtype)
    bias = random_array(rng, (128,), dtype)
    before = fast.get_openmp_threads()
    try:
        fast.set_openmp_threads(2)
        check_conv(x, weight, bias, 1, 0, groups)
        check_conv(x, weight, None, 1, 0, groups)
    finally:
        fast.set_openmp_threads(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel, stride, padding", [
    # stride 1: taps read from the padded image, dx by the flipped convolution
    ((3, 4, 32, 32), (3, 3), 1, 1),
    ((2, 3, 14, 14), (5, 3), 1, (2, 1)),
    # padding as large as the kernel: dx falls back to unfolded columns
    ((2, 2, 5, 6), (2, 2), 1, 2),
    # one output row and column: the stride never applies, but the flipped
    # convolution would not give back the input's size
    ((2, 3, 5, 4), (3, 3), 3, 0),
    # stride 2: unfolded columns, a plane that is not a whole number of vectors
    ((3, 5, 15, 13), (3, 3), 2, 1),
])
def test_conv2d_paths_match_reference(dtype, shape, kernel, stride, padding):
    rng = np.random.default_rng(4)
    x = random_array(rng, shape, dtype)
    weight = random_array(rng, (20, shape[1]) + kernel, dtype)
    bias = random_array(rng, (20,), dtype)
    check_conv(x, weight, bias, stride, padding)


def test_conv2d_gives_the_same_bits_for_a_given_thread_count():
    # Two threads share a batch image by image, or, for a single image, split
    # its product; the weight gradient is summed in a fixed order either way,
    # so repeated runs agree exactly, and both agree with the twin.
    rng = np.random.default_rng(5)
    weight = random_array(rng, (16, 16, 3, 3), np.float32)
    before = fast.get_openmp_threads()
    try:
        fast.set_openmp_threads(2)
        for n in (1, 3):
            x = random_array(rng, (n, 16, 32, 32), np.float32)
            runs = []
            for _ in range(2):
                y, cache = fast.conv2d_forward(x, weight, None, 1, 1)
                runs.append((y,) + fast.conv2d_backward(np.ones_like(y), cache)[:2])
            for first, second in zip(*runs):
                assert np.array_equal(first, second)
            check_conv(x, weight, None, 1, 1)
    finally:
        fast.set_openmp_threads(before)


# ---------------------------------------------------------------------------
# Winograd F(2x2, 3x3): the path of stride-1 3x3 layers with many channels

WINOGRAD_CASES = [
    # cifar6's conv2, conv4 and conv6: whole vectors of tiles, and a quarter
    ((2, 32, 32, 32), 32, 1),
    ((3, 64, 16, 16), 64, 1),
    ((2, 128, 8, 8), 128, 1),
    # odd output sizes: the last tile row and column lie half outside
    ((2, 128, 9, 8), 128, (2, 3)),
    ((5, 64, 2, 11), 64, 3),
    # fewer images than threads: the tile rows of one image are shared out
    ((1, 128, 7, 9), 96, 1),
    # no padding: the last tile row reads a row below the image, which the
    # row above it, cut in whole vectors, must not have written into
    ((2, 128, 15, 15), 128, 0),
    # rows of tiles longer than a vector, but not a whole number of them
    ((1, 64, 12, 40), 64, (1, 2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, filters, padding", WINOGRAD_CASES)
def test_conv2d_winograd_matches_reference(dtype, shape, filters, padding):
    rng = np.random.default_rng(6)
    x = random_array(rng, shape, dtype)
    weight = random_array(rng, (filters, shape[1], 3, 3), dtype)
    bias = random_array(rng, (filters,), dtype)
    # The cases are small, to reach the edges of the tiling; the cost model
    # would keep most of them direct (too few tiles), so they are sent through.
    previous = fast.set_winograd("always")
    try:
        assert fast.conv2d_uses_winograd(x, weight, 1, padding)
        check_conv(x, weight, bias, 1, padding)
    finally:
        fast.set_winograd(previous)


@pytest.mark.parametrize("images, winograd", [(1, False), (4, False), (8, True), (64, True)])
def test_winograd_waits_for_enough_tiles(images, winograd):
    # cifar6's conv6 (128 channels and filters on 8x8 planes, 16 tiles an
    # image): direct for one image or a few, Winograd once the call has 128 tiles.
    x = np.zeros((images, 128, 8, 8), np.float32)
    weight = np.zeros((128, 128, 3, 3), np.float32)
    assert fast.conv2d_uses_winograd(x, weight, 1, 1) is winograd


def test_conv2d_set_winograd_false_keeps_every_layer_direct():
    rng = np.random.default_rng(7)
    x = random_array(rng, (2, 32, 32, 32), np.float32)
    weight = random_array(rng, (32, 32, 3, 3), np.float32)
    winograd, _ = fast.conv2d_forward(x, weight, None, 1, 1)
    previous = fast.set_winograd(False)
    try:
        assert previous is True
        assert not fast.conv2d_uses_winograd(x, weight, 1, 1)
        direct, _ = fast.conv2d_forward(x, weight, None, 1, 1)
    finally:
        fast.set_winograd(previous)
    assert fast.conv2d_uses_winograd(x, weight, 1, 1)
    # Different rounding, the same convolution.
    assert not np.array_equal(winograd, direct)
    np.testing.assert_allclose(winograd, direct, rtol=1e-4, atol=1e-4 * np.abs(direct).max())


def test_conv2d_winograd_only_where_it_pays():
    # Three input channels (cifar6's first layer) leave the transforms
    # nothing to save; strides and other kernel sizes have no Winograd path.
    def uses(c, f, h, kernel=3, stride=1):
        x = np.zeros((16, c, h, h), np.float32)
        return fast.conv2d_uses_winograd(x, np.zeros((f, c, kernel, kernel), np.float32),
                                         stride, kernel // 2)
    assert uses(32, 32, 32) and uses(128, 128, 8)
    assert not uses(3, 32, 32)
    assert not uses(64, 64, 16, stride=2)
    assert not uses(64, 64, 16, kernel=5)
    assert not uses(64, 64, 16, kernel=1)


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_winograd_keeps_nan_to_its_windows(dtype, special):
    # The transforms mix every pixel of a 4x4 tile into all four of its
    # outputs (and into every tap's share of the weight gradient), so a NaN
    # or inf would reach values whose window never holds it; such images are
    # computed by the direct kernel instead.
    rng = np.random.default_rng(8)
    x = random_array(rng, (6, 128, 9, 10), dtype)  # enough tiles for the cost model to take Winograd
    x[1, 5, 4, 0] = special
    weight = random_array(rng, (128, 128, 3, 3), dtype)
    bias = random_array(rng, (128,), dtype)
    assert fast.conv2d_uses_winograd(x, weight, 1, 1)
    y, cache = fast.conv2d_forward(x, weight, bias, 1, 1)
    y_ref, cache_ref = ref.conv2d_forward(x, weight, bias, 1, 1)
    assert np.isfinite(y[1, :, 4, 2]).all()  # two columns right of the pixel: outside
    dy = random_array(rng, y.shape, dtype)
    dweight = fast.conv2d_backward(dy, cache)[1]
    # The pixel is in the first column: the taps of the last kernel column,
    # which read one column to its left, never see it.
    assert np.isfinite(dweight[:, 5, :, 2]).all()
    finite_x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    y_abs, cache_abs = ref.conv2d_forward(np.abs(finite_x), np.abs(weight), np.abs(bias), 1, 1)
    got = (y,) + fast.conv2d_backward(dy, cache)
    want = (y_ref,) + ref.conv2d_backward(dy, cache_ref)
    magnitude = (y_abs,) + ref.conv2d_backward(np.abs(dy), cache_abs)
    for g, w, m in zip(got, want, magnitude):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        np.testing.assert_array_equal(np.isinf(g), np.isinf(w))
        assert_close(g, w, m)


def test_conv2d_winograd_gives_the_same_bits_on_any_thread_count():
    # Every output depends on its own tile only: how the tile rows are shared
    # out does not change a bit.
    rng = np.random.default_rng(9)
    x = random_array(rng, (3, 64, 16, 16), np.float32)
    weight = random_array(rng, (64, 64, 3, 3), np.float32)
    before = fast.get_openmp_threads()
    try:
        results = []
        for threads in (1, 2):
            fast.set_openmp_threads(threads)
            results.append(fast.conv2d_forward(x, weight, None, 1, 1)[0])
        np.testing.assert_array_equal(results[0], results[1])
    finally:
        fast.set_openmp_threads(before)


# ---------------------------------------------------------------------------
# Grouped and depthwise convolution

@property_test
@given(windows(), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.booleans())
def test_grouped_conv2d_matches_reference(case, groups, channels_a_group, filters_a_group, with_bias):
    # One channel a group (groups > 1) is the depthwise kernel; more, the
    # other paths once per group.
    case["c"] = groups * channels_a_group
    rng, dtype = case["rng"], case["dtype"]
    weight = random_array(rng, (groups * filters_a_group, channels_a_group) + case["kernel"], dtype)
    bias = random_array(rng, (groups * filters_a_group,), dtype) if with_bias else None
    check_conv(x_of(case), weight, bias, case["stride"], case["padding"], groups)


DEPTHWISE_CASES = [
    # MobileNetV2's layers, narrower: 3x3, padding 1, stride 1 and 2, one
    # filter a channel, on planes of several vectors and of less than one
    ((2, 8, 40, 40), 1, (3, 3), 1, 1),
    ((2, 8, 41, 39), 1, (3, 3), 2, 1),
    ((3, 16, 7, 7), 1, (3, 3), 1, 1),
    ((1, 16, 4, 4), 1, (3, 3), 2, 1),
    # several filters a channel; other kernels, strides and paddings
    ((1, 5, 9, 11), 3, (3, 3), 1, 0),
    ((2, 4, 12, 13), 2, (5, 3), (2, 3), (2, 1)),
    ((2, 3, 6, 5), 1, (7, 7), 1, 3),
    ((1, 2, 1, 1), 2, (3, 3), 1, 1),
    ((2, 3, 20, 9), 1, (1, 1), 2, 0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, multiplier, kernel, stride, padding", DEPTHWISE_CASES)
def test_depthwise_conv2d_matches_reference(dtype, shape, multiplier, kernel, stride, padding):
    rng = np.random.default_rng(10)
    c = shape[1]
    x = random_array(rng, shape, dtype)
    weight = random_array(rng, (c * multiplier, 1) + kernel, dtype)
    assert fast.conv2d_path(x, weight, stride, padding, c) == "depthwise"
    check_conv(x, weight, random_array(rng, (c * multiplier,), dtype), stride, padding, c)
    check_conv(x, weight, None, stride, padding, c)


def test_conv2d_path_of_resnet_and_mobilenet_layers():
    def path(c, f, h, kernel, stride, groups=1):
        x = np.zeros((1, c, h, h), np.float32)
        return fast.conv2d_path(x, np.zeros((f, c // groups, kernel, kernel), np.float32), stride, kernel // 2,
                                groups)
    # ResNet-18's downsampling: the matrix kernel on unfolded columns, never
    # the direct depthwise kernel or a per-pixel loop.
    assert path(3, 64, 224, 7, 2) == "unfolded"
    assert path(64, 128, 56, 3, 2) == "unfolded"
    assert path(64, 128, 56, 1, 2) == "unfolded"
    assert path(64, 64, 56, 3, 1) == "winograd"
    assert path(64, 256, 56, 1, 1) == "shifted"
    # MobileNetV2's depthwise layers, and a grouped layer of several channels a group.
    assert path(32, 32, 112, 3, 1, groups=32) == "depthwise"
    assert path(96, 96, 112, 3, 2, groups=96) == "depthwise"
    assert path(64, 128, 32, 3, 1, groups=2) == "winograd"
    assert path(8, 8, 16, 3, 2, groups=4) == "unfolded"
    # One channel and one group: the matrix kernel, all filters as its rows.
    assert path(1, 32, 28, 3, 1) == "shifted"


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_conv2d_keeps_nan_to_its_windows(dtype, special):
    # The depthwise kernel computes on a wide grid whose junk columns hold
    # pixels of other rows: a NaN or inf in x must still reach only the
    # outputs (and weight-gradient taps) whose window holds it, and one in a
    # weight only the input gradient that tap reaches.
    rng = np.random.default_rng(11)
    x = random_array(rng, (2, 3, 9, 10), dtype)
    x[1, 2, 4, 0] = special
    weight = random_array(rng, (6, 1, 3, 3), dtype)
    bias = random_array(rng, (6,), dtype)
    y, cache = fast.conv2d_forward(x, weight, bias, 1, 1, 3)
    y_ref, cache_ref = ref.conv2d_forward(x, weight, bias, 1, 1, 3)
    assert np.isfinite(y[1, 4:6, 4, 2]).all() and not np.isfinite(y[1, 4:6, 4, 1]).all()
    dy = random_array(rng, y.shape, dtype)
    got = (y,) + fast.conv2d_backward(dy, cache)
    want = (y_ref,) + ref.conv2d_backward(dy, cache_ref)
    # The pixel is in the first column: the last kernel column never sees it.
    assert np.isfinite(got[2][4:6, :, :, 2]).all()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        np.testing.assert_array_equal(np.isinf(g), np.isinf(w))
    bad_weight = weight.copy()
    bad_weight[3, 0, 2, 2] = special
    _, cache = fast.conv2d_forward(x, bad_weight, bias, 1, 1, 3)
    _, cache_ref = ref.conv2d_forward(x, bad_weight, bias, 1, 1, 3)
    dx = fast.conv2d_backward(dy, cache)[0]
    dx_ref = ref.conv2d_backward(dy, cache_ref)[0]
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(dx_ref))
    # Filter 3 reads channel 1; its bottom-right tap never reaches the
    # channel's first row or column.
    assert np.isfinite(dx[:, [0, 2]]).all() and not np.isfinite(dx[:, 1]).all()
    assert np.isfinite(dx[:, 1, 0]).all() and np.isfinite(dx[:, 1, :, 0]).all()


def test_grouped_conv2d_is_the_groups_convolved_apart():
    # An oracle that shares nothing with either backend's grouping: each
    # group convolved on its own by the compiled kernel, then stacked.
    rng = np.random.default_rng(12)
    x = random_array(rng, (2, 6, 11, 10), np.float64)
    weight = random_array(rng, (9, 2, 3, 3), np.float64)
    bias = random_array(rng, (9,), np.float64)
    y, cache = fast.conv2d_forward(x, weight, bias, 2, 1, 3)
    dy = random_array(rng, y.shape, np.float64)
    dx, dweight, dbias = fast.conv2d_backward(dy, cache)
    for k in range(3):
        part = slice(3 * k, 3 * k + 3)
        y_k, cache_k = fast.conv2d_forward(x[:, 2 * k:2 * k + 2], weight[part], bias[part], 2, 1)
        dx_k, dweight_k, dbias_k = fast.conv2d_backward(np.ascontiguousarray(dy[:, part]), cache_k)
        np.testing.assert_allclose(y[:, part], y_k, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(dx[:, 2 * k:2 * k + 2], dx_k, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(dweight[part], dweight_k, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(dbias[part], dbias_k, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------
# Pooling

def pool_args(case, data):
    stride = data.draw(st.one_of(st.none(), st.just(case["stride"])), label="stride")
    return case["kernel"], stride, case["padding"]


@property_test
@given(windows(pooling=True), st.data())
def test_maxpool2d_matches_reference_with_ties_and_nan(case, data):
    rng = case["rng"]
    # Integer values from a small range make many ties in every window.
    x = rng.integers(-3, 4, (case["n"], case["c"], case["h"], case["w"])).astype(case["dtype"])
    special = data.draw(st.sampled_from([None, np.nan, np.inf, -np.inf]), label="special")
    if special is not None:
        x[rng.random(x.shape) < 0.2] = special
    args = pool_args(case, data)
    y, argmax = fast.maxpool2d_forward(x, *args)
    y_ref, argmax_ref = ref.maxpool2d_forward(x, *args)
    assert y.dtype == y_ref.dtype and argmax.dtype == np.int64
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)

    dy = random_array(rng, y.shape, y.dtype)
    if argmax_ref.min() < 0 or argmax_ref.max() >= case["h"] * case["w"]:
        # A window of -inf whose first tap is padding points into the padding.
        for backend in (fast, ref):
            with pytest.raises(ValueError, match="outside"):
                backend.maxpool2d_backward(dy, argmax, x.shape)
        return
    assert_close(fast.maxpool2d_backward(dy, argmax, x.shape),
                 ref.maxpool2d_backward(dy, argmax_ref, x.shape),
                 ref.maxpool2d_backward(np.abs(dy), argmax_ref, x.shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2d_picks_the_first_nan_and_the_first_maximum(dtype):
    x = np.array([[[[1, 5, 5, 0],
                    [5, np.nan, 2, np.nan],
                    [0, 0, 0, 0],
                    [0, 0, 7, 7]]]], dtype=dtype)
    y, argmax = fast.maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(y, np.array([[[[np.nan, np.nan], [0, 7]]]], dtype=dtype))
    np.testing.assert_array_equal(argmax, [[[[5, 7], [8, 14]]]])


@property_test
@given(windows(pooling=True), st.data())
def test_avgpool2d_matches_reference(case, data):
    x = x_of(case)
    args = pool_args(case, data)
    y = fast.avgpool2d_forward(x, *args)
    assert_close(y, ref.avgpool2d_forward(x, *args), ref.avgpool2d_forward(np.abs(x), *args))
    dy = random_array(case["rng"], y.shape, y.dtype)
    assert_close(fast.avgpool2d_backward(dy, x.shape, *args),
                 ref.avgpool2d_backward(dy, x.shape, *args),
                 ref.avgpool2d_backward(np.abs(dy), x.shape, *args))


# ---------------------------------------------------------------------------
# Batch normalization

@property_test
@given(windows(), st.floats(-50, 50), st.floats(0.01, 10), st.sampled_from([1e-5, 1e-3, 0.5]))
def test_batchnorm2d_train_matches_reference(case, offset, scale, eps):
    rng, dtype, c = case["rng"], case["dtype"], case["c"]
    x = x_of(case, scale=scale, offset=offset)
    weight = random_array(rng, (c,), dtype)
    bias = random_array(rng, (c,), dtype)
    y, mean, var, cache = fast.batchnorm2d_forward_train(x, weight, bias, eps)
    y_ref, mean_ref, var_ref, ref_cache = ref.batchnorm2d_forward_train(x, weight, bias, eps)
    xhat, inv_std, *_ = ref_cache
    assert_close(mean, mean_ref, np.abs(x).max())
    assert_close(var, var_ref, var_ref)
    channel = (1, -1, 1, 1)
    assert_close(y, y_ref,
                 np.abs(xhat) * np.abs(weight).reshape(channel) + np.abs(bias).reshape(channel))

    dy = random_array(rng, x.shape, dtype)
    m = x.size // c
    sum_abs_dy = np.abs(dy).sum(axis=(0, 2, 3))
    sum_abs_dy_xhat = np.abs(dy * xhat).sum(axis=(0, 2, 3))
    dx_magnitude = (np.abs(weight * inv_std / m).reshape(channel)
                    * (m * np.abs(dy) + sum_abs_dy.reshape(channel)
                       + np.abs(xhat) * sum_abs_dy_xhat.reshape(channel)))
    dx, dweight, dbias = fast.batchnorm2d_backward(dy, cache)
    dx_ref, dweight_ref, dbias_ref = ref.batchnorm2d_backward(dy, ref_cache)
    assert_close(dx, dx_ref, dx_magnitude)
    assert_close(dweight, dweight_ref, sum_abs_dy_xhat)
    assert_close(dbias, dbias_ref, sum_abs_dy)


@pytest.mark.parametrize("kernels", [fast, ref], ids=["compiled", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm2d_with_the_relu_fused_in_matches_the_two_kernels(kernels, dtype):
    # relu_input / through_relu fold ReLU into the batch norm's passes; the
    # result must be the ReLU kernel's then the batch norm's: NaN, inf and
    # zeros in the same places, and the same values but for the rounding of
    # the statistics' sums, which the compiler may vectorize differently in
    # the fused loop (the twin runs the very same NumPy operations: bit for
    # bit).
    def same(got, want):
        if kernels is ref:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_array_equal(got == 0, want == 0)
            finite = np.isfinite(want)
            np.testing.assert_allclose(got[finite], want[finite], rtol=RTOL[want.dtype],
                                       atol=RTOL[want.dtype] * np.abs(want[finite]).max(initial=1.0))

    rng = np.random.default_rng(21)
    x = random_array(rng, (3, 4, 9, 7), dtype, offset=0.3)
    x[0, 1, 2, 3], x[1, 2, 0, 0], x[2, 3, 4, 4], x[0, 0, 0, 1] = np.nan, np.inf, -np.inf, -0.0
    weight, bias = random_array(rng, (4,), dtype), random_array(rng, (4,), dtype)
    dy = random_array(rng, x.shape, dtype)
    relu_y = kernels.relu_forward(x)
    y, mean, var, cache = kernels.batchnorm2d_forward_train(relu_y, weight, bias)
    dx, dweight, dbias = kernels.batchnorm2d_backward(dy, cache)
    fused_y, fused_mean, fused_var, fused_cache = kernels.batchnorm2d_forward_train(
        x, weight, bias, relu_input=True)
    for got, want in ((fused_y, y), (fused_mean, mean), (fused_var, var)):
        same(got, want)
    # Without through_relu: the gradient with respect to relu(x), as before.
    for got, want in zip(kernels.batchnorm2d_backward(dy, fused_cache), (dx, dweight, dbias)):
        same(got, want)
    through = kernels.batchnorm2d_backward(dy, fused_cache, through_relu=True)
    same(through[0], kernels.relu_backward(dx, relu_y))
    same(through[1], dweight)
    assert (through[0][~(x > 0)] == 0).all()
    with pytest.raises(ValueError, match="through_relu=True needs"):
        kernels.batchnorm2d_backward(dy, cache, through_relu=True)
    with pytest.raises(TypeError, match="relu_input must be a bool, got 1"):
        kernels.batchnorm2d_forward_train(x, weight, bias, 1e-5, 1)


@property_test
@given(windows(), st.sampled_from(DTYPES))
def test_batchnorm2d_eval_matches_reference(case, stats_dtype):
    rng, dtype, c = case["rng"], case["dtype"], case["c"]
    x = x_of(case)
    weight, bias = random_array(rng, (c,), dtype), random_array(rng, (c,), dtype)
    running_mean = random_array(rng, (c,), stats_dtype)
    running_var = (rng.random(c) + 0.1).astype(stats_dtype)
    args = (x, weight, bias, running_mean, running_var, 1e-3)
    expected = ref.batchnorm2d_forward_eval(*args)
    channel = (1, -1, 1, 1)
    scale = np.abs(weight / np.sqrt(running_var.astype(dtype) + dtype(1e-3))).reshape(channel)
    magnitude = ((np.abs(x) + np.abs(running_mean).reshape(channel)) * scale
                 + np.abs(bias).reshape(channel))
    assert_close(fast.batchnorm2d_forward_eval(*args), expected, magnitude)


def test_batchnorm2d_variance_survives_a_large_mean_in_float32():
    # 131,072 values per channel around 1000: float32 sums of squares of the raw
    # values would cancel catastrophically.
    rng = np.random.default_rng(5)
    x = (1000 + rng.standard_normal((32, 2, 64, 64))).astype(np.float32)
    weight, bias = np.ones(2, np.float32), np.zeros(2, np.float32)
    _, mean, var, _ = fast.batchnorm2d_forward_train(x, weight, bias)
    exact = x.astype(np.float64)
    np.testing.assert_allclose(mean, exact.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(var, exact.var(axis=(0, 2, 3)), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plane", [(1, 8), (3, 5), (16, 16)])
def test_batchnorm2d_of_a_constant_channel_is_exactly_its_bias(dtype, plane):
    # The mean of equal values, summed in whatever order the vector width
    # gives, can be off by an ulp; x - mean must still be exactly 0, as in
    # the twin, or the weight gradient of a constant channel is not 0.
    rng = np.random.default_rng(10)
    for value in rng.standard_normal(100):
        x = np.broadcast_to(np.asarray(value, dtype), (2, 1) + plane)
        weight, bias = np.full(1, 1.5, dtype), np.full(1, 0.25, dtype)
        y, mean, var, cache = fast.batchnorm2d_forward_train(x, weight, bias)
        assert mean[0] == x[0, 0, 0, 0] and var[0] == 0
        np.testing.assert_array_equal(y, np.full(x.shape, 0.25, dtype))
        dy = random_array(rng, x.shape, dtype)
        dx, dweight, dbias = fast.batchnorm2d_backward(dy, cache)
        assert dweight[0] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm2d_nan_spreads_over_its_channel_only(dtype):
    x = random_array(np.random.default_rng(6), (2, 3, 4, 4), dtype)
    x[1, 1, 2, 3] = np.nan
    y, mean, var, _ = fast.batchnorm2d_forward_train(x, np.ones(3, dtype), np.zeros(3, dtype))
    assert np.isnan(y[:, 1]).all() and np.isnan(mean[1]) and np.isnan(var[1])
    assert np.isfinite(y[:, [0, 2]]).all()


# ---------------------------------------------------------------------------
# ReLU

@property_test
@given(st.lists(st.integers(0, 7), min_size=0, max_size=4), st.sampled_from(DTYPES),
       st.integers(0, 2 ** 32 - 1))
def test_relu_matches_reference(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = random_array(rng, shape, dtype)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype)
    mask = rng.random(x.shape) < 0.3
    x[mask] = rng.choice(specials, size=int(mask.sum()))
    y = fast.relu_forward(x)
    np.testing.assert_array_equal(y, ref.relu_forward(x))
    assert y.dtype == x.dtype and y.shape == x.shape
    dy = random_array(rng, shape, dtype)
    dx = fast.relu_backward(dy, y)
    np.testing.assert_array_equal(dx, ref.relu_backward(dy, y))
    assert dx.dtype == dtype


@property_test
@given(st.lists(st.integers(0, 7), min_size=0, max_size=4), st.sampled_from(DTYPES),
       st.integers(0, 2 ** 32 - 1))
def test_relu6_matches_reference(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = random_array(rng, shape, dtype, scale=5.0, offset=3.0)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 6.0], dtype)
    mask = rng.random(x.shape) < 0.3
    x[mask] = rng.choice(specials, size=int(mask.sum()))
    y = fast.relu6_forward(x)
    np.testing.assert_array_equal(y, ref.relu6_forward(x))
    assert y.dtype == x.dtype and y.shape == x.shape
    assert np.all((y[~np.isnan(y)] >= 0) & (y[~np.isnan(y)] <= 6))
    dy = random_array(rng, shape, dtype)
    dx = fast.relu6_backward(dy, y)
    np.testing.assert_array_equal(dx, ref.relu6_backward(dy, y))
    assert dx.dtype == dtype


def test_relu_is_parallel_safe_on_large_arrays():
    x = random_array(np.random.default_rng(7), (3, 200_001), np.float32)
    np.testing.assert_array_equal(fast.relu_forward(x), ref.relu_forward(x))


# ---------------------------------------------------------------------------
# Memory layouts of the inputs

def non_contiguous(a):
    wide = np.repeat(a, 2, axis=-1)
    view = wide[..., ::2]
    assert not view.flags.c_contiguous
    return view


def negative_strides(a):
    view = a[..., ::-1].copy()[..., ::-1]
    assert view.strides[-1] < 0
    return view


def fortran_order(a):
    return np.asfortranarray(a)


def read_only(a):
    view = a.copy()
    view.flags.writeable = False
    return view


def kernel_calls(dtype, n=2):
    """name -> (function of arrays, the arrays): every kernel, backward through its
    forward, on a batch of n images."""
    rng = np.random.default_rng(8)
    x = random_array(rng, (n, 3, 7, 6), dtype)
    weight = random_array(rng, (4, 3, 3, 2), dtype)
    bias = random_array(rng, (4,), dtype)
    window = (3, 2)
    cols = random_array(rng, fast.im2col(x, (3, 2), 2, 1).shape, dtype)
    conv_dy = random_array(rng, (n, 4, 4, 4), dtype)
    pool_dy = random_array(rng, (n, 3, 4, 4), dtype)
    bn_params = random_array(rng, (2, 3), dtype)
    stats = np.abs(random_array(rng, (2, 3), dtype)) + 0.5

    def conv(x, weight, bias, dy, stride=2, padding=1, groups=1):
        y, cache = fast.conv2d_forward(x, weight, bias, stride, padding, groups)
        return (y,) + fast.conv2d_backward(dy, cache)

    # 1x1 kernels take the path without im2col.
    large_x = random_array(rng, (n, 3, 24, 24), dtype)
    large_dy = random_array(rng, (n, 4, 24, 24), dtype)
    pointwise_weight = random_array(rng, (4, 3, 1, 1), dtype)

    def maxpool(x, dy):
        y, argmax = fast.maxpool2d_forward(x, window, 2, 1)
        return y, argmax, fast.maxpool2d_backward(dy, argmax, x.shape)

    def avgpool(x, dy):
        return (fast.avgpool2d_forward(x, window, 2, 1),
                fast.avgpool2d_backward(dy, x.shape, window, 2, 1))

    def batchnorm(x, params, stats, dy):
        y, mean, var, cache = fast.batchnorm2d_forward_train(x, params[0], params[1])
        evaluated = fast.batchnorm2d_forward_eval(x, params[0], params[1], stats[0], stats[1])
        return (y, mean, var, evaluated) + fast.batchnorm2d_backward(dy, cache)

    def relu(x, dy):
        y = fast.relu_forward(x)
        return y, fast.relu_backward(dy, y)

    def relu6(x, dy):
        y = fast.relu6_forward(x * 4)
        return y, fast.relu6_backward(dy, y)

    # Depthwise (three channels, two filters each) and two groups of two.
    depthwise_weight = random_array(rng, (6, 1, 3, 2), dtype)
    depthwise_bias = random_array(rng, (6,), dtype)
    depthwise_dy = random_array(rng, (n, 6, 4, 4), dtype)
    grouped_x = random_array(rng, (n, 4, 7, 6), dtype)
    grouped_weight = random_array(rng, (4, 2, 3, 3), dtype)
    grouped_dy = random_array(rng, (n, 4, 7, 6), dtype)

    def linear(x, weight, bias, dy):
        y, cache = fast.linear_forward(x, weight, bias)
        return (y,) + fast.linear_backward(dy, cache)

    features = x.reshape(n, -1)
    fc_weight = random_array(rng, (21, features.shape[1]), dtype)

    return {
        "im2col": (lambda x: fast.im2col(x, (3, 2), 2, 1), (x,)),
        "col2im": (lambda cols: fast.col2im(cols, x.shape, (3, 2), 2, 1), (cols,)),
        "conv2d": (conv, (x, weight, bias, conv_dy)),
        "conv2d stride 1": (lambda *a: conv(*a, stride=1, padding=(1, 0)),
                            (large_x, weight, bias, large_dy[..., :23])),
        "conv2d 1x1": (lambda *a: conv(*a, stride=1, padding=0),
                       (large_x, pointwise_weight, bias, large_dy)),
        "conv2d depthwise": (lambda *a: conv(*a, groups=3), (x, depthwise_weight, depthwise_bias, depthwise_dy)),
        "conv2d grouped": (lambda *a: conv(*a, stride=1, padding=1, groups=2),
                           (grouped_x, grouped_weight, bias, grouped_dy)),
        "maxpool2d": (maxpool, (x, pool_dy)),
        "avgpool2d": (avgpool, (x, pool_dy)),
        "batchnorm2d": (batchnorm, (x, bn_params, stats, x[:, :, ::-1] * 2)),
        "relu": (relu, (x, x.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2))),
        "relu6": (relu6, (x, x.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2))),
        "linear": (linear, (features, fc_weight, bias[:1].repeat(21), features[:, :21] * 3)),
    }


@pytest.mark.parametrize("layout", [non_contiguous, negative_strides, fortran_order, read_only])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", list(kernel_calls(np.float64)))
def test_any_memory_layout_gives_the_same_results(kernel, dtype, layout):
    function, arrays = kernel_calls(dtype)[kernel]
    expected = function(*arrays)
    actual = function(*(layout(a) for a in arrays))
    for got, want in zip(outputs(actual), outputs(expected)):
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# Bad input: the same exception and message as the twin, naming the value

f32, f64 = np.float32, np.float64
X = np.zeros((2, 3, 4, 4), f32)
W = np.zeros((5, 3, 3, 3), f32)
B = np.zeros(5, f32)
GAMMA = np.ones(3, f32)

BAD_CALLS = [
    ("conv x 3-D", "conv2d_forward", (X[0], W, B), ValueError, "(3, 4, 4)"),
    ("conv x int", "conv2d_forward", (X.astype(np.int64), W, B), TypeError, "int64"),
    ("conv weight float64", "conv2d_forward", (X, W.astype(f64), B), TypeError, "float64"),
    ("conv bias float64", "conv2d_forward", (X, W, B.astype(f64)), TypeError, "float64"),
    ("conv channels", "conv2d_forward", (X, W[:, :2], B), ValueError, "(5, 2, 3, 3)"),
    ("conv bias shape", "conv2d_forward", (X, W, B[:4]), ValueError, "(4,)"),
    ("conv kernel too large", "conv2d_forward", (X, np.zeros((5, 3, 7, 3), f32), B, 1, 1),
     ValueError, "(7, 3)"),
    ("conv empty batch", "conv2d_forward", (X[:0], W, B), ValueError, "(0, 3, 4, 4)"),
    ("conv negative padding", "conv2d_forward", (X, W, B, 1, -1), ValueError, "(-1, -1)"),
    ("conv zero stride", "conv2d_forward", (X, W, B, (1, 0)), ValueError, "(1, 0)"),
    ("conv float stride", "conv2d_forward", (X, W, B, 1.5), TypeError, "1.5"),
    ("linear x 4-D", "linear_forward", (X, W.reshape(5, -1)), ValueError, "(2, 3, 4, 4)"),
    ("linear features", "linear_forward", (X.reshape(2, -1), W.reshape(5, -1)), ValueError,
     "(5, 27)"),
    ("linear weight float64", "linear_forward", (X.reshape(2, -1), np.zeros((5, 48))), TypeError,
     "float64"),
    ("linear bias shape", "linear_forward", (X.reshape(2, -1), np.zeros((5, 48), f32), B[:4]),
     ValueError, "(4,)"),
    ("linear empty batch", "linear_forward", (X[:0].reshape(0, 48), np.zeros((5, 48), f32)),
     ValueError, "(0, 48)"),
    ("linear empty weight", "linear_forward", (X.reshape(2, -1), np.zeros((0, 48), f32)),
     ValueError, "(0, 48)"),
    ("im2col list", "im2col", (X.tolist(), 3), TypeError, "list"),
    ("im2col empty", "im2col", (X[:, :0], 3), ValueError, "(2, 0, 4, 4)"),
    ("col2im shape", "col2im", (np.zeros((27, 31), f32), X.shape, 3, 1, 1), ValueError, "(27, 31)"),
    ("col2im x_shape", "col2im", (np.zeros((27, 32), f32), (2, 3, 0, 4), 3), ValueError,
     "(2, 3, 0, 4)"),
    ("maxpool padding", "maxpool2d_forward", (X, 3, 1, 2), ValueError, "(2, 2)"),
    ("maxpool window", "maxpool2d_forward", (X, 5), ValueError, "(5, 5)"),
    ("maxpool int", "maxpool2d_forward", (X.astype(np.int32), 2), TypeError, "int32"),
    ("maxpool empty", "maxpool2d_forward", (X[:0], 2), ValueError, "(0, 3, 4, 4)"),
    ("maxpool argmax shape", "maxpool2d_backward",
     (np.zeros((2, 3, 2, 2), f32), np.zeros((2, 3, 2, 1), np.int64), X.shape), ValueError,
     "(2, 3, 2, 1)"),
    ("maxpool argmax range", "maxpool2d_backward",
     (np.zeros((2, 3, 2, 2), f32), np.full((2, 3, 2, 2), 16), X.shape), ValueError, "4x4"),
    ("maxpool argmax one negative", "maxpool2d_backward",
     (np.ones((2, 3, 2, 2), f32), np.where(np.arange(24).reshape(2, 3, 2, 2) == 17, -1, 5), X.shape),
     ValueError, "1 of its 24 indices"),
    ("avgpool padding", "avgpool2d_forward", (X, (2, 4), 1, (1, 3)), ValueError, "(1, 3)"),
    ("avgpool dy shape", "avgpool2d_backward", (np.zeros((2, 3, 3, 2), f32), X.shape, 2),
     ValueError, "(2, 3, 3, 2)"),
    ("avgpool dy ndim", "avgpool2d_backward", (np.zeros((3, 2, 2), f32), X.shape, 2),
     ValueError, "(3, 2, 2)"),
    ("batchnorm weight shape", "batchnorm2d_forward_train", (X, GAMMA[:2], GAMMA), ValueError,
     "(2,)"),
    ("batchnorm bias dtype", "batchnorm2d_forward_train", (X, GAMMA, GAMMA.astype(f64)),
     TypeError, "float64"),
    ("batchnorm eps", "batchnorm2d_forward_train", (X, GAMMA, GAMMA, 0.0), ValueError, "0.0"),
    ("batchnorm empty", "batchnorm2d_forward_train", (X[:, :, :0], GAMMA, GAMMA), ValueError,
     "(2, 3, 0, 4)"),
    ("batchnorm eval stats", "batchnorm2d_forward_eval", (X, GAMMA, GAMMA, GAMMA[:1], GAMMA),
     ValueError, "(1,)"),
    ("conv groups zero", "conv2d_forward", (X, W, B, 1, 0, 0), ValueError, "groups must be a positive int, got 0"),
    ("conv groups float", "conv2d_forward", (X, W, B, 1, 0, 1.5), TypeError, "1.5"),
    ("conv groups channels", "conv2d_forward", (X, W[:4, :1], B[:4], 1, 1, 2), ValueError,
     "input has 3 channels but weight (4, 1, 3, 3) with groups 2 expects 2"),
    ("conv groups filters", "conv2d_forward", (X, W[:, :1], B, 1, 1, 3), ValueError,
     "(5, 1, 3, 3) has 5 filters, which is not divisible by groups 3"),
    ("relu int", "relu_forward", (np.zeros(3, np.int16),), TypeError, "int16"),
    ("relu6 int", "relu6_forward", (np.zeros(3, np.int16),), TypeError, "int16"),
    ("relu6_backward y shape", "relu6_backward", (X, X[0]), ValueError, "(3, 4, 4)"),
    ("relu_backward y shape", "relu_backward", (X, X[0]), ValueError, "(3, 4, 4)"),
]


@pytest.mark.parametrize("name, kernel, args, error, fragment", BAD_CALLS,
                         ids=[case[0] for case in BAD_CALLS])
def test_bad_input_raises_like_the_reference(name, kernel, args, error, fragment):
    with pytest.raises(error) as ours:
        getattr(fast, kernel)(*args)
    with pytest.raises(error) as theirs:
        getattr(ref, kernel)(*args)
    assert str(ours.value) == str(theirs.value)
    assert fragment in str(ours.value)


def test_wrong_dy_raises_naming_its_shape():
    _, conv_cache = fast.conv2d_forward(X, W, B)
    with pytest.raises(ValueError, match=r"\(2, 5, 2, 3\)"):
        fast.conv2d_backward(np.zeros((2, 5, 2, 3), f32), conv_cache)
    with pytest.raises(ValueError, match="4-D"):
        fast.conv2d_backward(np.zeros((5, 2, 2), f32), conv_cache)
    with pytest.raises(TypeError, match="float64"):
        fast.conv2d_backward(np.zeros((2, 5, 2, 2), f64), conv_cache)
    _, _, _, bn_cache = fast.batchnorm2d_forward_train(X, GAMMA, GAMMA)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5\)"):
        fast.batchnorm2d_backward(np.zeros((2, 3, 4, 5), f32), bn_cache)
    with pytest.raises(TypeError, match="float64"):
        fast.relu_backward(X, X.astype(f64))
    _, fc_cache = fast.linear_forward(X.reshape(2, -1), np.zeros((5, 48), f32))
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        fast.linear_backward(np.zeros((2, 4), f32), fc_cache)


def test_caches_must_come_from_the_compiled_forward():
    _, ref_cache = ref.conv2d_forward(X, W, B)
    with pytest.raises(TypeError, match="tuple"):
        fast.conv2d_backward(np.zeros((2, 5, 2, 2), f32), ref_cache)
    with pytest.raises(TypeError, match="NoneType"):
        fast.batchnorm2d_backward(X, None)
    _, fc_ref_cache = ref.linear_forward(X.reshape(2, -1), np.zeros((5, 48), f32))
    with pytest.raises(TypeError, match="tuple"):
        fast.linear_backward(np.zeros((2, 5), f32), fc_ref_cache)


def test_maxpool_backward_checks_argmax_and_x_shape():
    dy = np.zeros((2, 3, 2, 2), f32)
    with pytest.raises(TypeError, match="float32"):
        fast.maxpool2d_backward(dy, dy, X.shape)
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 4\)"):
        fast.maxpool2d_backward(dy, np.zeros(dy.shape, np.int64), (2, 4, 4, 4))


@pytest.mark.parametrize("call", [
    lambda: fast.im2col(np.zeros((1, 1, 1, 1), f32), 1, 1, 10 ** 9),
    lambda: fast.conv2d_forward(np.zeros((1, 1, 1, 1), f32), np.zeros((1, 1, 1, 1), f32), None,
                                1, 2 ** 40),
    lambda: fast.col2im(np.zeros((1, 1), f32), (1, 1, 2 ** 40, 2 ** 40), 1, 2 ** 40),
    lambda: fast.avgpool2d_backward(np.zeros((1, 1, 1, 1), f32), (1, 1, 1, 1), 2 ** 62,
                                    2 ** 62, 2 ** 61),
])
def test_sizes_beyond_the_address_space_are_refused(call):
    with pytest.raises(ValueError, match="too large"):
        call()


# ---------------------------------------------------------------------------
# Threads

def test_concurrent_calls_release_the_gil_and_agree():
    rng = np.random.default_rng(9)
    x = random_array(rng, (8, 8, 32, 32), np.float32)
    weight = random_array(rng, (16, 8, 3, 3), np.float32)
    bias = random_array(rng, (16,), np.float32)
    expected = fast.conv2d_forward(x, weight, bias, 1, 1)[0]
    results = [None] * 4

    def run(slot):
        results[slot] = fast.conv2d_forward(x, weight, bias, 1, 1)[0]

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not fast.openmp_enabled(), reason="built without OpenMP")
@pytest.mark.parametrize("kernel", ["im2col", "col2im", "maxpool2d", "avgpool2d", "batchnorm2d",
                                    "relu", "relu6", "linear", "conv2d depthwise"])
def test_thread_count_does_not_change_results(kernel):
    # 512 images: enough work for every loop to start its threads.
    function, arrays = kernel_calls(np.float32, n=512)[kernel]
    before = fast.get_openmp_threads()
    try:
        fast.set_openmp_threads(1)
        serial = function(*arrays)
        fast.set_openmp_threads(2)
        parallel = function(*arrays)
    finally:
        fast.set_openmp_threads(before)
    for a, b in zip(outputs(serial), outputs(parallel)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# GELU

# The float32 kernel evaluates Phi with an approximation of relative error
# below 1.2e-7 and an exp of its own: a few float32 ulps of the result,
# against the NumPy twin's erfc-based Phi, exact to float64. In the
# negative tail Phi(x) is exp(-x^2/2) times a slowly varying factor, and the
# rounding of that exponent, relative to its size x^2/2, is relative error of
# the result: the bound grows with x^2 there (a value near 1e-27 at x = -11
# may be off by 1e-5 of itself, where the float64 twin is exact). Results
# far below the smallest normal float may be flushed to zero.
GELU_RTOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-13}


def gelu_scales(x, dy):
    """The size of each term of gelu(x) and of dy * gelu'(x), in float64: the
    scale of their rounding errors (gelu' = Phi + x phi crosses zero near
    x = -0.75, where the result cancels to much less than its terms)."""
    # The twin's Phi (the standard library's erfc); not scipy.special, whose
    # import the leak-sanitizer run would report (fastconv/reference.py).
    x = x.astype(np.float64)
    phi = ref._normal_cdf(x)
    with np.errstate(over="ignore", invalid="ignore"):
        density = np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
        return np.abs(x * phi), np.abs(dy) * (phi + np.abs(x) * density)


def gelu_close(actual, expected, x, scale):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape and actual.flags.c_contiguous
    assert np.array_equal(np.isnan(actual), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite], expected[~finite])
    info = np.finfo(expected.dtype)
    # Past |x| = 100 the tail has long underflowed and gelu(x) is x itself.
    x2 = np.square(np.clip(x[finite].astype(np.float64), -100, 100))
    bound = scale[finite] * (GELU_RTOL[expected.dtype] + 4 * info.eps * x2) + info.tiny * 2.0 ** 20
    error = np.abs(actual[finite].astype(np.float64) - expected[finite])
    bad = error > bound
    assert not bad.any(), (x[finite][bad][:5], actual[finite][bad][:5], expected[finite][bad][:5])


def check_gelu(x, dy):
    forward_scale, backward_scale = gelu_scales(x, dy)
    gelu_close(fast.gelu_forward(x), ref.gelu_forward(x), x, forward_scale)
    gelu_close(fast.gelu_backward(dy, x), ref.gelu_backward(dy, x), x, backward_scale)


@property_test
@given(st.lists(st.integers(0, 7), min_size=0, max_size=4), st.sampled_from(DTYPES),
       st.floats(0.1, 20.0), st.integers(0, 2 ** 32 - 1))
def test_gelu_matches_reference(shape, dtype, scale, seed):
    rng = np.random.default_rng(seed)
    check_gelu(random_array(rng, shape, dtype, scale=scale), random_array(rng, shape, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_over_the_whole_float_line(dtype):
    # Every regime of the float32 approximation: the polynomial's range, both
    # tails, the clamps of its exp, the largest floats, signed zeros.
    finite = np.finfo(dtype).max
    x = np.concatenate([np.linspace(-40, 40, 80_001), [-1e30, -90.0, -87.0, 87.0, 89.0, 1e30, finite, -finite],
                        [0.0, -0.0, 1e-30, -1e-30]]).astype(dtype)
    check_gelu(x, np.ones_like(x))
    np.testing.assert_array_equal(np.signbit(fast.gelu_forward(x)[-4:]), [False, True, False, True])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_of_nan_and_infinities_is_x_times_phi(dtype):
    # x * Phi(x): gelu(inf) = inf * 1, gelu(-inf) = -inf * 0 = NaN, and the
    # gradient Phi(x) + x * phi(x) is NaN at both (inf * 0), as PyTorch's.
    x = np.array([np.nan, np.inf, -np.inf], dtype)
    y = fast.gelu_forward(x)
    assert np.isnan(y[0]) and y[1] == np.inf and np.isnan(y[2])
    np.testing.assert_array_equal(y, ref.gelu_forward(x))
    dx = fast.gelu_backward(np.ones(3, dtype), x)
    assert np.isnan(dx).all()
    np.testing.assert_array_equal(dx, ref.gelu_backward(np.ones(3, dtype), x))


def test_gelu_is_parallel_safe_on_large_arrays():
    x = random_array(np.random.default_rng(8), (3, 200_001), np.float32, scale=3.0)
    check_gelu(x, random_array(np.random.default_rng(9), x.shape, np.float32))


@pytest.mark.parametrize("kernels", [fast, ref], ids=["compiled", "numpy"])
def test_gelu_refuses_what_it_cannot_take(kernels):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.gelu_forward(x.astype(np.int64))
    with pytest.raises(TypeError, match="dtype"):
        kernels.gelu_backward(x, x.astype(np.float64))
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        kernels.gelu_backward(x, np.zeros((3, 2), np.float32))
