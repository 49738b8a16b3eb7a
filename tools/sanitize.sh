#!/usr/bin/env bash
# Build the compiled kernels with AddressSanitizer (LeakSanitizer included) and
# UndefinedBehaviorSanitizer in a throw-away copy of the source tree, and run the
# kernel, layer and fuzz tests against that build, the kernel and fuzz tests once
# per instruction-set variant this CPU runs. Fails on any sanitizer report (a
# leak included) and on any test failure; the in-place extension of the working
# tree is never touched.
#
#   tools/sanitize.sh                       # the default test selection
#   tools/sanitize.sh -k conv               # extra arguments go to pytest
#   KEEP_SANITIZE_TREE=1 tools/sanitize.sh  # keep the copy for a post-mortem
#
# Needs gcc (with libasan and libubsan), and Python with numpy, scipy, Cython,
# setuptools, pytest and hypothesis: the project's build and test requirements.
set -euo pipefail

source_tree="$(cd "$(dirname "$0")/.." && pwd)"
tests=(tests/test_kernels.py tests/test_layers.py tests/test_fuzz.py)
# The interpreter itself, not a wrapper script (pyenv shims, launchers) whose
# shell and helper processes would otherwise run under the sanitizer runtime.
python="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"

asan_runtime="$(gcc -print-file-name=libasan.so)"
if [[ "$asan_runtime" != /* || ! -e "$asan_runtime" ]]; then
    echo "sanitize: gcc has no AddressSanitizer runtime (libasan); on Debian: apt-get install gcc" >&2
    exit 2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/fastconv-sanitize.XXXXXX")"
if [[ "${KEEP_SANITIZE_TREE:-0}" == 1 ]]; then
    echo "sanitize: the sanitized tree is kept in $work"
else
    trap 'rm -rf "$work"' EXIT
fi
tree="$work/tree"
mkdir -p "$tree"

# Copy the sources without any build product: tracked and untracked files that
# git does not ignore (so work in progress is checked too), or, outside a git
# checkout, everything but the build folders and compiled extensions.
if git -C "$source_tree" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$source_tree" && git ls-files -z --cached --others --exclude-standard) |
        (cd "$source_tree" && tar --null --ignore-failed-read -T - -cf -) |
        tar -xf - -C "$tree"
else
    (cd "$source_tree" && tar --exclude=./build --exclude='*.so' --exclude=./.git \
        --exclude=./fastconv/_kernels.c -cf - .) | tar -xf - -C "$tree"
fi

started=$SECONDS
if [[ -n "${FASTCONV_PLANT:-}" ]]; then
    echo "sanitize: building in the planted fault FASTCONV_PLANT=$FASTCONV_PLANT: this run must fail"
fi
echo "sanitize: building the kernels with -fsanitize=address,undefined in $tree"
if ! (cd "$tree" && FASTCONV_SANITIZE=1 "$python" setup.py -q build_ext --inplace) >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    echo "sanitize: the sanitized build failed" >&2
    exit 2
fi
built=$SECONDS
echo "sanitize: built in $((built - started)) s"

# The tests must import the sanitized copy, not an installed or editable fastconv.
export PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}"
# Only the kernels are instrumented, so the runtime is preloaded ahead of the
# interpreter. A huge allocation must fail as it does in an ordinary process
# (NumPy raises MemoryError) rather than abort the run.
# Leaks: LeakSanitizer checks at exit that every block still allocated is
# reachable. PYTHONMALLOC=malloc puts Python's objects on the heap it scans:
# with Python's own allocator they sit in arenas it does not scan, and every
# block they point to (NumPy's array data) would look lost.
# tools/lsan.supp lists the allocations of Python and NumPy that are lost on
# purpose, each with why.
sanitized=(env "LD_PRELOAD=$asan_runtime${LD_PRELOAD:+ $LD_PRELOAD}"
           "ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1"
           "LSAN_OPTIONS=suppressions=$tree/tools/lsan.supp:print_suppressions=1"
           "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1"
           "PYTHONMALLOC=malloc")
report_pattern='ERROR: (Address|Leak)Sanitizer|SUMMARY: (Address|UndefinedBehavior)Sanitizer|runtime error:'
# Importing NumPy 2.x loses 53 allocations that tools/lsan.supp suppresses.
suppressed_limit=100

# First prove that the sanitizers are live in this build and that the tests
# import it: a planted heap overflow and a planted misaligned load, each passed
# straight to a C kernel, must be reported, and so must blocks malloc'd through
# ctypes and dropped (a leak that no suppression may hide).
cat >"$work/canary.py" <<'EOF'
import ctypes
import os
import sys

import numpy as np

import fastconv
from fastconv import _kernels

tree = os.path.realpath(os.environ["PYTHONPATH"].split(os.pathsep)[0])
for module in (fastconv, _kernels):
    if not os.path.realpath(module.__file__).startswith(tree + os.sep):
        sys.exit(f"sanitize: {module.__name__} was imported from {module.__file__}, not from {tree}")
if sys.argv[1] == "leak":
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    for _ in range(8):
        libc.malloc(4096)
    sys.exit(0)
relu = ctypes.CDLL(_kernels.__file__).fc_relu_forward_f64
if sys.argv[1] == "overflow":
    y, x, count = np.empty(4), np.ones(64), 64
    y_at, x_at = y.ctypes.data, x.ctypes.data
else:
    y, x, count = np.zeros(8 * 9, np.uint8), np.zeros(8 * 9, np.uint8), 8
    y_at, x_at = y.ctypes.data + 1, x.ctypes.data + 1
relu(ctypes.c_void_p(y_at), ctypes.c_void_p(x_at), ctypes.c_int64(count))
EOF
for canary in overflow misaligned leak; do
    (cd "$tree" && "${sanitized[@]}" "$python" "$work/canary.py" "$canary") >"$work/canary.log" 2>&1 || true
    if ! grep -Eq "$report_pattern" "$work/canary.log"; then
        cat "$work/canary.log" >&2
        echo "sanitize: the planted $canary error went unreported: the sanitizers are not active" >&2
        exit 2
    fi
done
echo "sanitize: the planted overflow, misaligned load and leak are all reported"
variants="$(cd "$tree" && "${sanitized[@]}" "$python" -c 'from fastconv import _kernels; print(" ".join(_kernels.isa_supported()))' 2>/dev/null)"
echo "sanitize: running the tests; the kernel and fuzz tests once per variant: $variants"

# --capture=sys: pytest captures Python's streams only, so a report that the
# runtime writes to file descriptor 2 reaches the log even if it ends the process.
set +e
(cd "$tree" && "${sanitized[@]}" "$python" -m pytest -p no:cacheprovider --capture=sys -q \
    "${tests[@]}" "$@") 2>&1 | tee "$work/pytest.log"
status=${PIPESTATUS[0]}
set -e
finished=$SECONDS

echo "sanitize: tests ran in $((finished - built)) s, $((finished - started)) s in all"
if grep -Eq "$report_pattern" "$work/pytest.log"; then
    echo "sanitize: FAILED: the sanitizers reported errors:" >&2
    grep -E -A14 "$report_pattern" "$work/pytest.log" | head -60 >&2
    exit 1
fi
# The suppressions name CPython's allocators (tools/lsan.supp says why), so they
# would also hide Python objects leaked call after call by the wrappers: allow
# only about what importing NumPy loses.
suppressed="$(awk '/^Suppressions used:/ {on = 1; next} on && $1 ~ /^[0-9]+$/ {n += $1} /^-+$/ {on = 0} END {print n + 0}' "$work/pytest.log")"
echo "sanitize: $suppressed allocations lost by Python and NumPy themselves (tools/lsan.supp)"
if (( suppressed > suppressed_limit )); then
    echo "sanitize: FAILED: the suppressions of tools/lsan.supp matched $suppressed allocations," \
         "more than the $suppressed_limit that Python and NumPy lose by themselves: a leak of Python objects" >&2
    grep -A8 '^Suppressions used:' "$work/pytest.log" >&2
    exit 1
fi
if [[ $status != 0 ]]; then
    echo "sanitize: FAILED: pytest exited with status $status; no sanitizer report" >&2
    exit "$status"
fi
echo "sanitize: passed, no sanitizer report"
