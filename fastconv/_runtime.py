"""What was compiled, how many threads the kernels use, and which
instruction-set variant of their hot loops runs.

Two thread pools do the work: OpenMP inside the C kernels, and NumPy's BLAS
for the NumPy backend.
``set_num_threads`` sets both, so a benchmark or a determinism test controls
the machine with one call.

The hot loops are compiled for AVX-512, AVX2 and baseline x86-64 (GCC on
x86-64; baseline only elsewhere); AVX-512 runs where the CPU has it, else
baseline (AVX2 on a Haswell only, as before; docs/engine.md says why);
``set_isa`` or the environment variable ``FASTCONV_ISA`` (read when the
kernels load) forces another, for tests and benchmarks.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import threadpoolctl

from fastconv import backend

if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any


def _kernels() -> ModuleType:
    return backend._compiled()


def allowed_cores() -> int:
    """The cores this process may run on: its CPU affinity where the system
    has one (``taskset`` or an MPI launcher may have narrowed it), else all.
    More threads than these would only take turns on them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _resolve(n: int | None) -> int:
    if n is None or n == -1:
        return allowed_cores()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive int, None or -1, got {n!r}")
    return n


_blas_limits = None


def set_num_threads(n: int | None = None) -> int:
    """Use n threads in the C kernels and in BLAS (None or -1: all the cores
    this process may run on)."""
    global _blas_limits
    n = _resolve(n)
    _kernels().set_openmp_threads(n)
    _blas_limits = threadpoolctl.threadpool_limits(limits=n, user_api="blas")
    return n


def get_num_threads() -> int:
    """Threads the C kernels use (OpenMP), 1 when built without OpenMP."""
    return _kernels().get_openmp_threads()


def set_isa(name: str | None) -> str:
    """Run the kernels' hot loops in variant `name`: "avx512", "avx2",
    "baseline", or None / "auto" for the default (see the module docstring).
    Returns the previous one. A variant this CPU or build lacks raises
    ValueError and changes nothing."""
    return _kernels().set_isa(name)


def get_isa() -> str:
    """The instruction-set variant the kernels' hot loops run."""
    return _kernels().get_isa()


def build_info() -> dict[str, Any]:
    """A dict describing the build: compiled kernels, OpenMP, threads, BLAS."""
    k = _kernels()
    blas = [
        {key: info.get(key) for key in ("internal_api", "version", "num_threads", "filepath", "architecture")}
        for info in threadpoolctl.threadpool_info() if info.get("user_api") == "blas"
    ]
    return {
        "backend": backend.get_backend(),
        "compiled_kernels": list(k.KERNELS),
        "openmp": bool(k.openmp_enabled()),
        "num_threads": k.get_openmp_threads(),
        "blas": blas,
        "gemm": k.GEMM,
        "isa": k.get_isa(),
        "isa_supported": list(k.isa_supported()),
        "isa_compiled": list(k.isa_compiled()),
        "planted_fault": k.PLANTED_FAULT,
    }
