"""The layout of src_c/: every header stands alone, template bodies stay in .c files.

A `.h` file must compile by itself (its own includes, no include order to
respect, no REAL to define), with and without OpenMP. A `.inc` file is a body
written in REAL and FC_NAME, instantiated once per float type: only the
per-type `.c` files may include it, never a header or another `.inc`.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SRC_C = Path(__file__).resolve().parents[1] / "src_c"
HEADERS = sorted(SRC_C.glob("*.h"))
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.MULTILINE)


def _compiler():
    cc = os.environ.get("CC", "cc").split()
    if shutil.which(cc[0]) is None:
        pytest.skip(f"no C compiler ({cc[0]!r} not found)")
    return cc


def _compile(cc, header, extra=()):
    return subprocess.run(
        cc + list(extra) + ["-fsyntax-only", "-x", "c", f"-I{SRC_C}", str(header)],
        capture_output=True,
        text=True,
    )


def _has_openmp(cc, tmp_path):
    probe = tmp_path / "probe.c"
    probe.write_text("#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
    return _compile(cc, probe, ["-fopenmp"]).returncode == 0


def test_src_c_has_headers_and_template_bodies():
    assert SRC_C.is_dir(), SRC_C
    assert HEADERS
    assert sorted(SRC_C.glob("*.inc"))


@pytest.mark.parametrize("header", HEADERS, ids=lambda p: p.name)
def test_header_compiles_on_its_own(header, tmp_path):
    cc = _compiler()
    variants = [[]]
    if _has_openmp(cc, tmp_path):
        variants.append(["-fopenmp"])
    for extra in variants:
        result = _compile(cc, header, extra)
        assert result.returncode == 0, (
            f"{' '.join(cc + extra)} -fsyntax-only -x c -I{SRC_C} {header.name} failed:\n"
            f"{result.stderr}{result.stdout}"
        )


def test_inc_files_are_included_only_from_c_files():
    offenders = []
    included = set()
    for path in sorted(SRC_C.iterdir()):
        if path.suffix not in (".c", ".h", ".inc"):
            continue
        for name in INCLUDE.findall(path.read_text()):
            if not name.endswith(".inc"):
                continue
            included.add(name)
            if path.suffix != ".c":
                offenders.append(f"{path.name} includes {name}")
    assert not offenders, "template bodies (.inc) included outside the .c files: " + "; ".join(offenders)
    unused = {p.name for p in SRC_C.glob("*.inc")} - included
    assert not unused, f".inc files that no .c file includes: {sorted(unused)}"
