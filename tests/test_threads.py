"""Threads: two models trained at once in two Python threads end where they end
when trained one after the other, and every compiled kernel lets other Python
threads run while it computes (it releases the GIL).

Both run on one OpenMP and one BLAS thread, the setting under which training is
reproducible bit for bit.
"""
import threading
import time

import numpy as np
import pytest

import fastconv
from fastconv import _kernels as fast
from fastconv.nn import layers
from fastconv import optim
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
        "relu_backward": lambda: fast.relu_backward(big, big_y),
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
