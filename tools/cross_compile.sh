#!/usr/bin/env bash
# Compiles the C++ core for the platforms the wheels are built for, from this Linux x86-64 machine,
# with Zig's Clang (pip install ziglang): AArch64 Linux (glibc), x86-64 Linux (musl), macOS arm64 and
# x86_64, Windows x86-64 (MinGW headers). Every source is compiled to an object file with -Werror
# for the portability warnings; the per-ISA kernel builds on the x86-64 targets. The bindings need
# the target's Python headers: they are compiled against this machine's Python for the Linux and
# macOS targets (same LP64 layout) and left out for Windows. Nothing is linked or run: this checks
# that the code compiles for each target, not that it works there (README, How it is built).
#
#   tools/cross_compile.sh [target ...]      # default: all five
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ZIG=("$PY" -m ziglang)
inc=$("$PY" -c "import pybind11, sysconfig, scipy_openblas32 as s; print(pybind11.get_include(), sysconfig.get_paths()['include'], s.get_include_dir())")
read -r pybind_inc py_inc blas_inc <<<"$inc"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-linux-gnu x86_64-linux-musl aarch64-macos x86_64-macos x86_64-windows-gnu)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# This machine's OpenBLAS headers are its Linux build's: for macOS and Windows, a copy without
# OPENBLAS_OS_LINUX (the Linux-only affinity calls), as those platforms' scipy-openblas32 wheels have.
mkdir "$out/blas_other_os"
cp "$blas_inc"/*.h "$out/blas_other_os/"
sed -i '/#define OPENBLAS_OS_LINUX/d' "$out/blas_other_os/openblas_config.h"
flags=(-std=c++17 -O2 -fPIC -Wall -Werror=implicit-function-declaration)
fail=0
cc() {  # target, output name, extra flags..., source
  local t=$1 name=$2
  shift 2
  local blas=$blas_inc
  case $t in *linux*) ;; *) blas=$out/blas_other_os ;; esac
  if "${ZIG[@]}" c++ -target "$t" "${flags[@]}" -I"$blas" -c -o "$out/$t-$name.o" "$@" 2>"$out/err"; then
    echo "ok      $t  $name"
  else
    echo "FAILED  $t  $name"
    sed 's/^/        /' "$out/err" | head -20
    fail=1
  fi
}
for t in "${targets[@]}"; do
  x86=0
  case $t in x86_64-*) x86=1 ;; esac
  have=()
  cc "$t" kernels_baseline -DRNNCORE_ISA=baseline csrc/kernels.cpp
  if [ $x86 = 1 ]; then
    cc "$t" kernels_avx2 -DRNNCORE_ISA=avx2 -march=x86_64_v3 csrc/kernels.cpp
    cc "$t" kernels_avx512 -DRNNCORE_ISA=avx512 -march=x86_64_v4 -mprefer-vector-width=512 csrc/kernels.cpp
    have=(-DRNNCORE_HAVE_AVX2=1 -DRNNCORE_HAVE_AVX512=1)
  fi
  for src in driver team microbench; do
    cc "$t" "$src" "${have[@]}" "csrc/$src.cpp"
  done
  case $t in
    *windows*) echo "skipped $t  bindings (needs the target's Python headers)" ;;
    *) cc "$t" bindings "${have[@]}" -I"$pybind_inc" -I"$py_inc" csrc/bindings.cpp ;;
  esac
done
exit $fail
