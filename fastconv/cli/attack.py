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
    json_path = _json_path(args.out, args.json)
    _write_json(json_path, result)
    succeeded = sum(r["success"] for r in rows)
    print(f"{succeeded} of {len(rows)} attacks succeeded; wrote {args.out} and {json_path}")
    return 0


# ------------------------------------------------------------------ robustness


def cmd_robustness(args):
    """Robustness curves of one or more runs on the first --limit images of a split."""
    from fastconv.analysis.attacks.figures import plot_robustness
    from fastconv.analysis.attacks.robustness import robustness_curve

    _set_threads(args.threads)
    if args.suite:
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
    results = {}
    for label, run in zip(labels, runs):
        options = {method: _attack_options(args, method, applicable_only=True) for method in args.methods}
        x = _pixels(raw, run.model)
        print(f"{label}: {count} {args.split} images, attacks {', '.join(args.methods)}")
        results[label] = robustness_curve(
            run.model, x, y, args.methods, args.eps_list, args.l2_eps_list, attack_options=options,
            progress=lambda line, label=label: print(f"  {line}", flush=True))
        print(f"  clean accuracy {results[label]['clean_accuracy']:.4f}")
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
    return commands
