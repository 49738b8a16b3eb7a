"""Importing fastconv from an uncompiled source checkout says what happened and what to do."""
import shutil
import subprocess
import sys
from pathlib import Path

import fastconv

PACKAGE = Path(fastconv.__file__).resolve().parent


def _checkout_without_kernels(root):
    """A copy of the package's Python files beside a setup.py and src_c/, as in a fresh clone."""
    shutil.copytree(PACKAGE, root / "fastconv",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "_kernels.c", "__pycache__"))
    (root / "setup.py").write_text("# the checkout's build script\n")
    (root / "src_c").mkdir()
    return root


def test_unbuilt_checkout_fails_at_import_with_a_sentence(tmp_path):
    root = _checkout_without_kernels(tmp_path)
    done = subprocess.run([sys.executable, "-c", "import fastconv"], cwd=root, capture_output=True, text=True)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fastconv was imported from its source folder")
    assert str(root / "fastconv") in last
    assert "pip install -e" in last


def test_an_installed_package_is_not_mistaken_for_a_checkout(tmp_path):
    # The same files without a setup.py beside them import (as site-packages does).
    shutil.copytree(PACKAGE, tmp_path / "fastconv",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "_kernels.c", "__pycache__"))
    done = subprocess.run([sys.executable, "-c", "import fastconv; print(fastconv.__file__)"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "fastconv") in done.stdout
