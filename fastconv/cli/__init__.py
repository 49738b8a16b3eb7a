"""The ``fastconv`` command line: the only layer that parses arguments.

Each command lives in its own module (``commands`` for train, evaluate, demo,
info and bench; ``viz``, ``attack``, ``report``, ``imagenet``) and calls the
package's public API; ``main`` dispatches and turns the errors a user can
cause into one line on stderr.
"""
from fastconv.cli.argtypes import UsageError
from fastconv.cli.commands import build_parser, main
from fastconv.data.datasets import limited

__all__ = ["main", "build_parser", "UsageError", "limited"]
