#!/usr/bin/env bash
# Build rnncore's extension with AddressSanitizer and UndefinedBehaviorSanitizer into a venv of its
# own and run the test suite under them; every sanitizer report fails the run.
#
#   tools/sanitize.sh [pytest arguments]        (default: the whole suite, -q)
#
# Environment: PYTHON (base interpreter, default python3), SANITIZE_VENV (default
# /tmp/rnncore-sanitize; made with --system-site-packages, so packages of the base interpreter,
# torch for instance, are used when present), SANITIZE_LOG (default $SANITIZE_VENV/sanitize.log),
# SANITIZE_EXTRA (more packages for the optional tests, e.g. "torch==2.13.0 keras onnx onnxruntime").
# Needs GCC (its libasan). Python itself leaks by design, so leak detection is off. Tests that
# measure time or resident memory skip themselves here (RNNCORE_SANITIZED=1): the sanitizers'
# quarantine and instrumentation make those numbers meaningless.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
venv="${SANITIZE_VENV:-/tmp/rnncore-sanitize}"
log="${SANITIZE_LOG:-$venv/sanitize.log}"
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -g"

[ -x "$venv/bin/python" ] || "$python" -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" \
    "scipy-openblas32>=0.3.34,<0.3.35" numpy pytest hypothesis ${SANITIZE_EXTRA:-}
"$venv/bin/python" -m pip install -q --no-build-isolation --no-deps --force-reinstall \
    -Ccmake.define.CMAKE_CXX_FLAGS="$flags" -Cbuild-dir="$venv/build" "$repo"

libasan="$(${CXX:-g++} -print-file-name=libasan.so)"
[ -f "$libasan" ] || { echo "sanitize.sh: libasan not found (GCC's libasan is needed)" >&2; exit 2; }
# with libstdc++ loaded up front, ASan finds the real __cxa_throw (Python does not link libstdc++)
libstdcxx="$(${CXX:-g++} -print-file-name=libstdc++.so)"
mkdir -p "$(dirname "$log")"

# --capture=sys: the sanitizers write to file descriptor 2, which pytest then leaves alone
set +e
(
  cd "$venv"  # not the repo: import the sanitized build, not python/rnncore
  export LD_PRELOAD="$libasan $libstdcxx" RNNCORE_SANITIZED=1
  export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1"
  export UBSAN_OPTIONS="print_stacktrace=1"
  "$venv/bin/python" -c "import rnncore, sys; assert rnncore.__file__.startswith('$venv'), rnncore.__file__"
  "$venv/bin/python" -m pytest -p no:cacheprovider --capture=sys "${@:--q}" "$repo/tests"
) 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

if grep -q -E "runtime error:|ERROR: AddressSanitizer|AddressSanitizer: CHECK failed" "$log"; then
  echo "sanitize.sh: sanitizer reports (first ones):"
  grep -E -A 12 "runtime error:|ERROR: AddressSanitizer|AddressSanitizer: CHECK failed" "$log" | head -n 80
  exit 1
fi
echo "sanitize.sh: pytest exit status $status; no AddressSanitizer or UndefinedBehaviorSanitizer report (log: $log)"
exit "$status"
