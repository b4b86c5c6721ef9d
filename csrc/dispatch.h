// Picks, once, the best build of the pointwise kernels this CPU can run.
#pragma once
#include <cstring>

#include "step.h"

namespace rnncore {

#define RNNCORE_DECLARE_ISA(ns)                       \
  namespace ns {                                      \
  template <class T> Kernels<T> kernels(int);     \
  extern template Kernels<float> kernels<float>(int);     \
  extern template Kernels<double> kernels<double>(int);   \
  }
RNNCORE_DECLARE_ISA(isa_baseline)
#ifdef RNNCORE_HAVE_AVX2
RNNCORE_DECLARE_ISA(isa_avx2)
#endif
#ifdef RNNCORE_HAVE_AVX512
RNNCORE_DECLARE_ISA(isa_avx512)
#endif
#undef RNNCORE_DECLARE_ISA

inline const char* kernel_isa() {
#ifdef RNNCORE_HAVE_AVX512
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512cd"))
    return "avx512";
#endif
#ifdef RNNCORE_HAVE_AVX2
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    return "avx2";
#endif
  return "baseline";
}

template <class T>
Kernels<T> kernels(int kind) {
  static const char* isa = kernel_isa();
#ifdef RNNCORE_HAVE_AVX512
  if (std::strcmp(isa, "avx512") == 0) return isa_avx512::kernels<T>(kind);
#endif
#ifdef RNNCORE_HAVE_AVX2
  if (std::strcmp(isa, "avx2") == 0) return isa_avx2::kernels<T>(kind);
#endif
  (void)isa;
  return isa_baseline::kernels<T>(kind);
}

}  // namespace rnncore
