"""Programs that tests/test_distributed.py runs under ``mpiexec -n N`` (and,
as the oracle, in one process): ``python tests/mpi_worker.py JOB OUT [options]``.

Each writes what the test compares to OUT (on rank 0).
"""
from __future__ import annotations

import json
import sys

import numpy as np

import fastconv
from fastconv.data import load_dataset
from fastconv.models import cifar6, mnist2
from fastconv.optim import SGD
from fastconv.train import Trainer
from fastconv.train.distributed import shard, sync_batchnorm, world

STEPS = 20


def _weights(model: fastconv.Model) -> dict[str, np.ndarray]:
    return {f"{name}.{key}": value for name, layer in model.named_layers()
            for key, value in (*layer.params.items(), *layer.buffers.items())}


def train_steps(out: str, model_name: str, batch_size: str) -> None:
    """Twenty steps of SGD with momentum; the weights go to OUT (.npz)."""
    comm = world()
    fastconv.set_num_threads(1)
    batch = int(batch_size)
    if model_name == "mnist2":
        x = load_dataset("mnist-sample").x_train[:STEPS * batch]
        model = mnist2(seed=0)
    else:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(STEPS * batch, 3, 32, 32), dtype=np.uint8)
        model = cifar6(seed=0)
        if model_name == "cifar6-sync":
            model = sync_batchnorm(model, comm)
    y = np.arange(len(x)) % 10 if model_name != "mnist2" else load_dataset("mnist-sample").y_train[:len(x)]
    # A rate at which cifar6 learns random labels without diverging, where
    # rounding differences would grow without bound.
    optimizer = SGD(model, lr=0.02 if model_name == "mnist2" else 0.0001, momentum=0.9)
    trainer = Trainer(model, optimizer, batch_size=batch, seed=3, log=None, progress=False, comm=comm)
    trainer.fit(x, y, 1)
    if comm.is_root:
        np.savez(out, **_weights(model), loss=trainer.history[0]["train_loss"],
                 accuracy=trainer.history[0]["train_accuracy"])


def shards(out: str, count: str) -> None:
    """Each rank's part of COUNT items, gathered on rank 0 as JSON."""
    comm = world()
    part = shard(int(count), comm)
    parts = comm.allgather([part.start, part.stop])
    if comm.is_root:
        with open(out, "w") as f:
            json.dump({"size": comm.size, "parts": parts}, f)


def bad_batch(out: str) -> None:
    """Rank 1's data loader fails on the third batch; every rank must raise."""
    from fastconv.train.distributed import RankFailed

    comm = world()
    x = load_dataset("mnist-sample").x_train[:256]
    y = load_dataset("mnist-sample").y_train[:256]
    model = mnist2(seed=0)

    def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if comm.rank == 1 and augment.calls == 2:  # type: ignore[attr-defined]
            raise ValueError("image 17 is unreadable")
        augment.calls += 1  # type: ignore[attr-defined]
        return images

    augment.calls = 0  # type: ignore[attr-defined]
    trainer = Trainer(model, SGD(model, lr=0.01), batch_size=32, log=None, progress=False, prefetch=0,
                      augment=augment, comm=comm)  # type: ignore[arg-type]
    try:
        trainer.fit(x, y, 1)
    except RankFailed as error:
        comm.barrier()
        with open(f"{out}.rank{comm.rank}", "w") as f:
            f.write(f"{error.rank}\n{error}")


if __name__ == "__main__":
    job, *arguments = sys.argv[1:]
    {"train": train_steps, "shards": shards, "bad-batch": bad_batch}[job](*arguments)
