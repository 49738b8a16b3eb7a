"""Build the compiled kernels of fastconv.

Only the extension list lives here; project metadata is in pyproject.toml.

Switches (environment variables):
  FASTCONV_OPENMP=0     build without OpenMP even if the compiler has it
  FASTCONV_DEBUG=1      -O1 -g, assertions on
  FASTCONV_SANITIZE=1   -fsanitize=address,undefined (run with the ASan runtime preloaded)
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
