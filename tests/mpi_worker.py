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
from fastconv.train import Trainer, distributed
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


def analysis(out: str, model_name: str) -> None:
    """The passes of fastconv.cli.sharded on this job's ranks; rank 0 writes
    their results to OUT (.npz, with the robustness report as JSON text).

    ``mnist2``: a model trained a little (its robustness curves have correct
    images to break); ``resnet20``: a Graph with random weights on random
    images (top images and occlusion only). The top images are searched in
    a set holding every image twice, the copies on the other rank, so that
    every value is tied across the ranks."""
    from fastconv.analysis import _common as C
    from fastconv.cli import sharded

    comm = world()
    fastconv.set_num_threads(1)
    if model_name == "mnist2":
        data = load_dataset("mnist-sample")
        model = mnist2(seed=0)
        optimizer = SGD(model, lr=0.05, momentum=0.9)
        Trainer(model, optimizer, batch_size=32, seed=0, log=None, progress=False, prefetch=0).fit(
            data.x_train[:256], data.y_train[:256], 2)
        raw, labels = data.x_test[:24], data.y_test[:24]
        patch, stride = 14, 7
    else:
        model = fastconv.models.resnet20(seed=0)
        rng = np.random.default_rng(0)
        raw = rng.integers(0, 256, size=(12, 3, 32, 32), dtype=np.uint8)
        labels = np.arange(len(raw)) % 10
        patch, stride = 16, 8
    pixels = raw.astype(np.float32) / np.float32(255)
    twice = np.concatenate([raw[:len(raw) // 2 + 1], raw])  # odd count: shards of unequal size
    layer = C.last_conv_name(model)
    normalize = C.Normalizer.from_model(model)
    tops = {f"top{i}": sharded.top_images(comm, model, twice, layer, unit, k=9, transform=normalize)
            for i, unit in enumerate([0, (1, 2, 3)])}
    maps = sharded.occlusion_maps(comm, model, normalize(raw[:5]), labels[:5].tolist(), patch=patch, stride=stride)
    # One image: the other rank's shard is empty.
    alone = sharded.occlusion_maps(comm, model, normalize(raw[5:6]), None, patch=patch, stride=stride)
    # An error on one rank only (any rank but the first) reaches every rank.
    try:
        distributed.map_shards(len(raw), comm, lambda part: 1 // (part.start == 0))
    except distributed.RankFailed as error:
        with open(f"{out}.rank{comm.rank}", "w") as f:
            f.write(f"{error.rank}\n{error}")
    curves = None
    if model_name == "mnist2":
        curves = sharded.robustness_curve(comm, model, pixels, labels, ["fgsm", "bim", "deepfool"],
                                          [0.0, 0.05, 0.1, 0.2], [0.0, 1.0, 2.0, 4.0],
                                          attack_options={"bim": {"steps": 3}})
    if comm.is_root:
        arrays = {f"{name}.{field}": getattr(top, field) for name, top in tops.items()
                  for field in ("indices", "values", "positions", "boxes", "fields")}
        arrays.update({f"{name}.crop{i}": crop for name, top in tops.items() for i, crop in enumerate(top.crops)})
        for name, result in (("occlusion", maps), ("occlusion1", alone)):
            arrays.update({f"{name}.{field}": getattr(result, field) for field in (
                "target", "probability", "top_class", "top_probability", "baseline_probability")})
        np.savez(out, **arrays, robustness=json.dumps(curves), count=tops["top0"].count)


if __name__ == "__main__":
    job, *arguments = sys.argv[1:]
    {"train": train_steps, "shards": shards, "bad-batch": bad_batch, "analysis": analysis}[job](*arguments)
