"""The airbench94 recipe trained by fastconv and by a PyTorch twin, side by side:
whole epochs, wall time, on the CPU at one thread count.

The twin is the same network (the same initial weights, whitening filters
included, copied from fastconv's), the same optimizer (parameter groups,
Nesterov SGD, the piecewise schedule, Lookahead, frozen batch-norm scales,
the whitening bias frozen after its epochs), the same summed label-smoothed
loss, and the same batches in the same order: both take them from the same
function (fastconv's augmentation and normalization, each batch's generator
seeded by (seed, epoch, batch), as the Trainer does), made ahead by the same
background thread. fastconv trains through ``Trainer.fit``; PyTorch through
a loop that does the same bookkeeping (loss and accuracy of each batch).
What differs is the network's arithmetic.

    python benchmarks/airbench_torch.py                             # 1 epoch of 10,240 images, all cores
    python benchmarks/airbench_torch.py --images 45000 --epochs 2 --threads 2 --evaluate

``--evaluate`` measures both trained models on the held-out images with the
recipe's test-time augmentation. Needs PyTorch (pip install ".[test]").
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch

import fastconv
from fastconv.data import load_dataset
from fastconv.data.loader import Prefetcher
from fastconv.train import Trainer, evaluate
from fastconv.train.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[1]


def torch_twin(widths, classes):
    nn = torch.nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                nn.BatchNorm2d(cout, eps=1e-12, momentum=0.4), nn.GELU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout, eps=1e-12, momentum=0.4), nn.GELU()]

    return nn.Sequential(nn.Conv2d(3, 24, 2), nn.GELU(), *block(24, widths[0]), *block(widths[0], widths[1]),
                         *block(widths[1], widths[2]), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(widths[2], classes, bias=False))


def copy_weights(model, twin):
    theirs = twin.state_dict()
    keys = [k for k in theirs if not k.endswith("num_batches_tracked")]
    ours = model.state_dict()
    assert len(keys) == len(ours)
    for key, value in zip(keys, ours.values()):
        theirs[key] = torch.from_numpy(np.array(value))
    twin.load_state_dict(theirs)


class TorchLookahead:
    """Lookahead as fastconv.optim.Lookahead does it: every k steps slow += alpha * (fast - slow), fast = slow."""

    def __init__(self, params, k, alpha, ramp_power, total):
        self.params, self.k, self.alpha, self.power, self.total = list(params), k, alpha, ramp_power, total
        self.slow = [p.detach().clone() for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def step(self):
        self.steps += 1
        alpha = 1 - (1 - self.alpha) * min(self.steps / self.total, 1) ** self.power
        if self.steps % self.k == 0:
            for s, p in zip(self.slow, self.params):
                s.add_(p - s, alpha=alpha)
                p.copy_(s)
        if self.steps == self.total:
            for s, p in zip(self.slow, self.params):
                p.copy_(s)


def train_torch(recipe, setup, twin, x, y, batches_of_epoch, epochs):
    """The recipe's training of the twin; returns the seconds and mean loss of each epoch."""
    spec = recipe.optimizer
    bn = [m for m in twin if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bn:
        m.weight.requires_grad_(False)
    twin[0].weight.requires_grad_(False)
    shifts = [m.bias for m in bn]
    others = [p for p in twin.parameters() if p.requires_grad and all(p is not s for s in shifts)]
    opt = torch.optim.SGD([{"params": others}, {"params": shifts, "lr": spec.lr * spec.bias_lr_scale,
                                                 "weight_decay": spec.weight_decay / spec.bias_lr_scale}],
                          lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay)
    steps = -(-len(x) // recipe.batch_size)
    total = steps * epochs
    milestones = [m * total for m in recipe.schedule.milestones]
    factors = list(recipe.schedule.factors)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: float(np.interp(s, milestones, factors)))
    look = recipe.lookahead
    lookahead = TorchLookahead([p for p in twin.parameters()], look.k, look.alpha, look.ramp_power, total)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum", label_smoothing=recipe.loss.label_smoothing)
    rng = np.random.default_rng(0)  # the Trainer's permutations: default_rng(seed), one per epoch
    records = []
    for epoch in range(epochs):
        twin[0].bias.requires_grad_(epoch < recipe.whitening.bias_epochs)
        perm = rng.permutation(len(x))
        twin.train()
        total_loss, seen, correct = 0.0, 0, 0
        start = time.perf_counter()
        with Prefetcher(lambda b, perm=perm, epoch=epoch: batches_of_epoch(perm, epoch, b), 0, steps, 2) as batches:
            for inputs, labels in batches:
                inputs, labels = torch.from_numpy(inputs), torch.from_numpy(labels)
                logits = twin(inputs) / 9
                loss = loss_fn(logits, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
                lookahead.step()
                total_loss += loss.item()
                seen += len(labels)
                correct += int((logits.argmax(1) == labels).sum())
        records.append({"seconds": time.perf_counter() - start, "train_loss": total_loss / seen,
                        "train_accuracy": correct / seen})
    return records


def torch_accuracy(twin, x, y, normalize, tta):
    from fastconv.data.transforms import tta_views

    twin.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(x), 500):
            inputs = normalize(x[start:start + 500], dtype=np.float32)
            logits = sum(w * twin(torch.from_numpy(v)) for w, v in tta_views(inputs, tta))
            correct += int((logits.argmax(1).numpy() == y[start:start + 500]).sum())
    return correct / len(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10240, help="training images (default 10240; 45000: all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="threads (default all cores)")
    parser.add_argument("--engines", nargs="+", default=["fastconv", "torch"], choices=["fastconv", "torch"])
    parser.add_argument("--evaluate", action="store_true", help="accuracy on the held-out images, with TTA")
    parser.add_argument("--cifar", default=str(ROOT.parent / "shared/data/cifar10/cifar10-train-jpeg.tar.gz"))
    args = parser.parse_args()
    threads = fastconv.set_num_threads(args.threads)
    torch.set_num_threads(threads)
    data = load_dataset(f"folder:{args.cifar}")
    pick = np.sort(np.random.default_rng(0).choice(len(data.y_train), size=min(args.images, len(data.y_train)),
                                                   replace=False))
    x, y = data.x_train[pick], data.y_train[pick]
    recipe = RECIPES["airbench94"].replace(epochs=args.epochs)
    setup = recipe.build(x, data.num_classes, seed=0)
    twin = torch_twin(recipe.model_options["widths"], data.num_classes)
    copy_weights(setup.model, twin)
    print(f"threads {threads}; {len(x)} training images, {args.epochs} epoch(s) of the airbench94 recipe; "
          f"torch {torch.__version__}", flush=True)

    trainer = Trainer(setup.model, setup.optimizer, setup.loss, setup.schedule, batch_size=recipe.batch_size,
                      normalize=setup.normalize, augment=setup.augment, schedule_interval=setup.schedule_interval,
                      callbacks=setup.callbacks, progress=False, log=None)

    def batches_of_epoch(perm, epoch, batch):
        return trainer._batch(x, y, perm, epoch, batch, np.dtype(np.float32))

    results = {}
    if "fastconv" in args.engines:
        history = trainer.fit(x, y, args.epochs)
        results["fastconv"] = [{k: r[k] for k in ("seconds", "train_loss", "train_accuracy")} for r in history]
    if "torch" in args.engines:
        results["torch"] = train_torch(recipe, setup, twin, x, y, batches_of_epoch, args.epochs)
    for engine, records in results.items():
        for epoch, r in enumerate(records, start=1):
            print(f"{engine:8s} epoch {epoch}: {r['seconds']:.1f} s, {len(x) / r['seconds']:.0f} img/s, "
                  f"train loss {r['train_loss']:.4f} acc {r['train_accuracy']:.4f}", flush=True)
    if len(results) == 2:
        ours = sum(r["seconds"] for r in results["fastconv"])
        theirs = sum(r["seconds"] for r in results["torch"])
        print(f"fastconv {ours:.1f} s, torch {theirs:.1f} s: fastconv {theirs / ours:.2f}x PyTorch's speed")
    if args.evaluate:
        tta = recipe.evaluation.tta
        if "fastconv" in results:
            acc = evaluate(setup.model, data.x_test, data.y_test, setup.normalize, tta=tta)["accuracy"]
            print(f"fastconv held-out accuracy ({len(data.y_test)} images, tta {tta}): {acc:.4f}")
        if "torch" in results:
            acc = torch_accuracy(twin, data.x_test, data.y_test, setup.normalize, tta)
            print(f"torch    held-out accuracy ({len(data.y_test)} images, tta {tta}): {acc:.4f}")


if __name__ == "__main__":
    main()
