"""The ``fastconv`` command line: the only layer that parses arguments.

    fastconv train --dataset mnist --model mnist2 --epochs 8 --optimizer sgd --lr 0.08 --out runs/mnist
    fastconv train --out runs/mnist --resume
    fastconv evaluate runs/mnist
    fastconv demo
    fastconv info

One module per command, each with ``add_parsers(commands)`` and its
handler, calling the package's public API: ``train`` (with what training
commands share), ``evaluate``, ``demo``, ``info``, ``bench``, ``viz``,
``report``, ``attack`` (and ``robustness``), ``imagenet`` and ``cache``; run folders
are opened through :class:`fastconv.train.RunDir`. ``main`` dispatches.
Errors a user can cause (unknown data set, missing or corrupt files, a run
folder that belongs to another model) print one line on stderr and exit with
status 2; an interrupted training run exits with status 130 after saying how
to resume it.
"""
import argparse
import sys

from fastconv.cli.argtypes import UsageError
from fastconv.data.datasets import limited

__all__ = ["main", "build_parser", "UsageError", "limited"]


def build_parser():
    """The ``fastconv`` argument parser with every command."""
    from fastconv.cli import attack, bench, cache, demo, evaluate, imagenet, info, report, train, viz

    parser = argparse.ArgumentParser(
        prog="fastconv",
        description="Train and evaluate convolutional networks on the CPU with fastconv.",
        epilog="Run 'fastconv COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    # In the order 'fastconv --help' lists them.
    for command in (train, evaluate, demo, info, bench, viz, report, attack, imagenet, cache):
        command.add_parsers(commands)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status."""
    from fastconv.cli.train import resume_hint
    from fastconv.data import DataError
    from fastconv.train import CheckpointError, RunDir, TrainingDiverged, TrainingInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    run_dir = getattr(args, "out", None) or getattr(args, "run_dir", None)
    try:
        return args.handler(args)
    except TrainingInterrupted as exc:
        print(f"\n{exc}\n{resume_hint(run_dir)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        resumable = args.command in ("train", "demo") and run_dir and RunDir(run_dir).checkpoint("last").exists()
        hint = f"; the files written so far are complete\n{resume_hint(run_dir)}" if resumable else ""
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return 130
    except TrainingDiverged as exc:
        print(f"fastconv: {exc}", file=sys.stderr)
        return 1
    except (UsageError, DataError, CheckpointError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"fastconv {args.command}: error: {message}", file=sys.stderr)
        return 2

