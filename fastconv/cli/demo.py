"""``fastconv demo``: train mnist2 on the MNIST sample bundled with fastconv,
evaluate it, draw the figures and, unless --no-report, write the quick report."""
import time
from pathlib import Path

from fastconv.cli.argtypes import positive_int as _positive_int
from fastconv.cli.evaluate import evaluate_run
from fastconv.cli.train import add_force_option, claim_folder, print_lines, train_run
from fastconv.train.rundir import (
    BEST_MODEL,
    CONFIG,
    EVAL,
    FIGURES,
    FINAL_MODEL,
    HISTORY_CSV,
    HISTORY_JSON,
    REPORT,
    RunDir,
)

__all__ = ["add_parsers", "cmd_demo", "DEMO"]

# The recipe of `fastconv demo`: mnist2 on the bundled sample.
DEMO = {
    "dataset": "mnist-sample", "model": "mnist2", "epochs": 3, "batch_size": 64,
    "optimizer": "adam", "lr": 3e-3, "momentum": 0.0, "weight_decay": 0.0, "schedule": "onecycle",
    "step_size": None, "augment": False, "val_fraction": 0.1, "seed": 0, "limit": None,
}


DEFAULT_OUT = "fastconv-demo"


def _demo_folder(args):
    """The demo's run folder: --out (refused if it holds a run, unless --force),
    or ./fastconv-demo, or, when that holds an earlier run, the first of
    fastconv-demo-2, -3, ... that does not."""
    if args.out is not None:
        run = RunDir(args.out)
        claim_folder(run, args.force)
        return run
    run = RunDir(DEFAULT_OUT)
    if args.force:
        claim_folder(run, force=True)
        return run
    number = 1
    while run.existing_files():
        number += 1
        run = RunDir(f"{DEFAULT_OUT}-{number}")
    if number > 1:
        print_lines(f"{DEFAULT_OUT} holds an earlier demo, kept as it is; this one goes to {run.folder} "
                    f"(--force replaces {DEFAULT_OUT})")
    return run


def cmd_demo(args):
    run = _demo_folder(args)
    config = dict(DEMO)
    if args.epochs is not None:
        config["epochs"] = args.epochs
    if args.limit is not None:
        config["limit"] = args.limit
    started = time.perf_counter()
    print_lines("fastconv demo: training mnist2 on the MNIST sample bundled with fastconv "
                "(10,000 training and 2,000 test images of the real MNIST)")
    trainer, dataset, val = train_run(config, run.folder, None, args.threads, resume=False)
    report = evaluate_run(run, "test", dataset=dataset, val=val)
    if not args.no_report:
        from fastconv.cli.report import write_demo_report

        write_demo_report(run.folder)
    elapsed = time.perf_counter() - started
    print_lines(
        f"test accuracy {report['accuracy']:.2%} on {report['images']:,} MNIST test images "
        f"({elapsed:.0f} s in all)",
        f"everything is in {run.folder}/:",
        f"  {FIGURES['samples']:<22} a random sample of the training images",
        f"  {FIGURES['history']:<22} loss and accuracy per epoch",
        f"  {FIGURES['predictions']:<22} predictions on random test images",
        f"  {FIGURES['confusion']:<22} the confusion matrix on the test images",
        f"  {FINAL_MODEL:<22} the trained model (fastconv.load)",
        f"  {BEST_MODEL:<22} the model of the best validation epoch",
        f"  {HISTORY_CSV + ', ' + Path(HISTORY_JSON).suffix:<22} the numbers behind the curves",
        f"  {EVAL:<22} test accuracy, per-class accuracy, confusion matrix",
        *([] if args.no_report else [f"  {REPORT:<22} a one-page look inside the model (open it in a browser)"]),
        f"  {CONFIG:<22} the run's options (fastconv train --out DIR --resume reads them)",
        f"  {'checkpoint-*.npz':<22} checkpoints: everything needed to resume training",
        f"accuracy: {report['accuracy']:.4f}",
    )
    return 0


# ------------------------------------------------------------------ parser


def add_parsers(commands):
    """Add ``demo`` to fastconv's argparse sub-commands."""
    demo = commands.add_parser(
        "demo", help="train mnist2 on the bundled MNIST sample, evaluate it and draw the figures",
        description="Train mnist2 on the MNIST sample shipped with fastconv (Adam with a one-cycle "
                    f"schedule peaking at lr {DEMO['lr']:g}, {DEMO['epochs']} epochs), "
                    "evaluate it on the sample's 2,000 test images and "
                    "write the model, history and figures to --out. Needs no download.",
    )
    demo.add_argument("--out", metavar="DIR",
                      help=f"folder for the results (default ./{DEFAULT_OUT}, or {DEFAULT_OUT}-2, -3, ... "
                           "when it holds an earlier run)")
    add_force_option(demo, "--out")
    demo.add_argument("--epochs", type=_positive_int, help=f"epochs (default {DEMO['epochs']})")
    demo.add_argument("--limit", type=_positive_int,
                      help="use only N training and N test images, a fixed random subset")
    demo.add_argument("--threads", type=_positive_int, help="threads (default all cores)")
    demo.add_argument("--no-report", action="store_true",
                      help=f"skip {REPORT}, the one-page look inside the model (fastconv report --quick)")
    demo.set_defaults(handler=cmd_demo)
    return demo
