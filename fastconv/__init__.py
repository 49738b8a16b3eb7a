"""fastconv: a convolutional-network engine for the CPU.

C kernels under a NumPy layer API, a training loop, and tools to look inside
the networks it trains (``fastconv.analysis``).
"""
from ._runtime import build_info, get_num_threads, set_num_threads
from .backend import get_backend, set_backend
from .model import Sequential, load
from . import layers, losses, optim, models, init
from .weights import load_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    "build_info", "get_num_threads", "set_num_threads", "get_backend", "set_backend",
    "Sequential", "load", "load_weights", "save_weights", "layers", "losses", "optim", "models", "init",
]
