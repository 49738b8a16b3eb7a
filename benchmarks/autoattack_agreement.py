"""AutoAttack's robust accuracy from fastconv and from torchattacks on the same
trained network and the same images.

fastconv's standard sequence (APGD-CE, APGD-T, FAB-T, Square) runs on a
training run's model; torchattacks runs its components with the same
budgets (iterations, restarts, Square's queries, seed) on the model's
PyTorch twin, the run's normalization in front. Both see the first
``--limit`` images of the run's held-out split as [0, 1] pixels.

    python benchmarks/autoattack_agreement.py runs/cifar6 --limit 200 --eps 0.0313725

prints both robust accuracies and their difference. Needs PyTorch and
torchattacks (pip install --no-deps torchattacks).
"""
import argparse
import time

import numpy as np
import torch
import torchattacks

import fastconv
from fastconv.analysis import _common as C
from fastconv.analysis.attacks.autoattack import AutoAttack
from fastconv.bench import harness
from fastconv.train.rundir import RunDir


class Normalized(torch.nn.Module):
    """The twin with the run's input normalization in front: a function of [0, 1] pixels."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, np.float32)).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.from_numpy(np.asarray(std, np.float32)).reshape(1, -1, 1, 1))

    def forward(self, images):
        return self.net((images - self.mean) / self.std)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        fastconv.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    run = RunDir.open(args.run_dir)
    model = run.model
    data = run.load_dataset(None, None, subset=False)
    raw, y = data.x_test[:args.limit], np.asarray(data.y_test[:args.limit], dtype=np.int64)
    x = raw.astype(np.float32) / np.float32(255) if raw.dtype == np.uint8 else raw.astype(np.float32)
    mean, std = C.Normalizer.from_model(model).per_channel(x.shape[1])
    twin = Normalized(harness.torch_twin(model), mean, std).eval()

    start = time.perf_counter()
    _, report = AutoAttack(model, eps=args.eps, steps=args.steps, queries=args.queries, seed=0).evaluate(x, y)
    ours_seconds = time.perf_counter() - start
    common = {"eps": args.eps, "norm": "Linf", "seed": 0, "n_restarts": 1}
    theirs_attack = torchattacks.MultiAttack([
        torchattacks.APGD(twin, loss="ce", steps=args.steps, **common),
        torchattacks.APGDT(twin, steps=args.steps, n_classes=10, **common),
        torchattacks.FAB(twin, steps=args.steps, multi_targeted=True, n_classes=10, **common),
        torchattacks.Square(twin, n_queries=args.queries, **common),
    ])
    start = time.perf_counter()
    x_adv = theirs_attack(torch.from_numpy(x), torch.from_numpy(y))
    with torch.no_grad():
        theirs = float((twin(x_adv).argmax(1).numpy() == y).mean())
    theirs_seconds = time.perf_counter() - start
    with torch.no_grad():
        clean_twin = float((twin(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    ours = report["robust_accuracy"]
    print(f"{run.label}: {len(y)} held-out images, eps {args.eps:.6g}, {args.steps} steps, {args.queries} queries")
    print(f"clean accuracy: fastconv {report['clean_accuracy']:.4f}, torch twin {clean_twin:.4f}")
    print(f"robust accuracy: fastconv {ours:.4f} ({ours_seconds:.0f} s), "
          f"torchattacks {theirs:.4f} ({theirs_seconds:.0f} s), difference {abs(ours - theirs) * 100:.1f} points")


if __name__ == "__main__":
    main()
