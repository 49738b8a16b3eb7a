"""Memory: training grows neither the resident set nor what malloc holds once
warm, and no kernel leaks.

The training run is a child process (a clean heap, no other test's garbage):
mnist2 with Adam on batches of 8 from the bundled MNIST sample, through
``Trainer``, the resident set and glibc's count of malloc'd bytes in use
(``mallinfo2``, which sees the kernels' own buffers, touched or not) sampled
every 10 steps. The default run takes 200 steps; the slow one the full 1,000
(the figures are listed at the end of pytest's output):

    python -m pytest tests/test_memory.py -q -m slow -s
"""
import ctypes
import gc
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from training_runs import report

import fastconv
from fastconv import _kernels as fast

PAGE = os.sysconf("SC_PAGE_SIZE")
SECTION = "memory"


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


_LIBC = ctypes.CDLL(None)
if hasattr(_LIBC, "mallinfo2"):
    _LIBC.mallinfo2.restype = _MallInfo2


def malloced_bytes():
    """What malloc has handed out and not had back (glibc's mallinfo2: uordblks
    plus hblkhd), C code's buffers included; None without glibc 2.33 or later."""
    if not hasattr(_LIBC, "mallinfo2"):
        return None
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


TRAINING = textwrap.dedent("""
    import ctypes, json, os, sys
    import numpy as np
    import fastconv
    from fastconv import models, optim
    from fastconv.data import Normalize, load_dataset
    from fastconv.train import Trainer

    steps, every = int(sys.argv[1]), 10
    page = os.sysconf("SC_PAGE_SIZE")

    def resident():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    # glibc's mallinfo2(): uordblks (bytes in use in the arenas) plus hblkhd
    # (bytes in blocks malloc mapped on their own) is what malloc has handed
    # out and not had back, the kernels' buffers and NumPy's array data
    # included; Python's small objects live in its own arenas (the resident set).
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost")]

    libc = ctypes.CDLL(None)
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = MallInfo2

        def malloced():
            info = libc.mallinfo2()
            return info.uordblks + info.hblkhd
    else:
        def malloced():
            return None

    class Sample:
        def __init__(self):
            self.rss, self.malloced = [], []

        def on_batch_end(self, trainer, epoch, batch, loss):
            if batch % every == 0:
                self.rss.append(resident())
                self.malloced.append(malloced())
            if batch == steps:
                trainer.request_stop()

    fastconv.set_num_threads(1)
    data = load_dataset("mnist-sample")
    x, y = data.x_train[:8 * (steps + 1)], data.y_train[:8 * (steps + 1)]
    model = models.mnist2(seed=0)
    sample = Sample()
    trainer = Trainer(model, optim.Adam(model, lr=1e-3), batch_size=8, normalize=Normalize.fit(x),
                      progress=False, log=None, callbacks=[sample])
    try:
        trainer.fit(x, y, epochs=1)
    except Exception as stop:
        assert type(stop).__name__ == "TrainingInterrupted", stop

    # The measure's own check: what C code mallocs and never frees, 64 blocks
    # of 1 KiB that are never touched (so the resident set cannot see them),
    # shows in full.
    before = malloced()
    libc.malloc.restype = ctypes.c_void_p
    lost = [libc.malloc(1024) for _ in range(64)]
    probe = None if before is None else malloced() - before
    print(json.dumps({"every": every, "rss": sample.rss, "malloced": sample.malloced, "probe": probe}))
""")


# The bounds on what malloc holds after the warm-up (the largest later sample
# over the warm one) leave room for a few bookkeeping blocks of Python and
# NumPy; a buffer of the smallest activation of mnist2 lost every step would
# exceed them (its final layer's output, 8 x 10 floats).
@pytest.mark.parametrize("steps, warm_up, malloc_bound", [
    pytest.param(200, 50, 16 * 1024, id="200 steps"),
    pytest.param(1000, 100, 32 * 1024, id="1000 steps", marks=pytest.mark.slow),
])
def test_training_grows_neither_the_resident_set_nor_the_c_heap(tmp_path, request, steps, warm_up, malloc_bound):
    env = dict(os.environ)
    package_root = str(Path(fastconv.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    # From the temporary folder: "-c" puts the working directory first on
    # sys.path, and from the repository root that is the source tree.
    done = subprocess.run([sys.executable, "-c", TRAINING, str(steps)], capture_output=True, text=True,
                          env=env, timeout=1200, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    every = measured["every"]
    rss = np.array(measured["rss"], dtype=np.float64)
    assert len(rss) == steps // every
    warm = rss[warm_up // every - 1]
    growth = (rss[warm_up // every:].max() - warm) / warm
    report(request, SECTION, f"resident set after {warm_up} steps {warm / 2 ** 20:.1f} MiB, largest over the "
                             f"next {steps - warm_up} steps {rss.max() / 2 ** 20:.1f} MiB: growth {growth:+.2%}")
    if measured["probe"] is None:
        report(request, SECTION, "glibc's mallinfo2() is not available: the C heap is not measured")
    else:
        heap = np.array(measured["malloced"], dtype=np.int64)
        heap_warm = int(heap[warm_up // every - 1])
        heap_growth = int(heap[warm_up // every:].max()) - heap_warm
        report(request, SECTION, f"malloc'd bytes in use (mallinfo2) after {warm_up} steps {heap_warm:,}, "
                                 f"largest over the next {steps - warm_up} steps {heap_warm + heap_growth:,}: "
                                 f"growth {heap_growth:+,} bytes (bound {malloc_bound:,}); 64 KiB malloc'd "
                                 f"from C and never touched showed as {measured['probe']:,} bytes")
        # glibc keeps up to 7 freed blocks of each size per thread in a cache
        # that mallinfo2 counts as in use: those blocks can be handed out
        # again unseen, so at least 57 of the 64 must show.
        assert measured["probe"] >= 57 * 1024, "mallinfo2 does not see what C code mallocs"
        assert heap_growth < malloc_bound, (
            f"malloc holds {heap_growth:,} bytes more after {steps} steps than after {warm_up}")
    assert growth < 0.01


def kernel_calls(dtype=np.float32):
    """name -> a call of that kernel on arrays of 256 KiB to 2 MiB, so that one
    leaked result per call stands out of the resident set's noise."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 8, 32, 32)).astype(dtype)
    weight = rng.standard_normal((16, 8, 3, 3)).astype(dtype)
    bias = rng.standard_normal(16).astype(dtype)
    gamma = rng.standard_normal(8).astype(dtype)
    cols = fast.im2col(x, 3, 1, 1)
    y, conv_cache = fast.conv2d_forward(x, weight, bias, 1, 1)
    pooled, argmax = fast.maxpool2d_forward(x, 2)
    *_, bn_cache = fast.batchnorm2d_forward_train(x, gamma, gamma)
    relu_y = fast.relu_forward(x)
    features = x.reshape(64, -1)
    fc_weight = rng.standard_normal((128, features.shape[1])).astype(dtype)
    fc_y, fc_cache = fast.linear_forward(features, fc_weight, bias[:1].repeat(128))
    adam_arrays = [np.zeros_like(fc_weight) for _ in range(3)]
    epilogue_y, ones = y.copy(), np.ones(16, dtype)
    return {
        "im2col": lambda: fast.im2col(x, 3, 1, 1),
        "col2im": lambda: fast.col2im(cols, x.shape, 3, 1, 1),
        "conv2d_forward": lambda: fast.conv2d_forward(x, weight, bias, 1, 1),
        "conv2d_backward": lambda: fast.conv2d_backward(y, conv_cache),
        "linear_forward": lambda: fast.linear_forward(features, fc_weight, bias[:1].repeat(128)),
        "linear_backward": lambda: fast.linear_backward(fc_y, fc_cache),
        "maxpool2d_forward": lambda: fast.maxpool2d_forward(x, 2),
        "maxpool2d_backward": lambda: fast.maxpool2d_backward(pooled, argmax, x.shape),
        "avgpool2d_forward": lambda: fast.avgpool2d_forward(x, 3, 2, 1),
        "avgpool2d_backward": lambda: fast.avgpool2d_backward(pooled, x.shape, 2),
        "batchnorm2d_forward_train": lambda: fast.batchnorm2d_forward_train(x, gamma, gamma),
        "batchnorm2d_forward_eval": lambda: fast.batchnorm2d_forward_eval(x, gamma, gamma, gamma, gamma ** 2),
        "batchnorm2d_backward": lambda: fast.batchnorm2d_backward(x, bn_cache),
        "relu_forward": lambda: fast.relu_forward(x),
        "conv2d_epilogue": lambda: fast.conv2d_epilogue(epilogue_y, True, ones, ones - 1),
        "epilogue_maxpool": lambda: fast.epilogue_maxpool(epilogue_y, 2, None, 0, True, ones, ones - 1),
        "relu_backward": lambda: fast.relu_backward(x, relu_y),
        "relu6_forward": lambda: fast.relu6_forward(x),
        "relu6_backward": lambda: fast.relu6_backward(x, relu_y),
        "gelu_forward": lambda: fast.gelu_forward(x),
        "gelu_backward": lambda: fast.gelu_backward(x, x),
        "adam_update": lambda: fast.adam_update(adam_arrays[0], fc_weight, adam_arrays[1], adam_arrays[2],
                                                1e-3, 0.9, 0.999, 1e-8, 1),
    }


def test_every_kernel_is_checked_for_leaks():
    assert set(kernel_calls()) == set(fast.KERNELS)


@pytest.mark.parametrize("name", sorted(fast.KERNELS))
def test_repeated_calls_do_not_leak(request, name):
    call = kernel_calls()[name]
    for _ in range(5):
        call()
    gc.collect()
    tracemalloc.start()
    try:
        call()
        gc.collect()
        traced_before = tracemalloc.get_traced_memory()[0]
        rss_before, heap_before = resident_bytes(), malloced_bytes()
        for _ in range(60):
            call()
        gc.collect()
        traced_growth = tracemalloc.get_traced_memory()[0] - traced_before
        rss_growth, heap_after = resident_bytes() - rss_before, malloced_bytes()
    finally:
        tracemalloc.stop()
    heap_growth = None if heap_before is None else heap_after - heap_before
    report(request, SECTION, f"{traced_growth:,} bytes more traced, {heap_growth:,} more malloc'd, resident set "
                             f"{rss_growth / 2 ** 10:+.0f} KiB after 60 calls")
    # A leaked result would be 256 KiB or more per call: 15 MiB over 60 calls.
    assert traced_growth < 64 * 1024, f"{traced_growth} bytes still traced after 60 calls"
    # A buffer that C mallocs and never frees is invisible to tracemalloc, and
    # to the resident set until written; malloc counts it. The bound leaves
    # room for what the rest of the test process allocates meanwhile, and
    # catches a lost scratch buffer of a KiB or more per call.
    if heap_growth is not None:
        assert heap_growth < 64 * 1024, f"malloc holds {heap_growth:,} bytes more after 60 calls"
    assert rss_growth < 4 * 2 ** 20, f"resident set grew by {rss_growth / 2 ** 20:.1f} MiB over 60 calls"
