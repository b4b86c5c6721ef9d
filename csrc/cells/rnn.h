// Simple RNN: h = f(x W_ih^T + h_prev W_hh^T + b), f = tanh or relu.
#pragma once
#include "../mathfn.h"
#include "../isa.h"
#include "../step.h"

namespace rnncore {
namespace RNNCORE_NS {

struct Tanh {
  static constexpr const char* name = "rnn_tanh";
  template <class T> static T f(T a) { return tanh_act(a); }
  template <class T> static T df_from_out(T h) { return T(1) - h * h; }
};
struct Relu {
  static constexpr const char* name = "rnn_relu";
  template <class T> static T f(T a) { return a <= T(0) ? T(0) : a; }  // NaN stays NaN
  template <class T> static T df_from_out(T h) { return h > T(0) ? T(1) : T(0); }
};

template <class Act>
struct SimpleRNNCell : CellDefaults {
  static constexpr const char* name = Act::name;
  static constexpr int gates = 1;
  static constexpr ParamInfo params[] = {weight_ih(1), weight_hh(1), bias(1)};
  static constexpr const char* torch = "RNN";
  static constexpr const char* keras = "SimpleRNN";
  static constexpr const char* onnx = "RNN";
  static constexpr bool keeps_cache = false;  // backward needs only h, which the driver keeps
  static constexpr Block blocks[1] = {{0, 1, -1}};

  template <class T>
  static void forward(int /*phase*/, const Step<T>& s) {
    const int64_t H = s.H, n = s.n;
    for (int64_t i = 0; i < s.m; ++i) {
      const T* __restrict a = s.g + i * s.ldg;
      const T* __restrict r = s.rec + i * s.rs;
      T* __restrict h = s.h + i * H;
      const T* __restrict b = s.p[kBias];
      RNNCORE_IVDEP
      for (int64_t j = 0; j < n; ++j) h[j] = Act::f(a[j] + r[j] + b[j]);
    }
  }

  template <class T>
  static void backward(int /*phase*/, const Step<T>& s) {
    const int64_t H = s.H, n = s.n;
    for (int64_t i = 0; i < s.m; ++i) {
      const T* __restrict h = s.h + i * H;
      const T* __restrict dy = s.dy + i * H;
      T* __restrict dh = s.dh + i * H;
      T* __restrict dg = s.dg + i * s.ldd;
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
