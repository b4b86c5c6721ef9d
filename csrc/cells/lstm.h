// LSTM, gates i, f, g, o:  c = f * c_prev + i * g,  h = o * tanh(c).
// Peephole form (ONNX's LSTM with P, oneDNN's peephole LSTM): the gates also see the cell state,
//   i = sigmoid(a_i + p_i * c_prev),  f = sigmoid(a_f + p_f * c_prev),  o = sigmoid(a_o + p_o * c),
// with P (3, H), rows p_i, p_f, p_o.
#pragma once
#include "../mathfn.h"
#include "../isa.h"
#include "../step.h"

namespace rnncore {
namespace RNNCORE_NS {

template <bool Peephole>
struct LSTMCell : CellDefaults {
  static constexpr const char* name = Peephole ? "lstm_peephole" : "lstm";
  static constexpr int gates = 4;
  static constexpr bool has_c = true;
  enum : int { kPeep = 3 };
  static constexpr ParamInfo params[] = {weight_ih(4), weight_hh(4), bias(4), unit_rows("P", 3, Init::uniform)};
  static constexpr int num_params = Peephole ? 4 : 3;
  static constexpr bool can_project = true;
  static constexpr const char* torch = Peephole ? "" : "LSTM";
  static constexpr const char* keras = Peephole ? "" : "LSTM";
  static constexpr const char* onnx = "LSTM";
  static constexpr Block blocks[1] = {{0, 4, -1}};  // cache: activated i, f, g, o

  template <class T>
  static void forward(int /*phase*/, const Step<T>& s) {
    const int64_t H = s.H, n = s.n;
    for (int64_t i = 0; i < s.m; ++i) {
      // one pointer per gate, so the compiler knows the four column blocks are disjoint
      T* __restrict gi = s.g + i * s.ldg;
      T* __restrict gf = gi + H;
      T* __restrict gg = gi + 2 * H;
      T* __restrict go = gi + 3 * H;
      const T* __restrict r = s.rec + i * 4 * s.rs;
      const int64_t rs = s.rs;
      const T* __restrict b = s.p[kBias];
      const T* __restrict pp = Peephole ? s.p[kPeep] : nullptr;
      const T* cp = s.c_prev + i * H;  // may alias c
      T* c = s.c + i * H;
      T* __restrict h = s.h + i * H;
      RNNCORE_IVDEP
      for (int64_t j = 0; j < n; ++j) {
        T i_, f_, o_, ct;
        const T g_ = tanh_act(gg[j] + r[2 * rs + j] + b[2 * H + j]);
        if constexpr (Peephole) {
          const T cpj = cp[j];
          i_ = sigmoid(gi[j] + r[j] + b[j] + pp[j] * cpj);
          f_ = sigmoid(gf[j] + r[rs + j] + b[H + j] + pp[H + j] * cpj);
          ct = f_ * cpj + i_ * g_;
          o_ = sigmoid(go[j] + r[3 * rs + j] + b[3 * H + j] + pp[2 * H + j] * ct);
        } else {
          i_ = sigmoid(gi[j] + r[j] + b[j]);
          f_ = sigmoid(gf[j] + r[rs + j] + b[H + j]);
          o_ = sigmoid(go[j] + r[3 * rs + j] + b[3 * H + j]);
          ct = f_ * cp[j] + i_ * g_;
        }
        c[j] = ct;
        h[j] = o_ * tanh_act(ct);
        gi[j] = i_;
        gf[j] = f_;
        gg[j] = g_;
        go[j] = o_;
      }
    }
  }

  template <class T>
  static void backward(int /*phase*/, const Step<T>& s) {
    const int64_t H = s.H, n = s.n;
    for (int64_t i = 0; i < s.m; ++i) {
      const T* __restrict g = s.g + i * s.ldg;
      const T* __restrict cp = s.c_prev + i * H;
      const T* __restrict c = s.c + i * H;
      const T* __restrict dy = s.dy + i * H;
      const T* __restrict pp = Peephole ? s.p[kPeep] : nullptr;
      T* __restrict dh = s.dh + i * H;
      T* __restrict dc = s.dc + i * H;
      T* __restrict di = s.dg + i * s.ldd;
      T* __restrict df = di + H;
      T* __restrict dgg = di + 2 * H;
      T* __restrict do_ = di + 3 * H;
      RNNCORE_IVDEP
      for (int64_t j = 0; j < n; ++j) {
        const T ig = g[j], fg = g[H + j], gg = g[2 * H + j], og = g[3 * H + j];
        const T tc = tanh_act(c[j]);
        const T dht = dh[j] + dy[j];
        if constexpr (Peephole) {
          const T dot = dht * tc * og * (T(1) - og);
          const T dct = dc[j] + dht * og * (T(1) - tc * tc) + dot * pp[2 * H + j];
          const T dit = dct * gg * ig * (T(1) - ig);
          const T dft = dct * cp[j] * fg * (T(1) - fg);
          di[j] = dit;
          df[j] = dft;
          dgg[j] = dct * ig * (T(1) - gg * gg);
          do_[j] = dot;
          dc[j] = dct * fg + dit * pp[j] + dft * pp[H + j];
        } else {
          const T dct = dc[j] + dht * og * (T(1) - tc * tc);
          di[j] = dct * gg * ig * (T(1) - ig);
          df[j] = dct * cp[j] * fg * (T(1) - fg);
          dgg[j] = dct * ig * (T(1) - gg * gg);
          do_[j] = dht * tc * og * (T(1) - og);
          dc[j] = dct * fg;
        }
        dh[j] = T(0);
      }
    }
  }

  // The peepholes' gradients: dp_i = sum da_i * c_prev, dp_f = sum da_f * c_prev, dp_o = sum da_o * c
  // over every step's rows, in order.
  template <class T>
  static void param_grads(const AllSteps<T>& a) {
    if constexpr (Peephole) {
      const int64_t H = a.H, u0 = a.u0, u1 = a.u1;
      T* dp = a.dp[kPeep];
      for (int q = 0; q < 3; ++q)
        for (int64_t j = u0; j < u1; ++j) dp[q * H + j] = T(0);
      for (int64_t s = 0; s < a.steps; ++s)
        for (int64_t i = 0; i < a.B[s]; ++i) {
          const T* d = a.dg + (a.O[s] + i) * a.ldd;
          const T* cp = a.cs + (a.O[s] + i) * H;
          const T* c = a.cs + (a.O[s + 1] + i) * H;
          for (int64_t j = u0; j < u1; ++j) {
            dp[j] += d[j] * cp[j];
            dp[H + j] += d[H + j] * cp[j];
            dp[2 * H + j] += d[3 * H + j] * c[j];
          }
        }
    }
  }
};

}  // namespace RNNCORE_NS
}  // namespace rnncore
