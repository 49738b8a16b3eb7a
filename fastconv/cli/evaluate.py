"""``fastconv evaluate RUN_DIR``: accuracy, per-class accuracy and confusion
matrix of a trained run on its test split or its validation part; writes
the run's eval.json and its confusion and prediction figures."""
import numpy as np

from fastconv.cli.argtypes import UsageError
from fastconv.cli.train import load_data, print_lines
from fastconv.data.datasets import short_name
from fastconv.train.rundir import BEST_MODEL, EVAL, FIGURES, FINAL_MODEL, RunDir

__all__ = ["add_parsers", "cmd_evaluate", "evaluate_run"]


def evaluate_run(run, split, which="final", dataset_name=None, data_dir=None, dataset=None, val=None):
    """Evaluate a run's model on a split; write its eval.json and figures; return the results.

    The data set is ``dataset`` (with its validation part ``val``) when given,
    else the run's (RunDir.load_dataset) or the one named."""
    import fastconv
    from fastconv.data import Normalize
    from fastconv.nn.losses import softmax
    from fastconv.train import confusion_matrix, evaluate
    from fastconv.train.figures import plot_confusion, plot_predictions

    model_path = run.model_file(which)
    model = fastconv.load(model_path)
    if dataset is None:
        dataset, _, val = load_data(run, data_dir, dataset_name)
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
    print_lines(*lines)


def cmd_evaluate(args):
    run = RunDir(args.run_dir)
    run.require_config()
    report = evaluate_run(run, args.split, args.which, dataset_name=args.dataset, data_dir=args.data_dir)
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
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'fastconv train'")
    evaluate.add_argument("--dataset", help="data set to evaluate on (default: the one the run trained on)")
    evaluate.add_argument("--data-dir", metavar="DIR", help="folder holding the data sets")
    evaluate.add_argument("--split", choices=("test", "val"), default="test",
                          help="test (default) or val, the validation part the run held out")
    evaluate.add_argument("--which", choices=("final", "best"), default="final",
                          help=f"the final model ({FINAL_MODEL}, default) or the best on validation ({BEST_MODEL})")
    evaluate.set_defaults(handler=cmd_evaluate)
    return evaluate
