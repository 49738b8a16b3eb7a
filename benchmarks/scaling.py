"""How inference cost grows with the work: fastconv against PyTorch and the
inference engines (ONNX Runtime, OpenVINO with its f32 precision hint), in
float32, all in the same run and on the same weights.

Three sweeps:

* **batch**: images/s of cifar6 and mnist2 inference at batch 1 to 512;
* **image size**: time of one image through cifar6's convolution stack
  (conv-ReLU-BN pairs at 32, 64 and 128 channels with pooling, as in cifar6)
  at 32x32 to 224x224, batch 1;
* **width**: time of a 3x3 convolution + ReLU on a 32x32 map, batch 32, at
  16 to 512 input and output channels.

Every engine's output is checked against fastconv's before it is timed.
Each point is the best of several calls; ``--rounds`` repeats the whole
sweep so that the table gives, for each point, the range of the ratio over
rounds (the machine is shared: the spread says how much to trust a point).

    python benchmarks/scaling.py --threads 2 --rounds 3 --out benchmarks/scaling

writes scaling.json (every time), scaling.png (the curves) and prints the
markdown table that benchmarks/README.md keeps. Needs PyTorch; ONNX Runtime
and OpenVINO are used when installed (pip install ".[bench]").
"""
import argparse
import json
import statistics
from pathlib import Path

import numpy as np

import fastconv
from fastconv.bench import harness, peers
from fastconv.nn import layers as L
from fastconv.nn.model import Sequential

BATCHES = (1, 8, 32, 128, 512)
SIZES = (32, 64, 96, 128, 160, 224)
WIDTHS = (16, 32, 64, 128, 256, 512)


def cifar6_features(seed=0):
    """cifar6's convolution stack without its head, which fixes the input size."""
    rng = np.random.default_rng(seed)
    layers = []
    channels = 3
    for width in (32, 64, 128):
        for _ in range(2):
            layers += [L.Conv2d(channels, width, 3, padding=1, seed=rng), L.ReLU(), L.BatchNorm2d(width)]
            channels = width
        layers.append(L.MaxPool2d(2))
    model = Sequential(layers)
    _settle_batch_norm(model, rng)
    return model


def conv_layer(width, seed=0):
    rng = np.random.default_rng(seed)
    return Sequential([L.Conv2d(width, width, 3, padding=1, seed=rng), L.ReLU()])


def _settle_batch_norm(model, rng):
    """Running statistics that are not the identity, so that evaluation mode does real work."""
    for _, layer in model.named_layers():
        if isinstance(layer, L.BatchNorm2d):
            layer.buffers["running_mean"][...] = rng.normal(0, 0.1, layer.num_features)
            layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, layer.num_features)
    model.eval()


def engine_calls(model, x, threads, engines):
    """{engine: fn} running inference of ``model`` on ``x``, each checked against fastconv's output."""
    import torch

    def ours():
        return model.predict(x, batch_size=len(x))

    expected = ours()
    calls = {"fastconv": ours}
    if "torch" in engines:
        twin = harness.torch_twin(model).eval()
        tx = torch.from_numpy(x)

        def theirs():
            with torch.inference_mode():
                return twin(tx)

        calls["torch"] = theirs
    for peer in peers.available_peers():
        if peer in engines:
            run = peers._runner(peer, peers.onnx_model(model, x.shape[1:]), threads)
            calls[peer] = lambda run=run: run(x)
    for engine, call in calls.items():
        got = call()
        got = got.numpy() if hasattr(got, "numpy") else np.asarray(got)
        if not harness.outputs_agree(got, expected, 1e-3):
            raise RuntimeError(f"{engine} disagrees with fastconv on {model!r} at input {x.shape}")
    return calls


def time_point(model, x, threads, engines, min_seconds):
    calls = engine_calls(model, x, threads, engines)
    return {engine: harness.best_time(call, min_repeats=3, min_seconds=min_seconds, max_seconds=20)
            for engine, call in calls.items()}


def sweeps(threads, engines, min_seconds):
    rng = np.random.default_rng(1)
    points = []
    for net in ("cifar6", "mnist2"):
        constructor, shape = harness.NETS[net]
        model = constructor(seed=0)
        _settle_batch_norm(model, np.random.default_rng(0))
        for batch in BATCHES:
            x = rng.standard_normal((batch,) + shape, dtype=np.float32)
            points.append({"sweep": "batch", "net": net, "x": batch,
                           "seconds": time_point(model, x, threads, engines, min_seconds)})
    features = cifar6_features()
    for size in SIZES:
        x = rng.standard_normal((1, 3, size, size), dtype=np.float32)
        points.append({"sweep": "size", "net": "cifar6 convolutions", "x": size,
                       "seconds": time_point(features, x, threads, engines, min_seconds)})
    for width in WIDTHS:
        x = rng.standard_normal((32, width, 32, 32), dtype=np.float32)
        points.append({"sweep": "width", "net": "conv 3x3 + ReLU, 32x32, batch 32", "x": width,
                       "seconds": time_point(conv_layer(width), x, threads, engines, min_seconds)})
    return points


def ratio_ranges(rounds):
    """Per point: the median time of each engine over rounds and, for each peer, the
    (min, max) over rounds of peer time / fastconv time (above 1: fastconv is faster)."""
    table = []
    for i, first in enumerate(rounds[0]):
        row = {key: first[key] for key in ("sweep", "net", "x")}
        engines = first["seconds"].keys()
        row["median_seconds"] = {e: statistics.median(r[i]["seconds"][e] for r in rounds) for e in engines}
        row["ratio_range"] = {}
        for engine in engines:
            if engine != "fastconv":
                ratios = [r[i]["seconds"][engine] / r[i]["seconds"]["fastconv"] for r in rounds]
                row["ratio_range"][engine] = (min(ratios), max(ratios))
        table.append(row)
    return table


def markdown(table):
    engines = [e for e in table[0]["median_seconds"] if e != "fastconv"]
    lines = ["| sweep | net | x | fastconv ms | " + " | ".join(f"{e} / fastconv" for e in engines) + " |",
             "|---|---|---|---|" + "---|" * len(engines)]
    for row in table:
        cells = [f"{lo:.2f}-{hi:.2f}" for lo, hi in (row["ratio_range"][e] for e in engines)]
        lines.append(f"| {row['sweep']} | {row['net']} | {row['x']} | "
                     f"{1000 * row['median_seconds']['fastconv']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("batch", "cifar6"), ("batch", "mnist2"), ("size", None), ("width", None)]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for ax, (sweep, net) in zip(axes, panels):
        rows = [r for r in table if r["sweep"] == sweep and (net is None or r["net"] == net)]
        xs = [r["x"] for r in rows]
        for engine in rows[0]["median_seconds"]:
            seconds = np.array([r["median_seconds"][engine] for r in rows])
            ys = np.array(xs) / seconds if sweep == "batch" else 1000 * seconds
            ax.plot(xs, ys, marker="o", label=engine)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        if sweep == "batch":
            ax.set(title=f"{net} inference", xlabel="batch size", ylabel="images/s (higher is better)")
        elif sweep == "size":
            ax.set(title="cifar6's convolutions, batch 1", xlabel="image side (pixels)",
                   ylabel="ms (lower is better)")
        else:
            ax.set(title="3x3 conv + ReLU, 32x32, batch 32", xlabel="channels in and out",
                   ylabel="ms (lower is better)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("float32 inference as the work grows (medians over rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="threads for every engine (default: all cores)")
    parser.add_argument("--rounds", type=int, default=3, help="whole sweeps, for the spread of each ratio")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="time spent on each point per round")
    parser.add_argument("--engines", nargs="+", default=["torch", *peers.PEERS],
                        help="peers besides fastconv (default: torch onnxruntime openvino)")
    parser.add_argument("--out", default="benchmarks/scaling", help="path stem of the .json and .png")
    args = parser.parse_args()
    threads = harness._set_threads(args.threads or fastconv.get_num_threads())
    print(f"threads {threads}; engines fastconv {' '.join(args.engines)}; {args.rounds} round(s)")
    rounds = []
    for i in range(args.rounds):
        rounds.append(sweeps(threads, args.engines, args.min_seconds))
        print(f"round {i + 1} done")
    table = ratio_ranges(rounds)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = harness.machine_info(threads)
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "rounds": rounds, "table": table},
                                                   indent=1, default=str))
    plot(table, out.with_suffix(".png"))
    print(markdown(table))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
