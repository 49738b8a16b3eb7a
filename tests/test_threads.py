"""Threads: two models trained at once in two Python threads end where they end
when trained one after the other, every compiled kernel lets other Python
threads run while it computes (it releases the GIL), and every kernel gives
the same results on 1, 2 and 3 OpenMP threads, forward and backward.

The module runs on one OpenMP and one BLAS thread, the setting under which
training is reproducible bit for bit; the thread-count tests set their own and
go back to one.
"""
import threading
import time

import numpy as np
import pytest

import fastconv
from fastconv import _kernels as fast
from fastconv import optim
from fastconv import reference as ref
from fastconv.nn import layers
from fastconv.nn.model import Sequential
from fastconv.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(autouse=True)
def compiled_backend():
    previous = fastconv.get_backend()
    fastconv.set_backend("compiled")
    yield
    fastconv.set_backend(previous)


def data(seed, n=96):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 100, (n, 2, 16, 16)).astype(np.uint8)
    for i, k in enumerate(y):
        x[i, k % 2, 4 * k:4 * k + 5, 3:9] = 250
    return x, y


def model_a():
    rng = np.random.default_rng(1)
    return Sequential([
        layers.Conv2d(2, 8, 3, padding=1, seed=rng), layers.ReLU(), layers.BatchNorm2d(8),
        layers.MaxPool2d(2), layers.Conv2d(8, 8, 3, stride=2, padding=1, seed=rng), layers.ReLU(),
        layers.Flatten(), layers.Linear(8 * 4 * 4, 4, seed=rng),
    ])


def model_b():
    rng = np.random.default_rng(2)
    return Sequential([
        layers.Conv2d(2, 6, (3, 5), padding=(1, 2), seed=rng), layers.ReLU(), layers.AvgPool2d(2),
        layers.Conv2d(6, 12, 1, seed=rng), layers.BatchNorm2d(12), layers.ReLU(), layers.MaxPool2d(3, 2, 1),
        layers.Flatten(), layers.Dropout(0.3, seed=rng), layers.Linear(12 * 4 * 4, 4, seed=rng),
    ])


class MeetAfterFirstBatch:
    """Holds a training after its first batch until the other one gets there,
    so that the two are certainly running at the same time."""

    def __init__(self, barrier):
        self.barrier, self.met = barrier, False

    def on_batch_end(self, trainer, epoch, batch, loss):
        if not self.met:
            self.met = True
            self.barrier.wait()


def train(make_model, seed, meet=None):
    model = make_model()
    x, y = data(seed)
    callbacks = [MeetAfterFirstBatch(meet)] if meet is not None else []
    trainer = Trainer(model, optim.SGD(model, lr=0.05, momentum=0.9), batch_size=16, seed=seed,
                      progress=False, log=None, callbacks=callbacks)
    history = trainer.fit(x[:80], y[:80], 3, x[80:], y[80:])
    return {k: v.copy() for k, v in model.state_dict().items()}, [r["val_loss"] for r in history]


def test_two_models_trained_at_once_match_one_after_the_other():
    one_after_the_other = [train(model_a, 0), train(model_b, 1)]

    results, errors = [None, None], []
    # Both trainings must reach the end of their first batch before either
    # goes on: they overlap whatever the scheduler does (a timeout breaks
    # the barrier and fails the test instead of hanging it).
    meet = threading.Barrier(2, timeout=120)

    def run(slot, make_model):
        try:
            results[slot] = train(make_model, slot, meet)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(0, model_a)), threading.Thread(target=run, args=(1, model_b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for (weights, losses), (expected_weights, expected_losses) in zip(results, one_after_the_other):
        assert losses == expected_losses
        assert weights.keys() == expected_weights.keys()
        for key in weights:
            np.testing.assert_array_equal(weights[key], expected_weights[key], err_msg=key)


def long_calls():
    """name -> a call of that kernel that computes for tens of milliseconds on one thread."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16, 64, 64)).astype(np.float32)
    weight = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    gamma = rng.standard_normal(16).astype(np.float32)
    cols = fast.im2col(x, 3, 1, 1)
    y, conv_cache = fast.conv2d_forward(x, weight, None, 1, 1)
    pooled, argmax = fast.maxpool2d_forward(x, 3, 1, 1)
    *_, bn_cache = fast.batchnorm2d_forward_train(x, gamma, gamma)
    big = rng.standard_normal((32, 16, 64, 64)).astype(np.float32)
    big_y = fast.relu_forward(big)
    features = rng.standard_normal((256, 2048)).astype(np.float32)
    fc_weight = rng.standard_normal((1024, 2048)).astype(np.float32)
    fc_y, fc_cache = fast.linear_forward(features, fc_weight)
    adam_arrays = [np.zeros_like(big) for _ in range(3)]
    return {
        "im2col": lambda: fast.im2col(x, 3, 1, 1),
        "col2im": lambda: fast.col2im(cols, x.shape, 3, 1, 1),
        "conv2d_forward": lambda: fast.conv2d_forward(x, weight, None, 1, 1),
        "conv2d_backward": lambda: fast.conv2d_backward(y, conv_cache),
        "linear_forward": lambda: fast.linear_forward(features, fc_weight),
        "linear_backward": lambda: fast.linear_backward(fc_y, fc_cache),
        "maxpool2d_forward": lambda: fast.maxpool2d_forward(x, 5, 1, 2),
        "maxpool2d_backward": lambda: fast.maxpool2d_backward(pooled, argmax, x.shape),
        "avgpool2d_forward": lambda: fast.avgpool2d_forward(x, 5, 1, 2),
        "avgpool2d_backward": lambda: fast.avgpool2d_backward(x, x.shape, 5, 1, 2),
        "batchnorm2d_forward_train": lambda: fast.batchnorm2d_forward_train(big, gamma, gamma),
        "batchnorm2d_forward_eval": lambda: fast.batchnorm2d_forward_eval(big, gamma, gamma, gamma, gamma ** 2),
        "batchnorm2d_backward": lambda: fast.batchnorm2d_backward(x, bn_cache),
        "relu_forward": lambda: fast.relu_forward(big),
        "conv2d_epilogue": lambda: fast.conv2d_epilogue(big_y, True, None, None),
        "epilogue_maxpool": lambda: fast.epilogue_maxpool(big_y, 2, None, 0, True),
        "relu_backward": lambda: fast.relu_backward(big, big_y),
        "relu6_forward": lambda: fast.relu6_forward(big),
        "relu6_backward": lambda: fast.relu6_backward(big, big_y),
        "gelu_forward": lambda: fast.gelu_forward(big),
        "gelu_backward": lambda: fast.gelu_backward(big, big),
        "adam_update": lambda: fast.adam_update(adam_arrays[0], big, adam_arrays[1], adam_arrays[2],
                                                1e-3, 0.9, 0.999, 1e-8, 1),
    }


def cpu_share_of_a_spinning_thread(call, repeats):
    """CPU seconds a pure-Python thread gets while `call` runs `repeats` times in this
    thread, over the CPU seconds the calls take. A kernel that kept the GIL while it
    computes would hold the spinner still: a share near 0. One that releases it
    lets the spinner run as much as the scheduler allows: near 1 on a busy machine,
    more on an idle one."""
    stop, ready = threading.Event(), threading.Event()
    spent = {}

    def spin():
        count = 0
        ready.set()
        start = time.thread_time()
        while not stop.is_set():
            count += 1
        spent["spinner"] = time.thread_time() - start

    spinner = threading.Thread(target=spin)
    spinner.start()
    ready.wait()
    start = time.thread_time()
    for _ in range(repeats):
        call()
    spent["kernel"] = time.thread_time() - start
    stop.set()
    spinner.join()
    return spent["spinner"] / spent["kernel"]


def test_every_kernel_is_checked():
    assert set(long_calls()) == set(fast.KERNELS)


@pytest.mark.parametrize("name", sorted(fast.KERNELS))
def test_kernels_release_the_gil(name):
    call = long_calls()[name]
    call()
    # Best of three: a busy machine may deschedule the spinner for a while.
    shares = []
    for _ in range(3):
        shares.append(cpu_share_of_a_spinning_thread(call, repeats=3))
        if shares[-1] > 0.3:
            break
    print(f"{name}: a Python thread got {max(shares):.0%} of the kernel's CPU time")
    assert max(shares) > 0.3, f"a Python thread got {max(shares):.0%} of the kernel's CPU time"


def test_the_spinner_measure_sees_a_call_that_keeps_the_gil():
    # The measure's own check: a C loop that keeps the GIL (sorting a list of
    # Python floats) leaves the spinner next to nothing, while NumPy's sort, which
    # releases it, does not.
    values = np.random.default_rng(0).random(1_000_000)
    as_list = values.tolist()
    assert cpu_share_of_a_spinning_thread(lambda: sorted(as_list), repeats=1) < 0.3
    assert cpu_share_of_a_spinning_thread(lambda: np.sort(values), repeats=3) > 0.3


# ---------------------------------------------------------------------------
# Thread-count determinism: 1, 2 and 3 threads give the same results.
#
# Every kernel shares its work out so that each output element is computed by
# one thread, in the order it would be on one thread: whole planes (pooling),
# channels (batch norm), elements (ReLU, Adam), images, output columns or rows
# of a product (convolution, fully connected), tile rows (Winograd). Those
# results are the same bits on any thread count. The exception is the weight
# and bias gradients of a convolution: each thread sums its share of the
# images (or, through Winograd, of the tile rows) into a partial gradient of
# its own, and the partials are added in thread order, so the thread count
# regroups the sum. See THREADED_SUM_ULPS.

THREAD_COUNTS = (1, 2, 3)
DTYPES = (np.float32, np.float64)

# The regrouped sums of a convolution's weight and bias gradients: the same
# products, added in another grouping. Either grouping is within a few ulps of
# the sum of the products' magnitudes (the gradient of |dy| and |x|, computed
# by the twin), and so is their difference: measured at most 1.9 ulps of it on
# every case below, both dtypes, 2 and 3 threads. (The float32 bias gradient
# comes out the same bits, as its partial sums are kept in double, but that
# is not something the kernel promises.)
THREADED_SUM_ULPS = 16


def on_threads(call):
    """call() on each of THREAD_COUNTS threads, back on one afterwards (the module's setting)."""
    results = {}
    try:
        for threads in THREAD_COUNTS:
            fastconv.set_num_threads(threads)
            results[threads] = call()
    finally:
        fastconv.set_num_threads(1)
    return results


def assert_same_bits(results, label):
    """Every thread count gave the same arrays as one thread, bit for bit (NaN included)."""
    first = results[THREAD_COUNTS[0]]
    for threads in THREAD_COUNTS[1:]:
        assert len(results[threads]) == len(first)
        for part, (want, got) in enumerate(zip(first, results[threads])):
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes(), (
                f"{label}, result {part}: {threads} threads differ from one thread by up to "
                f"{np.nanmax(np.abs(got.astype(np.float64) - want)):.3g}")


def rng_arrays(seed, dtype, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


# Every case has enough work to pass the kernels' threshold for starting
# threads (src_c/threads.c, 2**15 elements; a product's is 16 times that):
# below it, every thread count runs on one thread and the test would prove
# nothing.
CONV_CASES = {
    # name: (x shape, filters, kernel, stride, padding, set_winograd mode)
    "direct, images shared out": ((5, 16, 20, 20), 24, (3, 3), 1, 1, False),
    "direct, one image's columns shared out": ((1, 16, 30, 30), 24, (3, 3), 1, 1, False),
    "direct, stride 2 on unfolded columns": ((4, 8, 33, 31), 16, (3, 2), 2, 1, False),
    "direct, padding as large as the kernel": ((3, 6, 24, 24), 12, (2, 2), 1, 2, False),
    "direct, 5x5 on three channels": ((9, 3, 30, 30), 32, (5, 5), 1, 2, False),
    "direct, one image's columns unfolded and shared out, 7x7 stride 2": ((1, 3, 64, 64), 64, (7, 7), 2, 3, False),
    "direct, 1x1 on one image multiplied in place": ((1, 128, 14, 14), 128, (1, 1), 1, 0, False),
    "winograd by the cost model": ((3, 64, 16, 16), 64, (3, 3), 1, 1, True),
    "winograd by the cost model, one image's tile rows shared out": ((1, 64, 24, 24), 64, (3, 3), 1, 1, True),
    "winograd forced on a narrow layer": ((3, 8, 18, 18), 16, (3, 3), 1, 1, "always"),
    "winograd forced, no padding, odd planes": ((7, 8, 17, 19), 16, (3, 3), 1, 0, "always"),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv2d_on_any_thread_count(case, dtype):
    shape, filters, kernel, stride, padding, mode = CONV_CASES[case]
    x, weight, bias = rng_arrays(3, dtype, shape, (filters, shape[1]) + kernel, (filters,))
    previous = fast.set_winograd(mode)
    try:
        winograd = fast.conv2d_uses_winograd(x, weight, stride, padding)
        assert winograd == case.startswith("winograd"), "the case does not take the path it names"

        def forward_backward():
            y, cache = fast.conv2d_forward(x, weight, bias, stride, padding)
            dy = np.cos(y)  # the same dy whatever the thread count, as long as y is
            return (y,) + fast.conv2d_backward(dy, cache)

        results = on_threads(forward_backward)
    finally:
        fast.set_winograd(previous)
    # y and dx: one thread per output element.
    assert_same_bits({t: r[:2] for t, r in results.items()}, f"conv2d {case} (y, dx)")
    # dweight and dbias: per-thread partial sums (THREADED_SUM_ULPS).
    y = results[1][0]
    _, cache_abs = ref.conv2d_forward(np.abs(x), np.abs(weight), np.abs(bias), stride, padding)
    magnitudes = ref.conv2d_backward(np.abs(np.cos(y)), cache_abs)[1:]
    for threads in THREAD_COUNTS[1:]:
        for name, want, got, magnitude in zip(("dweight", "dbias"), results[1][2:], results[threads][2:],
                                              magnitudes):
            tolerance = THREADED_SUM_ULPS * np.finfo(dtype).eps * magnitude
            difference = np.abs(got.astype(np.float64) - want)
            assert (difference <= tolerance).all(), (
                f"conv2d {case}: {name} on {threads} threads differs from one thread by "
                f"{(difference / (np.finfo(dtype).eps * magnitude)).max():.3g} ulps of its magnitude")


DEPTHWISE_CASES = {
    # name: (x shape, filters a channel, kernel, stride, padding)
    "MobileNet's 3x3, stride 1": ((4, 12, 24, 24), 1, (3, 3), 1, 1),
    "MobileNet's 3x3, stride 2, one image": ((1, 32, 33, 31), 1, (3, 3), 2, 1),
    "two filters a channel, 5x3": ((3, 8, 20, 21), 2, (5, 3), (1, 2), 2),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", sorted(DEPTHWISE_CASES))
def test_depthwise_conv2d_gives_the_same_bits_on_any_thread_count(case, dtype):
    # Threads take whole planes, and each channel's weight gradient is one
    # thread's sum over the images, in image order: every result, dweight
    # included, is the same bits on any thread count.
    shape, multiplier, kernel, stride, padding = DEPTHWISE_CASES[case]
    c = shape[1]
    x, weight, bias = rng_arrays(5, dtype, shape, (c * multiplier, 1) + kernel, (c * multiplier,))
    assert fast.conv2d_path(x, weight, stride, padding, c) == "depthwise"

    def forward_backward():
        y, cache = fast.conv2d_forward(x, weight, bias, stride, padding, c)
        return (y,) + fast.conv2d_backward(np.cos(y), cache)

    assert_same_bits(on_threads(forward_backward), f"depthwise conv2d {case}")


LINEAR_CASES = {
    # name: (batch, in_features, out_features)
    "shared out by rows": (300, 700, 500),
    "a batch and features that are no whole number of vectors": (37, 1001, 333),
    "one row, shared out by columns": (1, 2048, 1024),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", sorted(LINEAR_CASES))
def test_linear_on_any_thread_count(case, dtype):
    # Each element of y, dx, dweight and dbias is one thread's sum over the
    # whole depth, blocked the same way on any thread count: the same bits.
    n, in_f, out_f = LINEAR_CASES[case]
    x, weight, bias = rng_arrays(4, dtype, (n, in_f), (out_f, in_f), (out_f,))

    def forward_backward():
        y, cache = fast.linear_forward(x, weight, bias)
        return (y,) + fast.linear_backward(np.cos(y), cache)

    assert_same_bits(on_threads(forward_backward), f"linear {case}")


POOL_CASES = {
    # name: (x shape, kernel, stride, padding)
    "2x2 stride 2": ((6, 9, 40, 40), 2, 2, 0),
    "3x3 stride 2 padded": ((7, 9, 40, 41), 3, 2, 1),
    "overlapping 5x3 windows": ((3, 5, 50, 47), (5, 3), 1, (2, 1)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pooling_on_any_thread_count(case, dtype):
    # Whole planes per thread, and the backward scatters of a plane stay in it.
    shape, kernel, stride, padding = POOL_CASES[case]
    (x,) = rng_arrays(5, dtype, shape)
    x[0, 0, :3, :3] = np.nan  # a NaN wins its windows on every thread count
    x[1, 1] = np.round(x[1, 1])  # ties

    def max_pool():
        y, argmax = fast.maxpool2d_forward(x, kernel, stride, padding)
        return y, argmax, fast.maxpool2d_backward(np.cos(y), argmax, x.shape)

    def avg_pool():
        y = fast.avgpool2d_forward(x, kernel, stride, padding)
        return y, fast.avgpool2d_backward(np.cos(y), x.shape, kernel, stride, padding)

    assert_same_bits(on_threads(max_pool), f"maxpool2d {case}")
    assert_same_bits(on_threads(avg_pool), f"avgpool2d {case}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("relu_input, through_relu", [(False, False), (True, False), (True, True)],
                         ids=["plain", "relu fused, dx of its output", "relu fused, dx through it"])
@pytest.mark.parametrize("shape", [(8, 9, 30, 30), (1, 9, 61, 67)], ids=["batch", "one image"])
def test_batchnorm2d_on_any_thread_count(shape, relu_input, through_relu, dtype):
    # Whole channels per thread in training (their statistics are one thread's
    # sums) and in the backward pass; images x channels in evaluation.
    c = shape[1]
    x, weight, bias, running_mean, running_var = rng_arrays(6, dtype, shape, (c,), (c,), (c,), (c,))
    x = x * 3 + 2
    running_var = np.abs(running_var) + 0.1

    def train():
        y, mean, var, cache = fast.batchnorm2d_forward_train(x, weight, bias, 1e-5, relu_input)
        return (y, mean, var) + fast.batchnorm2d_backward(np.cos(y), cache, through_relu)

    def evaluate():
        return (fast.batchnorm2d_forward_eval(x, weight, bias, running_mean, running_var, 1e-3),)

    assert_same_bits(on_threads(train), "batchnorm2d train")
    assert_same_bits(on_threads(evaluate), "batchnorm2d eval")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_relu_on_any_thread_count(dtype):
    x, dy = rng_arrays(7, dtype, (3, 5, 61, 67), (3, 5, 61, 67))
    x[0, 0, 0, :5] = [np.nan, -0.0, 0.0, np.inf, -np.inf]

    def forward_backward():
        y = fast.relu_forward(x)
        y6 = fast.relu6_forward(x * 4)
        return y, fast.relu_backward(dy, y), y6, fast.relu6_backward(dy, y6)

    assert_same_bits(on_threads(forward_backward), "relu, relu6")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_gelu_on_any_thread_count(dtype):
    # Chunks of 4096 elements, each one thread's; the last one short.
    x, dy = rng_arrays(10, dtype, (3, 5, 61, 67), (3, 5, 61, 67))
    x[0, 0, 0, :5] = [np.nan, -0.0, 0.0, np.inf, -np.inf]

    def forward_backward():
        return fast.gelu_forward(x), fast.gelu_backward(dy, x)

    assert_same_bits(on_threads(forward_backward), "gelu")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("size", [100_001, 4096 * 9 + 5])
def test_adam_update_on_any_thread_count(size, dtype):
    grad, param, exp_avg, exp_avg_sq = rng_arrays(8, dtype, (size,), (size,), (size,), (size,))
    exp_avg_sq = np.abs(exp_avg_sq)

    def step():
        state = [param.copy(), exp_avg.copy(), exp_avg_sq.copy()]
        for t in (1, 2, 3):
            fast.adam_update(state[0], grad * t, state[1], state[2], 1e-3, 0.9, 0.999, 1e-8, t)
        return tuple(state)

    assert_same_bits(on_threads(step), "adam_update")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_im2col_and_col2im_on_any_thread_count(dtype):
    # Each column of cols, and each plane of col2im's sums, is one thread's.
    (x,) = rng_arrays(9, dtype, (4, 6, 33, 35))

    def unfold_fold():
        cols = fast.im2col(x, (3, 4), (2, 1), 1)
        return cols, fast.col2im(np.cos(cols), x.shape, (3, 4), (2, 1), 1)

    assert_same_bits(on_threads(unfold_fold), "im2col, col2im")


def test_thread_determinism_covers_every_kernel():
    covered = {"conv2d_forward", "conv2d_backward", "linear_forward", "linear_backward",
               "maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward",
               "batchnorm2d_forward_train", "batchnorm2d_forward_eval", "batchnorm2d_backward",
               "relu_forward", "relu_backward", "relu6_forward", "relu6_backward", "adam_update", "im2col",
               "col2im", "gelu_forward", "gelu_backward"}
    # One element (or one window) at a time with no sum across threads: the same bits on any thread count.
    elementwise = {"conv2d_epilogue", "epilogue_maxpool"}
    assert covered | elementwise == set(fast.KERNELS)
