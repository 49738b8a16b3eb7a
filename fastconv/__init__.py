"""fastconv: a convolutional-network engine for the CPU.

C kernels under a NumPy layer API, a training loop, and tools to look inside
the networks it trains (``fastconv.analysis``). The subpackages, from the
bottom up (docs/architecture.md): the kernels (``backend``, ``reference``),
``nn``, then ``optim``, ``data``, ``train`` and ``models``, then
``analysis``, then ``cli``.
"""
import sys as _sys
from pathlib import Path as _Path


def _refuse_unbuilt_source_tree():
    """Stop with a sentence, not a missing-module error on the first forward
    pass, when Python picked up the source checkout instead of the installed
    package (a script run from the checkout's root) and the kernels were never
    compiled there."""
    package = _Path(__file__).resolve().parent
    in_checkout = (package.parent / "setup.py").is_file() and (package.parent / "src_c").is_dir()
    compiled = [path for path in package.glob("_kernels*") if path.suffix in (".so", ".pyd")]
    if in_checkout and not compiled:
        raise ImportError(
            f"fastconv was imported from its source folder {package}, where its C kernels are not compiled: "
            "run your script from another folder to use the installed fastconv, or build the checkout "
            f"in place with `pip install -e {package.parent}`"
        )


_refuse_unbuilt_source_tree()

from fastconv import models, optim
from fastconv._runtime import build_info, get_isa, get_num_threads, set_isa, set_num_threads
from fastconv.backend import get_backend, set_backend
from fastconv.models.weights import load_weights, save_weights
from fastconv.nn import init, layers, losses, model
from fastconv.nn.graph import Graph
from fastconv.nn.model import Model, Sequential, load, save

# The first releases kept layers, losses, init and model at the top level:
# `from fastconv.losses import CrossEntropyLoss` keeps working.
for _name, _module in (("layers", layers), ("losses", losses), ("init", init), ("model", model)):
    _sys.modules[f"{__name__}.{_name}"] = _module

__version__ = "0.1.0"

__all__ = [
    "build_info", "get_num_threads", "set_num_threads", "get_isa", "set_isa", "get_backend", "set_backend",
    "Model", "Sequential", "Graph", "save", "load", "load_weights", "save_weights",
    "layers", "losses", "optim", "models", "init",
]
