"""Memory: training does not grow the resident set once warm, and no kernel leaks.

The training run is a child process (a clean heap, no other test's garbage):
mnist2 with Adam on batches of 8 from the bundled MNIST sample, through
``Trainer``, the resident set sampled every 10 steps. The default run takes 200
steps; the slow one the full 1,000:

    python -m pytest tests/test_memory.py -q -m slow -s
"""
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

import fastconv
from fastconv import _kernels as fast

PAGE = os.sysconf("SC_PAGE_SIZE")


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


TRAINING = textwrap.dedent("""
    import json, os, sys
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

    class Sample:
        def __init__(self):
            self.rss = []

        def on_batch_end(self, trainer, epoch, batch, loss):
            if batch % every == 0:
                self.rss.append(resident())
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
    print(json.dumps({"every": every, "rss": sample.rss}))
""")


@pytest.mark.parametrize("steps, warm_up", [pytest.param(200, 50, id="200 steps"),
                                            pytest.param(1000, 100, id="1000 steps", marks=pytest.mark.slow)])
def test_training_does_not_grow_the_resident_set(tmp_path, steps, warm_up):
    env = dict(os.environ)
    package_root = str(Path(fastconv.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    # From the temporary folder: "-c" puts the working directory first on
    # sys.path, and from the repository root that is the source tree.
    done = subprocess.run([sys.executable, "-c", TRAINING, str(steps)], capture_output=True, text=True,
                          env=env, timeout=1200, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    rss = np.array(report["rss"], dtype=np.float64)
    assert len(rss) == steps // report["every"]
    warm = rss[warm_up // report["every"] - 1]
    growth = (rss[warm_up // report["every"]:].max() - warm) / warm
    print(f"resident set after {warm_up} steps {warm / 2 ** 20:.1f} MiB, largest over the next "
          f"{steps - warm_up} steps {rss.max() / 2 ** 20:.1f} MiB: growth {growth:+.2%}")
    assert growth < 0.05


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
        "relu_backward": lambda: fast.relu_backward(x, relu_y),
        "adam_update": lambda: fast.adam_update(adam_arrays[0], fc_weight, adam_arrays[1], adam_arrays[2],
                                                1e-3, 0.9, 0.999, 1e-8, 1),
    }


def test_every_kernel_is_checked_for_leaks():
    assert set(kernel_calls()) == set(fast.KERNELS)


@pytest.mark.parametrize("name", sorted(fast.KERNELS))
def test_repeated_calls_do_not_leak(name):
    call = kernel_calls()[name]
    for _ in range(5):
        call()
    gc.collect()
    tracemalloc.start()
    try:
        call()
        gc.collect()
        traced_before = tracemalloc.get_traced_memory()[0]
        rss_before = resident_bytes()
        for _ in range(60):
            call()
        gc.collect()
        traced_growth = tracemalloc.get_traced_memory()[0] - traced_before
        rss_growth = resident_bytes() - rss_before
    finally:
        tracemalloc.stop()
    print(f"{name}: {traced_growth} bytes more traced, resident set {rss_growth / 2 ** 10:+.0f} KiB "
          f"after 60 calls")
    # A leaked result would be 256 KiB or more per call: 15 MiB over 60 calls.
    assert traced_growth < 64 * 1024, f"{traced_growth} bytes still traced after 60 calls"
    assert rss_growth < 4 * 2 ** 20, f"resident set grew by {rss_growth / 2 ** 20:.1f} MiB over 60 calls"
