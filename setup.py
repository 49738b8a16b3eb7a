"""Build the compiled kernels of fastconv.

Only the extension list lives here; project metadata is in pyproject.toml.

Switches (environment variables):
  FASTCONV_OPENMP=0     build without OpenMP even if the compiler has it
  FASTCONV_DEBUG=1      -O1 -g, assertions on
  FASTCONV_SANITIZE=1   -fsanitize=address,undefined (run with the ASan runtime preloaded)
  FASTCONV_PLANT=name   test only: build in a known fault (winograd, pool or leak) to
                        check that the tests catch it; needs FASTCONV_DEBUG=1 or
                        FASTCONV_SANITIZE=1, so an optimized build never has one
                        (docs/reliability.md, "Planted faults")
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return omp_get_max_threads() > 0 ? 0 : 1;
}
"""


def _env_flag(name, default="0"):
    return os.environ.get(name, default).strip().lower() not in ("", "0", "false", "no", "off")


# Faults that FASTCONV_PLANT builds into the kernels, each behind its own macro
# (FASTCONV_PLANT_<NAME>) in src_c/: what the tests must catch.
PLANTED_FAULTS = {
    "winograd": "a wrong coefficient in the Winograd filter transform (winograd.inc)",
    "pool": "an off-by-one in average pooling's backward pass (pooling.inc)",
    "leak": "one buffer of linear_forward never freed, every call (linear.inc)",
}


def planted_fault():
    """The fault FASTCONV_PLANT asks for, or None; refused outside debug builds."""
    name = os.environ.get("FASTCONV_PLANT", "").strip().lower()
    if name in ("", "0", "none", "off"):
        return None
    if name not in PLANTED_FAULTS:
        sys.exit(f"FASTCONV_PLANT must be one of {', '.join(PLANTED_FAULTS)}, got {name!r}")
    if not (_env_flag("FASTCONV_DEBUG") or _env_flag("FASTCONV_SANITIZE")):
        sys.exit("FASTCONV_PLANT builds a fault in on purpose, for checking the tests: "
                 "it needs FASTCONV_DEBUG=1 or FASTCONV_SANITIZE=1")
    return name


def compiler_has_openmp(compiler):
    """Compile and link a tiny OpenMP program with the compiler setuptools will use."""
    tmp = tempfile.mkdtemp(prefix="fastconv-omp-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=["-fopenmp"])
        except Exception:
            return False
        return subprocess.run([os.path.join(tmp, "probe")], capture_output=True).returncode == 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """Adds OpenMP, debug and sanitizer flags once the real compiler is known."""

    def build_extensions(self):
        unix = self.compiler.compiler_type == "unix"
        compile_args, link_args, macros = [], [], []
        if unix:
            if _env_flag("FASTCONV_DEBUG") or _env_flag("FASTCONV_SANITIZE"):
                # -UNDEBUG: Python's own CFLAGS define NDEBUG, which would
                # turn the kernels' asserts off.
                compile_args += ["-O1", "-g", "-fno-omit-frame-pointer", "-UNDEBUG"]
                macros.append(("FASTCONV_DEBUG", "1"))
            else:
                compile_args += ["-O3", "-fno-math-errno"]
                macros.append(("NDEBUG", "1"))
            if _env_flag("FASTCONV_SANITIZE"):
                san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
                compile_args += san
                link_args += san
        plant = planted_fault()
        if plant:
            macros += [("FASTCONV_PLANT", f'"{plant}"'), (f"FASTCONV_PLANT_{plant.upper()}", "1")]
            print(f"fastconv: PLANTED FAULT, for testing the tests only: {PLANTED_FAULTS[plant]}",
                  file=sys.stderr)
        use_openmp = _env_flag("FASTCONV_OPENMP", "1") and unix and compiler_has_openmp(self.compiler)
        if use_openmp:
            compile_args.append("-fopenmp")
            link_args.append("-fopenmp")
            macros.append(("FASTCONV_OPENMP", "1"))
        print(f"fastconv: building with OpenMP {'on' if use_openmp else 'off'}", file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + compile_args
            ext.extra_link_args = list(ext.extra_link_args or []) + link_args
            ext.define_macros = list(ext.define_macros or []) + macros
        super().build_extensions()


extensions = [
    Extension(
        "fastconv._kernels",
        sources=["fastconv/_kernels.pyx"] + sorted(glob.glob("src_c/*.c")),
        # The kernels are written once in template bodies (.inc) and headers
        # included by each .c file: editing either must rebuild them.
        depends=sorted(glob.glob("src_c/*.h") + glob.glob("src_c/*.inc")),
        include_dirs=["src_c", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
