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
    const int64_t H = s.H, G = 4 * H;
    for (int64_t i = 0; i < s.m; ++i) {
      T* __restrict g = s.g + i * s.ldg;
      const T* __restrict r = s.rec + i * G;
      const T* b = s.b;
      const T* cp = s.c_prev + i * H;  // may alias c
      T* c = s.c + i * H;
      T* __restrict h = s.h + i * H;
      for (int64_t j = 0; j < H; ++j) {
        const T ig = sigmoid(g[j] + r[j] + b[j]);
        const T fg = sigmoid(g[H + j] + r[H + j] + b[H + j]);
        const T gg = tanh_act(g[2 * H + j] + r[2 * H + j] + b[2 * H + j]);
        const T og = sigmoid(g[3 * H + j] + r[3 * H + j] + b[3 * H + j]);
        const T ct = fg * cp[j] + ig * gg;
        c[j] = ct;
        h[j] = og * tanh_act(ct);
        g[j] = ig;
        g[H + j] = fg;
        g[2 * H + j] = gg;
        g[3 * H + j] = og;
      }
    }
  }

  template <class T>
  static void backward(int /*phase*/, const Step<T>& s) {
    const int64_t H = s.H, G = 4 * H;
    for (int64_t i = 0; i < s.m; ++i) {
      const T* __restrict g = s.g + i * s.ldg;
      const T* __restrict cp = s.c_prev + i * H;
      const T* __restrict c = s.c + i * H;
      const T* __restrict dy = s.dy + i * H;
      T* __restrict dh = s.dh + i * H;
      T* __restrict dc = s.dc + i * H;
      T* __restrict dg = s.dg + i * G;
      for (int64_t j = 0; j < H; ++j) {
        const T ig = g[j], fg = g[H + j], gg = g[2 * H + j], og = g[3 * H + j];
        const T tc = tanh_act(c[j]);
        const T dht = dh[j] + dy[j];
        const T dct = dc[j] + dht * og * (T(1) - tc * tc);
        dg[j] = dct * gg * ig * (T(1) - ig);
        dg[H + j] = dct * cp[j] * fg * (T(1) - fg);
        dg[2 * H + j] = dct * ig * (T(1) - gg * gg);
        dg[3 * H + j] = dht * tc * og * (T(1) - og);
        dc[j] = dct * fg;
        dh[j] = T(0);
      }
    }
  }
};

}  // namespace RNNCORE_NS
}  // namespace rnncore
