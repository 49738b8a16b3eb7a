"""A whole training epoch against the training step alone: how much of the
machine the loop around the network costs.

For each net, in one process and at one thread count:

* **step**: the recipe's training step (forward, loss, backward, optimizer
  update) on one batch of real, already normalized images, repeated; best
  and median of the repeats. For cifar6 and mnist2 also the step of
  ``fastconv bench`` (Adam on a random batch), timed the same way.
* **epoch**: ``Trainer.fit`` for one epoch on the same number of real images
  with the recipe's augmentation, the batches made by the background thread
  (``prefetch=2``) and, for comparison, in the loop (``prefetch=0``);
  images/s as the run's history records it (validation excluded: none is
  given), and the rate of the epoch's own steps (forward, backward and the
  optimizer's calls, timed inside it): the share of the epoch that is the
  network, which a change of load during the run does not skew.

The steps are timed before and after the epochs, so that a change of load on
a shared machine shows as a difference between the two.

    python benchmarks/epoch_vs_step.py                        # cifar6, mnist2, airbench94
    python benchmarks/epoch_vs_step.py --nets cifar6 --images 20480 --threads 2

CIFAR-10 comes from the JPEG folder (--cifar, default ../shared/data/cifar10/
cifar10-train-jpeg.tar.gz), MNIST from --mnist-dir (default ../shared/data/mnist).
"""
import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import fastconv
from fastconv import bench
from fastconv.data import load_dataset
from fastconv.train import Trainer
from fastconv.train.recipes import RECIPES, OptimizerSpec, Recipe

ROOT = Path(__file__).resolve().parents[1]
MNIST2 = Recipe("mnist2", "mnist2", epochs=1, batch_size=128, optimizer=OptimizerSpec("sgd", lr=0.05, momentum=0.9))


def recipe_of(net, epochs):
    recipe = {"cifar6": RECIPES["cifar6"], "airbench94": RECIPES["airbench94"], "mnist2": MNIST2}[net]
    return recipe.replace(epochs=epochs)


def data_of(net, args, count):
    if net == "mnist2":
        data = load_dataset("mnist", data_dir=args.mnist_dir)
    else:
        data = load_dataset(f"folder:{args.cifar}")
    pick = np.sort(np.random.default_rng(0).choice(len(data.y_train), size=min(count, len(data.y_train)),
                                                   replace=False))
    return data.x_train[pick], data.y_train[pick], data.num_classes


def time_steps(setup, x, y, batch_size, repeats):
    """Seconds of each of ``repeats`` training steps on one prepared batch (after one untimed step)."""
    model, opt, loss = setup.model, setup.optimizer, setup.loss
    inputs = setup.normalize(x[:batch_size], dtype=np.float32)
    labels = y[:batch_size]
    model.train()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        opt.zero_grad()
        loss(model.forward(inputs), labels)
        model.backward(loss.backward(), input_grad=False)
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return times


def bench_step(net, batch_size, repeats):
    """The training step of ``fastconv bench`` (Adam, a random batch): seconds of each repeat."""
    call = bench.model_call(net, batch_size, "fastconv", True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call.fn()
        times.append(time.perf_counter() - start)
    return times


def epoch_rate(net, x, y, classes, prefetch):
    """(images/s of the epoch, its seconds, images/s of the network's own calls in it).

    The last is the rate the epoch would have if it did nothing but the
    step's forward, backward, zero_grad and optimizer step, timed inside the
    epoch itself: on a shared machine both then see the same load, where a
    step timed before or after may not."""
    recipe = recipe_of(net, 1)
    setup = recipe.build(x, classes, seed=0)
    trainer = Trainer(setup.model, setup.optimizer, setup.loss, setup.schedule, batch_size=recipe.batch_size,
                      normalize=setup.normalize, augment=setup.augment, schedule_interval=setup.schedule_interval,
                      callbacks=setup.callbacks, progress=False, log=None, prefetch=prefetch)
    inside = [0.0]

    def timed(fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            inside[0] += time.perf_counter() - start
            return result
        return call

    # Instance attributes shadowing the methods, in this script only: the
    # package's tools never replace a method (tests/test_layering.py).
    model, opt = setup.model, setup.optimizer
    model.forward, model.backward = timed(model.forward), timed(model.backward)
    opt.step, opt.zero_grad = timed(opt.step), timed(opt.zero_grad)
    record = trainer.fit(x, y, 1)[0]
    return record["images_per_second"], record["seconds"], len(x) / inside[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", default=["cifar6", "mnist2", "airbench94"],
                        choices=["cifar6", "mnist2", "airbench94"])
    parser.add_argument("--images", type=int, default=10240, help="images in the epoch (default 10240)")
    parser.add_argument("--threads", type=int, default=None, help="threads (default all cores)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default: about 20 s of them)")
    parser.add_argument("--cifar", default=str(ROOT.parent / "shared/data/cifar10/cifar10-train-jpeg.tar.gz"))
    parser.add_argument("--mnist-dir", default=str(ROOT.parent / "shared/data/mnist"))
    args = parser.parse_args()
    threads = fastconv.set_num_threads(args.threads)
    print(f"threads {threads}, {args.images} images an epoch; {fastconv.build_info()['isa']} kernels")
    rows = []
    for net in args.nets:
        x, y, classes = data_of(net, args, args.images)
        recipe = recipe_of(net, 1)
        bs = recipe.batch_size
        repeats = args.repeats or (4 if net == "airbench94" else 20)
        step_setup = recipe.build(x, classes, seed=0)
        before = time_steps(step_setup, x, y, bs, repeats)
        ours = bench_step(net, bs, repeats) if net in bench.NETS else []
        with_prefetch = epoch_rate(net, x, y, classes, prefetch=2)
        without = epoch_rate(net, x, y, classes, prefetch=0)
        after = time_steps(step_setup, x, y, bs, repeats)
        steps = before + after
        row = {
            "net": net, "batch": bs,
            "step_best": bs / min(steps), "step_median": bs / statistics.median(steps),
            "step_before": bs / statistics.median(before), "step_after": bs / statistics.median(after),
            "bench_best": bs / min(ours) if ours else None,
            "epoch": with_prefetch[0], "epoch_seconds": with_prefetch[1], "epoch_no_prefetch": without[0],
            "inside": with_prefetch[2], "inside_no_prefetch": without[2],
        }
        rows.append(row)
        bench_text = f"{row['bench_best']:.0f}" if row["bench_best"] else "-"
        print(f"{net}: batch {bs}; step {row['step_best']:.0f} img/s best, {row['step_median']:.0f} median "
              f"({row['step_before']:.0f} before, {row['step_after']:.0f} after the epochs); "
              f"fastconv bench step {bench_text} best; epoch {row['epoch']:.0f} img/s "
              f"({row['epoch_seconds']:.1f} s) = {row['epoch'] / row['step_best']:.1%} of the best step, "
              f"{row['epoch'] / row['step_median']:.1%} of the median; its own steps ran at "
              f"{row['inside']:.0f} img/s, the epoch {row['epoch'] / row['inside']:.1%} of that; without prefetch "
              f"{row['epoch_no_prefetch']:.0f} img/s, {row['epoch_no_prefetch'] / row['inside_no_prefetch']:.1%} "
              f"of its steps", flush=True)
    return rows


if __name__ == "__main__":
    main()
