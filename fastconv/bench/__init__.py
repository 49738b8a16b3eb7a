"""The benchmark harness that ``fastconv bench`` and ``benchmarks/`` run."""
from fastconv.bench.harness import *  # noqa: F401,F403
from fastconv.bench.harness import __all__  # noqa: F401
