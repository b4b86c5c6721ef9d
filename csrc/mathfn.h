// Activation functions written so that a loop over them vectorizes (no calls, no branches).
// float: own exp with range reduction and a degree-7 polynomial, about 2 ulp; tanh from it,
// with a Taylor polynomial near 0 where 1 - 2/(e^2x + 1) would cancel. Inputs are clamped so
// that no result is subnormal. double: the C library, exact to rounding, for the oracle tests.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "isa.h"

#define RNNCORE_INLINE inline __attribute__((always_inline))
// Before a pointwise loop over j: no iteration depends on another. Rows may be updated in
// place (c_prev == c, the cache over the projection), but only at the same index.
#define RNNCORE_IVDEP _Pragma("GCC ivdep")

namespace rnncore {
namespace RNNCORE_NS {

RNNCORE_INLINE float exp_f(float x) {
  const bool huge = x > 87.0f;
  // keep 2^n a normal number: n in [-125, 126]
  x = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);  // NaN passes through both tests
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // x - n*ln2 in two parts
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n: the low mantissa bits of n + 1.5 * 2^23 + 127 are n + 127. No float-to-int conversion, so
  // a NaN x (and n) is defined behaviour too.
  const float biased = n + (12582912.0f + 127.0f);
  const float scale = __builtin_bit_cast(float, __builtin_bit_cast(uint32_t, biased) << 23);
  return huge ? __builtin_inff() : p * scale;  // so that sigmoid(-inf) is 0, as 0 * inf = NaN needs
}

RNNCORE_INLINE float sigmoid(float x) { return 1.0f / (1.0f + exp_f(-x)); }

RNNCORE_INLINE float tanh_act(float x) {
  const float ax = std::fabs(x);
  const float e = exp_f(2.0f * ax);
  const float far = 1.0f - 2.0f / (e + 1.0f);
  const float x2 = ax * ax;  // odd Taylor series through x^11, error < 1e-7 relative below 0.4
  float p = -1382.0f / 155925.0f;
  p = p * x2 + 62.0f / 2835.0f;
  p = p * x2 - 17.0f / 315.0f;
  p = p * x2 + 2.0f / 15.0f;
  p = p * x2 - 1.0f / 3.0f;
  const float near = ax + ax * x2 * p;
  return std::copysign(ax < 0.4f ? near : far, x);
}

RNNCORE_INLINE double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
RNNCORE_INLINE double tanh_act(double x) { return std::tanh(x); }

}  // namespace RNNCORE_NS
}  // namespace rnncore
