"""The layering of the package, read from its source with ast:

    kernels <- nn <- optim / data / train / models / bench <- analysis <- cli

Only the command line parses arguments, nothing below it imports it, the
engine never imports the analysis tools, and one module knows the names of
the files in a run folder.
"""
import ast
from pathlib import Path

import pytest

from fastconv.train import rundir

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ("nn", "optim", "data", "train", "models", "bench")
RUN_FILES = [rundir.CONFIG, rundir.RECIPE, rundir.HISTORY_JSON, rundir.HISTORY_CSV, rundir.LAST_CHECKPOINT,
             rundir.BEST_CHECKPOINT, rundir.FINAL_MODEL, rundir.BEST_MODEL, rundir.EVAL, rundir.REPORT,
             *rundir.FIGURES.values()]


def _modules():
    """{module name: (path relative to the repository, parsed tree)} of fastconv and fastconv.analysis."""
    found = {}
    for top, package in (("fastconv", "fastconv"), ("analysis", "fastconv.analysis")):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT / top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            found[name] = (path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), filename=str(path)))
    return found


MODULES = _modules()


def _imports(name, tree):
    """Every module name a module imports, with each 'from M import x' also as M.x."""
    is_package = MODULES[name][0].endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _is(imported, module):
    return imported == module or imported.startswith(module + ".")


def _violations(modules, forbidden):
    return sorted(f"{MODULES[name][0]} imports {imported}"
                  for name in modules for imported in _imports(name, MODULES[name][1])
                  if any(_is(imported, bad) for bad in forbidden))


def test_the_tree_was_found():
    assert "fastconv.cli" in MODULES and "fastconv.train.rundir" in MODULES
    assert "fastconv.analysis.report.page" in MODULES and "fastconv.nn.model" in MODULES


def test_only_the_command_line_parses_arguments():
    below = [name for name in MODULES if not _is(name, "fastconv.cli")]
    assert _violations(below, ("argparse", "fastconv.cli")) == []


def test_the_engine_does_not_import_the_analysis_tools():
    engine = [name for name in MODULES if any(_is(name, f"fastconv.{part}") for part in ENGINE)]
    assert engine and _violations(engine, ("fastconv.analysis", "analysis")) == []


def test_nn_imports_nothing_above_it():
    nn = [name for name in MODULES if _is(name, "fastconv.nn")]
    above = [f"fastconv.{part}" for part in ("optim", "data", "train", "models", "bench", "analysis", "cli")]
    assert nn and _violations(nn, above) == []


def _docstrings(tree):
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, nodes) and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)}


def _literals(tree):
    """The string constants of a module outside its docstrings, f-strings' text included."""
    skip = _docstrings(tree)
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip]


@pytest.mark.parametrize("name", sorted(RUN_FILES))
def test_only_rundir_knows_the_names_of_a_runs_files(name):
    owner = "fastconv.train.rundir"
    found = sorted(f"{path}:{node.lineno}" for module, (path, tree) in MODULES.items() if module != owner
                   for node in _literals(tree) if name in node.value)
    assert found == [], f"{name!r} is spelled out outside fastconv/train/rundir.py"
    assert any(node.value == name for node in _literals(MODULES[owner][1]))


def _patches_and_peeks(tree):
    """Assignments to a ``forward``/``backward`` attribute (replacing a layer's
    pass on the instance) and calls of ``vars()`` (reading an instance's
    private state), with their line numbers."""
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        found += [f"line {node.lineno}: assigns .{t.attr}" for t in targets
                  if isinstance(t, ast.Attribute) and t.attr in ("forward", "backward")]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "vars":
            found.append(f"line {node.lineno}: calls vars()")
    return found


def test_no_layer_is_patched_or_peeked_into():
    # Attribution rules and observers use the hooks (Layer.register_*_hook, backward rules), not
    # replaced methods; fusion goes through fastconv.nn.fusion, not another layer's private state.
    found = {path: hits for path, tree in MODULES.values() if (hits := _patches_and_peeks(tree))}
    assert not found, found


def test_the_patch_finder_finds_patches():
    tree = ast.parse("layer.backward = rule\nstate = vars(layer)\nself.value = 1\n")
    assert _patches_and_peeks(tree) == ["line 1: assigns .backward", "line 2: calls vars()"]
