// Picks, once, the best build of the pointwise kernels this CPU can run.
#pragma once
#include <cstdint>
#include <cstring>

#include "platform.h"
#include "step.h"

#if defined(RNNCORE_HAVE_AVX2) || defined(RNNCORE_HAVE_AVX512)
#if defined(_MSC_VER)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

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

#if defined(RNNCORE_HAVE_AVX2) || defined(RNNCORE_HAVE_AVX512)
// CPUID and XGETBV read directly (GCC's __builtin_cpu_supports needs a runtime library that
// clang-cl does not link): a feature counts only when the CPU has it and the OS saves its registers.
struct X86Features {
  bool avx2 = false;    // AVX2, FMA and BMI2 (the x86-64-v3 build), with YMM state enabled
  bool avx512 = false;  // AVX-512 F, BW, DQ, VL and CD (the x86-64-v4 build), with ZMM state enabled
};

inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
#if defined(_MSC_VER)
  int v[4];
  __cpuidex(v, int(leaf), int(sub));
  for (int i = 0; i < 4; ++i) r[i] = uint32_t(v[i]);
#else
  __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
#endif
}

inline uint64_t xgetbv0() {
#if defined(_MSC_VER) && !defined(__clang__)
  return _xgetbv(0);
#else
  uint32_t lo, hi;
  __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
#endif
}

inline X86Features x86_features() {
  X86Features f;
  uint32_t r0[4], r1[4], r7[4];
  cpuid(0, 0, r0);
  if (r0[0] < 7) return f;
  cpuid(1, 0, r1);
  cpuid(7, 0, r7);
  const bool osxsave = (r1[2] >> 27) & 1, avx = (r1[2] >> 28) & 1, fma = (r1[2] >> 12) & 1;
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm = (xcr0 & 0x6) == 0x6;     // SSE and AVX state
  const bool zmm = (xcr0 & 0xe6) == 0xe6;   // ... and opmask, ZMM0-15 upper halves, ZMM16-31
  const uint32_t b = r7[1];
  const bool avx2 = (b >> 5) & 1, bmi2 = (b >> 8) & 1;
  const bool f512 = (b >> 16) & 1, dq = (b >> 17) & 1, cd = (b >> 28) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
  f.avx2 = ymm && avx2 && fma && bmi2;
  f.avx512 = f.avx2 && zmm && f512 && bw && dq && vl && cd;
  return f;
}
#endif

inline const char* kernel_isa() {
#if defined(RNNCORE_HAVE_AVX2) || defined(RNNCORE_HAVE_AVX512)
  static const X86Features f = x86_features();
#endif
#ifdef RNNCORE_HAVE_AVX512
  if (f.avx512) return "avx512";
#endif
#ifdef RNNCORE_HAVE_AVX2
  if (f.avx2) return "avx2";
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
