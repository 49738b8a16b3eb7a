"""Property-based fuzzing of every compiled kernel and every layer.

Each target draws calls at random, valid or garbage: batches, channels and
planes from 1 up (odd sizes, N=1, C=1), windows, strides and paddings, both
float dtypes, memory layouts (Fortran order, non-contiguous, negative strides,
zero strides, read-only, views into a larger array), NaN and infinities; and
wrong ndim, zero sizes, wrong dtypes, non-arrays, bad geometry and sizes whose
products pass 2**31. A compiled call must either return what its NumPy twin
(fastconv.reference) returns, or raise TypeError, ValueError or MemoryError
whose message names the offending value. A crash ends the run; a result that
differs from the twin's fails it.

Where PyTorch is installed, the convolution, fully connected, pooling and
batch-norm targets also compare the forward pass and every gradient with
torch.nn.functional under autograd, in float64: an oracle written by other
people, where the twin shares this project's reading of each formula. Without
PyTorch those comparisons are skipped, not the targets.

Examples per target: FASTCONV_FUZZ_EXAMPLES (default 20) in the default run;
the tests marked fuzz_long (and slow) run at least 2,000 per target. Either
way the run ends with a summary of the examples each target ran and of what
they reached (Winograd, the PyTorch oracle, invalid inputs):

    FASTCONV_FUZZ_EXAMPLES=200 pytest tests/test_fuzz.py -q
    pytest tests/test_fuzz.py -m fuzz_long -q
"""
import collections
import contextlib
import copy
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _checks
from fastconv import _kernels as fast
from fastconv import reference as ref
from fastconv.nn import layers

try:
    import torch
    import torch.nn.functional as torch_functional
except ImportError:  # the PyTorch comparisons are skipped, not the targets
    torch = torch_functional = None

pytestmark = pytest.mark.every_isa  # once per instruction-set variant (conftest.py)

SHORT_EXAMPLES = int(os.environ.get("FASTCONV_FUZZ_EXAMPLES", "20"))
LONG_EXAMPLES = max(2000, SHORT_EXAMPLES)

DTYPES = (np.float32, np.float64)
# Sums taken in different orders (blocked products, double or pairwise
# accumulation) differ by a few ulps of the sum of the terms' magnitudes; see
# the tolerance note in tests/test_kernels.py.
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
CLEAR_ERRORS = (TypeError, ValueError, MemoryError)
SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0])

TARGETS = {}


def target(function):
    """Register a fuzz target: a function of hypothesis' st.data()."""
    TARGETS[function.__name__.removeprefix("fuzz_")] = function
    return function


# What the examples of each target reached: "examples", and events counted by
# note() (the Winograd path taken, the PyTorch oracle consulted, ...).
COUNTS = collections.defaultdict(collections.Counter)
RUNNING = []


def note(event):
    """Count an event for the example of the target being run."""
    if RUNNING:
        COUNTS[RUNNING[-1]][event] += 1


def summary_line(name):
    counts = COUNTS[name]
    events = "; ".join(f"{event} {count}" for event, count in sorted(counts.items()) if event != "examples")
    return f"fuzz target {name}: {counts['examples']} examples" + (f"; {events}" if events else "")


class FuzzSummary:
    """A plugin that ends the terminal report with one line per fuzz target run,
    so that a CI log shows how many examples each ran and what they reached,
    without -s."""

    def pytest_terminal_summary(self, terminalreporter):
        if COUNTS:
            terminalreporter.write_sep("-", "fuzz targets: examples run, and what they reached")
            for name in sorted(COUNTS):
                terminalreporter.write_line(summary_line(name))


@pytest.fixture(scope="session", autouse=True)
def fuzz_summary(pytestconfig):
    if not pytestconfig.pluginmanager.has_plugin("fastconv-fuzz-summary"):
        pytestconfig.pluginmanager.register(FuzzSummary(), "fastconv-fuzz-summary")


def run(name, examples):
    """Run a target for up to `examples` examples (fewer when hypothesis has tried
    every case there is); count and print how many it ran."""
    COUNTS.pop(name, None)
    counts = COUNTS[name]

    def counted(data):
        counts["examples"] += 1
        TARGETS[name](data)

    test = settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])(given(st.data())(counted))
    RUNNING.append(name)
    try:
        test()
    finally:
        RUNNING.pop()
        print(summary_line(name))


@contextlib.contextmanager
def winograd_mode(mode):
    """fast.set_winograd(mode) for the duration: True (the cost model decides),
    False (direct only) or "always" (every stride-1 3x3 convolution)."""
    previous = fast.set_winograd(mode)
    try:
        yield
    finally:
        fast.set_winograd(previous)


@pytest.fixture(scope="module", autouse=True)
def torch_on_one_thread():
    """PyTorch's small float64 ops are far slower when its thread pool competes
    for a busy machine."""
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------
# Memory layouts: each returns an array of the same shape and dtype; values may
# change (zero strides repeat a column), but both backends get the same array.

def contiguous(a):
    return a


def fortran_order(a):
    return np.asfortranarray(a)


def every_other(a):
    return np.repeat(a, 2, axis=-1)[..., ::2]


def negative_strides(a):
    return np.flip(np.flip(a).copy())


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def zero_strides(a):
    if a.shape[-1] == 0:
        return a
    return np.broadcast_to(a[..., :1], a.shape)


def inside_a_larger_array(a):
    outer = np.zeros(tuple(s + 2 for s in a.shape), a.dtype)
    inner = outer[tuple(slice(1, s + 1) for s in a.shape)]
    inner[...] = a
    return inner


LAYOUTS = (contiguous, fortran_order, every_other, negative_strides, read_only, zero_strides,
           inside_a_larger_array)


def laid_out(data, a, label):
    layouts = LAYOUTS if a.ndim else (contiguous, read_only)
    return data.draw(st.sampled_from(layouts), label=f"{label} layout")(a)


def random_values(rng, shape, dtype, specials=False, scale=1.0, offset=0.0):
    a = np.asarray(offset + scale * rng.standard_normal(shape))
    if specials:
        mask = rng.random(shape) < 0.15
        a[mask] = rng.choice(SPECIALS, size=int(mask.sum()))
    return np.asarray(a, dtype=dtype)


def draw_array(data, rng, shape, dtype, label, specials=None, **kwargs):
    if specials is None:
        specials = data.draw(st.booleans(), label=f"{label} has NaN/inf")
    return laid_out(data, random_values(rng, shape, dtype, specials, **kwargs), label)


# ---------------------------------------------------------------------------
# Geometry

def as_argument(data, pair, label):
    """A (h, w) pair the way a caller might pass it: int, NumPy int, tuple or list."""
    a, b = pair
    forms = [tuple(pair), list(pair), (np.int64(a), np.int32(b))]
    if a == b:
        forms += [a, np.int64(a), np.uint8(a) if a < 256 else a]
    return data.draw(st.sampled_from(forms), label=label)


@st.composite
def geometries(draw, pooling=False, plane=12):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    if pooling:
        ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    else:
        ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    return {
        "n": draw(st.integers(1, 3)),
        "c": draw(st.integers(1, 4)),
        "h": draw(st.integers(max(1, kh - 2 * ph), plane)),
        "w": draw(st.integers(max(1, kw - 2 * pw), plane)),
        "kernel": (kh, kw),
        "stride": (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        "padding": (ph, pw),
        "dtype": draw(st.sampled_from(DTYPES)),
        "rng": np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))),
    }


def x_shape_of(g):
    return (g["n"], g["c"], g["h"], g["w"])


def output_plane(g, stride=None):
    kh, kw = g["kernel"]
    sh, sw = stride or g["stride"]
    ph, pw = g["padding"]
    return (g["h"] + 2 * ph - kh) // sh + 1, (g["w"] + 2 * pw - kw) // sw + 1


def shape_argument(data, shape):
    forms = [tuple(shape), list(shape), np.array(shape), tuple(np.int32(v) for v in shape)]
    return data.draw(st.sampled_from(forms), label="x_shape")


# ---------------------------------------------------------------------------
# Comparing with the twin

def assert_matches(got, want, magnitude=None):
    """got is want: same dtype, shape, NaN and infinities, C-contiguous; finite values
    equal, or within RTOL of (|want| + magnitude) elementwise when a magnitude is given
    (the result of the same computation on absolute values)."""
    assert isinstance(got, np.ndarray), type(got)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    assert got.flags.c_contiguous
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg="NaN in different places")
    infinite = np.isinf(got) | np.isinf(want)
    np.testing.assert_array_equal(got[infinite], want[infinite])
    finite = ~(nan | infinite)
    if magnitude is None:
        np.testing.assert_array_equal(got[finite], want[finite])
        return
    scale = np.abs(want[finite].astype(np.float64))
    scale += np.broadcast_to(np.asarray(magnitude, np.float64), want.shape)[finite]
    tolerance = RTOL[want.dtype] * scale
    error = np.abs(got[finite].astype(np.float64) - want[finite])
    if (error > tolerance).any():
        worst = int(np.argmax(error - tolerance))
        raise AssertionError(f"{got[finite][worst]!r} where the twin gives {want[finite][worst]!r}, "
                             f"a difference of {error[worst]:.3g} past the tolerance {tolerance[worst]:.3g}")


def outcome(function, *args):
    try:
        return function(*args), None
    except Exception as error:  # noqa: BLE001 - the outcome is examined by the caller
        return None, error


def assert_clear(error, fragments):
    """A clear error: an allowed type whose message names one of the fragments."""
    assert isinstance(error, CLEAR_ERRORS), f"{type(error).__name__}: {error}"
    message = str(error)
    assert message, f"{type(error).__name__} without a message"
    if fragments:
        assert any(str(f) in message for f in fragments), (
            f"{type(error).__name__}: {message!r} names none of {list(fragments)}")


def assert_same_outcome(name, fast_args, ref_args, compare, fragments=()):
    """The compiled kernel returns what the twin returns, or raises a clear error.

    compare(got, want) checks results; fragments are the strings one of which an
    error message must contain (the offending value). The compiled kernel may
    refuse what the twin lets through (the twin is a plain formula: it does not
    check a gradient's dtype, for one)."""
    got, error = outcome(getattr(fast, name), *fast_args)
    if error is not None:
        assert_clear(error, fragments)
        return None
    assert ref_args is not None, f"{name} accepted a call the twin cannot check"
    want, ref_error = outcome(getattr(ref, name), *ref_args)
    assert ref_error is None, f"{name} returned, but its twin raises {ref_error!r}"
    compare(got, want)
    return got


# ---------------------------------------------------------------------------
# Comparing with PyTorch

def to_torch(a, requires_grad=True):
    """A float64 leaf tensor holding a's values (None stays None)."""
    if a is None:
        return None
    return torch.from_numpy(np.array(a, np.float64, order="C")).requires_grad_(requires_grad)


def from_torch(t):
    return None if t is None else t.detach().numpy()


def assert_matches_torch(got, want, magnitude=None):
    """got (the kernel's result, in its dtype) is PyTorch's float64 result rounded to
    that dtype, within RTOL of the magnitude like the twin's (exactly without one)."""
    assert want is not None
    assert_matches(got, want.astype(got.dtype), magnitude)


# ---------------------------------------------------------------------------
# Valid calls of every kernel, in every layout

@target
def fuzz_im2col(data):
    g = data.draw(geometries(), label="geometry")
    x = draw_array(data, g["rng"], x_shape_of(g), g["dtype"], "x")
    args = (x, as_argument(data, g["kernel"], "kernel"), as_argument(data, g["stride"], "stride"),
            as_argument(data, g["padding"], "padding"))
    assert_matches(fast.im2col(*args), ref.im2col(*args))


@target
def fuzz_col2im(data):
    g = data.draw(geometries(), label="geometry")
    oh, ow = output_plane(g)
    kh, kw = g["kernel"]
    cols = draw_array(data, g["rng"], (g["c"] * kh * kw, g["n"] * oh * ow), g["dtype"], "cols")
    args = (cols, shape_argument(data, x_shape_of(g)), as_argument(data, g["kernel"], "kernel"),
            as_argument(data, g["stride"], "stride"), as_argument(data, g["padding"], "padding"))
    magnitude = ref.col2im(np.abs(cols), *args[1:])
    assert_matches(fast.col2im(*args), ref.col2im(*args), magnitude)


def tile_sums(a):
    """Each element of a (N, C, H, W) replaced by the sum over its 2x2 output tile
    of Winograd F(2x2, 3x3) (tiles from the top left, the last ones cut)."""
    n, c, h, w = a.shape
    padded = np.zeros((n, c, h + h % 2, w + w % 2))
    padded[:, :, :h, :w] = a
    sums = padded.reshape(n, c, padded.shape[2] // 2, 2, padded.shape[3] // 2, 2).sum(axis=(3, 5))
    return np.repeat(np.repeat(sums, 2, axis=2), 2, axis=3)[:, :, :h, :w]


def winograd_magnitudes(magnitudes, dx_winograd):
    """The magnitudes (y, dx, dweight, dbias: each the computation on absolute
    values) against which a Winograd result's rounding is measured. Its
    transforms mix the 16 pixels of an input tile into all four outputs of
    the tile, and the 9 taps of a filter into one another: a sum of terms far
    larger than the products that reach one output or one tap, which cancel.
    So an output is measured against its tile's, and a tap of the weight
    gradient against its filter's 9 taps'. (A tap that sees only padding rows
    has a tiny magnitude of its own, and the error the others' terms leave
    in it was 1.8e-4 of that in float32.)"""
    y, dx, dweight, dbias = magnitudes
    return (tile_sums(y), tile_sums(dx) if dx_winograd else dx,
            np.broadcast_to(dweight.sum(axis=(2, 3), keepdims=True), dweight.shape), dbias)


def check_weighted_layer(data, rng, kind, x, weight, bias, *geometry, torch_forward=None,
                         widen=None):
    """{kind}_forward (kind: 'conv2d' or 'linear') of x, weight, bias and the
    geometry, then its backward for a drawn dy, need_dx and need_params,
    against the twin; the tolerances scale with the same computation on
    absolute values. Every example also compares the full backward pass (dx,
    dweight and dbias) with the twin's, and, when PyTorch is installed, the
    forward pass and all three gradients with torch_forward(x, weight, bias)
    under autograd. widen((y, dx, dweight, dbias) magnitudes) returns the
    magnitudes to measure the errors against, when the path taken rounds
    differently (Winograd). Returns the cache and dy."""
    forward, backward = f"{kind}_forward", f"{kind}_backward"
    y, cache = getattr(fast, forward)(x, weight, bias, *geometry)
    y_ref, cache_ref = getattr(ref, forward)(x, weight, bias, *geometry)
    abs_bias = None if bias is None else np.abs(bias)
    y_abs, cache_abs = getattr(ref, forward)(np.abs(x), np.abs(weight), abs_bias, *geometry)
    dy = draw_array(data, rng, y.shape, y.dtype, "dy", specials=False)
    grads_abs = getattr(ref, backward)(np.abs(dy), cache_abs, True, True)
    if widen is not None:
        y_abs, *grads_abs = widen((y_abs,) + tuple(grads_abs))
    assert_matches(y, y_ref, y_abs)

    need_dx = data.draw(st.booleans(), label="need_dx")
    need_params = data.draw(st.booleans(), label="need_params")
    grads = getattr(fast, backward)(dy, cache, need_dx, need_params)
    # The parameters' gradients are compared on every example, whatever was drawn.
    full = grads if need_dx and need_params else getattr(fast, backward)(dy, cache, True, True)
    grads_ref = getattr(ref, backward)(dy, cache_ref, True, True)
    for got, complete, wanted, want, magnitude in zip(grads, full, (need_dx, need_params, need_params),
                                                      grads_ref, grads_abs):
        if bias is None and want is grads_ref[2]:
            assert got is None and complete is None and want is None
            continue
        assert_matches(complete, want, magnitude)
        if wanted:
            # Asking for fewer gradients does not change the ones computed.
            assert got.tobytes() == complete.tobytes()
        else:
            assert got is None

    if torch is not None and torch_forward is not None:
        tensors = [to_torch(a) for a in (x, weight, bias)]
        y_torch = torch_forward(*tensors)
        y_torch.backward(to_torch(dy, requires_grad=False))
        assert_matches_torch(y, from_torch(y_torch), y_abs)
        for got, tensor, magnitude in zip(full, tensors, grads_abs):
            if tensor is None:
                assert got is None
            else:
                assert_matches_torch(got, from_torch(tensor.grad), magnitude)
        note("compared with torch")
    return cache, dy


def check_conv(data, g, filters, with_bias, mode=True, specials=None, expect_winograd=None, groups=1):
    """A convolution of geometry g under set_winograd(mode), checked by
    check_weighted_layer. Counts the examples whose forward pass (and weight
    gradient), and whose input gradient, went through Winograd; with
    expect_winograd, requires the forward pass to have taken that path or not.
    groups splits g's channels and the filters (it divides both)."""
    rng, dtype = g["rng"], g["dtype"]
    x = draw_array(data, rng, x_shape_of(g), dtype, "x", specials=specials)
    weight = draw_array(data, rng, (filters, g["c"] // groups) + g["kernel"], dtype, "weight", specials=False)
    bias = draw_array(data, rng, (filters,), dtype, "bias", specials=False) if with_bias else None
    stride = as_argument(data, g["stride"], "stride")
    padding = as_argument(data, g["padding"], "padding")
    geometry = (stride, padding) if groups == 1 else (stride, padding, groups)
    with winograd_mode(mode):
        winograd = fast.conv2d_uses_winograd(x, weight, *geometry)
        if expect_winograd is not None:
            assert winograd == expect_winograd, (x.shape, weight.shape, g["stride"], g["padding"], mode)
        if mode == "always":
            # Every stride-1 3x3 convolution, and a larger stride that only one
            # output row or column ever uses counts as 1.
            oh, ow = output_plane(g)
            assert winograd == (g["kernel"] == (3, 3) and (g["stride"][0] == 1 or oh == 1)
                                and (g["stride"][1] == 1 or ow == 1)
                                and not (groups > 1 and groups == g["c"]))
        dx_winograd = False
        if winograd:
            note("winograd forward and weight gradient")
            # dx: the forward convolution of dy with the flipped filters, where
            # the padding is below the kernel size and the stride is 1 (see
            # input_grad in src_c/conv.inc); the same switch decides its path.
            ph, pw = g["padding"]
            oh, ow = output_plane(g)
            exact = g["h"] + 2 * ph - 2 == oh and g["w"] + 2 * pw - 2 == ow
            if exact and ph < 3 and pw < 3 and fast.conv2d_uses_winograd(
                    np.empty((1, filters // groups, oh, ow), dtype),
                    np.empty((g["c"] // groups, filters // groups, 3, 3), dtype), 1, (2 - ph, 2 - pw)):
                note("winograd input gradient")
                dx_winograd = True
        if not np.isfinite(x).all():
            note("x with NaN or inf")

        def torch_forward(tx, tw, tb):
            return torch_functional.conv2d(tx, tw, tb, g["stride"], g["padding"], 1, groups)

        check_weighted_layer(
            data, rng, "conv2d", x, weight, bias, *geometry, torch_forward=torch_forward,
            widen=(lambda magnitudes: winograd_magnitudes(magnitudes, dx_winograd)) if winograd else None)


@target
def fuzz_linear(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    # Up to a few vectors of batch and features, so that every tail of the
    # compiled kernel's vectors (and none) is drawn.
    n, in_features, out_features = (data.draw(st.integers(1, 40), label=label)
                                    for label in ("batch", "in_features", "out_features"))
    x = draw_array(data, rng, (n, in_features), dtype, "x")
    weight = draw_array(data, rng, (out_features, in_features), dtype, "weight", specials=False)
    with_bias = data.draw(st.booleans(), label="bias")
    bias = draw_array(data, rng, (out_features,), dtype, "bias", specials=False) if with_bias else None
    check_weighted_layer(data, rng, "linear", x, weight, bias,
                         torch_forward=lambda tx, tw, tb: torch_functional.linear(tx, tw, tb))


def adam_state(rng, shape, dtype):
    """param, exp_avg and exp_avg_sq as Adam holds them: C-contiguous, writeable."""
    return (random_values(rng, shape, dtype), 0.1 * random_values(rng, shape, dtype),
            np.abs(0.01 * random_values(rng, shape, dtype)))


@target
def fuzz_adam_update(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = tuple(data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=3), label="shape"))
    if data.draw(st.booleans(), label="one chunk and a tail"):
        shape = (4096 + data.draw(st.integers(1, 300), label="tail"),)
    grad = draw_array(data, rng, shape, dtype, "grad")
    state = adam_state(rng, shape, dtype)
    scalars = (data.draw(st.sampled_from([1e-3, 0.5, -1e-2, 0.0]), label="lr"),
               data.draw(st.sampled_from([0.9, 0.0, 0.5]), label="beta1"),
               data.draw(st.sampled_from([0.999, 0.0, 0.9]), label="beta2"),
               data.draw(st.sampled_from([1e-8, 0.0, 1.0]), label="eps"),
               data.draw(st.integers(1, 10 ** 4), label="step"))
    ours = [a.copy() for a in state]
    fast.adam_update(ours[0], grad, ours[1], ours[2], *scalars)
    ref.adam_update(state[0], grad, state[1], state[2], *scalars)
    # The same operations rounded in the same order: the same bits, NaN included.
    for got, want in zip(ours, state):
        assert_matches(got, want)


@target
def fuzz_conv2d(data):
    g = data.draw(geometries(), label="geometry")
    if data.draw(st.booleans(), label="3x3 at stride 1"):
        # Winograd's shape, on the narrow layers and small planes the cost
        # model never sends there: forced through it half the time.
        (ph, pw) = g["padding"]
        g = dict(g, kernel=(3, 3), stride=(1, 1), h=max(g["h"], 3 - 2 * ph), w=max(g["w"], 3 - 2 * pw))
    mode = data.draw(st.sampled_from([True, False, "always"]), label="set_winograd")
    check_conv(data, g, data.draw(st.integers(1, 5), label="filters"),
               data.draw(st.booleans(), label="bias"), mode)


@target
def fuzz_conv2d_grouped(data):
    """Grouped convolutions: depthwise ones (groups = C, one to three filters a
    channel), whose direct kernel turns every stride into stride 1 on a split
    plane, and groups of several channels, which run the other paths once per
    group on slices of the images. Windows, strides and paddings as
    fuzz_conv2d's, NaN and inf in x, against the twin and PyTorch."""
    g = data.draw(geometries(), label="geometry")
    if data.draw(st.booleans(), label="depthwise"):
        groups = g["c"] = data.draw(st.integers(2, 6), label="channels")
        filters = groups * data.draw(st.integers(1, 3), label="filters a channel")
    else:
        groups = data.draw(st.integers(2, 3), label="groups")
        g["c"] = groups * data.draw(st.integers(2, 3), label="channels a group")
        filters = groups * data.draw(st.integers(1, 3), label="filters a group")
    if data.draw(st.booleans(), label="3x3 at stride 1 or 2, padding 1"):
        # MobileNet's depthwise layers, and Winograd's shape for the others.
        g = dict(g, kernel=(3, 3), padding=(1, 1), stride=(data.draw(st.sampled_from([1, 2]), label="stride"),) * 2)
    mode = data.draw(st.sampled_from([True, False, "always"]), label="set_winograd")
    x = np.empty(x_shape_of(g), g["dtype"])
    path = fast.conv2d_path(x, np.empty((filters, g["c"] // groups) + g["kernel"], g["dtype"]), g["stride"],
                            g["padding"], groups)
    assert (path == "depthwise") == (groups == g["c"]), (path, groups, g["c"])
    note(f"path {path}")
    check_conv(data, g, filters, data.draw(st.booleans(), label="bias"), mode, groups=groups)


def test_set_winograd_always_reaches_what_the_cost_model_never_picks():
    # The fuzz targets force Winograd with it; True and False keep their meaning.
    x, weight = np.zeros((1, 1, 3, 3), np.float32), np.zeros((1, 1, 3, 3), np.float32)
    assert not fast.conv2d_uses_winograd(x, weight, 1, 0)
    with winograd_mode("always"):
        assert fast.set_winograd("always") == "always"
        assert fast.conv2d_uses_winograd(x, weight, 1, 0)
        assert fast.conv2d_uses_winograd(x, weight, (2, 5), 0)  # one output: no stride
        assert not fast.conv2d_uses_winograd(np.zeros((1, 1, 5, 5), np.float32), weight, 2, 0)
        assert not fast.conv2d_uses_winograd(x, np.zeros((1, 1, 3, 2), np.float32), 1, 0)
    assert fast.set_winograd(True) is True
    with pytest.raises(ValueError, match="'sometimes'"):
        fast.set_winograd("sometimes")
    assert fast.set_winograd(True) is True


@target
def fuzz_conv2d_winograd(data):
    """Stride-1 3x3 convolutions of up to 96 channels and 128 filters, on planes
    of up to 10x40 (tile rows longer than a vector, odd sizes, no padding up to
    a padding of 3, where the input gradient leaves Winograd): through Winograd
    because its cost model picks them, or forced there when it does not. Every
    example requires that the forward pass took that path."""
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    if data.draw(st.booleans(), label="wide enough for the cost model"):
        # Where it picks Winograd on every instruction set (more channels,
        # filters and columns than cifar6's conv2), with rare exceptions that
        # are forced like the rest.
        c = data.draw(st.integers(24, 96), label="channels")
        filters = data.draw(st.integers(64, 128), label="filters")
        least_w = 16
    else:
        c = data.draw(st.one_of(st.integers(1, 8), st.integers(9, 96)), label="channels")
        filters = data.draw(st.one_of(st.integers(1, 8), st.integers(9, 128)), label="filters")
        least_w = 1
    ph, pw = data.draw(st.integers(0, 3), label="ph"), data.draw(st.integers(0, 3), label="pw")
    g = {
        "n": data.draw(st.integers(1, 2), label="n"),
        "c": c,
        "h": data.draw(st.integers(max(1, 3 - 2 * ph), 10), label="h"),
        "w": data.draw(st.integers(max(least_w, 3 - 2 * pw), 40), label="w"),
        "kernel": (3, 3),
        "stride": (1, 1),
        "padding": (ph, pw),
        "dtype": dtype,
        "rng": np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed")),
    }
    with winograd_mode(True):
        picked = fast.conv2d_uses_winograd(np.empty(x_shape_of(g), dtype), np.empty((filters, c, 3, 3), dtype),
                                           1, (ph, pw))
    note("picked by the cost model" if picked else "forced")
    # NaN and inf in a quarter of the examples: those images leave Winograd
    # for the direct kernel, the others stay.
    specials = data.draw(st.integers(0, 3), label="NaN/inf in x") == 0
    check_conv(data, g, filters, data.draw(st.booleans(), label="bias"), True if picked else "always",
               specials=specials, expect_winograd=True)


@target
def fuzz_maxpool2d(data):
    g = data.draw(geometries(pooling=True), label="geometry")
    rng, dtype = g["rng"], g["dtype"]
    # Integers from a small range: windows full of ties.
    x = rng.integers(-3, 4, x_shape_of(g)).astype(dtype)
    special = data.draw(st.sampled_from([None, np.nan, np.inf, -np.inf]), label="special")
    if special is not None:
        x[rng.random(x.shape) < 0.25] = special
    x = laid_out(data, x, "x")
    stride = data.draw(st.sampled_from([None, g["stride"]]), label="stride")
    args = (x, as_argument(data, g["kernel"], "kernel"),
            stride if stride is None else as_argument(data, stride, "stride"),
            as_argument(data, g["padding"], "padding"))
    y, argmax = fast.maxpool2d_forward(*args)
    y_ref, argmax_ref = ref.maxpool2d_forward(*args)
    assert_matches(y, y_ref)
    assert_matches(argmax, argmax_ref)
    forward_argmax = argmax

    # The max-pool of inference, alone and after a convolution's epilogue.
    assert_matches(fast.epilogue_maxpool(*args), y)
    relu = data.draw(st.booleans(), label="relu")
    affine = () if not data.draw(st.booleans(), label="affine") else tuple(
        draw_array(data, rng, (x.shape[1],), dtype, name, specials=False) for name in ("scale", "shift"))
    assert_matches(fast.epilogue_maxpool(*args, relu, *affine), ref.epilogue_maxpool(*args, relu, *affine))

    dy = draw_array(data, rng, y.shape, dtype, "dy", specials=False)
    index_dtype = data.draw(st.sampled_from([np.int64, np.int32, np.uint16, np.intp]), label="argmax dtype")
    if argmax.size and argmax.min() >= 0 and argmax.max() < np.iinfo(index_dtype).max:
        argmax = argmax.astype(index_dtype)
    argmax = laid_out(data, argmax, "argmax")
    x_shape = shape_argument(data, x.shape)
    assert_same_outcome(
        "maxpool2d_backward", (dy, argmax, x_shape), (dy, argmax, x_shape),
        lambda got, want: assert_matches(got, want, ref.maxpool2d_backward(np.abs(dy), argmax, x_shape)),
        fragments=["outside"])
    if torch is None:
        return
    # A window may route its gradient to one tap only, its first maximum
    # (PyTorch: the first tap inside the plane for a window of -inf, as here),
    # but PyTorch takes a window's last NaN where fastconv takes the first:
    # argmax is compared outside the windows holding a NaN, and dx only when
    # there are none.
    tx = to_torch(x)
    y_torch, argmax_torch = torch_functional.max_pool2d(tx, g["kernel"], stride, g["padding"],
                                                        return_indices=True)
    assert_matches_torch(y, from_torch(y_torch))
    nan_windows = ref.avgpool2d_forward(np.isnan(x).astype(np.float64), g["kernel"], stride, g["padding"]) > 0
    np.testing.assert_array_equal(argmax_ref[~nan_windows], argmax_torch.numpy()[~nan_windows])
    note("compared with torch")
    if not nan_windows.any():
        # dx of the argmax maxpool2d_forward returned (the one above may have
        # been laid out with zero strides, which changes it).
        dx = fast.maxpool2d_backward(dy, forward_argmax, x.shape)
        y_torch.backward(to_torch(dy, requires_grad=False))
        assert_matches_torch(dx, from_torch(tx.grad), ref.maxpool2d_backward(np.abs(dy), argmax_ref, x.shape))
        note("dx compared with torch")


@target
def fuzz_avgpool2d(data):
    g = data.draw(geometries(pooling=True), label="geometry")
    rng, dtype = g["rng"], g["dtype"]
    x = draw_array(data, rng, x_shape_of(g), dtype, "x")
    stride = data.draw(st.sampled_from([None, g["stride"]]), label="stride")
    geometry = (as_argument(data, g["kernel"], "kernel"),
                stride if stride is None else as_argument(data, stride, "stride"),
                as_argument(data, g["padding"], "padding"))
    y = fast.avgpool2d_forward(x, *geometry)
    assert_matches(y, ref.avgpool2d_forward(x, *geometry), ref.avgpool2d_forward(np.abs(x), *geometry))
    dy = draw_array(data, rng, y.shape, dtype, "dy")
    x_shape = shape_argument(data, x.shape)
    dx = fast.avgpool2d_backward(dy, x_shape, *geometry)
    dx_magnitude = ref.avgpool2d_backward(np.abs(dy), x_shape, *geometry)
    assert_matches(dx, ref.avgpool2d_backward(dy, x_shape, *geometry), dx_magnitude)
    if torch is not None:
        # The divisor is the whole window, padding included: count_include_pad.
        tx = to_torch(x)
        y_torch = torch_functional.avg_pool2d(tx, g["kernel"], stride, g["padding"], count_include_pad=True)
        y_torch.backward(to_torch(dy, requires_grad=False))
        assert_matches_torch(y, from_torch(y_torch), ref.avgpool2d_forward(np.abs(x), *geometry))
        assert_matches_torch(dx, from_torch(tx.grad), dx_magnitude)
        note("compared with torch")


EPS_VALUES = (1e-5, 1e-3, 0.5, 1, np.float32(1e-3), np.float64(2.0), float("inf"))


@target
def fuzz_batchnorm2d_train(data):
    g = data.draw(geometries(), label="geometry")
    rng, dtype, c = g["rng"], g["dtype"], g["c"]
    offset = data.draw(st.floats(-50, 50), label="offset")
    scale = data.draw(st.floats(0.01, 10), label="scale")
    x = x_raw = draw_array(data, rng, x_shape_of(g), dtype, "x", scale=scale, offset=offset)
    weight = draw_array(data, rng, (c,), dtype, "weight", specials=False)
    bias = draw_array(data, rng, (c,), dtype, "bias", specials=False)
    eps = data.draw(st.sampled_from(EPS_VALUES), label="eps")
    relu_input = data.draw(st.booleans(), label="relu_input")
    through_relu = relu_input and data.draw(st.booleans(), label="through_relu")
    y, mean, var, cache = fast.batchnorm2d_forward_train(x, weight, bias, eps, relu_input)
    y_ref, mean_ref, var_ref, cache_ref = ref.batchnorm2d_forward_train(x, weight, bias, eps, relu_input)
    xhat, inv_std, *_ = cache_ref
    if relu_input:
        x = ref.relu_forward(x)  # what was normalized, for the tolerances below
    channel = (1, -1, 1, 1)
    assert_matches(mean, mean_ref, np.abs(x).max(axis=(0, 2, 3)))
    # The twin's mean and the kernel's differ by an ulp of the data (in double),
    # which shifts the variance by that ulp squared: nothing when the channel
    # varies, all there is when it is constant.
    assert_matches(var, var_ref, var_ref + (1e-8 * np.abs(x).max(axis=(0, 2, 3))) ** 2)
    assert_matches(y, y_ref, np.abs(xhat) * np.abs(weight).reshape(channel) + np.abs(bias).reshape(channel))

    dy = draw_array(data, rng, x.shape, dtype, "dy", specials=False)
    m = x.size // c
    sum_abs_dy = np.abs(dy).sum(axis=(0, 2, 3))
    sum_abs_dy_xhat = np.abs(dy * xhat).sum(axis=(0, 2, 3))
    dx_magnitude = (np.abs(weight * inv_std / m).reshape(channel)
                    * (m * np.abs(dy) + sum_abs_dy.reshape(channel)
                       + np.abs(xhat) * sum_abs_dy_xhat.reshape(channel)))
    dx, dweight, dbias = fast.batchnorm2d_backward(dy, cache, through_relu)
    dx_ref, dweight_ref, dbias_ref = ref.batchnorm2d_backward(dy, cache_ref, through_relu)
    assert_matches(dx, dx_ref, dx_magnitude)
    # On a constant channel the kernel's corrected mean is exact and its xhat
    # 0, while the twin's mean may be an ulp of the data off, an xhat of that
    # ulp times inv_std: a dweight of sum|dy| times it, however small the
    # twin's own.
    xhat_error = np.finfo(dtype).eps * np.abs(x).max(axis=(0, 2, 3)) * np.abs(inv_std)
    dweight_magnitude = sum_abs_dy_xhat + sum_abs_dy * xhat_error / RTOL[np.dtype(dtype)]
    assert_matches(dweight, dweight_ref, dweight_magnitude)
    assert_matches(dbias, dbias_ref, sum_abs_dy)
    if torch is None:
        return
    # PyTorch's mean, too, may be off, by up to (m - 1) ulps of the data (a
    # plain sum of m terms, divided by m) rather than the twin's one: on a
    # constant channel, where the kernel's xhat is exactly 0, that is an xhat
    # of up to m times the one allowed for above, in y and in dweight.
    torch_xhat_error = max(m - 1, 1) * xhat_error / RTOL[np.dtype(dtype)]
    tx, tweight, tbias = (to_torch(a) for a in (x_raw, weight, bias))
    normalized = torch_functional.relu(tx) if relu_input else tx
    if relu_input and not through_relu:
        normalized.retain_grad()  # dx of the batch norm's own input
    # torch.batch_norm, not torch.nn.functional's wrapper, which refuses a
    # channel of one value; the kernels give it a variance of 0.
    y_torch = torch.batch_norm(normalized, tweight, tbias, None, None, True, 0.0, float(eps), False)
    y_torch.backward(to_torch(dy, requires_grad=False))
    detached = normalized.detach()
    assert_matches_torch(mean, from_torch(detached.mean(dim=(0, 2, 3))), np.abs(x).max(axis=(0, 2, 3)))
    assert_matches_torch(var, from_torch(detached.var(dim=(0, 2, 3), unbiased=False)),
                         var_ref + (1e-8 * np.abs(x).max(axis=(0, 2, 3))) ** 2)
    assert_matches_torch(y, from_torch(y_torch),
                         (np.abs(xhat) + torch_xhat_error.reshape(channel)) * np.abs(weight).reshape(channel)
                         + np.abs(bias).reshape(channel))
    dx_torch = from_torch(normalized.grad if relu_input and not through_relu else tx.grad).copy()
    if through_relu:
        # The ReLU's derivative at NaN: PyTorch lets the gradient through
        # (threshold_backward keeps it unless the output is <= 0), fastconv
        # stops it (relu_backward: dy where the output is positive).
        stopped = np.isnan(x_raw)
        assert (dx[stopped] == 0).all()
        dx_torch[stopped] = 0
    assert_matches_torch(dx, dx_torch, dx_magnitude)
    assert_matches_torch(dweight, from_torch(tweight.grad), sum_abs_dy_xhat + sum_abs_dy * torch_xhat_error)
    assert_matches_torch(dbias, from_torch(tbias.grad), sum_abs_dy)
    note("compared with torch")


@target
def fuzz_batchnorm2d_eval(data):
    g = data.draw(geometries(), label="geometry")
    rng, dtype, c = g["rng"], g["dtype"], g["c"]
    stats_dtype = data.draw(st.sampled_from(DTYPES), label="statistics dtype")
    x = draw_array(data, rng, x_shape_of(g), dtype, "x")
    weight = draw_array(data, rng, (c,), dtype, "weight", specials=False)
    bias = draw_array(data, rng, (c,), dtype, "bias", specials=False)
    running_mean = draw_array(data, rng, (c,), stats_dtype, "running_mean", specials=False)
    running_var = laid_out(data, (rng.random(c) + 0.1).astype(stats_dtype), "running_var")
    eps = data.draw(st.sampled_from(EPS_VALUES), label="eps")
    args = (x, weight, bias, running_mean, running_var, eps)
    channel = (1, -1, 1, 1)
    std = np.sqrt(running_var.astype(dtype) + dtype(eps))
    scale = np.abs(weight / std).reshape(channel)
    magnitude = ((np.abs(x) + np.abs(running_mean.astype(dtype)).reshape(channel)) * scale
                 + np.abs(bias).reshape(channel))
    y = fast.batchnorm2d_forward_eval(*args)
    assert_matches(y, ref.batchnorm2d_forward_eval(*args), magnitude)
    if torch is not None:
        # The running statistics in the input's dtype, as the kernels take them.
        y_torch = torch_functional.batch_norm(
            *(to_torch(a, requires_grad=False) for a in (x, running_mean.astype(dtype), running_var.astype(dtype),
                                                         weight, bias)), training=False, eps=float(eps))
        assert_matches_torch(y, from_torch(y_torch), magnitude)
        note("compared with torch")


@target
def fuzz_relu(data):
    shape = tuple(data.draw(st.lists(st.integers(0, 6), max_size=5), label="shape"))
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    x = draw_array(data, rng, shape, dtype, "x")
    y = fast.relu_forward(x)
    assert_matches(y, ref.relu_forward(x))
    dy = draw_array(data, rng, shape, dtype, "dy")
    y = laid_out(data, y, "y")
    assert_matches(fast.relu_backward(dy, y), ref.relu_backward(dy, y))


@target
def fuzz_relu6(data):
    shape = tuple(data.draw(st.lists(st.integers(0, 6), max_size=5), label="shape"))
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    # Values around both kinks, and exactly on them.
    x = draw_array(data, rng, shape, dtype, "x", scale=4.0, offset=3.0)
    if x.size and data.draw(st.booleans(), label="values on the kinks"):
        x = x.copy()
        x.flat[::3] = rng.choice([0.0, -0.0, 6.0], size=x.flat[::3].shape)
    y = fast.relu6_forward(x)
    assert_matches(y, ref.relu6_forward(x))
    dy = draw_array(data, rng, shape, dtype, "dy")
    y = laid_out(data, y, "y")
    dx = fast.relu6_backward(dy, y)
    assert_matches(dx, ref.relu6_backward(dy, y))
    if torch is not None and np.isfinite(x).all():
        # PyTorch's gradient passes where 0 < x < 6, zero on both kinks.
        tx = to_torch(x)
        y_torch = torch_functional.relu6(tx)
        y_torch.backward(to_torch(dy, requires_grad=False))
        assert_matches_torch(fast.relu6_forward(x), from_torch(y_torch))
        assert_matches_torch(fast.relu6_backward(dy, fast.relu6_forward(x)), from_torch(tx.grad))
        note("compared with torch")


# ---------------------------------------------------------------------------
# Garbage: one argument of a valid call replaced by something malformed

def bad_array(data, a, label):
    """A malformed stand-in for the array a, and the strings that name it."""
    kind = data.draw(st.sampled_from(["ndim", "empty", "dtype", "other float", "not an array"]),
                     label=f"{label} mutation")
    if kind == "ndim" and a.ndim:
        bad = data.draw(st.sampled_from([a[0], a[None]]), label=f"{label} reshaped")
        # a[0] of a 1-D array is a NumPy scalar, not an array.
        return bad, [str(bad.shape), type(bad).__name__]
    if kind == "empty" and a.ndim:
        axis = data.draw(st.integers(0, a.ndim - 1), label=f"{label} empty axis")
        bad = np.take(a, [], axis=axis)
        # A window check names the empty plane rather than the whole shape.
        return bad, [str(bad.shape), str(bad.shape[-2:])]
    if kind == "dtype":
        dtype = data.draw(st.sampled_from(
            ["int8", "int32", "int64", "uint8", "float16", "complex64", "complex128", "bool",
             ">f4", ">f8", "object", "longdouble"]), label=f"{label} dtype")
        bad = a.astype(dtype)
        return bad, [str(bad.dtype)]
    if kind == "other float":
        bad = a.astype(np.float64 if a.dtype == np.float32 else np.float32)
        return bad, [str(bad.dtype)]
    bad = data.draw(st.sampled_from([a.tolist(), None, 1.0, "x", object()]), label=f"{label} replaced")
    return bad, [type(bad).__name__]


def bad_geometry(data, label):
    value = data.draw(st.sampled_from(
        [0, -1, -(2 ** 40), True, 1.5, "2", (1,), (1, 2, 3), None, 2 ** 31, 2 ** 70, (2, -1), (0, 1),
         np.float64(2.0), [1, 2.0], (np.int64(-3), 1)]), label=label)
    # A padding of 2**31 makes a result too large to allocate, and the message
    # names that result's shape.
    return value, [repr(value), str(value), "too large", "Unable to allocate"] + (
        [str(tuple(int(v) for v in value))] if isinstance(value, tuple) and value else [])


BAD_EPS = (0, 0.0, -1e-5, float("nan"), float("-inf"), "1e-5", None, True, 10 ** 400, np.array([1e-5]))


BAD_GROUPS = (0, -2, 1.0, True, "1", None, (1,), np.float64(2.0), 2 ** 70)


def valid_call(data, name):
    """(fast arguments, twin arguments, {position: kind}) of a valid call to name."""
    pooling = name.startswith(("maxpool", "avgpool")) or name == "epilogue_maxpool"
    g = data.draw(geometries(pooling=pooling, plane=8), label="geometry")
    rng, dtype, c = g["rng"], g["dtype"], g["c"]
    x = random_values(rng, x_shape_of(g), dtype)
    geometry = (g["kernel"], g["stride"], g["padding"])
    geometry_kinds = {1: "geometry", 2: "geometry", 3: "geometry"}
    if name == "im2col":
        args = (x,) + geometry
        return args, args, {0: "array", **geometry_kinds}
    if name == "col2im":
        cols = ref.im2col(x, *geometry)
        args = (cols, x.shape) + geometry
        return args, args, {0: "array", 2: "geometry", 3: "geometry", 4: "geometry"}
    if name == "conv2d_forward":
        weight = random_values(rng, (2, c) + g["kernel"], dtype)
        args = (x, weight, random_values(rng, (2,), dtype), g["stride"], g["padding"], 1)
        return args, args, {0: "array", 1: "array", 2: "array", 3: "geometry", 4: "geometry", 5: "groups"}
    if name == "conv2d_backward":
        weight = random_values(rng, (2, c) + g["kernel"], dtype)
        y, cache = fast.conv2d_forward(x, weight, None, g["stride"], g["padding"])
        _, cache_ref = ref.conv2d_forward(x, weight, None, g["stride"], g["padding"])
        dy = random_values(rng, y.shape, dtype)
        return (dy, cache, True), (dy, cache_ref, True), {0: "array", 1: "cache"}
    if name in ("linear_forward", "linear_backward"):
        features = x.reshape(x.shape[0], -1)
        weight = random_values(rng, (3, features.shape[1]), dtype)
        if name == "linear_forward":
            args = (features, weight, random_values(rng, (3,), dtype))
            return args, args, {0: "array", 1: "array", 2: "array"}
        y, cache = fast.linear_forward(features, weight, None)
        _, cache_ref = ref.linear_forward(features, weight, None)
        dy = random_values(rng, y.shape, dtype)
        return (dy, cache, True), (dy, cache_ref, True), {0: "array", 1: "cache"}
    if name == "adam_update":
        param, exp_avg, exp_avg_sq = adam_state(rng, x.shape, dtype)
        fast_args = (param, x, exp_avg, exp_avg_sq, 1e-3, 0.9, 0.999, 1e-8, 3)
        ref_args = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in fast_args)
        return fast_args, ref_args, {0: "array", 1: "array", 2: "array", 3: "array"}
    if name == "maxpool2d_forward" or name == "avgpool2d_forward":
        args = (x,) + geometry
        return args, args, {0: "array", **geometry_kinds}
    if name == "maxpool2d_backward":
        y, argmax = ref.maxpool2d_forward(x, *geometry)
        args = (random_values(rng, y.shape, dtype), argmax, x.shape)
        return args, args, {0: "array", 1: "argmax"}
    if name == "avgpool2d_backward":
        y = ref.avgpool2d_forward(x, *geometry)
        args = (random_values(rng, y.shape, dtype), x.shape) + geometry
        return args, args, {0: "array", 2: "geometry", 3: "geometry", 4: "geometry"}
    weight, bias = random_values(rng, (c,), dtype), random_values(rng, (c,), dtype)
    if name == "batchnorm2d_forward_train":
        args = (x, weight, bias, 1e-5)
        return args, args, {0: "array", 1: "array", 2: "array", 3: "eps"}
    if name == "batchnorm2d_forward_eval":
        args = (x, weight, bias, random_values(rng, (c,), dtype), rng.random(c).astype(dtype), 1e-5)
        return args, args, {0: "array", 1: "array", 2: "array", 3: "array", 4: "array", 5: "eps"}
    if name == "batchnorm2d_backward":
        *_, cache = fast.batchnorm2d_forward_train(x, weight, bias)
        *_, cache_ref = ref.batchnorm2d_forward_train(x, weight, bias)
        dy = random_values(rng, x.shape, dtype)
        return (dy, cache), (dy, cache_ref), {0: "array", 1: "cache"}
    if name in ("relu_forward", "relu6_forward", "gelu_forward"):
        return (x,), (x,), {0: "array"}
    if name == "epilogue_maxpool":
        args = (x,) + geometry + (bool(rng.integers(2)), weight, bias)
        return args, args, {0: "array", **geometry_kinds, 5: "array", 6: "array"}
    if name == "conv2d_epilogue":  # in place on y: each side gets its own copy
        fast_args = (x, bool(rng.integers(2)), weight, bias)
        ref_args = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in fast_args)
        return fast_args, ref_args, {0: "array", 2: "array", 3: "array"}
    if name == "gelu_backward":  # takes the forward's input, not its output
        args = (random_values(rng, x.shape, dtype), x)
        return args, args, {0: "array", 1: "array"}
    y = getattr(ref, name.replace("backward", "forward"))(x)
    args = (random_values(rng, x.shape, dtype), y)
    return args, args, {0: "array", 1: "array"}


def compare_any(got, want):
    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        if isinstance(b, np.ndarray):
            if b.dtype.kind == "f":
                magnitude = np.abs(b).max(initial=0.0)
                assert_matches(a, b, magnitude if np.isfinite(magnitude) else None)
            else:
                assert_matches(a, b)


def stride_of_one_window_only(name, args):
    """Twin arguments in which a stride longer than the padded plane is cut to the
    plane's length: the same single window, but NumPy's strided views overflow on
    strides near 2**62."""
    positions = {"im2col": (0, 2, 3), "maxpool2d_forward": (0, 2, 3), "avgpool2d_forward": (0, 2, 3),
                 "col2im": (1, 3, 4), "conv2d_forward": (0, 3, 4), "avgpool2d_backward": (1, 3, 4)}
    if name not in positions:
        return args
    shape_at, stride_at, padding_at = positions[name]
    try:
        stride = _checks.pair(args[stride_at], "stride")
        padding = _checks.pair(args[padding_at], "padding")
        plane = tuple(int(v) for v in np.shape(args[0])[2:]) if shape_at == 0 else tuple(args[shape_at])[2:]
        extents = tuple(int(v) + 2 * p for v, p in zip(plane, padding))
    except (TypeError, ValueError):
        return args
    if len(extents) != 2 or all(s <= e for s, e in zip(stride, extents)):
        return args
    cut = tuple(max(1, min(s, e)) for s, e in zip(stride, extents))
    return args[:stride_at] + (cut,) + args[stride_at + 1:]


KERNEL_NAMES = ref.__all__


@target
def fuzz_garbage(data):
    name = data.draw(st.sampled_from(KERNEL_NAMES), label="kernel")
    fast_args, ref_args, kinds = valid_call(data, name)
    position = data.draw(st.sampled_from(sorted(kinds)), label="argument")
    kind = kinds[position]
    fast_args, ref_args = list(fast_args), list(ref_args)
    if kind in ("array", "argmax"):
        bad, fragments = bad_array(data, fast_args[position], f"argument {position}")
        if kind == "argmax":
            bad = data.draw(st.sampled_from(
                [bad, fast_args[position] + 10 ** 6, -fast_args[position] - 1,
                 fast_args[position].astype(np.uint64) + np.uint64(2 ** 63)]), label="argmax")
            fragments = fragments + ["outside", "argmax"]
        fast_args[position] = ref_args[position] = bad
    elif kind == "geometry":
        bad, fragments = bad_geometry(data, f"argument {position}")
        if name in ("col2im", "avgpool2d_backward"):
            # Another valid geometry no longer fits the array given for it,
            # and that array's shape is what the message names.
            fragments.append("has shape")
        fast_args[position] = ref_args[position] = bad
    elif kind == "eps":
        bad = data.draw(st.sampled_from(BAD_EPS), label="eps")
        fragments = [repr(bad)]
        fast_args[position] = ref_args[position] = bad
    elif kind == "groups":
        # Counts that are not positive ints, and ints that do not divide the
        # channels (a count above them included).
        bad = data.draw(st.sampled_from(BAD_GROUPS + (fast_args[0].shape[1] + 1,)), label="groups")
        fragments = [repr(bad)]
        fast_args[position] = ref_args[position] = bad
    else:
        bad = data.draw(st.sampled_from([None, (), "cache", ref_args[position], object()]), label="cache")
        fragments = [type(bad).__name__]
        fast_args[position] = bad
        ref_args = None
    twin_args = None if ref_args is None else stride_of_one_window_only(name, tuple(ref_args))
    assert_same_outcome(name, tuple(fast_args), twin_args, compare_any, fragments)


# ---------------------------------------------------------------------------
# Sizes past 2**31: index products that a 32-bit int would wrap, on arrays and
# results that stay small, or allocations refused before anything is touched.

def direct_windows(x, kernel, stride, padding):
    """For each output pixel, the in-plane (row, column) ranges its window covers:
    an oracle for geometries whose padded input NumPy could not hold."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    for i in range(oh):
        top = i * sh - ph
        for j in range(ow):
            left = j * sw - pw
            yield i, j, top, left, range(max(top, 0), min(top + kh, h)), range(max(left, 0), min(left + kw, w))


def direct_maxpool(x, kernel, stride, padding):
    n, c, h, w = x.shape
    cells = list(direct_windows(x, kernel, stride, padding))
    oh, ow = cells[-1][0] + 1, cells[-1][1] + 1
    y = np.empty((n, c, oh, ow), x.dtype)
    argmax = np.empty((n, c, oh, ow), np.int64)
    for i, j, _, _, rows, cols in cells:
        window = x[:, :, rows.start:rows.stop, cols.start:cols.stop].reshape(n, c, -1)
        flat = (np.arange(rows.start, rows.stop)[:, None] * w + np.arange(cols.start, cols.stop)).ravel()
        for p in np.ndindex(n, c):
            values = window[p]
            if np.isnan(values).any():
                k = int(np.flatnonzero(np.isnan(values))[0])
                y[p + (i, j)], argmax[p + (i, j)] = values[k], flat[k]
            elif values.max() == -np.inf:
                # The padding is never the maximum: the first tap inside the plane.
                y[p + (i, j)], argmax[p + (i, j)] = -np.inf, flat[0]
            else:
                k = int(np.argmax(values))
                y[p + (i, j)], argmax[p + (i, j)] = values[k], flat[k]
    return y, argmax


def direct_avgpool(x, kernel, stride, padding):
    n, c, _, _ = x.shape
    cells = list(direct_windows(x, kernel, stride, padding))
    y = np.empty((n, c, cells[-1][0] + 1, cells[-1][1] + 1), x.dtype)
    area = float(kernel[0]) * float(kernel[1])
    for i, j, _, _, rows, cols in cells:
        y[:, :, i, j] = x[:, :, rows.start:rows.stop, cols.start:cols.stop].sum(axis=(2, 3), dtype=np.float64) / area
    return y


def direct_im2col(x, kernel, stride, padding):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    rows = np.arange(oh)[:, None] * sh - ph + np.arange(kh)[None, :]   # (oh, kh)
    cols = np.arange(ow)[:, None] * sw - pw + np.arange(kw)[None, :]   # (ow, kw)
    inside = ((rows >= 0) & (rows < h))[:, :, None, None] & ((cols >= 0) & (cols < w))[None, None, :, :]
    values = x[:, :, np.clip(rows, 0, h - 1)[:, :, None, None], np.clip(cols, 0, w - 1)[None, None, :, :]]
    values = np.where(inside, values, 0).astype(x.dtype)            # (n, c, oh, kh, ow, kw)
    return np.ascontiguousarray(values.transpose(1, 3, 5, 0, 2, 4)).reshape(c * kh * kw, n * oh * ow)


@target
def fuzz_direct_oracles_agree_with_the_twin(data):
    g = data.draw(geometries(pooling=True), label="geometry")
    x = draw_array(data, g["rng"], x_shape_of(g), g["dtype"], "x")
    geometry = (g["kernel"], g["stride"], g["padding"])
    assert_matches(direct_im2col(x, *geometry), ref.im2col(x, *geometry))
    for got, want in zip(direct_maxpool(x, *geometry), ref.maxpool2d_forward(x, *geometry)):
        assert_matches(got, want)
    assert_matches(direct_avgpool(x, *geometry), ref.avgpool2d_forward(x, *geometry),
                   ref.avgpool2d_forward(np.abs(x), *geometry))


@target
def fuzz_huge_windows_on_small_arrays(data):
    """Padding, windows and strides of up to 2**30 on planes of a few pixels: the
    padded plane has up to 2**62 pixels but the result a few dozen."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    n, c = data.draw(st.integers(1, 2), label="n"), data.draw(st.integers(1, 2), label="c")
    h, w = data.draw(st.integers(1, 4), label="h"), data.draw(st.integers(1, 4), label="w")
    x = draw_array(data, rng, (n, c, h, w), dtype, "x")
    pooling = data.draw(st.sampled_from(["im2col", "maxpool", "avgpool"]), label="kernel")
    exponent = data.draw(st.integers(16, 30), label="log2 padding")
    if pooling == "im2col":
        padding = (2 ** exponent, data.draw(st.integers(0, 2 ** exponent), label="pw"))
        kernel = (data.draw(st.integers(1, 3), label="kh"),
                  data.draw(st.integers(1, min(3, w + 2 * padding[1])), label="kw"))
    else:
        # A window of 2**31 taps and more, as wide as the padded plane allows.
        padding = (2 ** exponent, 2 ** data.draw(st.integers(16, 30), label="log2 pw"))
        kernel = (2 * padding[0] + data.draw(st.integers(0, h - 1), label="kh extra"),
                  2 * padding[1] + data.draw(st.integers(0, w - 1), label="kw extra"))
    # Strides that leave at most 4 windows along each side.
    span = (h + 2 * padding[0] - kernel[0], w + 2 * padding[1] - kernel[1])
    stride = tuple(max(1, s // 3 + data.draw(st.integers(0, 2), label="stride extra")) for s in span)
    geometry = (kernel, stride, padding)
    function = {"im2col": fast.im2col, "maxpool": fast.maxpool2d_forward,
                "avgpool": fast.avgpool2d_forward}[pooling]
    got, error = outcome(function, x, *geometry)
    if error is not None:
        # A padded plane of 2**62 pixels or more is refused: C indexes it in int64.
        assert (h + 2 * padding[0] + 1) * (w + 2 * padding[1] + 1) >= 2 ** 62, repr(error)
        assert_clear(error, [str(padding)])
    elif pooling == "im2col":
        assert_matches(got, direct_im2col(x, *geometry))
    elif pooling == "maxpool":
        for got_part, want in zip(got, direct_maxpool(x, *geometry)):
            assert_matches(got_part, want)
    else:
        assert_matches(got, direct_avgpool(x, *geometry), np.abs(direct_avgpool(np.abs(x), *geometry)))


def direct_conv2d(x, weight, bias, stride, padding):
    f, _, kh, kw = weight.shape
    cols = direct_im2col(x, (kh, kw), stride, padding)
    n = x.shape[0]
    oh = (x.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    y = (weight.reshape(f, -1).astype(np.float64) @ cols).reshape(f, n, oh, -1).transpose(1, 0, 2, 3)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y.astype(x.dtype))


@target
def fuzz_conv2d_wide_padding_on_small_arrays(data):
    """Convolutions whose padded image is far larger than the input: either small
    enough to hold (the result must match), or past 2**48 values, where the sizes
    the kernel derives from it would near the int64 limit (it must be refused).
    Nothing in between, where the scratch of one image would take gigabytes."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    c, f = data.draw(st.integers(1, 16), label="c"), data.draw(st.integers(1, 3), label="filters")
    h, w = data.draw(st.integers(1, 4), label="h"), data.draw(st.integers(1, 4), label="w")
    kh, kw = data.draw(st.integers(1, 3), label="kh"), data.draw(st.integers(1, 3), label="kw")
    huge = data.draw(st.booleans(), label="huge padding")
    if huge:
        padding = tuple(2 ** data.draw(st.integers(24, 60), label="log2 padding") + data.draw(
            st.integers(0, 3), label="padding extra") for _ in range(2))
    else:
        padding = (data.draw(st.integers(0, 200), label="ph"), data.draw(st.integers(0, 200), label="pw"))
    span = (h + 2 * padding[0] - kh, w + 2 * padding[1] - kw)
    if min(span) < 0:
        padding = (max(padding[0], kh), max(padding[1], kw))
        span = (h + 2 * padding[0] - kh, w + 2 * padding[1] - kw)
    # Strides that leave between one and three windows along each side.
    stride = tuple(max(1, s // data.draw(st.integers(1, 3), label="windows") + 1) for s in span)
    x = random_values(rng, (data.draw(st.integers(1, 2), label="n"), c, h, w), dtype)
    weight = random_values(rng, (f, c, kh, kw), dtype)
    bias = random_values(rng, (f,), dtype)
    got, error = outcome(fast.conv2d_forward, x, weight, bias, stride, padding)
    if huge:
        assert error is not None, "a padded image past 2**48 values was not refused"
        assert_clear(error, [str(padding)])
        return
    assert error is None, repr(error)
    y, cache = got
    assert_matches(y, direct_conv2d(x, weight, bias, stride, padding),
                   direct_conv2d(np.abs(x), np.abs(weight), np.abs(bias), stride, padding))
    dy = random_values(rng, y.shape, dtype)
    dx, dweight, dbias = fast.conv2d_backward(dy, cache)
    # The twin's gradients on the same call: its padded image is small here.
    _, cache_ref = ref.conv2d_forward(x, weight, bias, stride, padding)
    for got_part, want in zip((dx, dweight, dbias), ref.conv2d_backward(dy, cache_ref)):
        assert_matches(got_part, want, np.abs(want).max() * 10)


@target
def fuzz_huge_sizes_are_refused(data):
    """Results or matrices past 2**31 elements (or the address space), refused with a
    clear error before anything is written. Inputs are zero-stride views, so nothing
    here allocates more than a few bytes unless the kernel does."""
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    one = np.ones((1, 1, 1, 1), dtype)
    case = data.draw(st.sampled_from(
        ["conv K", "conv OH*OW", "col2im x", "maxpool dx", "avgpool dx", "im2col cols"]), label="case")
    # Every nominal size here is 2**48 bytes or more, past what any allocator grants.
    smallest = 32 if case.startswith("conv") else 28
    big = 2 ** data.draw(st.integers(smallest, 40), label="log2 extent")
    if case == "conv K":
        # C*KH*KW past 2**32, refused before the weight is copied.
        weight = np.broadcast_to(dtype(1), (1, 1, 2 ** 16, big))
        call = lambda: fast.conv2d_forward(one, weight, None, 1, (2 ** 15, big // 2))  # noqa: E731
    elif case == "conv OH*OW":
        x = np.broadcast_to(dtype(1), (1, 1, 2 ** 16, big))
        call = lambda: fast.conv2d_forward(x, one, None)  # noqa: E731
    elif case == "col2im x":
        call = lambda: fast.col2im(one[0, 0], (1, 1, big, big), 1, big)  # noqa: E731
    elif case == "maxpool dx":
        call = lambda: fast.maxpool2d_backward(one, np.zeros((1, 1, 1, 1), np.int64), (1, 1, big, big))  # noqa: E731
    elif case == "avgpool dx":
        call = lambda: fast.avgpool2d_backward(one, (1, 1, big, big), big)  # noqa: E731
    else:
        call = lambda: fast.im2col(one, big, 1, big // 2)  # noqa: E731
    _, error = outcome(call)
    assert error is not None, f"{case} with extent {big} returned"
    assert_clear(error, [str(big), "too large", "Unable to allocate"])


POINTWISE_STRIDES = [((1, 1, 2, 2), (1, 2)), ((2, 3, 5, 4), (1, 4)), ((1, 2, 3, 3), (1, 5)),
                     ((2, 2, 1, 6), (3, 7))]


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_1x1_with_a_stride_matches_reference(dtype):
    # A 1x1 kernel without padding whose stride leaves one output column once took
    # a fast path meant for stride 1 and read the first OH*OW pixels of each plane.
    rng = np.random.default_rng(11)
    for x_shape, stride in POINTWISE_STRIDES:
        x = random_values(rng, x_shape, dtype)
        weight = random_values(rng, (3, x_shape[1], 1, 1), dtype)
        bias = random_values(rng, (3,), dtype)
        y, cache = fast.conv2d_forward(x, weight, bias, stride)
        y_ref, cache_ref = ref.conv2d_forward(x, weight, bias, stride)
        assert_matches(y, y_ref, ref.conv2d_forward(np.abs(x), np.abs(weight), np.abs(bias), stride)[0])
        dy = random_values(rng, y.shape, dtype)
        for got, want in zip(fast.conv2d_backward(dy, cache), ref.conv2d_backward(dy, cache_ref)):
            assert_matches(got, want, np.abs(want).max())


# ---------------------------------------------------------------------------
# Layers: both backends agree, float64 gradients match central differences, and
# bad input is refused the same way on both.

FUZZED_LAYERS = ("AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm2d", "Conv2d", "Dropout", "Flatten",
                 "GlobalAvgPool2d", "LeakyReLU", "Linear", "LogSoftmax", "MaxPool2d", "ReLU", "ReLU6",
                 "GELU", "GlobalMaxPool2d", "Scale")


# Layers that only wire a graph: no kernel, the same NumPy on both backends
# (tests/test_graph.py checks them against PyTorch).
WIRING_LAYERS = ("Identity", "PadShortcut", "Add", "Concat")


def test_every_layer_type_is_fuzzed():
    assert set(layers.LAYER_TYPES) - set(WIRING_LAYERS) <= set(FUZZED_LAYERS), "add the new layers to layer_cases()"


@st.composite
def layer_cases(draw):
    kind = draw(st.sampled_from([name for name in FUZZED_LAYERS if name in layers.LAYER_TYPES]))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    shape = (n, c, h, w)
    if kind == "Conv2d":
        kh, kw = draw(st.integers(1, min(4, h + 2))), draw(st.integers(1, min(4, w + 2)))
        padding = (draw(st.integers(max(0, -(-(kh - h) // 2)), 2)), draw(st.integers(max(0, -(-(kw - w) // 2)), 2)))
        # One group, every channel its own group (depthwise), or any count dividing c.
        groups = draw(st.sampled_from(sorted({1, c} | {k for k in range(1, c + 1) if c % k == 0})))
        layer = layers.Conv2d(c, groups * draw(st.integers(1, 3)), (kh, kw),
                              (draw(st.integers(1, 3)), draw(st.integers(1, 3))), padding, bias=draw(st.booleans()),
                              dtype=dtype, seed=rng, groups=groups)
    elif kind == "BatchNorm2d":
        layer = layers.BatchNorm2d(c, eps=draw(st.sampled_from([1e-5, 0.1])), dtype=dtype)
        layer.params["weight"][...] = rng.standard_normal(c)
        layer.params["bias"][...] = rng.standard_normal(c)
        if n * h * w < 2:
            shape = (2, c, h, w)
    elif kind in ("MaxPool2d", "AvgPool2d"):
        kh, kw = draw(st.integers(1, min(4, h))), draw(st.integers(1, min(4, w)))
        padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
        stride = draw(st.sampled_from([None, (draw(st.integers(1, 3)), draw(st.integers(1, 3)))]))
        layer = layers.LAYER_TYPES[kind]((kh, kw), stride, padding)
    elif kind == "Linear":
        shape = (n, draw(st.integers(1, 12)))
        layer = layers.Linear(shape[1], draw(st.integers(1, 6)), bias=draw(st.booleans()), dtype=dtype, seed=rng)
    elif kind == "Dropout":
        layer = layers.Dropout(draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])), seed=0)
    elif kind == "LeakyReLU":
        layer = layers.LeakyReLU(draw(st.sampled_from([0.0, 0.01, 0.5, -2.0])))
    elif kind == "AdaptiveAvgPool2d":
        size = draw(st.integers(1, 10))
        layer = layers.AdaptiveAvgPool2d(draw(st.sampled_from([size, (size, None), (None, size),
                                                               (size, draw(st.integers(1, 10)))])))
    elif kind == "LogSoftmax":
        shape = draw(st.sampled_from([(n, c), shape]))
        layer = layers.LogSoftmax()
    elif kind == "Scale":
        layer = layers.Scale(draw(st.sampled_from([0.0, 1 / 9, -2.0, 1e3])))
    else:
        layer = layers.LAYER_TYPES[kind]()
    layer.train(draw(st.booleans()))
    return layer, shape, dtype, rng


def layer_run(layer, x, dy, backend):
    """(y, dx, grads, buffers) of a forward and backward pass, or the error raised."""
    fastconv.set_backend(backend)
    if isinstance(layer, layers.Dropout):
        layer.rng = np.random.default_rng(7)
    try:
        y = layer.forward(x)
        layer.zero_grad()
        dx = layer.backward(dy)
    except Exception as error:  # noqa: BLE001 - compared between the backends
        return error
    return y, dx, {k: g.copy() for k, g in layer.grads.items()}, {k: b.copy() for k, b in layer.buffers.items()}


@pytest.fixture(autouse=True)
def restore_backend():
    previous = fastconv.get_backend()
    yield
    fastconv.set_backend(previous)


def layer_tolerance(values):
    finite = np.abs(values[np.isfinite(values)])
    return finite.max(initial=0.0) + 1.0


def invalid_shape(layer, shape):
    """An input shape that does not fit the layer (its channels or features, or
    the number of axes it takes), or None for a layer that takes any shape."""
    if isinstance(layer, (layers.Conv2d, layers.BatchNorm2d)):
        return (shape[0], shape[1] + 1) + tuple(shape[2:])
    if isinstance(layer, layers.Linear):
        return (shape[0], shape[1] + 1)
    if isinstance(layer, (layers.MaxPool2d, layers.AvgPool2d, layers.GlobalAvgPool2d,
                          layers.AdaptiveAvgPool2d, layers.GlobalMaxPool2d)):
        return tuple(shape[1:])
    return None


@target
def fuzz_layers(data):
    """Forward and backward on both backends: on an input the strategy made valid,
    neither may raise and both must agree; on one it made invalid (a shape that
    does not fit the layer), both must refuse it with the same exception type."""
    layer, shape, dtype, rng = data.draw(layer_cases(), label="layer")
    bad_shape = invalid_shape(layer, shape)
    invalid = bad_shape is not None and data.draw(st.integers(0, 4), label="invalid input") == 0
    if invalid:
        note("invalid inputs")
        x = random_values(rng, bad_shape, dtype)
        dy = np.zeros(1, dtype)  # never reached: the forward pass refuses x
    else:
        x = draw_array(data, rng, shape, dtype, "x")
        out_shape = layer.output_shape(shape)
        dy = draw_array(data, rng, out_shape, dtype, "dy", specials=False)
    twin = copy.deepcopy(layer)
    compiled = layer_run(layer, x, dy, "compiled")
    numpy = layer_run(twin, x, dy, "numpy")
    if invalid:
        for backend, result in (("compiled", compiled), ("numpy", numpy)):
            assert isinstance(result, Exception), f"{backend}: {layer!r} accepted an input of shape {bad_shape}"
            assert_clear(result, [])
        assert type(compiled) is type(numpy), (compiled, numpy)
        return
    for backend, result in (("compiled", compiled), ("numpy", numpy)):
        if isinstance(result, Exception):
            raise AssertionError(f"{backend}: {layer!r} refused a valid input of shape {shape}") from result
    assert compiled[0].shape == out_shape
    for got, want in zip(compiled[:2], numpy[:2]):
        assert_matches(np.ascontiguousarray(got), np.ascontiguousarray(want), layer_tolerance(want))
    for got, want in zip(compiled[2:], numpy[2:]):
        assert got.keys() == want.keys()
        for key in got:
            assert_matches(got[key], want[key], layer_tolerance(want[key]))


@target
def fuzz_layer_gradients(data):
    """Directional derivatives: <dy, (f(x + hv) - f(x - hv)) / 2h> = <backward(dy), v>, in float64."""
    layer, shape, _, rng = data.draw(layer_cases(), label="layer")
    layer = layer.astype(np.float64)
    backend = data.draw(st.sampled_from(["compiled", "numpy"]), label="backend")
    fastconv.set_backend(backend)
    # Values spread apart so that no ReLU kink or max-pool tie lies within h.
    x = rng.permutation(np.prod(shape)).reshape(shape) * (0.7 / max(1, np.prod(shape))) + 0.01
    x = x * rng.choice([-1.0, 1.0], size=shape)
    v = rng.standard_normal(shape)
    dy = rng.standard_normal(layer.output_shape(shape))

    def f(inputs):
        if isinstance(layer, layers.Dropout):
            layer.rng = np.random.default_rng(7)
        return layer.forward(inputs)

    f(x)
    layer.zero_grad()
    dx = layer.backward(dy)
    grads = {name: g.copy() for name, g in layer.grads.items()}
    step = 1e-6
    tolerance = {"rel": 1e-5, "abs": 1e-6 * (np.abs(dy).sum() + 1)}
    numerical = np.vdot(dy, f(x + step * v) - f(x - step * v)) / (2 * step)
    analytic = np.vdot(dx, v)
    assert analytic == pytest.approx(numerical, **tolerance)
    # The parameters' gradients the same way: weight and bias of Conv2d and
    # Linear, and of BatchNorm2d (its gamma and beta), with x held.
    for name, param in layer.params.items():
        original = param.copy()
        direction = rng.standard_normal(param.shape)
        try:
            param[...] = original + step * direction
            above = f(x)
            param[...] = original - step * direction
            below = f(x)
        finally:
            param[...] = original
        numerical = np.vdot(dy, above - below) / (2 * step)
        assert np.vdot(grads[name], direction) == pytest.approx(numerical, **tolerance), name
    if layer.params:
        note("parameter gradients checked")


@target
def fuzz_layer_garbage(data):
    layer, shape, dtype, rng = data.draw(layer_cases(), label="layer")
    x = random_values(rng, shape, dtype)
    bad, fragments = bad_array(data, x, "input")
    if isinstance(bad, np.ndarray) and bad.dtype.kind == "f" and bad.dtype.itemsize in (4, 8):
        fragments = fragments + [str(np.dtype(dtype))]
    outcomes = []
    for backend in ("compiled", "numpy"):
        fastconv.set_backend(backend)
        twin = copy.deepcopy(layer)
        got, error = outcome(twin.forward, bad)
        if error is None:
            # Still valid (another float dtype on a layer without parameters, an
            # empty axis a layer accepts, ...): the backends must agree.
            outcomes.append(("returned", got))
        else:
            assert_clear(error, fragments)
            outcomes.append((type(error), str(error)))
    if outcomes[0][0] == "returned" and outcomes[1][0] == "returned":
        assert_matches(np.ascontiguousarray(outcomes[0][1]), np.ascontiguousarray(outcomes[1][1]),
                       layer_tolerance(outcomes[1][1]))
    else:
        assert outcomes[0] == outcomes[1]


# ---------------------------------------------------------------------------
# Shared checks that the backward kernels are to call on x_shape

@pytest.mark.parametrize("x_shape, error, fragment", [
    ((2, 3, 4), ValueError, "(2, 3, 4)"),
    ((2, 3, 4, 4, 1), ValueError, "(2, 3, 4, 4, 1)"),
    ((2, 3, 4.5, 4), TypeError, "4.5"),
    ((2, 3, True, 4), TypeError, "True"),
    ("abcd", TypeError, "'abcd'"),
    (None, TypeError, "None"),
    (7, TypeError, "7"),
    ((2, 0, 4, 4), ValueError, "(2, 0, 4, 4)"),
    ((2, 3, -4, 4), ValueError, "(2, 3, -4, 4)"),
])
def test_image_shape_refuses_naming_the_value(x_shape, error, fragment):
    with pytest.raises(error) as info:
        _checks.image_shape(x_shape)
    assert fragment in str(info.value)


def test_image_shape_accepts_any_int_sequence():
    for x_shape in [(2, 3, 4, 5), [2, 3, 4, 5], np.array([2, 3, 4, 5]), (np.int32(2), 3, np.uint8(4), 5)]:
        shape = _checks.image_shape(x_shape)
        assert shape == (2, 3, 4, 5) and all(type(v) is int for v in shape)


def test_pool_geometry_needs_no_array():
    huge = (1, 1, 2 ** 40, 2 ** 40)
    assert _checks.pool_geometry(huge, 2 ** 40, None, 0)[-2:] == (1, 1)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        _checks.pool_geometry(huge, 2, 1, 3)


# ---------------------------------------------------------------------------
# The runs

@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz(name):
    run(name, SHORT_EXAMPLES)


@pytest.mark.slow
@pytest.mark.fuzz_long
@pytest.mark.widest_isa_only  # the quick profile covers every variant; the long one, the variant users run
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_long(name):
    run(name, LONG_EXAMPLES)


# ---------------------------------------------------------------------------
# Regressions: each of these once failed (docs/reliability.md, "Found").

@pytest.mark.parametrize("special", [np.nan, np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_weight_gradient_keeps_nan_to_its_taps(dtype, special):
    # Stride-1 convolutions compute on a grid as wide as the padded row; the
    # extra columns read pixels of the next row, and their zero gradient times a
    # NaN or inf pixel there is NaN, which spreads into the weight gradient of
    # taps that never see that pixel. Here tap (0, 1) never reads x[1, 0].
    x = np.array([[[[1, 2, 3], [special, 5, 6]]]], dtype)
    weight = np.ones((1, 1, 1, 2), dtype)
    y, cache = fast.conv2d_forward(x, weight, None, 1, 0)
    _, cache_ref = ref.conv2d_forward(x, weight, None, 1, 0)
    dy = np.ones_like(y)
    want = ref.conv2d_backward(dy, cache_ref)[1]
    assert np.isfinite(want[0, 0, 0, 1])
    assert_matches(fast.conv2d_backward(dy, cache)[1], want)


@pytest.mark.parametrize("backend", [fast, ref], ids=["compiled", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2d_window_of_minus_inf_keeps_its_gradient_inside_the_plane(backend, dtype):
    # A padded window whose values are all -inf once reported its first tap even
    # when that tap was padding: the forward pass succeeded and the backward pass
    # then refused its own argmax ("outside the input plane"). PyTorch sends that
    # gradient to the window's first tap inside the plane, and so do both
    # backends now.
    x = np.full((1, 1, 2, 3), -np.inf, dtype)
    x[0, 0, 1, 2] = 1.0
    y, argmax = backend.maxpool2d_forward(x, 3, 1, 1)
    np.testing.assert_array_equal(y, [[[[-np.inf, 1, 1], [-np.inf, 1, 1]]]])
    np.testing.assert_array_equal(argmax, [[[[0, 5, 5], [0, 5, 5]]]])
    dx = backend.maxpool2d_backward(np.ones_like(y), argmax, x.shape)
    np.testing.assert_array_equal(dx, [[[[2, 0, 0], [0, 0, 4]]]])


BAD_X_SHAPES = [(2, 3, 4), (2, 3, 4, 4, 1), (2, 3, 4.5, 4), "abcd", None, (2, 3, -4, 4), (2, 3, True, 4)]


def x_shape_calls(x_shape):
    dy = np.ones((2, 3, 2, 2), np.float32)
    return {
        "col2im": ("col2im", (np.ones((3 * 4, 2 * 4), np.float32), x_shape, 2, 2)),
        "maxpool2d_backward": ("maxpool2d_backward", (dy, np.zeros(dy.shape, np.int64), x_shape)),
        "avgpool2d_backward": ("avgpool2d_backward", (dy, x_shape, 2)),
    }


@pytest.mark.parametrize("backend", [fast, ref], ids=["compiled", "numpy"])
@pytest.mark.parametrize("kernel", ["col2im", "maxpool2d_backward", "avgpool2d_backward"])
def test_a_malformed_x_shape_is_refused_naming_it(backend, kernel):
    # Today the shape is unpacked with int(): 4.5 becomes 4, True becomes 1, and
    # a wrong length or a string fails with Python's own unpacking message.
    unclear = []
    for x_shape in BAD_X_SHAPES:
        name, args = x_shape_calls(x_shape)[kernel]
        _, error = outcome(getattr(backend, name), *args)
        shown = (repr(x_shape), str(x_shape))
        if not isinstance(error, (TypeError, ValueError)) or not any(s in str(error) for s in shown):
            unclear.append(f"{x_shape!r}: {error!r}")
    assert not unclear, "\n".join(unclear)


def test_avgpool2d_backward_refuses_a_huge_x_shape_naming_it():
    # The geometry check runs on np.broadcast_to(0, x_shape), which NumPy itself
    # refuses past 2**63 bytes with "array is too big" or "iterator is too large".
    for dtype in DTYPES:
        for big in (2 ** 31, 2 ** 40):
            with pytest.raises((ValueError, MemoryError)) as info:
                fast.avgpool2d_backward(np.ones((1, 1, 1, 1), dtype), (1, 1, big, big), big)
            assert str(big) in str(info.value)


@pytest.mark.parametrize("shape", [(1, 2 ** 32, 2 ** 32), (2, 2 ** 40, 2 ** 30, 3), (1, 2 ** 31, 2 ** 31, 2)])
def test_flatten_output_shape_does_not_wrap_around(shape):
    # Flatten.output_shape multiplies in int64: 2**32 * 2**32 wraps to 0, and
    # model.summary() then reports a layer of width 0.
    assert layers.Flatten().output_shape(shape) == (shape[0], int(np.prod(shape[1:], dtype=object)))


def misaligned(a):
    """A C-contiguous copy of a whose data starts one byte past an aligned address."""
    raw = np.zeros(a.nbytes + 1, np.uint8)
    view = np.frombuffer(raw.data, a.dtype, a.size, offset=1).reshape(a.shape)
    view[...] = a
    assert view.flags.c_contiguous and not view.flags.aligned
    return view


@pytest.mark.parametrize("dtype", DTYPES)
def test_misaligned_arrays_are_aligned_before_they_reach_c(dtype):
    # NumPy's C-contiguous check says nothing of alignment: a float array one byte
    # off reaches C as is, an undefined-behaviour load that the UndefinedBehavior
    # Sanitizer reports (tools/sanitize.sh) and strict-alignment CPUs trap. On
    # x86-64 without the sanitizer this test passes.
    rng = np.random.default_rng(12)
    x = random_values(rng, (2, 3, 7, 6), dtype)
    weight = random_values(rng, (4, 3, 3, 2), dtype)
    gamma = random_values(rng, (3,), dtype)
    calls = [
        ("relu_forward", (x,)),
        ("relu_backward", (x, x)),
        ("gelu_forward", (x,)),
        ("gelu_backward", (x, x)),
        ("im2col", (x, (3, 2), 2, 1)),
        ("conv2d_forward", (x, weight, gamma[:1].repeat(4), 1, 1)),
        ("linear_forward", (x.reshape(2, -1), x.reshape(2, -1)[::-1] * 0.5, gamma[:1].repeat(2))),
        ("maxpool2d_forward", (x, 2)),
        ("avgpool2d_forward", (x, 3, 2, 1)),
        ("batchnorm2d_forward_train", (x, gamma, gamma)),
        ("batchnorm2d_forward_eval", (x, gamma, gamma, gamma, np.abs(gamma))),
    ]
    for name, args in calls:
        want = getattr(fast, name)(*args)
        got = getattr(fast, name)(*(misaligned(a) if isinstance(a, np.ndarray) else a for a in args))
        for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            if isinstance(b, np.ndarray):
                np.testing.assert_array_equal(a, b, err_msg=name)
