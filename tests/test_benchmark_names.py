"""The benchmark suites (benchmarks/, not run by the quick suite) call the
harness as ``bench.NAME``: every such name must be one fastconv.bench exports,
or ``pytest benchmarks/`` fails where nobody looks."""
import ast
from pathlib import Path

import pytest

from fastconv import bench

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def names_used(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "bench"}


@pytest.mark.skipif(not BENCHMARKS.is_dir(), reason="needs the source checkout (benchmarks/)")
def test_every_name_the_benchmarks_use_is_exported():
    used = {name: path.name for path in sorted(BENCHMARKS.glob("*.py")) for name in names_used(path)}
    assert used, "no bench.NAME found: the scan is broken"
    missing = {name: where for name, where in used.items() if name not in bench.__all__}
    assert not missing, missing
