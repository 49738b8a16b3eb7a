"""docs/architecture.md matches the code: every file it names exists, and
every module of the package and every C source is named there."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PATH = re.compile(r"`((?:fastconv|analysis|src_c|tests|tools|benchmarks)/[\w/.]*)`")

pytestmark = pytest.mark.skipif(not DOC.is_file(), reason="needs the source checkout (docs/)")


def _named():
    return set(PATH.findall(DOC.read_text()))


def test_every_path_the_page_names_exists():
    missing = sorted(p for p in _named() if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_every_module_and_c_source_is_on_the_page():
    named = _named()
    folders = {p.rstrip("/") for p in named}
    sources = [p for p in (ROOT / "fastconv").rglob("*.py")] + list((ROOT / "analysis").rglob("*.py"))
    sources += [p for p in (ROOT / "src_c").iterdir() if p.suffix in (".h", ".inc", ".c")]
    sources += [ROOT / "fastconv" / "_kernels.pyx", ROOT / "fastconv" / "_kernels.pxd"]
    unnamed = []
    for path in sources:
        rel = path.relative_to(ROOT).as_posix()
        if path.name in ("__init__.py", "__main__.py") and rel not in named:
            continue  # a package is named by its folder
        if rel in named:
            continue
        # analysis/ is described a folder at a time.
        if rel.startswith("analysis/") and path.parent.relative_to(ROOT).as_posix() in folders:
            continue
        unnamed.append(rel)
    assert not unnamed, f"docs/architecture.md does not say where these belong: {sorted(unnamed)}"
