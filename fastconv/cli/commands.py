"""The ``fastconv`` command: train, evaluate, demo, info, bench, viz.

    fastconv train --dataset mnist --model mnist2 --epochs 8 --optimizer sgd --lr 0.08 --out runs/mnist
    fastconv train --out runs/mnist --resume
    fastconv evaluate runs/mnist
    fastconv demo
    fastconv info

Errors a user can cause (unknown data set, missing or corrupt files, a run
folder that belongs to another model) print one line on stderr and exit with
status 2; an interrupted training run exits with status 130 after saying how
to resume it.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from fastconv.cli.argtypes import fraction as _fraction
from fastconv.cli.argtypes import non_negative_float as _non_negative_float
from fastconv.cli.argtypes import non_negative_int as _non_negative_int
from fastconv.cli.argtypes import UsageError
from fastconv.cli.argtypes import positive_int as _positive_int
from fastconv.data.datasets import limited, short_name  # noqa: F401 -- limited: fastconv.cli.limited
from fastconv.train.rundir import (
    BEST_CHECKPOINT, BEST_MODEL, CONFIG, EVAL, FIGURES, FINAL_MODEL, HISTORY_CSV, HISTORY_JSON, LAST_CHECKPOINT,
    REPORT, RunDir,
)

__all__ = ["main", "build_parser"]
# name -> (the image side it takes, the constructor in fastconv.models, its options)
MODELS = {
    "mnist2": (28, "mnist2", {}),
    "mnist2-bn": (28, "mnist2", {"batchnorm": True}),
    "cifar6": (32, "cifar6", {}),
}
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine", "onecycle")

# Options that define a run: a resumed run keeps them (see _merge_config).
TRAIN_DEFAULTS = {
    "dataset": None,
    "model": None,
    "epochs": 10,
    "batch_size": 64,
    "optimizer": "adam",
    "lr": None,
    "momentum": 0.0,
    "weight_decay": None,
    "schedule": "none",
    "step_size": None,
    "augment": False,
    "val_fraction": 0.1,
    "seed": 0,
    "limit": None,
    "adversarial": None,
    "adv_eps": None,
    "adv_steps": None,
    "init": "he",
}
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 0.0, "adam": 0.0, "adamw": 1e-2}
# The recipe of `fastconv demo`: mnist2 on the bundled sample.
DEMO = {
    "dataset": "mnist-sample", "model": "mnist2", "epochs": 3, "batch_size": 64,
    "optimizer": "adam", "lr": 3e-3, "momentum": 0.0, "weight_decay": 0.0, "schedule": "onecycle",
    "step_size": None, "augment": False, "val_fraction": 0.1, "seed": 0, "limit": None,
}


# ------------------------------------------------------------------ helpers


def _set_threads(threads):
    import fastconv

    return fastconv.set_num_threads(threads)


def _print(*lines):
    for line in lines:
        print(line, flush=True)


# ------------------------------------------------------------------ data and model


def _load_data(run, data_dir, name=None):
    """(dataset, (x_train, y_train), (x_val, y_val)) of a run (a RunDir): its data set,
    or the one named, with the run's --limit subset of its own, and the validation part
    its configuration holds out."""
    from fastconv.data import stratified_split

    config = run.config
    dataset = run.load_dataset(name, data_dir)
    x, y = dataset.x_train, dataset.y_train
    train_idx, val_idx = stratified_split(y, config["val_fraction"], seed=config["seed"])
    return dataset, (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


def _check_model_fits(model_name, dataset):
    channels, height, width = dataset.input_shape
    side = MODELS[model_name][0]
    if (height, width) != (side, side):
        fits = [name for name, (s, _, _) in MODELS.items() if (s, s) == (height, width)]
        hint = f"; use --model {fits[0]}" if fits else ""
        raise UsageError(
            f"model {model_name} takes {side}x{side} images, but {dataset.name} has {height}x{width} images{hint}"
        )


def _default_model(dataset):
    _, height, width = dataset.input_shape
    for name, (side, _, _) in MODELS.items():
        if (height, width) == (side, side):
            return name
    raise UsageError(
        f"{dataset.name} has {height}x{width} images; the built-in models take "
        + " or ".join(f"{s}x{s} ({n})" for n, (s, _, _) in MODELS.items())
    )


def _build_model(config, dataset):
    from fastconv import models

    _check_model_fits(config["model"], dataset)
    _, constructor, options = MODELS[config["model"]]
    model = getattr(models, constructor)(
        num_classes=dataset.num_classes, in_channels=dataset.input_shape[0], seed=config["seed"],
        init=config.get("init", "he"), **options)
    model.meta.update({
        "model": config["model"],
        "dataset": config["dataset"],
        "classes": list(dataset.classes),
        "input_shape": list(dataset.input_shape),
    })
    return model


def _build_optimizer(config, model, steps_per_epoch):
    from fastconv import optim

    name, lr, wd = config["optimizer"], config["lr"], config["weight_decay"]
    if name == "sgd":
        opt = optim.SGD(model, lr=lr, momentum=config["momentum"], weight_decay=wd)
    elif name == "adam":
        opt = optim.Adam(model, lr=lr, weight_decay=wd)
    else:
        opt = optim.AdamW(model, lr=lr, weight_decay=wd)
    epochs, schedule = config["epochs"], config["schedule"]
    if schedule == "step":
        sched = optim.StepLR(opt, step_size=config["step_size"], gamma=0.1)
    elif schedule == "cosine":
        sched = optim.CosineAnnealingLR(opt, T_max=epochs)
    elif schedule == "onecycle":
        sched = optim.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                 cycle_momentum=name != "sgd" or config["momentum"] > 0)
    else:
        sched = None
    return opt, sched


# ------------------------------------------------------------------ train


class _FigureWriter:
    """Redraws the training curves after every epoch."""

    def __init__(self, path, title):
        self.path = path
        self.title = title

    def on_epoch_end(self, trainer, record):
        from fastconv.train.figures import plot_history

        plot_history(trainer.history, self.path, title=self.title)


def _merge_config(args, run):
    """The run's configuration: stored (on --resume) or from the options and defaults."""
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    if not args.resume:
        if "dataset" not in given:
            raise UsageError("--dataset is required (mnist, mnist-sample, fashion-mnist, cifar10 or folder:PATH)")
        config = {**TRAIN_DEFAULTS, **given}
        if "momentum" in given and config["optimizer"] != "sgd":
            raise UsageError(f"--momentum is for --optimizer sgd; {config['optimizer']} has betas instead")
        if "step_size" in given and config["schedule"] != "step":
            raise UsageError("--step-size is for --schedule step")
        if ("adversarial" in given) != ("adv_eps" in given):
            raise UsageError("--adversarial fgsm|pgd and --adv-eps EPS go together: EPS is the size of the "
                             "perturbations in [0, 1] pixels (e.g. 0.3 for MNIST, 0.03 for CIFAR-10)")
        if "adv_steps" in given and config["adversarial"] != "pgd":
            raise UsageError("--adv-steps is for --adversarial pgd (FGSM takes one step)")
        config["lr"] = config["lr"] if config["lr"] is not None else DEFAULT_LR[config["optimizer"]]
        if config["weight_decay"] is None:
            config["weight_decay"] = DEFAULT_WEIGHT_DECAY[config["optimizer"]]
        if config["schedule"] == "step" and config["step_size"] is None:
            # Fixed now, so that resuming with more epochs keeps the steps where they were.
            config["step_size"] = max(1, config["epochs"] // 3)
        return config
    config = run.require_config()
    for key, value in given.items():
        stored = config.get(key)
        if key == "epochs" and value != stored:
            if config["schedule"] in ("cosine", "onecycle"):
                raise UsageError(
                    f"{run.folder} uses the {config['schedule']} schedule, which is laid out for "
                    f"--epochs {stored}; it cannot be changed on --resume"
                )
            config["epochs"] = value
        elif value != stored:
            raise UsageError(
                f"{run.folder} was started with --{key.replace('_', '-')} {stored}, not {value}; "
                f"drop the option to resume it, or start a new run with another --out"
            )
    return config


def _resume_hint(run_dir):
    return f"resume with: fastconv train --out {run_dir} --resume"


def _train(config, run_dir, data_dir, threads, resume, overwrite=False):
    """Train as config says into the folder run_dir; return (trainer, dataset, (x_val, y_val))."""
    from fastconv.data import Augment, Normalize
    from fastconv.train.figures import plot_samples
    from fastconv.train import Trainer

    threads = _set_threads(threads)
    run = RunDir(run_dir, config=config)
    dataset, (x_train, y_train), (x_val, y_val) = _load_data(run, data_dir, config["dataset"])
    if config.get("model") is None:
        config["model"] = _default_model(dataset)
    model = _build_model(config, dataset)
    steps_per_epoch = -(-len(x_train) // config["batch_size"])
    optimizer, schedule = _build_optimizer(config, model, steps_per_epoch)
    normalize = Normalize.fit(x_train)
    augment = None
    if config["augment"]:
        # Mirrored digits are other symbols; clothes and photos survive the flip.
        augment = Augment(padding=4 if dataset.input_shape[1] >= 32 else 2,
                          flip=config["dataset"] not in ("mnist", "mnist-sample"))
    adversarial = None
    if config.get("adversarial"):
        from fastconv.analysis.attacks.robustness import AdversarialTraining

        adversarial = AdversarialTraining(config["adversarial"], eps=config["adv_eps"],
                                          steps=config.get("adv_steps") or AdversarialTraining.PGD_STEPS)
    run.folder.mkdir(parents=True, exist_ok=True)
    title = f"{config['model']} on {short_name(config['dataset'])}"
    trainer = Trainer(
        model, optimizer, schedule=schedule, batch_size=config["batch_size"], seed=config["seed"],
        normalize=normalize, augment=augment, run_dir=run, overwrite=overwrite,
        callbacks=[_FigureWriter(run.figure("history"), title)], adversarial=adversarial,
    )
    if not resume:
        if run.checkpoint("last").exists() and not overwrite:
            raise UsageError(f"{run.folder} already holds a training run; "
                             f"{_resume_hint(run.folder)}, or choose another --out")
        run.write_config({**config, "threads": threads, "data_dir": data_dir})
        plot_samples(x_train, y_train, dataset.classes, run.figure("samples"),
                     seed=config["seed"], title=f"A random sample of the {short_name(config['dataset'])} training set")
    val = f"{len(x_val):,} validation" if len(x_val) else "no validation"
    _print(
        f"training {config['model']} ({model.num_parameters():,} parameters) on {config['dataset']}: "
        f"{len(x_train):,} training and {val} images, {threads} thread{'' if threads == 1 else 's'}",
        f"{config['optimizer']} lr {config['lr']:g}"
        + (f" momentum {config['momentum']:g}" if config["optimizer"] == "sgd" else "")
        + (f" weight decay {config['weight_decay']:g}" if config["weight_decay"] else "")
        + f", schedule {config['schedule']}"
        + (f" every {config['step_size']} epochs" if config["schedule"] == "step" else "")
        + f", batch size {config['batch_size']}, {config['epochs']} epochs of {steps_per_epoch} batches"
        + (f", augmentation {augment}" if augment else "")
        + (f", {adversarial}" if adversarial else ""),
        f"data: {dataset.source}; test split: {dataset.test_split}",
        f"run folder: {run.folder}",
    )
    val_args = (x_val, y_val) if len(x_val) else (None, None)
    trainer.fit(x_train, y_train, config["epochs"], *val_args, resume=resume)
    return trainer, dataset, (x_val, y_val)


def cmd_train(args):
    run = RunDir(args.out)
    config = _merge_config(args, run)
    if args.resume:
        stored = run.require_config()
        data_dir = run.data_dir(args.data_dir)
        threads = args.threads if args.threads is not None else stored.get("threads")
    else:
        data_dir, threads = args.data_dir, args.threads
    if args.resume and args.epochs is not None:
        run.write_config({**run.require_config(), "epochs": config["epochs"]})
    trainer, _, _ = _train(config, run.folder, data_dir, threads, resume=args.resume)
    best = trainer.best
    _print(
        f"done: {trainer.epoch} epochs; best {best['metric'].replace('_', ' ')} {best['value']:.4f} "
        f"at epoch {best['epoch']}",
        f"model: {run.model_path}  history: {run.history_path('csv')}  "
        f"curves: {run.figure('history')}",
        f"evaluate with: fastconv evaluate {run.folder}",
    )
    return 0


# ------------------------------------------------------------------ evaluate


def _evaluate(run, split, which="final", dataset_name=None, data_dir=None, dataset=None, val=None):
    """Evaluate a run's model on a split; write its eval.json and figures; return the results.

    The data set is ``dataset`` (with its validation part ``val``) when given,
    else the run's (RunDir.load_dataset) or the one named."""
    import fastconv

    from fastconv.data import Normalize
    from fastconv.train.figures import plot_confusion, plot_predictions
    from fastconv.nn.losses import softmax
    from fastconv.train import confusion_matrix, evaluate

    model_path = run.model_file(which)
    model = fastconv.load(model_path)
    if dataset is None:
        dataset, _, val = _load_data(run, data_dir, dataset_name)
    x, y = (dataset.x_test, dataset.y_test) if split == "test" else val
    if len(x) == 0:
        raise UsageError(f"the {split} split of {dataset.name} is empty (the run used --val-fraction 0)")
    expected = tuple(model.meta.get("input_shape", dataset.input_shape))
    if expected != dataset.input_shape or len(model.meta.get("classes", dataset.classes)) != dataset.num_classes:
        raise UsageError(
            f"the model in {run.folder} takes {expected} images in {len(model.meta.get('classes', []))} classes, "
            f"but {dataset.name} has {dataset.input_shape} images in {dataset.num_classes} classes"
        )
    normalize = Normalize.from_meta(model.meta["normalization"]) if "normalization" in model.meta else None
    result = evaluate(model, x, y, normalize)
    cm = confusion_matrix(y, result["predictions"], dataset.num_classes)
    per_class = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
    report = {
        "run": str(run.folder),
        "model_file": model_path.name,
        "dataset": dataset.name,
        "split": split,
        "split_description": dataset.test_split if split == "test" else "the validation part of the training split",
        "images": int(len(y)),
        "loss": result["loss"],
        "accuracy": result["accuracy"],
        "per_class_accuracy": {c: float(a) for c, a in zip(dataset.classes, per_class)},
        "classes": list(dataset.classes),
        "confusion_matrix": cm.tolist(),
    }
    run.write_json(EVAL, report)
    title = f"{model.meta.get('model', 'model')} on the {split} split of {short_name(dataset.name)}"
    plot_confusion(cm, dataset.classes, run.figure("confusion"), title=f"Confusion matrix: {title}")
    plot_predictions(x, y, softmax(result["logits"].astype(np.float64)), dataset.classes,
                     run.figure("predictions"), title=f"{title}")
    return report


def _print_report(report):
    width = max(len(c) for c in report["classes"])
    lines = [f"{report['dataset']}, {report['split']} split ({report['split_description']}): "
             f"{report['images']:,} images, loss {report['loss']:.4f}", "per-class accuracy:"]
    lines += [f"  {c:<{width}}  {a:.4f}" for c, a in report["per_class_accuracy"].items()]
    lines.append("confusion matrix (rows: true class, columns: predicted class):")
    cm = np.array(report["confusion_matrix"])
    cell = max(len(str(cm.max())), 3)
    lines.append("  " + " " * width + " " + " ".join(f"{i:>{cell}}" for i in range(len(cm))))
    lines += [f"  {c:<{width}} " + " ".join(f"{v:>{cell}}" for v in row) for c, row in zip(report["classes"], cm)]
    _print(*lines)


def cmd_evaluate(args):
    run = RunDir(args.run_dir)
    run.require_config()
    report = _evaluate(run, args.split, args.which, dataset_name=args.dataset, data_dir=args.data_dir)
    _print_report(report)
    _print(f"results: {run.eval_path}, figures: {run.figure('confusion')}, "
           f"{run.figure('predictions')}",
           f"accuracy: {report['accuracy']:.4f}")
    return 0


# ------------------------------------------------------------------ demo


def cmd_demo(args):
    run = RunDir(args.out)
    config = dict(DEMO)
    if args.epochs is not None:
        config["epochs"] = args.epochs
    if args.limit is not None:
        config["limit"] = args.limit
    started = time.perf_counter()
    _print("fastconv demo: training mnist2 on the MNIST sample bundled with fastconv "
           "(10,000 training and 2,000 test images of the real MNIST)")
    trainer, dataset, val = _train(config, run.folder, None, args.threads, resume=False, overwrite=True)
    report = _evaluate(run, "test", dataset=dataset, val=val)
    if not args.no_report:
        from fastconv.cli.report import write_demo_report

        write_demo_report(run.folder)
    elapsed = time.perf_counter() - started
    _print(
        f"test accuracy {report['accuracy']:.2%} on {report['images']:,} MNIST test images "
        f"({elapsed:.0f} s in all)",
        f"everything is in {run.folder}/:",
        f"  {FIGURES['samples']:<22} a random sample of the training images",
        f"  {FIGURES['history']:<22} loss and accuracy per epoch",
        f"  {FIGURES['predictions']:<22} predictions on random test images",
        f"  {FIGURES['confusion']:<22} the confusion matrix on the test images",
        f"  {FINAL_MODEL:<22} the trained model (fastconv.load)",
        f"  {HISTORY_CSV + ', ' + Path(HISTORY_JSON).suffix:<22} the numbers behind the curves",
        f"  {EVAL:<22} test accuracy, per-class accuracy, confusion matrix",
        f"accuracy: {report['accuracy']:.4f}",
    )
    return 0


# ------------------------------------------------------------------ info


def cmd_info(args):
    import fastconv

    info = fastconv.build_info()
    _print(f"fastconv {fastconv.__version__}")
    for key, value in info.items():
        if key == "blas":
            for lib in value:
                _print(f"blas: {lib.get('internal_api')} {lib.get('version')} "
                       f"({lib.get('num_threads')} threads, {lib.get('architecture')}) {lib.get('filepath')}")
            if not value:
                _print("blas: none found")
        else:
            _print(f"{key}: {', '.join(map(str, value)) if isinstance(value, (list, tuple)) else value}")
    return 0


# ------------------------------------------------------------------ parser


def cmd_bench(args):
    from fastconv import bench

    bench.run(threads=args.threads, batch_size=args.batch_size, quick=not args.full)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastconv",
        description="Train and evaluate convolutional networks on the CPU with fastconv.",
        epilog="Run 'fastconv COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    train = commands.add_parser(
        "train", help="train a model and save it with its history, checkpoints and figures",
        description=f"Train a model on a data set. Writes {CONFIG}, {HISTORY_JSON}/{Path(HISTORY_CSV).suffix}, "
                    f"{LAST_CHECKPOINT}, {BEST_CHECKPOINT}, {FINAL_MODEL}, {BEST_MODEL}, "
                    f"{FIGURES['samples']} and {FIGURES['history']} to the --out folder. "
                    "Ctrl-C stops after the current batch and saves a checkpoint; "
                    "'fastconv train --out RUN_DIR --resume' continues from it.",
    )
    train.add_argument("--dataset", help="mnist, mnist-sample, fashion-mnist, cifar10 or folder:PATH "
                                         "(PATH/<class>/<image>, or a .tar.gz of such a folder)")
    train.add_argument("--model", choices=sorted(MODELS),
                       help="network: mnist2 (28x28 images), mnist2-bn (mnist2 with batch norm after each "
                            "convolution's ReLU) or cifar6 (32x32); default: the one that fits")
    train.add_argument("--init", choices=("he", "torch"),
                       help="initialization: he (Kaiming normal for layers followed by a ReLU, the default) "
                            "or torch (PyTorch's layer defaults, as a PyTorch script without explicit "
                            "initialization)")
    train.add_argument("--epochs", type=_positive_int, help=f"epochs (default {TRAIN_DEFAULTS['epochs']})")
    train.add_argument("--batch-size", type=_positive_int,
                       help=f"mini-batch size (default {TRAIN_DEFAULTS['batch_size']})")
    train.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer (default adam)")
    train.add_argument("--lr", type=_non_negative_float,
                       help="learning rate (default 0.01 for sgd, 0.001 for adam and adamw); "
                            "the peak rate for --schedule onecycle")
    train.add_argument("--momentum", type=_non_negative_float, help="SGD momentum (default 0)")
    train.add_argument("--weight-decay", type=_non_negative_float,
                       help="weight decay (default 0; 0.01 for adamw)")
    train.add_argument("--schedule", choices=SCHEDULES,
                       help="learning-rate schedule: step (x0.1 every --step-size epochs), cosine "
                            "(to 0 over the epochs), onecycle (per batch) or none (default)")
    train.add_argument("--step-size", type=_positive_int,
                       help="epochs between steps of --schedule step (default a third of the epochs)")
    train.add_argument("--augment", action="store_const", const=True,
                       help="random crops (zero padding 4, or 2 for 28x28 images) and, except for MNIST, "
                            "horizontal flips")
    train.add_argument("--val-fraction", type=_fraction,
                       help="stratified part of the training split held out for validation (default 0.1)")
    train.add_argument("--seed", type=_non_negative_int,
                       help="seed of the initialization, split, shuffling and augmentation (default 0)")
    train.add_argument("--limit", type=_positive_int,
                       help="use only N training and N test images, a fixed random subset (quick trials)")
    train.add_argument("--threads", type=_positive_int,
                       help="threads for the kernels and BLAS (default all cores; results are "
                            "reproducible for a given seed and thread count)")
    train.add_argument("--out", required=True, metavar="RUN_DIR", help="folder for everything the run writes")
    train.add_argument("--data-dir", metavar="DIR",
                       help="folder holding the data sets (default $FASTCONV_DATA or ~/.cache/fastconv, "
                            "then system locations); missing files are downloaded there")
    train.add_argument("--adversarial", choices=("fgsm", "pgd"),
                       help="adversarial training: half of every batch is replaced by FGSM or PGD "
                            "(random start) adversarial examples of its images; needs --adv-eps")
    train.add_argument("--adv-eps", type=_non_negative_float, metavar="EPS",
                       help="L-infinity size of the adversarial training perturbations, in pixels "
                            "scaled to [0, 1] (e.g. 0.3 for MNIST, 0.03 for CIFAR-10)")
    train.add_argument("--adv-steps", type=_positive_int, metavar="N",
                       help="steps of the PGD attack of --adversarial pgd (default 7; fewer is "
                            "cheaper: each step is a forward and backward pass of half the batch)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in RUN_DIR from its last checkpoint, with its stored options")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="accuracy, per-class accuracy and confusion matrix of a trained run",
        description=f"Evaluate RUN_DIR/{FINAL_MODEL} on a split. Prints the accuracy, the per-class "
                    "accuracy and the confusion matrix, ending with a line 'accuracy: 0.9912'; "
                    f"writes RUN_DIR/{EVAL}, {FIGURES['confusion']} and {FIGURES['predictions']}.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'fastconv train'")
    evaluate.add_argument("--dataset", help="data set to evaluate on (default: the one the run trained on)")
    evaluate.add_argument("--data-dir", metavar="DIR", help="folder holding the data sets")
    evaluate.add_argument("--split", choices=("test", "val"), default="test",
                          help="test (default) or val, the validation part the run held out")
    evaluate.add_argument("--which", choices=("final", "best"), default="final",
                          help=f"the final model ({FINAL_MODEL}, default) or the best on validation ({BEST_MODEL})")
    evaluate.set_defaults(handler=cmd_evaluate)

    demo = commands.add_parser(
        "demo", help="train mnist2 on the bundled MNIST sample, evaluate it and draw the figures",
        description="Train mnist2 on the MNIST sample shipped with fastconv (Adam with a one-cycle "
                    f"schedule peaking at lr {DEMO['lr']:g}, {DEMO['epochs']} epochs), evaluate it on the sample's 2,000 test images and "
                    "write the model, history and figures to --out. Needs no download.",
    )
    demo.add_argument("--out", default="fastconv-demo", metavar="DIR",
                      help="folder for the results (default ./fastconv-demo); an earlier demo there is replaced")
    demo.add_argument("--epochs", type=_positive_int, help=f"epochs (default {DEMO['epochs']})")
    demo.add_argument("--limit", type=_positive_int,
                      help="use only N training and N test images, a fixed random subset")
    demo.add_argument("--threads", type=_positive_int, help="threads (default all cores)")
    demo.add_argument("--no-report", action="store_true",
                      help=f"skip {REPORT}, the one-page look inside the model (fastconv report --quick)")
    demo.set_defaults(handler=cmd_demo)

    info = commands.add_parser("info", help="how fastconv was built: kernels, OpenMP, threads, BLAS",
                               description="Print fastconv.build_info().")
    info.set_defaults(handler=cmd_info)

    bench = commands.add_parser(
        "bench", help="time the kernels and the seeds' nets against the NumPy backend and PyTorch",
        description="Print fastconv's speed on this machine next to its NumPy backend and, when "
                    "installed, PyTorch, measured in the same run (under a minute; --full for every "
                    "layer shape, a few minutes). benchmarks/README.md explains the columns.")
    bench.add_argument("--threads", type=_positive_int, help="threads (default all cores)")
    bench.add_argument("--batch-size", type=_positive_int, default=128, help="batch size (default 128)")
    bench.add_argument("--full", action="store_true", help="every layer shape and more repeats")
    bench.set_defaults(handler=cmd_bench)

    # Commands defined next to the tools they run, one import and one call each.
    from fastconv.cli.viz import add_viz_parser
    from fastconv.cli import attack as attack_cli
    from fastconv.cli import report as report_cli
    from fastconv.cli.imagenet import add_parsers as add_imagenet_parsers

    add_viz_parser(commands)
    report_cli.add_parsers(commands)
    attack_cli.add_parsers(commands)
    add_imagenet_parsers(commands)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status."""
    from fastconv.data import DataError
    from fastconv.train import CheckpointError, TrainingDiverged, TrainingInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    run_dir = getattr(args, "out", None) or getattr(args, "run_dir", None)
    try:
        return args.handler(args)
    except TrainingInterrupted as exc:
        print(f"\n{exc}\n{_resume_hint(run_dir)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        resumable = args.command in ("train", "demo") and run_dir and RunDir(run_dir).checkpoint("last").exists()
        hint = f"; the files written so far are complete\n{_resume_hint(run_dir)}" if resumable else ""
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return 130
    except TrainingDiverged as exc:
        print(f"fastconv: {exc}", file=sys.stderr)
        return 1
    except (UsageError, DataError, CheckpointError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"fastconv {args.command}: error: {message}", file=sys.stderr)
        return 2

