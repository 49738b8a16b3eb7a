"""Data-parallel scaling on one machine: training throughput and the time
spent communicating, and the allreduce's latency and bandwidth.

    mpiexec --bind-to none -n 1 python benchmarks/distributed_scaling.py steps --model cifar6 --threads 2
    mpiexec -n 2 python benchmarks/distributed_scaling.py steps --model cifar6 --threads 1
    mpiexec -n 2 python benchmarks/distributed_scaling.py steps --model cifar6 --threads 1 --no-overlap
    mpiexec -n 2 python benchmarks/distributed_scaling.py allreduce

(Open MPI binds one or two ranks to a core each: without ``--bind-to none``
the one-rank, 2-thread run gets one core.)

``steps`` times training steps of a global batch (--batch) on random images:
images per second, and per step the seconds spent waiting for the gradient
allreduce after backward (with the allreduce overlapped with backward, or,
with --no-overlap, all of it started after backward). ``allreduce`` times a
blocking Allreduce of the gradient sizes of mnist2, cifar6 and VGG-16 and of
a few small messages (the latency). Rank 0 prints one line per measurement.
Measure on a quiet machine; the tables are in benchmarks/README.md and the
cost model built on them in docs/distributed.md.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import fastconv
from fastconv.models import cifar6, mnist2, resnet50, vgg16
from fastconv.nn.losses import CrossEntropyLoss
from fastconv.optim import SGD
from fastconv.train.distributed import GradientAverager, shard, world

# The ImageNet nets give the cost model its compute per image for the large
# gradients (a few images a step: --batch 2 or 4, --steps 3).
MODELS = {"mnist2": (mnist2, (1, 28, 28)), "cifar6": (cifar6, (3, 32, 32)),
          "resnet50": (resnet50, (3, 224, 224)), "vgg16": (vgg16, (3, 224, 224))}


def steps(args: argparse.Namespace) -> None:
    comm = world()
    fastconv.set_num_threads(args.threads)
    build, shape = MODELS[args.model]
    model = build(seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, size=args.batch)
    part = shard(args.batch, comm)
    xs, ys = x[part], y[part]
    loss, optimizer = CrossEntropyLoss(), SGD(model, lr=0.01, momentum=0.9)
    averager = GradientAverager(model, comm, overlap=not args.no_overlap) if comm.size > 1 else None
    waits, times = [], []
    for step in range(args.warmup + args.steps):
        comm.barrier()
        start = time.perf_counter()
        if averager is not None:
            averager.begin(len(ys) / args.batch)
        optimizer.zero_grad()
        loss(model.forward(xs), ys)
        model.backward(loss.backward(), input_grad=False)
        waited = time.perf_counter()
        if averager is not None:
            averager.finish()
        end = time.perf_counter()
        optimizer.step()
        if step >= args.warmup:
            waits.append(end - waited)
            times.append(time.perf_counter() - start)
    if averager is not None:
        averager.remove()
    slowest = comm.allgather(float(np.median(times)))
    wait = comm.allgather(float(np.median(waits)))
    if comm.is_root:
        step_time = max(slowest)
        print(f"{args.model} batch {args.batch}: {comm.size} rank(s) x {args.threads} thread(s), "
              f"overlap {'off' if args.no_overlap else 'on'}: {args.batch / step_time:.1f} img/s, "
              f"step {step_time * 1e3:.1f} ms, allreduce wait after backward {max(wait) * 1e3:.2f} ms "
              f"({averager.bytes_per_step if averager else 0:,} bytes a step), {_load()}")


def _load() -> str:
    """The machine's load average: a time measured while other processes
    wanted the cores is not the code's own."""
    if not hasattr(os, "getloadavg"):
        return "load average unknown"
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg()) + f" on {os.cpu_count()} cores"


def allreduce(args: argparse.Namespace) -> None:
    comm = world()
    sizes = {"8 B": 2, "1 KiB": 256, "64 KiB": 16384}
    for name, build in (("mnist2", mnist2), ("cifar6", cifar6), ("vgg16", vgg16)):
        sizes[f"{name} gradients"] = build(seed=0).num_parameters()
    for name, count in sizes.items():
        buffer = np.ones(count, dtype=np.float32)
        repeats = 200 if count < 1 << 16 else 5
        comm.allreduce_(buffer)
        comm.barrier()
        start = time.perf_counter()
        for _ in range(repeats):
            comm.allreduce_(buffer)
        seconds = (time.perf_counter() - start) / repeats
        if comm.is_root:
            print(f"allreduce {name} ({buffer.nbytes:,} bytes), {comm.size} ranks: {seconds * 1e6:.1f} us, "
                  f"{buffer.nbytes / seconds / 1e9:.3f} GB/s, {_load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="job", required=True)
    s = sub.add_parser("steps")
    s.add_argument("--model", choices=sorted(MODELS), default="cifar6")
    s.add_argument("--batch", type=int, default=128)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--no-overlap", action="store_true")
    sub.add_parser("allreduce")
    args = parser.parse_args()
    {"steps": steps, "allreduce": allreduce}[args.job](args)


if __name__ == "__main__":
    main()
