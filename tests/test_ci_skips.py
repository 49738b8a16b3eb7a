"""CI's rule that a skip is a failure unless the machine, not the set-up, is
the reason (tests/ci_skips.py), checked on a throw-away test file."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SAMPLE = '''
import pytest

def test_needs_a_browser():
    pytest.skip("needs a Chromium browser and its driver")

def test_hardware():
    pytest.skip("this CPU runs every variant")

@pytest.mark.skipif(True, reason="PyTorch is not installed")
def test_marked():
    pass

def test_runs():
    assert True
'''


def run_sample(tmp_path, no_skips):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    env.pop("FASTCONV_NO_SKIPS", None)
    if no_skips:
        env["FASTCONV_NO_SKIPS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "ci_skips",
                           "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("no_skips", [False, True])
def test_a_skip_fails_only_when_ci_asks_and_the_machine_is_not_the_reason(tmp_path, no_skips):
    done = run_sample(tmp_path, no_skips)
    summary = done.stdout.strip().splitlines()[-1]
    if no_skips:
        assert done.returncode == 1, done.stdout
        assert "1 failed, 1 passed, 1 skipped, 1 error" in summary, summary  # a skipif fails at set-up
        assert "CI is set up to run this test" in done.stdout and "Chromium" in done.stdout
        assert "PyTorch is not installed" in done.stdout
    else:
        assert done.returncode == 0, done.stdout
        assert "1 passed, 3 skipped" in summary, summary
