// Simple RNN: h = f(x W_ih^T + h_prev W_hh^T + b), f = tanh or relu.
#pragma once
#include "../mathfn.h"
#include "../isa.h"
#include "../step.h"

namespace rnncore {
namespace RNNCORE_NS {

struct Tanh {
  template <class T> static T f(T a) { return tanh_act(a); }
  template <class T> static T df_from_out(T h) { return T(1) - h * h; }
};
struct Relu {
  template <class T> static T f(T a) { return a <= T(0) ? T(0) : a; }  // NaN stays NaN
  template <class T> static T df_from_out(T h) { return h > T(0) ? T(1) : T(0); }
};

template <class Act>
struct SimpleRNNCell {
  static constexpr int gates = 1;
  static constexpr int extra_cols = 0;        // cache columns beyond the gates, in units of H
  static constexpr bool has_c = false;
  static constexpr bool keeps_cache = false;  // backward needs only h, which the driver keeps
  static constexpr bool separate_rec_grad = false;
  static constexpr bool has_b_hn = false;
  static constexpr int num_blocks = 1;
  static constexpr Block blocks[1] = {{0, 1, -1}};

  template <class T>
  static void forward(int /*phase*/, const Step<T>& s) {
    const int64_t H = s.H, n = s.n;
    for (int64_t i = 0; i < s.m; ++i) {
      const T* __restrict a = s.g + i * s.ldg;
      const T* __restrict r = s.rec + i * s.rs;
      T* __restrict h = s.h + i * H;
      RNNCORE_IVDEP
      for (int64_t j = 0; j < n; ++j) h[j] = Act::f(a[j] + r[j] + s.b[j]);
    }
  }

  template <class T>
  static void backward(int /*phase*/, const Step<T>& s) {
    const int64_t H = s.H, n = s.n;
    for (int64_t i = 0; i < s.m; ++i) {
      const T* __restrict h = s.h + i * H;
      const T* __restrict dy = s.dy + i * H;
      T* __restrict dh = s.dh + i * H;
      T* __restrict dg = s.dg + i * H;
      RNNCORE_IVDEP
      for (int64_t j = 0; j < n; ++j) {
        dg[j] = (dh[j] + dy[j]) * Act::df_from_out(h[j]);
        dh[j] = T(0);
      }
    }
  }
};

}  // namespace RNNCORE_NS
}  // namespace rnncore
