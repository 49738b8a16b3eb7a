"""The ``fastconv`` command line: the only layer that parses arguments.

    fastconv train --dataset mnist --model mnist2 --epochs 8 --optimizer sgd --lr 0.08 --out runs/mnist
    fastconv train --out runs/mnist --resume
    fastconv evaluate runs/mnist
    fastconv demo
    fastconv info

One module per command, each with ``add_parsers(commands)`` and its
handler, calling the package's public API: ``train`` (with what training
commands share), ``evaluate``, ``demo``, ``info``, ``bench``, ``viz``,
``report``, ``explore``, ``attack`` (and ``robustness``), ``imagenet`` and ``cache``; run folders
are opened through :class:`fastconv.train.RunDir`. ``main`` dispatches.
Errors a user can cause (unknown data set, missing or corrupt files, a run
folder that belongs to another model) print one line on stderr and exit with
status 2 (a mistake in the command line prints that line and where help is,
not the whole usage); an interrupted training run exits with status 130
(Ctrl-C) or 143 (SIGTERM) after saving a checkpoint and saying how to resume.
"""
import argparse
import errno
import signal
import sys
import threading
from pathlib import Path

from fastconv.cli.argtypes import UsageError
from fastconv.data.datasets import limited

__all__ = ["main", "build_parser", "UsageError", "limited"]


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported as one line that says where help is
    instead of the usage block first; sub-command parsers are of this class too."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (try '{self.prog} --help')\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived outside training (where the trainer saves and stops)."""


def _on_terminate(signum, frame):
    raise Terminated


def os_error_message(exc):
    """An OSError in words, naming the path, without Python's "[Errno N]"."""
    path = exc.filename
    if path is None or exc.strerror is None:
        return " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, FileExistsError) and Path(path).is_file():
        return f"{path} is a file, where a folder is needed"
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a folder, where a file is needed"
    if isinstance(exc, NotADirectoryError):
        return f"{path}: part of this path is a file, not a folder"
    if isinstance(exc, PermissionError):
        return f"{path}: permission denied"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"cannot write {path}: {exc.strerror.lower()}; free some space and try again"
    return f"{path}: {exc.strerror[:1].lower()}{exc.strerror[1:]}"


def _image_bomb():
    from PIL import Image

    return Image.DecompressionBombError


def build_parser():
    """The ``fastconv`` argument parser with every command."""
    from fastconv.cli import attack, bench, cache, demo, evaluate, explore, imagenet, info, report, train, viz

    parser = _Parser(
        prog="fastconv",
        description="Train and evaluate convolutional networks on the CPU with fastconv.",
        epilog="Run 'fastconv COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    # In the order 'fastconv --help' lists them.
    for command in (train, evaluate, demo, info, bench, viz, report, explore, attack, imagenet, cache):
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
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_terminate = signal.signal(signal.SIGTERM, _on_terminate) if in_main_thread else None
    try:
        return args.handler(args)
    except TrainingInterrupted as exc:
        print(f"\n{exc}\n{resume_hint(run_dir)}", file=sys.stderr)
        return 143 if exc.signal == signal.SIGTERM else 130
    except KeyboardInterrupt as exc:
        resumable = args.command in ("train", "demo") and run_dir and RunDir(run_dir).checkpoint("last").exists()
        hint = f"; the files written so far are complete\n{resume_hint(run_dir)}" if resumable else ""
        terminated = isinstance(exc, Terminated)
        print(f"\n{'terminated' if terminated else 'interrupted'}{hint}", file=sys.stderr)
        return 143 if terminated else 130
    except TrainingDiverged as exc:
        print(f"fastconv: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fastconv {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except _image_bomb() as exc:
        # Pillow refuses an image whose pixel count could exhaust memory.
        print(f"fastconv {args.command}: error: an image is too large to open: {exc}", file=sys.stderr)
        return 2
    except (UsageError, DataError, CheckpointError, ValueError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"fastconv {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        if previous_terminate is not None:
            signal.signal(signal.SIGTERM, previous_terminate)

