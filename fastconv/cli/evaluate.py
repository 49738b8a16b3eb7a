"""``fastconv evaluate RUN_DIR``: accuracy, per-class accuracy and confusion
matrix of a trained run on its test split or its validation part; writes
the run's eval.json and its confusion and prediction figures.

RUN_DIR may also be a model file (as for ``report``, ``viz`` and ``attack``),
or a run whose training has not finished, whose last checkpoint is then
evaluated.

Under ``mpiexec -n N`` the ranks share the test images, batch by batch, and
rank 0 gathers the logits, writes and prints: the same result as one process."""
from pathlib import Path

import numpy as np

from fastconv.cli.argtypes import UsageError
from fastconv.cli.train import load_data, print_lines
from fastconv.data.datasets import short_name
from fastconv.data.transforms import TTA_MODES
from fastconv.train.rundir import BEST_MODEL, EVAL, FIGURES, FINAL_MODEL, LAST_CHECKPOINT, RunDir

__all__ = ["add_parsers", "cmd_evaluate", "evaluate_run"]


def evaluate_run(run, split, which="final", dataset_name=None, data_dir=None, dataset=None, val=None,
                 model=None, tta=None):
    """Evaluate a run's model (``model``, else its ``which`` model file) on a
    split; write its eval.json and figures; return the results.

    The data set is ``dataset`` (with its validation part ``val``) when given,
    else the run's (RunDir.load_dataset) or the one named. ``tta`` is the
    test-time augmentation; None takes the model's own (a recipe's, in
    ``model.meta``), else none."""
    from fastconv.data import Normalize
    from fastconv.nn.losses import softmax
    from fastconv.train import confusion_matrix, evaluate
    from fastconv.train.distributed import world
    from fastconv.train.figures import plot_confusion, plot_predictions

    model_path = run.model_file(which) if model is None else None
    if model is None:
        # The final model is the one run.load_dataset already read to check the data fits it.
        model = run.model if which == "final" else run.load_model(which)
    if dataset is None:
        if split == "val" and not run.config:
            raise UsageError(f"{run.label} is a model without its run's configuration, so it has no validation "
                             "part: use --split test")
        if run.config:
            dataset, _, val = load_data(run, data_dir, dataset_name)
        else:
            dataset, val = run.load_dataset(dataset_name, data_dir, subset=False), None
    x, y = (dataset.x_test, dataset.y_test) if split == "test" else val
    if len(x) == 0:
        raise UsageError(f"the {split} split of {dataset.name} is empty (the run used --val-fraction 0)")
    run.check_fits(dataset, model.meta)
    normalize = Normalize.from_meta(model.meta["normalization"]) if "normalization" in model.meta else None
    tta = tta if tta is not None else model.meta.get("test_time_augmentation", "none")
    comm = world()
    result = evaluate(model, x, y, normalize, tta=tta, comm=comm)
    cm = confusion_matrix(y, result["predictions"], dataset.num_classes)
    per_class = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
    report = {
        "run": str(run.folder),
        "model_file": model_path.name if model_path is not None else run.checkpoint("last").name,
        "dataset": dataset.name,
        "split": split,
        "split_description": dataset.test_split if split == "test" else "the validation part of the training split",
        "images": int(len(y)),
        "test_time_augmentation": tta,
        "loss": result["loss"],
        "accuracy": result["accuracy"],
        "per_class_accuracy": {c: float(a) for c, a in zip(dataset.classes, per_class)},
        "classes": list(dataset.classes),
        "confusion_matrix": cm.tolist(),
    }
    if not comm.is_root:
        return report
    run.write_json(EVAL, report)
    title = f"{model.meta.get('model', 'model')} on the {split} split of {short_name(dataset.name)}"
    plot_confusion(cm, dataset.classes, run.figure("confusion"), title=f"Confusion matrix: {title}")
    plot_predictions(x, y, softmax(result["logits"].astype(np.float64)), dataset.classes,
                     run.figure("predictions"), title=f"{title}")
    return report


def _print_report(report):
    width = max(len(c) for c in report["classes"])
    tta = report.get("test_time_augmentation", "none")
    lines = [f"{report['dataset']}, {report['split']} split ({report['split_description']}): "
             f"{report['images']:,} images, loss {report['loss']:.4f}"
             + (f", test-time augmentation {tta}" if tta != "none" else ""), "per-class accuracy:"]
    lines += [f"  {c:<{width}}  {a:.4f}" for c, a in report["per_class_accuracy"].items()]
    lines.append("confusion matrix (rows: true class, columns: predicted class):")
    cm = np.array(report["confusion_matrix"])
    cell = max(len(str(cm.max())), 3)
    lines.append("  " + " " * width + " " + " ".join(f"{i:>{cell}}" for i in range(len(cm))))
    lines += [f"  {c:<{width}} " + " ".join(f"{v:>{cell}}" for v in row) for c, row in zip(report["classes"], cm)]
    print_lines(*lines)


def _checkpoint_model(run, data_dir, dataset_name):
    """The model of an unfinished run's last checkpoint, and the data set it was built for."""
    from fastconv.cli.train import build_model, load_run_recipe
    from fastconv.train.trainer import load_checkpoint

    state = load_checkpoint(run.checkpoint("last"))
    dataset, _, val = load_data(run, data_dir, dataset_name)
    model = build_model(run.require_config(), dataset, load_run_recipe(run))
    model.load_state_dict(state["model"])
    model.meta.update(state["meta"])
    done = f"epoch {state['epoch']}" + (f" and batch {state['batch']} of the next" if state["batch"] else "")
    print_lines(f"{run.folder} has not finished training: evaluating its last checkpoint (after {done}); "
                f"resume with: fastconv train --out {run.folder} --resume")
    return model, dataset, val


def cmd_evaluate(args):
    from fastconv.train.distributed import abort_on_error, world

    with abort_on_error(world(), "evaluate"):
        return _cmd_evaluate(args)


def _cmd_evaluate(args):
    path = Path(args.run_dir)
    unfinished = path.is_dir() and not (path / FINAL_MODEL).exists()
    if unfinished and args.which == "best" and (path / BEST_MODEL).is_file():
        run = RunDir(path)
        report = evaluate_run(run, args.split, "best", dataset_name=args.dataset, data_dir=args.data_dir,
                              tta=args.tta)
    elif unfinished and args.which == "final" and (path / LAST_CHECKPOINT).is_file():
        run = RunDir(path)
        model, dataset, val = _checkpoint_model(run, args.data_dir, args.dataset)
        report = evaluate_run(run, args.split, dataset=dataset, val=val, model=model, tta=args.tta)
    else:
        run = RunDir(path) if unfinished and args.which == "best" else RunDir.open(path)
        report = evaluate_run(run, args.split, args.which, dataset_name=args.dataset, data_dir=args.data_dir,
                              tta=args.tta)
    _print_report(report)
    print_lines(f"results: {run.eval_path}, figures: {run.figure('confusion')}, "
                f"{run.figure('predictions')}",
                f"accuracy: {report['accuracy']:.4f}")
    return 0


# ------------------------------------------------------------------ parser


def add_parsers(commands):
    """Add ``evaluate`` to fastconv's argparse sub-commands."""
    evaluate = commands.add_parser(
        "evaluate", help="accuracy, per-class accuracy and confusion matrix of a trained run",
        description=f"Evaluate RUN_DIR/{FINAL_MODEL} on a split. Prints the accuracy, the per-class "
                    "accuracy and the confusion matrix, ending with a line 'accuracy: 0.9912'; "
                    f"writes RUN_DIR/{EVAL}, {FIGURES['confusion']} and {FIGURES['predictions']}.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR",
                          help="a folder written by 'fastconv train' (its last checkpoint while it has not "
                               "finished), or a model .npz file")
    evaluate.add_argument("--dataset", help="data set to evaluate on (default: the one the run trained on)")
    evaluate.add_argument("--data-dir", metavar="DIR", help="folder holding the data sets")
    evaluate.add_argument("--split", choices=("test", "val"), default="test",
                          help="test (default) or val, the validation part the run held out")
    evaluate.add_argument("--which", choices=("final", "best"), default="final",
                          help=f"the final model ({FINAL_MODEL}, default) or the best on validation ({BEST_MODEL})")
    evaluate.add_argument("--tta", choices=TTA_MODES,
                          help="test-time augmentation: none, flip or flip-translate (default: the one the "
                               "run's recipe names, else none)")
    evaluate.set_defaults(handler=cmd_evaluate)
    return evaluate
