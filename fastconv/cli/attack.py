"""``fastconv attack`` and ``fastconv robustness``: adversarial examples and
robustness curves of a trained run, from the command line.

    fastconv attack RUN_DIR --method pgd --eps 0.1 --index 0 1 2 --out pgd.png
    fastconv attack RUN_DIR --method iterative --target 3 --index 0 1 2 3 --out to3.png
    fastconv attack RUN_DIR --method iterative --start noise --target all --out fooling.png
    fastconv robustness RUN_DIR [OTHER_RUN ...] --methods fgsm pgd deepfool \\
        --eps-list 0 0.1 0.2 0.3 --l2-eps-list 0 1 2 3 --out curves.png
    fastconv robustness RUN_DIR [OTHER_RUN ...] --suite autoattack --eps 0.0314 --limit 200 --out aa.png

RUN_DIR is a training run folder holding ``model.npz`` (or a model file),
opened as a :class:`fastconv.train.RunDir`. Images come from the data set
named by ``--dataset`` (default: the one in the model's metadata, else in
the run's configuration), read from ``--data-dir`` (default: the run's), as [0, 1]
pixels; the model's normalization is applied inside the attacks. Each
command writes its figure and, beside it, a JSON file of the numbers.
"""
import os
from pathlib import Path

import numpy as np

from fastconv._files import write_json
from fastconv.analysis import _common as C
from fastconv.analysis.attacks import methods as A
from fastconv.cli.argtypes import non_negative_float as _non_negative
from fastconv.cli.argtypes import non_negative_int as _non_negative_int
from fastconv.cli.argtypes import positive_float as _positive_float
from fastconv.cli.argtypes import positive_int as _positive_int
from fastconv.cli.argtypes import probability as _probability
from fastconv.nn.losses import softmax
from fastconv.train.rundir import CONFIG, FINAL_MODEL, RunDir

DEFAULT_EPS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
DEFAULT_L2_EPS = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
# The constructor options each attack takes from the command line.
OPTIONS = {
    "fgsm": ("eps",),
    "bim": ("eps", "steps", "alpha"),
    "pgd": ("eps", "steps", "alpha", "seed"),
    "pgd-l2": ("eps", "steps", "alpha", "seed"),
    "mi-fgsm": ("eps", "steps", "alpha"),
    "apgd-ce": ("eps", "steps", "seed"),
    "apgd-dlr": ("eps", "steps", "seed"),
    "apgd-t": ("eps", "steps", "seed"),
    "fab-t": ("eps", "steps", "seed"),
    "square": ("eps", "queries", "seed"),
    "autoattack": ("eps", "steps", "queries", "seed"),
    "universal": ("eps", "seed"),
    "iterative": ("eps", "steps", "alpha", "confidence"),
    "deepfool": ("steps",),
    "cw": ("steps",),
}


# ------------------------------------------------------------------ loading


def _images(run, args):
    """(raw images, labels, class names) of the chosen split of a run's data set: the
    whole split, as --index counts in it, not the run's --limit subset."""
    dataset = run.load_dataset(args.dataset, args.data_dir, subset=False)
    raw, labels = (dataset.x_test, dataset.y_test) if args.split == "test" else (dataset.x_train, dataset.y_train)
    return raw, labels, list(dataset.classes)


def _pixels(raw, model):
    dtype = C.model_dtype(model)
    if raw.dtype == np.uint8:
        return raw.astype(dtype) / dtype.type(255)
    return raw.astype(dtype)


def _attack_options(args, method, applicable_only=False):
    """Constructor options of ``method`` from the command line; an option the
    method does not take is an error, or skipped with ``applicable_only``."""
    options = {}
    for name in ("eps", "steps", "alpha", "confidence", "queries"):
        value = getattr(args, name, None)
        if value is None:
            continue
        if applicable_only and (name not in OPTIONS[method] or method in ("deepfool", "cw")):
            continue
        if name not in OPTIONS[method]:
            if name == "eps" and A.ATTACKS[method].minimal:
                print(f"note: {method} looks for the smallest perturbation itself; --eps is not used")
                continue
            raise ValueError(f"--{name} is not an option of {method} (its options: "
                             f"{', '.join('--' + o for o in OPTIONS[method] if o != 'seed') or 'none'})")
        options[name] = value
    if "seed" in OPTIONS[method]:
        options["seed"] = args.seed
    return options


def _class_index(text, classes):
    if text in classes:
        return classes.index(text)
    try:
        k = int(text)
    except ValueError:
        raise ValueError(
            f"--target {text!r} is neither a class index nor a class name ({', '.join(classes)})"
        ) from None
    if not 0 <= k < len(classes):
        raise ValueError(f"--target {k} is out of range for {len(classes)} classes (valid: 0 to {len(classes) - 1})")
    return k


def _json_path(figure, given):
    return Path(given) if given else Path(figure).with_suffix(".json")


def _write_json(path, data):
    path = Path(path)
    os.makedirs(path.parent.resolve(), exist_ok=True)
    write_json(path, data)


def _set_threads(threads):
    import fastconv

    if threads is not None:
        fastconv.set_num_threads(threads)


# ------------------------------------------------------------------ attack


def cmd_attack(args):
    """Attack a few images of a run's data (or noise) and draw the result."""
    from fastconv.analysis.attacks.figures import plot_adversarial
    from fastconv.analysis.attacks.robustness import attack_report

    _set_threads(args.threads)
    run = RunDir.open(args.run_dir)
    model = run.model
    method = args.method
    if args.eps is None and method not in ("iterative",) and not A.ATTACKS[method].minimal:
        raise ValueError(f"--eps is required for {method} (the size of the perturbation in [0, 1] pixels)")
    attack = A.make_attack(method, model, **_attack_options(args, method))
    if args.plot_loss and attack.loss_name is None:
        raise ValueError(f"--plot-loss: {method} records no per-step objective to draw")
    if args.start == "noise":
        classes = C.meta_classes(model)
        shape = model.meta.get("input_shape")
        if not shape:
            raise ValueError("the model's metadata has no input_shape to make noise images of")
        rng = np.random.default_rng(args.seed)
        count = len(args.index)
        x = rng.uniform(0, 1, (count,) + tuple(shape)).astype(C.model_dtype(model))
        labels, indices = None, [None] * count
    else:
        raw, all_labels, classes = _images(run, args)
        classes = C.meta_classes(model) or classes
        for i in args.index:
            if not 0 <= i < len(raw):
                raise ValueError(f"--index {i} is out of range for the {args.split} split of {len(raw)} images")
        x = _pixels(raw[args.index], model)
        labels, indices = all_labels[args.index], list(args.index)
    num_classes = A._num_classes(model, x.shape)
    classes = classes or [str(k) for k in range(num_classes)]
    target = None
    if args.target == "all":
        # every image towards every class: one row per (image, class)
        x = np.repeat(x, num_classes, axis=0)
        target = np.tile(np.arange(num_classes), len(indices))
        labels = None if labels is None else np.repeat(labels, num_classes)
        indices = [i for i in indices for _ in range(num_classes)]
    elif args.target is not None:
        target = np.full(len(x), _class_index(args.target, classes))
    x_adv = attack(x, labels, target=target)
    what = f"{method}" + (f", eps {args.eps:g}" if "eps" in OPTIONS[method] and args.eps is not None else "")
    aim = "untargeted" if target is None else "targeted"
    plot_adversarial(model, x, x_adv, y=labels, target=target, classes=classes,
                     title=f"{what} ({aim}) on {run.label}", path=args.out)
    p_clean = softmax(A.predict_pixels(model, x).astype(np.float64), axis=1)
    p_adv = softmax(A.predict_pixels(model, x_adv).astype(np.float64), axis=1)
    rows = []
    for i in range(len(x)):
        delta = x_adv[i].astype(np.float64) - x[i]
        row = {
            "index": indices[i],
            "label": None if labels is None else int(labels[i]),
            "target": None if target is None else int(target[i]),
            "clean_prediction": int(p_clean[i].argmax()),
            "clean_confidence": float(p_clean[i].max()),
            "adversarial_prediction": int(p_adv[i].argmax()),
            "adversarial_confidence": float(p_adv[i].max()),
            "l2": float(np.sqrt(np.square(delta).sum())),
            "linf": float(np.abs(delta).max()),
        }
        if target is not None:
            row["target_confidence"] = float(p_adv[i, target[i]])
            row["success"] = row["adversarial_prediction"] == row["target"]
        else:
            reference = row["label"] if row["label"] is not None else row["clean_prediction"]
            row["success"] = row["adversarial_prediction"] != reference
        rows.append(row)
        name = f"image {indices[i]}" if indices[i] is not None else f"noise {i}"
        print(f"{name}: {classes[row['clean_prediction']]} ({row['clean_confidence']:.1%}) -> "
              f"{classes[row['adversarial_prediction']]} ({row['adversarial_confidence']:.1%}), "
              f"L2 {row['l2']:.3f}, L-inf {row['linf']:.3f}")
    summary = None
    if labels is not None:
        summary = attack_report(model, x, x_adv, labels, target)
    result = {"run": str(args.run_dir), "method": method, "attack": repr(attack), "start": args.start,
              "images": rows, "summary": summary}
    result["loss_history"] = _loss_record(attack, args.plot_loss, f"{what} ({aim}) on {run.label}")
    json_path = _json_path(args.out, args.json)
    _write_json(json_path, result)
    succeeded = sum(r["success"] for r in rows)
    print(f"{succeeded} of {len(rows)} attacks succeeded; wrote {args.out} and {json_path}")
    return 0


# ------------------------------------------------------------------ robustness


def cmd_robustness(args):
    """Robustness curves of one or more runs on the first --limit images of a split.

    Under ``mpiexec -n N`` the images are split among the ranks and rank 0
    merges, prints and writes (:mod:`fastconv.cli.sharded`)."""
    from fastconv.analysis.attacks.figures import plot_robustness
    from fastconv.cli import sharded
    from fastconv.cli.train import print_lines, set_threads
    from fastconv.train.distributed import world

    comm = world()
    if comm.size > 1:
        set_threads(args.threads)
    else:
        _set_threads(args.threads)
    if args.suite:
        if comm.size > 1:
            raise ValueError("--suite runs on one process: its attacks' random starts are drawn for a whole "
                             "batch, so a split among MPI ranks would not repeat them")
        return _robustness_suite(args)
    if args.eps is not None:
        raise ValueError("--eps is for --suite; robustness curves take --eps-list")
    runs = [RunDir.open(path) for path in args.run_dirs]
    labels = [run.label for run in runs]
    if len(set(labels)) != len(labels):
        labels = [str(run.model_path) for run in runs]
    raw, y, _ = _images(runs[0], args)
    count = min(args.limit, len(raw))
    raw, y = raw[:count], y[:count]
    batch_bound = [name for name in args.methods if name in sharded.BATCH_ATTACKS]
    if comm.size > 1 and batch_bound:
        print_lines(f"note: split among {comm.size} ranks, the curves of {', '.join(batch_bound)} are not the same "
                    "numbers as one process's: what these attacks do to an image depends on the rest of its batch "
                    "(random starts drawn for the batch, or cw's early stop)")
    results = {}
    for label, run in zip(labels, runs):
        options = {method: _attack_options(args, method, applicable_only=True) for method in args.methods}
        x = _pixels(raw, run.model)
        print_lines(f"{label}: {count} {args.split} images, attacks {', '.join(args.methods)}"
                    + (f", on {comm.size} MPI ranks" if comm.size > 1 else ""))
        result = sharded.robustness_curve(
            comm, run.model, x, y, args.methods, args.eps_list, args.l2_eps_list, attack_options=options,
            progress=lambda line: print(f"  {line}", flush=True))
        if result is None:  # a rank other than 0, which writes
            continue
        results[label] = result
        print(f"  clean accuracy {results[label]['clean_accuracy']:.4f}")
    if not comm.is_root:
        return 0
    title = (f"Accuracy under attack: {' vs '.join(labels)} "
             f"({count} {args.split} images)")
    plot_robustness(results if len(results) > 1 else results[labels[0]], title=title, path=args.out)
    json_path = _json_path(args.out, args.json)
    _write_json(json_path, {"split": args.split, "images": count, "runs": {
        label: {"path": str(path), **result} for (label, result), path in zip(results.items(), args.run_dirs)}})
    for label, result in results.items():
        print(f"{label}: clean {result['clean_accuracy']:.4f}")
        for name, curve in result["curves"].items():
            points = ", ".join(f"{e:g}: {a:.3f}" for e, a in zip(curve["eps"], curve["accuracy"]))
            print(f"  {name} ({curve['norm']}): {points}")
    print(f"wrote {args.out} and {json_path}")
    return 0


def _robustness_suite(args):
    """AutoAttack's standard sequence at one eps on each run: robust accuracy after each attack."""
    from fastconv.analysis.attacks.autoattack import AutoAttack
    from fastconv.analysis.attacks.figures import plot_autoattack

    eps = 8 / 255 if args.eps is None else args.eps
    runs = [RunDir.open(path) for path in args.run_dirs]
    raw, y, _ = _images(runs[0], args)
    count = min(args.limit, len(raw))
    raw, y = raw[:count], y[:count]
    options = {name: getattr(args, name) for name in ("steps", "queries") if getattr(args, name) is not None}
    reports = {}
    for run in runs:
        print(f"{run.label}: AutoAttack (standard), eps {eps:g}, {count} {args.split} images", flush=True)
        suite = AutoAttack(run.model, eps=eps, seed=args.seed, **options)
        _, reports[run.label] = suite.evaluate(_pixels(raw, run.model), y, individual=args.individual,
                                               progress=lambda line: print(f"  {line}", flush=True))
        print(f"  robust accuracy {reports[run.label]['robust_accuracy']:.4f}")
    plot_autoattack(reports if len(reports) > 1 else reports[runs[0].label],
                    title=f"AutoAttack at eps {eps:.4g}: {' vs '.join(reports)} ({count} {args.split} images)",
                    path=args.out)
    json_path = _json_path(args.out, args.json)
    _write_json(json_path, {"suite": args.suite, "split": args.split, "images": count, "eps": eps, "runs": {
        label: {"path": str(path), **report} for (label, report), path in zip(reports.items(), args.run_dirs)}})
    print(f"wrote {args.out} and {json_path}")
    return 0


# ------------------------------------------------------------------ parsers





def _data_options(parser):
    parser.add_argument("--dataset", metavar="NAME",
                        help="data set of the images (default: the one in the model's metadata)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help=f"folder holding the data sets (default: the run's, from its {CONFIG})")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="which split (default: test)")
    parser.add_argument("--threads", type=_positive_int, help="threads (default: all cores)")
    parser.add_argument("--json", metavar="FILE.json", help="where to write the numbers (default: FIG.json)")


def _attack_tuning(parser, curves=False):
    if curves:
        steps_help = ("iterations of bim, pgd and pgd-l2 and the step budget of iterative (default: each "
                      "attack's own: 10, 10, 10, 200); deepfool and cw keep theirs (50, 5 x 100)")
    else:
        steps_help = ("iterations of bim, pgd, pgd-l2, mi-fgsm, apgd-*, fab-t (per target), autoattack's "
                      "components, deepfool or cw (per constant), or the step budget of iterative "
                      "(default: each attack's own)")
    parser.add_argument("--steps", type=_positive_int, help=steps_help)
    parser.add_argument("--alpha", type=_positive_float,
                        help="step size of bim, pgd, pgd-l2 (default 2.5 * eps / steps) or iterative "
                             "(default 0.01, relative to the gradient's RMS)")
    parser.add_argument("--queries", type=_positive_int,
                        help="queries of square, and of square in autoattack (default 5000)")
    parser.add_argument("--confidence", type=_probability,
                        help="probability of the target at which iterative stops (default 0.99)")
    parser.add_argument("--seed", type=_non_negative_int, default=0,
                        help="seed of random starts and noise images (default 0)")


def add_parsers(commands):
    """Add ``attack`` and ``robustness`` to fastconv's argparse sub-commands."""
    methods = list(A.ATTACKS)
    p = commands.add_parser(
        "attack", help="adversarial examples of a trained run: original, perturbation, adversarial image",
        description="Attack images of a run's data set (or noise) and draw, for each, the original, the "
                    "amplified perturbation and the adversarial image with the model's confidences. "
                    "Writes FIG.png and FIG.json.")
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help=f"training run folder holding {FINAL_MODEL} (or a model .npz file)")
    p.add_argument("--method", choices=methods, required=True, help=f"the attack: {', '.join(methods)}")
    p.add_argument("--eps", type=_non_negative,
                   help="size of the perturbation in [0, 1] pixels: L-infinity (fgsm, bim, pgd, and a bound "
                        "for iterative) or L2 (pgd-l2); deepfool and cw find their own")
    p.add_argument("--target", metavar="CLASS",
                   help="class to reach (index or name), or 'all' for one row per class; default: untargeted")
    p.add_argument("--index", type=int, nargs="+", default=[0], metavar="I",
                   help="indices of the images in the split (default: 0); with --start noise, one noise "
                        "image per index given")
    p.add_argument("--start", choices=("image", "noise"), default="image",
                   help="attack data images (default) or uniform noise: fooling images")
    _attack_tuning(p)
    _data_options(p)
    p.add_argument("--out", required=True, metavar="FIG.png", help="where to write the figure")
    _plot_loss_option(p)
    p.set_defaults(handler=cmd_attack)

    p = commands.add_parser(
        "robustness", help="accuracy against perturbation size for several attacks, for one or more runs",
        description="Accuracy of each run's model on adversarial versions of the first --limit images of "
                    "a split, for each attack and size. Bounded attacks run once per size; deepfool and cw "
                    "run once and count an image as broken at eps when their perturbation is at most eps. "
                    "Writes FIG.png (a panel per norm, a line per attack and run) and FIG.json.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="training run folders (or model files); several are drawn on one figure")
    p.add_argument("--methods", nargs="+", choices=methods, default=["fgsm", "pgd"], metavar="METHOD",
                   help=f"attacks among {', '.join(methods)} (default: fgsm pgd)")
    p.add_argument("--eps-list", type=_non_negative, nargs="+", default=DEFAULT_EPS, metavar="EPS",
                   help="L-infinity sizes, [0, 1] pixels (default: " + " ".join(f"{e:g}" for e in DEFAULT_EPS)
                        + ", for MNIST; e.g. 0 0.004 0.008 0.016 0.031 for CIFAR-10)")
    p.add_argument("--l2-eps-list", type=_non_negative, nargs="+", default=DEFAULT_L2_EPS, metavar="EPS",
                   help="L2 sizes for pgd-l2, deepfool and cw (default: "
                        + " ".join(f"{e:g}" for e in DEFAULT_L2_EPS) + ")")
    p.add_argument("--limit", type=_positive_int, default=500, help="use the first N images (default: 500)")
    p.add_argument("--suite", choices=("autoattack",),
                   help="instead of curves, AutoAttack's standard sequence (apgd-ce, apgd-t, fab-t, square) "
                        "at one --eps: the robust accuracy after each attack")
    p.add_argument("--eps", type=_positive_float,
                   help="with --suite: the L-infinity size, [0, 1] pixels (default 8/255)")
    p.add_argument("--individual", action="store_true",
                   help="with --suite: also run each attack alone on every image")
    _attack_tuning(p, curves=True)
    _data_options(p)
    p.add_argument("--out", required=True, metavar="FIG.png", help="where to write the figure")
    p.set_defaults(handler=cmd_robustness)
    add_seed_parsers(commands)
    return commands


# ------------------------------------------------------------------ the seeds' experiments
#
# ``fastconv adversarial TOOL``: the experiments that go beyond one attack on a
# few images: images made to look like a picture, one image's perturbation on
# another, the black-box attack through a substitute, defensive distillation,
# a detector of adversarial images and adversarial images that survive
# transformations.


def _plot_loss_option(parser):
    parser.add_argument("--plot-loss", metavar="LOSS.png",
                        help="also draw the attack's objective at each step (its loss history) there")


def _loss_record(attack, path, title):
    """The attack's loss history as a JSON-ready dict, drawn at ``path`` when given."""
    from fastconv.analysis.attacks.figures import plot_loss_history

    history = attack.loss_history
    if path:
        plot_loss_history({attack.name: history}, ylabel=attack.loss_name, title=f"objective of {title}", path=path)
        print(f"wrote {path}")
    return {"loss": attack.loss_name, "values": history.tolist()}


def _run_images(args, run, indices, option="--index"):
    raw, all_labels, classes = _images(run, args)
    for i in indices:
        if not 0 <= i < len(raw):
            raise ValueError(f"{option} {i} is out of range for the {args.split} split of {len(raw)} images")
    classes = C.meta_classes(run.model) or classes
    return _pixels(raw[indices], run.model), all_labels[indices], classes


def _first_images(args, run, count, start=0):
    raw, labels, classes = _images(run, args)
    if start >= len(raw):
        raise ValueError(f"--start-index {start} is out of range for the {args.split} split of {len(raw)} images")
    stop = min(start + count, len(raw))
    return _pixels(raw[start:stop], run.model), labels[start:stop], C.meta_classes(run.model) or classes


def cmd_look_alike(args):
    """Images that look like the pictures --index while the model classifies them as --target."""
    from fastconv.analysis.attacks.figures import plot_adversarial, plot_loss_history
    from fastconv.analysis.attacks.generation import LookAlike

    _set_threads(args.threads)
    run = RunDir.open(args.run_dir)
    model = run.model
    x, labels, classes = _run_images(args, run, args.index)
    target = _class_index(args.target, classes)
    attack = LookAlike(model, beta=args.beta, steps=args.steps, lr=args.lr, start=args.start, seed=args.seed)
    images = attack(x, target=target)
    title = f"look-alike of test images, classified as {classes[target]} (beta {args.beta:g}, {args.steps} steps)"
    plot_adversarial(model, x, images, y=labels, target=np.full(len(x), target), classes=classes,
                     title=f"{title} on {run.label}", path=args.out)
    parts = attack.loss_parts
    cost_path = args.plot_loss or str(Path(args.out).with_name(Path(args.out).stem + "_cost.png"))
    plot_loss_history({"total": attack.loss_history, "cross-entropy of the target": parts["cross_entropy"],
                       f"{args.beta:g} x MSE to the picture": args.beta * parts["mse"]},
                      ylabel="cost (mean over the images)", log=True,
                      secondary={"target probability": parts["target_probability"]},
                      title=f"cost of the look-alike images ({classes[target]}, beta {args.beta:g})",
                      path=cost_path)
    p = softmax(A.predict_pixels(model, images).astype(np.float64), axis=1)
    mse = np.square(images.astype(np.float64) - x).reshape(len(x), -1).mean(axis=1)
    rows = []
    for i, index in enumerate(args.index):
        rows.append({"index": index, "label": int(labels[i]), "prediction": int(p[i].argmax()),
                     "target_probability": float(p[i, target]), "mse": float(mse[i])})
        print(f"image {index} ({classes[labels[i]]}): classified {classes[p[i].argmax()]}, "
              f"p({classes[target]}) {p[i, target]:.3f}, MSE to the picture {mse[i]:.4f}")
    json_path = _json_path(args.out, args.json)
    _write_json(json_path, {"run": str(args.run_dir), "attack": repr(attack), "target": target, "images": rows,
                            "cost": {"total": attack.loss_history.tolist(),
                                     **{k: v.tolist() for k, v in parts.items()}}})
    print(f"wrote {args.out}, {cost_path} and {json_path}")
    return 0


def cmd_transfer_grid(args):
    """The perturbation that moves image --index is added to image --other: both predictions."""
    from fastconv.analysis.attacks.figures import plot_perturbation_transfer
    from fastconv.analysis.attacks.generation import perturbation_transfer

    _set_threads(args.threads)
    run = RunDir.open(args.run_dir)
    model = run.model
    if len(args.other) != len(args.index):
        raise ValueError(f"--other gives {len(args.other)} images for the {len(args.index)} of --index: one each")
    x, labels, classes = _run_images(args, run, args.index)
    other, _, _ = _run_images(args, run, args.other, "--other")
    if args.eps is None and not A.ATTACKS[args.method].minimal and args.method != "iterative":
        raise ValueError(f"--eps is required for {args.method} (the size of the perturbation in [0, 1] pixels)")
    attack = A.make_attack(args.method, model, **_attack_options(args, args.method))
    target = None if args.target is None else np.full(len(x), _class_index(args.target, classes))
    result = perturbation_transfer(model, attack, x, other, None if target is not None else labels, target)
    plot_perturbation_transfer(model, result, classes=classes,
                               title=f"{args.method} perturbation of one image added to another ({run.label})",
                               path=args.out)
    predicted = result["prediction"]
    rows = [{"index": i, "other": j, "prediction": {name: int(values[k]) for name, values in predicted.items()}}
            for k, (i, j) in enumerate(zip(args.index, args.other))]
    for row in rows:
        p = row["prediction"]
        print(f"image {row['index']}: {classes[p['x']]} -> {classes[p['x_adv']]}; other image {row['other']}: "
              f"{classes[p['other']]} -> {classes[p['other_adv']]}")
    json_path = _json_path(args.out, args.json)
    _write_json(json_path, {"run": str(args.run_dir), "attack": repr(attack), "pairs": rows,
                            "attack_success_rate": result["attack_success_rate"],
                            "other_changed_rate": result["other_changed_rate"]})
    print(f"the attack succeeded on {result['attack_success_rate']:.0%} of the images; the same perturbation "
          f"changed the prediction of {result['other_changed_rate']:.0%} of the other images; wrote {args.out}")
    return 0


def _fresh_model(name, victim, num_classes, channels, seed):
    """A new, untrained network of the zoo's ``name`` with the victim's normalization."""
    from fastconv import models

    builder = getattr(models, name, None)
    if builder is None or not callable(builder):
        raise ValueError(f"--substitute-model {name!r} is not a network of fastconv.models")
    model = builder(num_classes=num_classes, in_channels=channels, seed=seed)
    for key in ("normalization", "input_shape", "classes"):
        if key in (victim.meta or {}):
            model.meta[key] = victim.meta[key]
    return model


def _substitute_name(args, run):
    name = args.substitute_model or (run.config or {}).get("model")
    if not name:
        raise ValueError("the run does not say what network it trained: give --substitute-model NAME")
    return name


def cmd_substitute(args):
    """A black-box attack on a run's model through a substitute trained on its answers (Papernot et al. 2017)."""
    from fastconv.analysis.attacks.figures import plot_substitute
    from fastconv.analysis.attacks.robustness import train_substitute, transfer

    _set_threads(args.threads)
    run = RunDir.open(args.run_dir)
    victim = run.model
    x_seed, _, _ = _first_images(args, run, args.queries, args.start_index)
    x, y, _ = _first_images(args, run, args.limit)
    if args.start_index < args.limit:
        print(f"note: the seed images {args.start_index}.. overlap the {args.limit} evaluation images")
    name = _substitute_name(args, run)
    num_classes = A._num_classes(victim, x.shape)
    substitute, info = train_substitute(
        victim, x_seed, lambda: _fresh_model(name, victim, num_classes, x.shape[1], args.seed + 7),
        rounds=args.rounds, step=args.step, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        # agreement on the evaluation images, which the substitute never trains on
        seed=args.seed, x_check=x, progress=lambda line: print(f"  {line}", flush=True))
    transfers = {}
    for method in args.methods:
        attack = A.make_attack(method, substitute, eps=args.eps, **({"steps": args.steps} if method == "pgd" else {}))
        label = f"{method} eps {args.eps:g}"
        transfers[label] = transfer(attack, victim, x, y)
        t = transfers[label]
        print(f"{label}: substitute fooled on {t['source']['success_rate']:.1%}; victim accuracy "
              f"{t['target_clean_accuracy']:.3f} -> {t['target_adversarial_accuracy']:.3f}; "
              f"transfer rate {t['transfer_rate']:.1%}")
    rng = np.random.default_rng(args.seed)
    noisy = np.clip(x + args.eps * rng.choice([-1.0, 1.0], size=x.shape), 0, 1).astype(x.dtype)
    predicted = A.predict_pixels(victim, x).argmax(axis=1)
    correct = predicted == y
    noise_rate = float((correct & (A.predict_pixels(victim, noisy).argmax(axis=1) != y)).sum() / max(correct.sum(), 1))
    print(f"random +-{args.eps:g} noise of the same size fools the victim on {noise_rate:.1%} of its correct answers")
    plot_substitute(info, transfers, baseline=noise_rate,
                    title=f"black-box attack on {run.label}: {info['queries']} victim queries, "
                          f"{args.limit} test images",
                    path=args.out)
    json_path = _json_path(args.out, args.json)
    _write_json(json_path, {"run": str(args.run_dir), "substitute_model": name, "training": info,
                            "transfers": transfers, "random_noise_fooling_rate": noise_rate})
    print(f"wrote {args.out} and {json_path}")
    return 0


def cmd_distill(args):
    """Defensive distillation of a run's network, and the attacks that it blinds and that go through."""
    from fastconv.analysis.attacks.figures import plot_robustness
    from fastconv.analysis.attacks.robustness import defensive_distillation, robustness_curve

    _set_threads(args.threads)
    run = RunDir.open(args.run_dir)
    standard = run.model
    dataset = run.load_dataset(args.dataset, args.data_dir, subset=False)
    count = min(args.train_images, len(dataset.x_train))
    x_train, y_train = _pixels(dataset.x_train[:count], standard), dataset.y_train[:count]
    x, y, _ = _first_images(args, run, args.limit)
    name = _substitute_name(args, run)
    num_classes = A._num_classes(standard, x.shape)
    _, student = defensive_distillation(
        lambda: _fresh_model(name, standard, num_classes, x.shape[1], args.seed + 3), x_train, y_train,
        temperature=args.temperature, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        progress=lambda line: print(f"  {line}", flush=True))
    methods = ["fgsm", "pgd", "cw"]
    options = {"pgd": {"steps": args.steps}, "cw": {"steps": args.cw_steps}}
    results = {}
    for label, model in ((f"distilled (T={args.temperature:g})", student), ("standard", standard)):
        results[label] = robustness_curve(model, x, y, methods, args.eps_list, args.l2_eps_list,
                                          attack_options=options)
        for method, curve in results[label]["curves"].items():
            print(f"{label}, {method}: " + ", ".join(f"{e:g}: {a:.3f}" for e, a in zip(curve["eps"],
                                                                                       curve["accuracy"])))
    plot_robustness(results, title=f"defensive distillation of {run.label} ({args.limit} {args.split} images)",
                    path=args.out)
    json_path = _json_path(args.out, args.json)
    _write_json(json_path, {"run": str(args.run_dir), "temperature": args.temperature, "train_images": count,
                            "curves": results})
    if args.save_student:
        student.save(args.save_student)
        print(f"wrote {args.save_student}")
    print(f"wrote {args.out} and {json_path}")
    return 0


def cmd_detect(args):
    """Feature squeezing (Xu et al. 2018) on natural and adversarial images: ROC per attack."""
    from fastconv.analysis.attacks.detect import FeatureSqueezing, detection_roc
    from fastconv.analysis.attacks.figures import plot_detection_roc

    _set_threads(args.threads)
    run = RunDir.open(args.run_dir)
    model = run.model
    x, y, _ = _first_images(args, run, 2 * args.limit)
    # the threshold is set on natural images the ROC does not score
    x_fit, x_eval, y_eval = x[:args.limit], x[args.limit:], y[args.limit:]
    detector = FeatureSqueezing(model, bits=args.bits, median_size=args.median)
    detector.fit(x_fit, args.false_positive_rate)
    correct = A.predict_pixels(model, x_eval).argmax(axis=1) == y_eval
    rocs = {}
    for method in args.methods:
        attack = A.make_attack(method, model, eps=args.eps, **({"steps": args.steps} if args.steps else {}))
        x_adv = attack(x_eval, y_eval)
        # only successful adversarial examples of correctly classified images count, as in Xu et al.
        fooled = correct & (A.predict_pixels(model, x_adv).argmax(axis=1) != y_eval)
        if not fooled.any():
            print(f"{method}: no successful adversarial example; left out")
            continue
        label = method if A.ATTACKS[method].minimal else f"{method} eps {args.eps:g}"
        rocs[label] = detection_roc(detector, x_eval[correct], x_adv[fooled])
        r = rocs[label]
        print(f"{label}: AUC {r['auc']:.3f}; at the threshold {r['threshold']:.4f} it flags "
              f"{r['detection_rate']:.1%} of {r['adversarial']} adversarial and {r['false_positive_rate']:.1%} "
              f"of {r['natural']} natural images")
    if not rocs:
        raise ValueError("no attack produced a successful adversarial example: raise --eps")
    squeezers = ", ".join(detector.squeezers(x.shape[1]))
    plot_detection_roc(rocs, title=f"feature squeezing ({squeezers}) on {run.label}", path=args.out)
    json_path = _json_path(args.out, args.json)
    _write_json(json_path, {"run": str(args.run_dir), "squeezers": squeezers, "threshold": detector.threshold,
                            "rocs": rocs})
    print(f"wrote {args.out} and {json_path}")
    return 0


def cmd_eot(args):
    """Adversarial images made by PGD and by EOT, and how often they survive random transformations."""
    from fastconv.analysis.attacks.eot import EOT, Transformations, survival
    from fastconv.analysis.attacks.figures import plot_survival

    _set_threads(args.threads)
    run = RunDir.open(args.run_dir)
    model = run.model
    x, y, classes = _first_images(args, run, args.limit)
    correct = A.predict_pixels(model, x).argmax(axis=1) == y
    x, y = x[correct], y[correct]
    transformations = Transformations(rotation=args.rotation, scale=tuple(args.scale), blur=args.blur,
                                      gain=tuple(args.gain), offset=args.offset, jpeg=args.jpeg)
    attacks = {f"PGD eps {args.eps:g}": A.PGD(model, eps=args.eps, steps=args.steps, seed=args.seed),
               f"EOT eps {args.eps:g}": EOT(model, eps=args.eps, steps=args.steps, samples=args.samples,
                                            transformations=transformations, seed=args.seed)}
    adversarial, rates, record = {}, {}, {}
    for label, attack in attacks.items():
        adversarial[label] = attack(x, y)
        record[label] = survival(model, adversarial[label], y, transformations=transformations, draws=args.draws,
                                 seed=args.seed + 2)
        rates[label] = record[label]["survival_rate"]
        print(f"{label}: fools the model on {record[label]['untransformed']:.1%} of {len(x)} correctly classified "
              f"images as they are, on {rates[label]:.1%} after a random transformation ({args.draws} draws each)")
    # the figure shows the first image that every attack fools as it is, when there is one
    fooled = np.all([A.predict_pixels(model, x_adv).argmax(axis=1) != y for x_adv in adversarial.values()], axis=0)
    shown_index = int(np.argmax(fooled)) if fooled.any() else 0
    rng = np.random.default_rng(args.seed + 1)
    views = [transformations.sample(rng) for _ in range(args.views)]
    images = {label: x_adv[shown_index:shown_index + 1] for label, x_adv in adversarial.items()}
    shown = {label: np.concatenate([view.apply(image) for view in views]) for label, image in images.items()}
    plot_survival(model, images, shown, rates, classes=classes,
                  title=f"adversarial images under random transformations ({run.label})", path=args.out)
    json_path = _json_path(args.out, args.json)
    _write_json(json_path, {"run": str(args.run_dir), "transformations": transformations.config(),
                            "attacks": {k: repr(a) for k, a in attacks.items()}, "survival": record})
    print(f"wrote {args.out} and {json_path}")
    return 0


def _method_options(parser, default="pgd"):
    parser.add_argument("--method", choices=list(A.ATTACKS), default=default, help=f"the attack (default {default})")
    parser.add_argument("--eps", type=_non_negative, help="size of the perturbation in [0, 1] pixels")
    _attack_tuning(parser)


def _training_options(parser, epochs, lr, batch_size):
    parser.add_argument("--substitute-model", metavar="NAME",
                        help="network of fastconv.models to train (default: the run's own)")
    parser.add_argument("--epochs", type=_positive_int, default=epochs, help=f"training epochs (default {epochs})")
    parser.add_argument("--lr", type=_positive_float, default=lr, help=f"Adam's learning rate (default {lr:g})")
    parser.add_argument("--batch-size", type=_positive_int, default=batch_size,
                        help=f"training batch size (default {batch_size})")


def _tool(tools, name, handler, summary):
    p = tools.add_parser(name, help=summary, description=summary + " Writes FIG.png and FIG.json.")
    p.add_argument("run_dir", metavar="RUN_DIR", help=f"training run folder holding {FINAL_MODEL} (or a model file)")
    p.add_argument("--out", required=True, metavar="FIG.png", help="where to write the figure")
    _data_options(p)
    p.set_defaults(handler=handler)
    return p


def add_seed_parsers(commands):
    """Add ``adversarial`` and its tools to fastconv's argparse sub-commands."""
    group = commands.add_parser(
        "adversarial", help="adversarial experiments: look-alikes, perturbation transfer, black box, "
                            "distillation, detection, transformations",
        description="Adversarial experiments on a trained run, each drawing a figure and writing its numbers.")
    tools = group.add_subparsers(dest="adversarial_tool", metavar="TOOL", required=True)

    p = _tool(tools, "look-alike", cmd_look_alike,
              "Images that look like chosen pictures while the model classifies them as a target class: "
              "cross-entropy of the target + beta * MSE to the picture, from noise, with its cost curve.")
    p.add_argument("--index", type=int, nargs="+", default=[0], metavar="I", help="the pictures (default: 0)")
    p.add_argument("--target", metavar="CLASS", required=True, help="class to reach (index or name)")
    p.add_argument("--beta", type=_non_negative, default=0.185, help="weight of the MSE term (default 0.185)")
    p.add_argument("--steps", type=_positive_int, default=670, help="Adam steps (default 670)")
    p.add_argument("--lr", type=_positive_float, default=0.05, help="Adam's learning rate on pixels (default 0.05)")
    p.add_argument("--start", choices=("noise", "image"), default="noise",
                   help="start from uniform noise (default) or from the picture")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--plot-loss", metavar="COST.png", help="where to draw the cost curve (default: FIG_cost.png)")

    p = _tool(tools, "transfer-grid", cmd_transfer_grid,
              "Attack image --index, add its perturbation to image --other, and draw the 2x2 grid: "
              "both images and both predictions.")
    p.add_argument("--index", type=int, nargs="+", default=[0], metavar="I", help="the attacked images")
    p.add_argument("--other", type=int, nargs="+", default=[1], metavar="J", help="the images that receive "
                   "the perturbation, one per --index")
    p.add_argument("--target", metavar="CLASS", help="class to reach (index or name); default: untargeted")
    _method_options(p)

    p = _tool(tools, "substitute", cmd_substitute,
              "Black-box attack (Papernot et al. 2017): a substitute trained on the run's predicted labels "
              "for a small query set grown by Jacobian augmentation, whose adversarial examples are shown to "
              "the run's model; reports the transfer rate.")
    p.add_argument("--queries", type=_positive_int, default=150, help="seed images of the query set (default 150)")
    p.add_argument("--start-index", type=_non_negative_int, default=5000,
                   help="the seed images are the split's images from this index (default 5000)")
    p.add_argument("--rounds", type=_positive_int, default=5, help="augmentation rounds (default 5)")
    p.add_argument("--step", type=_positive_float, default=0.1, help="Jacobian augmentation step (default 0.1)")
    _training_options(p, epochs=10, lr=1e-3, batch_size=32)
    p.add_argument("--methods", nargs="+", choices=("fgsm", "bim", "pgd"), default=["fgsm", "pgd"],
                   help="white-box attacks on the substitute (default: fgsm pgd)")
    p.add_argument("--eps", type=_non_negative, default=0.3, help="L-infinity size (default 0.3)")
    p.add_argument("--steps", type=_positive_int, default=20, help="PGD steps (default 20)")
    p.add_argument("--limit", type=_positive_int, default=500, help="evaluate on the first N images (default 500)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of training (default 0)")

    p = _tool(tools, "distill", cmd_distill,
              "Defensive distillation (Papernot et al. 2016): a teacher and a student trained at temperature T, "
              "and the robustness curves of FGSM, PGD and CW on the student beside the run's own network.")
    p.add_argument("--temperature", type=_positive_float, default=100.0, help="temperature T (default 100)")
    p.add_argument("--train-images", type=_positive_int, default=60000,
                   help="train on the first N training images (default: all)")
    _training_options(p, epochs=1, lr=2e-3, batch_size=128)
    p.add_argument("--eps-list", type=_non_negative, nargs="+", default=DEFAULT_EPS, metavar="EPS",
                   help="L-infinity sizes (default: " + " ".join(f"{e:g}" for e in DEFAULT_EPS) + ")")
    p.add_argument("--l2-eps-list", type=_non_negative, nargs="+", default=DEFAULT_L2_EPS, metavar="EPS",
                   help="L2 sizes for CW (default: " + " ".join(f"{e:g}" for e in DEFAULT_L2_EPS) + ")")
    p.add_argument("--steps", type=_positive_int, default=20, help="PGD steps (default 20)")
    p.add_argument("--cw-steps", type=_positive_int, default=100, help="CW steps per constant (default 100)")
    p.add_argument("--limit", type=_positive_int, default=500, help="evaluate on the first N images (default 500)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of training (default 0)")
    p.add_argument("--save-student", metavar="MODEL.npz", help="also save the distilled student there")

    p = _tool(tools, "detect", cmd_detect,
              "Feature squeezing (Xu et al. 2018): the L1 distance between the predictions on an image and on "
              "its squeezed versions flags adversarial images; ROC curve per attack.")
    p.add_argument("--methods", nargs="+", choices=list(A.ATTACKS), default=["pgd", "cw"],
                   help="attacks whose examples are to be detected (default: pgd cw)")
    p.add_argument("--eps", type=_non_negative, default=0.1, help="size of the bounded attacks (default 0.1)")
    p.add_argument("--steps", type=_positive_int,
                   help="steps of every attack (CW: per constant; default: each attack's own)")
    p.add_argument("--bits", type=_positive_int, help="bit depth of the squeezer (default: 1 grey, 5 colour)")
    p.add_argument("--median", type=_non_negative_int, default=2, help="median filter size, 0 for none (default 2)")
    p.add_argument("--false-positive-rate", type=_probability, default=0.05,
                   help="share of natural images the threshold flags (default 0.05)")
    p.add_argument("--limit", type=_positive_int, default=200,
                   help="N images to set the threshold on and the next N to measure (default 200)")

    p = _tool(tools, "eot", cmd_eot,
              "Expectation over transformation (Athalye et al. 2018): adversarial images meant to survive "
              "random rotation, scaling, blur, brightness and JPEG, against plain PGD images.")
    p.add_argument("--eps", type=_non_negative, default=0.1, help="L-infinity size (default 0.1)")
    p.add_argument("--steps", type=_positive_int, default=20, help="steps of both attacks (default 20)")
    p.add_argument("--samples", type=_positive_int, default=8, help="transformations per EOT step (default 8)")
    p.add_argument("--draws", type=_positive_int, default=50, help="transformations per image measured (default 50)")
    p.add_argument("--views", type=_positive_int, default=6, help="transformations drawn in the figure (default 6)")
    p.add_argument("--rotation", type=_non_negative, default=15.0, help="largest rotation, degrees (default 15)")
    p.add_argument("--scale", type=_positive_float, nargs=2, default=[0.9, 1.1], metavar=("LOW", "HIGH"),
                   help="range of scales (default 0.9 1.1)")
    p.add_argument("--blur", type=_non_negative, default=1.0, help="largest blur sigma, pixels (default 1)")
    p.add_argument("--gain", type=_positive_float, nargs=2, default=[0.8, 1.2], metavar=("LOW", "HIGH"),
                   help="range of brightness gains (default 0.8 1.2)")
    p.add_argument("--offset", type=_non_negative, default=0.1, help="largest brightness offset (default 0.1)")
    p.add_argument("--jpeg", type=_probability, default=0.5, help="probability of JPEG compression (default 0.5)")
    p.add_argument("--limit", type=_positive_int, default=100, help="attack the first N images (default 100)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default 0)")
    return commands
