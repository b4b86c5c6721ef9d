// LSTM, gates i, f, g, o:  c = f * c_prev + i * g,  h = o * tanh(c).
#pragma once
#include "../mathfn.h"
#include "../isa.h"
#include "../step.h"

namespace rnncore {
namespace RNNCORE_NS {

struct LSTMCell {
  static constexpr int gates = 4;
  static constexpr int extra_cols = 0;
  static constexpr bool has_c = true;
  static constexpr bool keeps_cache = true;  // activated i, f, g, o
  static constexpr bool separate_rec_grad = false;
  static constexpr bool has_b_hn = false;
  static constexpr int num_blocks = 1;
  static constexpr Block blocks[1] = {{0, 4, -1}};

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
      const T* __restrict b = s.b;
      const T* cp = s.c_prev + i * H;  // may alias c
      T* c = s.c + i * H;
      T* __restrict h = s.h + i * H;
      RNNCORE_IVDEP
      for (int64_t j = 0; j < n; ++j) {
        const T i_ = sigmoid(gi[j] + r[j] + b[j]);
        const T f_ = sigmoid(gf[j] + r[rs + j] + b[H + j]);
        const T g_ = tanh_act(gg[j] + r[2 * rs + j] + b[2 * H + j]);
        const T o_ = sigmoid(go[j] + r[3 * rs + j] + b[3 * H + j]);
        const T ct = f_ * cp[j] + i_ * g_;
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
    const int64_t H = s.H, n = s.n, G = 4 * H;
    for (int64_t i = 0; i < s.m; ++i) {
      const T* __restrict g = s.g + i * s.ldg;
      const T* __restrict cp = s.c_prev + i * H;
      const T* __restrict c = s.c + i * H;
      const T* __restrict dy = s.dy + i * H;
      T* __restrict dh = s.dh + i * H;
      T* __restrict dc = s.dc + i * H;
      T* __restrict di = s.dg + i * G;
      T* __restrict df = di + H;
      T* __restrict dgg = di + 2 * H;
      T* __restrict do_ = di + 3 * H;
      RNNCORE_IVDEP
      for (int64_t j = 0; j < n; ++j) {
        const T ig = g[j], fg = g[H + j], gg = g[2 * H + j], og = g[3 * H + j];
        const T tc = tanh_act(c[j]);
        const T dht = dh[j] + dy[j];
        const T dct = dc[j] + dht * og * (T(1) - tc * tc);
        di[j] = dct * gg * ig * (T(1) - ig);
        df[j] = dct * cp[j] * fg * (T(1) - fg);
        dgg[j] = dct * ig * (T(1) - gg * gg);
        do_[j] = dht * tc * og * (T(1) - og);
        dc[j] = dct * fg;
        dh[j] = T(0);
      }
    }
  }
};

}  // namespace RNNCORE_NS
}  // namespace rnncore
