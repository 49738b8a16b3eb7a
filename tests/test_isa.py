"""The instruction-set variants of the compiled kernels' hot loops: forcing one
with fastconv.set_isa or FASTCONV_ISA, refusing what the CPU or the build
lacks, and what build_info reports. (The kernel and fuzz tests run once per
variant: the every_isa marker of tests/conftest.py.)
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import _kernels

NAMES = ("avx512", "avx2", "baseline")


@pytest.fixture(autouse=True)
def restore_isa():
    previous = fastconv.get_isa()
    yield
    fastconv.set_isa(previous)


def test_build_info_reports_the_variant_in_use_and_the_supported_ones():
    info = fastconv.build_info()
    assert info["isa"] == fastconv.get_isa()
    assert info["isa_supported"] == list(_kernels.isa_supported())
    assert info["isa_compiled"] == list(_kernels.isa_compiled())
    assert set(info["isa_supported"]) <= set(info["isa_compiled"]) <= set(NAMES)
    assert "baseline" in info["isa_supported"]
    # The default is the one target_clones picked: AVX-512 where the CPU has
    # it, else baseline (or AVX2 on a Haswell, which this test cannot tell).
    assert fastconv.set_isa(None) == info["isa"]
    if "avx512" in info["isa_supported"]:
        assert fastconv.get_isa() == "avx512"
    elif "avx2" not in info["isa_supported"]:
        assert fastconv.get_isa() == "baseline"


def test_a_normal_build_has_no_planted_fault():
    assert fastconv.build_info()["planted_fault"] is None


@pytest.mark.parametrize("name", _kernels.isa_supported())
def test_each_supported_variant_can_be_forced(name):
    fastconv.set_isa("baseline")
    assert fastconv.set_isa(name) == "baseline"
    assert fastconv.get_isa() == name
    assert fastconv.build_info()["isa"] == name


@pytest.mark.parametrize("name", ["sse2", "AVX2", "avx-512", "", 2, b"avx2", ["avx2"]])
def test_an_unknown_variant_is_refused_naming_it(name):
    before = fastconv.get_isa()
    with pytest.raises(ValueError, match="isa must be one of") as error:
        fastconv.set_isa(name)
    assert repr(name) in str(error.value)
    assert fastconv.get_isa() == before


def test_a_variant_the_cpu_or_build_lacks_is_refused_naming_it():
    missing = [n for n in NAMES if n not in _kernels.isa_supported()]
    if not missing:
        pytest.skip("this CPU runs every variant")
    before = fastconv.get_isa()
    for name in missing:
        with pytest.raises(ValueError, match=f"isa '{name}' is not (supported by this CPU|in this build)"):
            fastconv.set_isa(name)
        assert fastconv.get_isa() == before


def test_the_switch_reaches_the_c_kernels():
    """The baseline variant has no FMA and the others contract multiply-adds,
    so a float32 convolution's last bits tell them apart."""
    if len(_kernels.isa_supported()) < 2:
        pytest.skip("this CPU runs the baseline variant only")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    results = {}
    for name in ("baseline", _kernels.isa_supported()[0]):
        fastconv.set_isa(name)
        results[name] = _kernels.conv2d_forward(x, w, None, 1, 1)[0]
    widest, baseline = results[_kernels.isa_supported()[0]], results["baseline"]
    np.testing.assert_allclose(widest, baseline, rtol=1e-4, atol=1e-4)
    assert not np.array_equal(widest, baseline)


def _python(code, isa):
    env = dict(os.environ, FASTCONV_ISA=isa)
    # From the tests' folder, so that the installed fastconv is imported, not
    # the checkout's source folder.
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", list(_kernels.isa_supported()) + ["auto"])
def test_fastconv_isa_forces_a_variant_when_the_kernels_load(name):
    result = _python("import fastconv; print(fastconv.get_isa())", name)
    assert result.returncode == 0, result.stderr
    fastconv.set_isa(None)
    expected = fastconv.get_isa() if name == "auto" else name
    assert result.stdout.split() == [expected]


def test_a_bad_fastconv_isa_fails_the_kernels_loading_naming_it():
    result = _python("import fastconv; fastconv.get_isa()", "avx1024")
    assert result.returncode != 0
    assert "ValueError: FASTCONV_ISA='avx1024': isa must be one of" in result.stderr
