"""Choice of kernel backend: the compiled C kernels or their pure-NumPy twin.

Layers call ``backend.current()`` for every kernel, so switching with
``set_backend`` takes effect on the next forward pass of any model.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fastconv import reference

if TYPE_CHECKING:
    from types import ModuleType

_BACKENDS = ("compiled", "numpy")
_current: ModuleType | None = None


def _compiled() -> ModuleType:
    return importlib.import_module("fastconv._kernels")


def set_backend(name: str) -> None:
    """Select 'compiled' (C kernels, the default) or 'numpy' (fastconv.reference)."""
    global _current
    if name == "numpy":
        _current = reference
    elif name == "compiled":
        _current = _compiled()
    else:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")


def get_backend() -> str:
    """Name of the backend in use: 'compiled' or 'numpy'."""
    return current().BACKEND_NAME


def current() -> ModuleType:
    """The module holding the kernels in use."""
    if _current is None:
        set_backend("compiled")
    assert _current is not None  # set_backend just set it
    return _current
