// LayerNorm LSTM (Ba, Kiros and Hinton, "Layer Normalization", 2016, eqs. 20-22), gates i, f, g, o:
//   a = LN(W_hh h_prev; gamma_h, beta_h) + LN(W_ih x; gamma_x, beta_x) + b     (each LN over all 4H)
//   c = f * c_prev + i * g                       (the carried c is not normalised)
//   h = o * tanh(LN(c; gamma_c, beta_c))
// LN(v) = gamma * (v - mean(v)) / sqrt(var(v) + eps) + beta, population variance, eps = 1e-5.
// LN needs whole rows, so the driver gives this cell's pointwise pass whole rows (whole_rows: the
// GEMMs by unit slices, then the pointwise pass by row groups). The input's LN runs on each
// step's rows in that pass (project_done), its backward over every step after the loop
// (input_grads); the recurrent and cell LNs and their backward are fused into the step.
//
// Cache row: activated i, f, g, o | x^ (the normalised input projection) | h^ (the normalised
// recurrent part) | c^ | 1/sqrt(var + eps) of the three. Gradient row: the gates' | that of LN(c).
#pragma once
#include "../mathfn.h"
#include "../isa.h"
#include "../step.h"

namespace rnncore {
namespace RNNCORE_NS {

struct LayerNormLSTMCell : CellDefaults {
  static constexpr const char* name = "lstm_ln";
  static constexpr int gates = 4;
  static constexpr bool has_c = true;
  enum : int { kGx = 3, kBx, kGh, kBh, kGc, kBc };
  static constexpr ParamInfo params[] = {
      weight_ih(4), weight_hh(4), bias(4),
      unit_vector("ln_x_gamma", 4, Init::ones), unit_vector("ln_x_beta", 4, Init::zeros),
      unit_vector("ln_h_gamma", 4, Init::ones), unit_vector("ln_h_beta", 4, Init::zeros),
      unit_vector("ln_c_gamma", 1, Init::ones), unit_vector("ln_c_beta", 1, Init::zeros)};
  static constexpr bool can_project = true;
  static constexpr int extra_cols = 9;     // x^ (4H), h^ (4H), c^ (H)
  static constexpr int extra_scalars = 3;  // the three 1/sqrt(var + eps)
  static constexpr bool separate_rec_grad = true;  // W_hh sees LN_h's backward, W_ih LN_x's
  static constexpr int grad_cols = 1;              // the gradient of LN(c), for gamma_c and beta_c
  static constexpr bool whole_rows = true;
  static constexpr Block blocks[1] = {{0, 4, -1}};

  // Offsets in a cache row, in units of H (X, HH, C) and in values (stats, past 13H).
  enum : int64_t { kX = 4, kHh = 8, kC = 12, kStats = 13 };

  // Sums in 16 independent lanes, then the lanes in order: vectorises, and the result depends
  // only on n, never on the thread.
  template <class T>
  static T sum(const T* __restrict a, int64_t n) {
    T acc[16] = {};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
      for (int l = 0; l < 16; ++l) acc[l] += a[j + l];
    for (int l = 0; j < n; ++j, ++l) acc[l] += a[j];
    T s = T(0);
    for (int l = 0; l < 16; ++l) s += acc[l];
    return s;
  }
  template <class T>
  static T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
    T acc[16] = {};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
      for (int l = 0; l < 16; ++l) acc[l] += a[j + l] * b[j + l];
    for (int l = 0; j < n; ++j, ++l) acc[l] += a[j] * b[j];
    T s = T(0);
    for (int l = 0; l < 16; ++l) s += acc[l];
    return s;
  }
  // v^ = (v - mean) / sqrt(var + eps) into out; returns 1 / sqrt(var + eps).
  template <class T>
  static T normalise(const T* __restrict v, int64_t n, T* __restrict out) {
    const T mean = sum(v, n) / T(n);
    RNNCORE_IVDEP
    for (int64_t j = 0; j < n; ++j) out[j] = v[j] - mean;
    const T rstd = T(1) / std::sqrt(dot(out, out, n) / T(n) + T(1e-5));
    RNNCORE_IVDEP
    for (int64_t j = 0; j < n; ++j) out[j] *= rstd;
    return rstd;
  }
  // LN's backward: dv = rstd * (dn - mean(dn) - n * mean(dn * n)), dn = dy * gamma (in dv first).
  template <class T>
  static void ln_backward(const T* dy, const T* __restrict gamma, const T* __restrict nrm, T rstd, int64_t n,
                          T* dv) {  // dv may be dy itself
    RNNCORE_IVDEP
    for (int64_t j = 0; j < n; ++j) dv[j] = dy[j] * gamma[j];
    const T m1 = sum(dv, n) / T(n), m2 = dot(dv, nrm, n) / T(n);
    RNNCORE_IVDEP
    for (int64_t j = 0; j < n; ++j) dv[j] = rstd * (dv[j] - m1 - nrm[j] * m2);
  }

  // The input projection's LN, on rows [r0, r1) of every step: x^ and its scale into the cache,
  // LN(x W_ih^T) in place of the projection.
  template <class T>
  static void project_done(const AllSteps<T>& a) {
    const int64_t H = a.H, G = 4 * H;
    const T* gam = a.p[kGx];
    const T* bet = a.p[kBx];
    for (int64_t r = a.r0; r < a.r1; ++r) {
      T* row = a.g + r * a.ldg;
      T* xn = row + kX * H;
      row[kStats * H] = normalise(row, G, xn);
      RNNCORE_IVDEP
      for (int64_t j = 0; j < G; ++j) row[j] = gam[j] * xn[j] + bet[j];
    }
  }

  template <class T>
  static void forward(int /*phase*/, const Step<T>& s) {
    const int64_t H = s.H, G = 4 * H;  // whole rows: s.n == H
    const T* __restrict b = s.p[kBias];
    const T* __restrict gh = s.p[kGh];
    const T* __restrict bh = s.p[kBh];
    const T* __restrict gc = s.p[kGc];
    const T* __restrict bc = s.p[kBc];
    for (int64_t i = 0; i < s.m; ++i) {
      T* __restrict gi = s.g + i * s.ldg;  // in: LN(x W_ih^T); out: the activated gates
      T* __restrict hn = gi + kHh * H;
      T* __restrict cn = gi + kC * H;
      T* st = gi + kStats * H;
      const T* __restrict r = s.rec + i * 4 * s.rs;  // one slice: gate stride rs == H
      st[1] = normalise(r, G, hn);
      RNNCORE_IVDEP
      for (int64_t j = 0; j < G; ++j) gi[j] += gh[j] * hn[j] + bh[j] + b[j];
      const T* cp = s.c_prev + i * H;  // may alias c
      T* c = s.c + i * H;
      RNNCORE_IVDEP
      for (int64_t j = 0; j < H; ++j) {
        const T i_ = sigmoid(gi[j]);
        const T f_ = sigmoid(gi[H + j]);
        const T g_ = tanh_act(gi[2 * H + j]);
        gi[j] = i_;
        gi[H + j] = f_;
        gi[2 * H + j] = g_;
        c[j] = f_ * cp[j] + i_ * g_;
      }
      st[2] = normalise(c, H, cn);
      T* __restrict h = s.h + i * H;
      RNNCORE_IVDEP
      for (int64_t j = 0; j < H; ++j) {
        const T o_ = sigmoid(gi[3 * H + j]);
        gi[3 * H + j] = o_;
        h[j] = o_ * tanh_act(gc[j] * cn[j] + bc[j]);
      }
    }
  }

  template <class T>
  static void backward(int /*phase*/, const Step<T>& s) {
    const int64_t H = s.H, G = 4 * H;
    const T* __restrict gh = s.p[kGh];
    const T* __restrict gc = s.p[kGc];
    const T* __restrict bc = s.p[kBc];
    for (int64_t i = 0; i < s.m; ++i) {
      const T* __restrict g = s.g + i * s.ldg;
      const T* __restrict hn = g + kHh * H;
      const T* __restrict cn = g + kC * H;
      const T* st = g + kStats * H;
      const T* __restrict cp = s.c_prev + i * H;
      const T* __restrict dy = s.dy + i * H;
      T* __restrict dh = s.dh + i * H;
      T* __restrict dc = s.dc + i * H;
      T* __restrict da = s.dg + i * s.ldd;
      T* __restrict dnc = da + G;  // the gradient of LN(c), kept for gamma_c and beta_c
      T* __restrict dr = s.drec + i * s.ldd;
      RNNCORE_IVDEP
      for (int64_t j = 0; j < H; ++j) {
        const T og = g[3 * H + j];
        const T tn = tanh_act(gc[j] * cn[j] + bc[j]);
        const T dht = dh[j] + dy[j];
        da[3 * H + j] = dht * tn * og * (T(1) - og);
        dnc[j] = dht * og * (T(1) - tn * tn);
        dh[j] = T(0);  // h_prev enters only through W_hh
      }
      ln_backward(dnc, gc, cn, st[2], H, dr);  // dr as scratch: d c from LN(c)
      RNNCORE_IVDEP
      for (int64_t j = 0; j < H; ++j) {
        const T ig = g[j], fg = g[H + j], gg = g[2 * H + j];
        const T dct = dc[j] + dr[j];
        da[j] = dct * gg * ig * (T(1) - ig);
        da[H + j] = dct * cp[j] * fg * (T(1) - fg);
        da[2 * H + j] = dct * ig * (T(1) - gg * gg);
        dc[j] = dct * fg;
      }
      ln_backward(da, gh, hn, st[1], G, dr);  // the recurrent side: through LN_h
    }
  }

  // The gradients of the three LNs' gamma and beta at units [u0, u1), sums over every step's rows
  // in order (dead rows are zero), in two passes (step.h, partial_cols): input_grads sums each
  // group of kPartialRows rows into a row of `partials` (gamma_x's, gamma_h's, gamma_c's and
  // beta_c's sums, 10H values) while it reads the rows for LN_x's backward; param_grads adds the
  // groups in order. Both LNs' beta gradients are the sum of the gates' gradient over every row:
  // the bias's, which the driver has summed already (dp[kBias]).
  static constexpr int partial_cols = 10;
  enum : int64_t { kPGx = 0, kPGh = 4, kPGc = 8, kPBc = 9 };  // in a partials row, in units of H

  template <class T>
  static void param_grads(const AllSteps<T>& a) {
    const int64_t H = a.H, groups = (a.R + kPartialRows - 1) / kPartialRows, ldp = partial_cols * H;
    for (int q = 0; q < 4; ++q)
      for (int64_t j = a.u0; j < a.u1; ++j) a.dp[kBx][q * H + j] = a.dp[kBh][q * H + j] = a.dp[kBias][q * H + j];
    auto add_groups = [&](int64_t col, T* out, int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) out[j] = T(0);
      for (int64_t k = 0; k < groups; ++k) {
        const T* __restrict src = a.partials + k * ldp + col;
        RNNCORE_IVDEP
        for (int64_t j = j0; j < j1; ++j) out[j] += src[j];
      }
    };
    for (int q = 0; q < 4; ++q) {
      add_groups(kPGx * H + q * H, a.dp[kGx] + q * H, a.u0, a.u1);
      add_groups(kPGh * H + q * H, a.dp[kGh] + q * H, a.u0, a.u1);
    }
    add_groups(kPGc * H, a.dp[kGc], a.u0, a.u1);
    add_groups(kPBc * H, a.dp[kBc], a.u0, a.u1);
  }

  // On rows [r0, r1) (whole groups of kPartialRows rows): each group's sums for param_grads, then
  // LN_x's backward of the gates' gradient, in place: the input projection's gradient.
  template <class T>
  static void input_grads(const AllSteps<T>& a) {
    const int64_t H = a.H, G = 4 * H, ldp = partial_cols * H;
    for (int64_t r0 = a.r0; r0 < a.r1; r0 += kPartialRows) {
      T* __restrict part = a.partials + r0 / kPartialRows * ldp;
      for (int64_t j = 0; j < ldp; ++j) part[j] = T(0);
      const int64_t r1 = r0 + kPartialRows < a.r1 ? r0 + kPartialRows : a.r1;
      for (int64_t r = r0; r < r1; ++r) {
        T* da = a.dg + r * a.ldd;
        const T* __restrict row = a.g + r * a.ldg;
        const T* __restrict xn = row + kX * H;
        const T* __restrict hn = row + kHh * H;
        const T* __restrict cn = row + kC * H;
        const T* __restrict dnc = da + G;
        RNNCORE_IVDEP
        for (int64_t j = 0; j < G; ++j) {
          part[kPGx * H + j] += da[j] * xn[j];
          part[kPGh * H + j] += da[j] * hn[j];
        }
        RNNCORE_IVDEP
        for (int64_t j = 0; j < H; ++j) {
          part[kPGc * H + j] += dnc[j] * cn[j];
          part[kPBc * H + j] += dnc[j];
        }
        ln_backward(da, a.p[kGx], xn, row[kStats * H], G, da);
      }
    }
  }
};

}  // namespace RNNCORE_NS
}  // namespace rnncore
