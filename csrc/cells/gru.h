// GRU, gates r, z, n; z weights the new candidate:  h = (1 - z) * h_prev + z * n.
//   seed form (ResetAfter = false):  n = tanh(x W_in^T + (r * h_prev) W_hn^T + b_n)
//     two recurrent GEMMs per step: rows r, z times h_prev, then rows n times r * h_prev,
//     which phase 0 leaves in the cache's extra column block (column 3H), kept for dW_hn.
//   reset_after:  n = tanh(x W_in^T + b_n + r * (h_prev W_hn^T + b_hn))
//     one GEMM; the cache's extra block keeps h_prev W_hn^T + b_hn for the gradient of r.
#pragma once
#include "../mathfn.h"
#include "../isa.h"
#include "../step.h"

namespace rnncore {
namespace RNNCORE_NS {

template <bool ResetAfter>
struct GRUCell : CellDefaults {
  static constexpr const char* name = ResetAfter ? "gru_after" : "gru";
  static constexpr int gates = 3;
  enum : int { kBhn = 3 };
  // reset_after has b_hn (H,): the candidate's recurrent bias, inside r * (...)
  static constexpr ParamInfo params[] = {weight_ih(3), weight_hh(3), bias(3), unit_vector("b_hn", 1, Init::uniform)};
  static constexpr int num_params = ResetAfter ? 4 : 3;
  static constexpr const char* torch = ResetAfter ? "GRU" : "";
  static constexpr const char* keras = "GRU";
  static constexpr const char* onnx = "GRU";
  static constexpr int extra_cols = 1;       // cache: r, z, n and the extra block
  // reset_after: the n rows of W_hh see r * dn, the n rows of W_ih see dn.
  static constexpr bool separate_rec_grad = ResetAfter;
  static constexpr int num_blocks = ResetAfter ? 1 : 2;
  static constexpr Block blocks[2] = {ResetAfter ? Block{0, 3, -1} : Block{0, 2, -1}, Block{2, 3, 3}};

  template <class T>
  static void forward(int phase, const Step<T>& s) {
    const int64_t H = s.H, n = s.n;
    for (int64_t i = 0; i < s.m; ++i) {
      T* __restrict g = s.g + i * s.ldg;
      const T* __restrict r = s.rec + i * 3 * s.rs;
      const int64_t rs = s.rs;
      const T* b = s.p[kBias];
      const T* __restrict hp = s.h_prev + i * H;
      T* __restrict h = s.h + i * H;
      if (ResetAfter) {
        RNNCORE_IVDEP
        for (int64_t j = 0; j < n; ++j) {
          const T rg = sigmoid(g[j] + r[j] + b[j]);
          const T zg = sigmoid(g[H + j] + r[rs + j] + b[H + j]);
          const T hn = r[2 * rs + j] + s.p[kBhn][j];
          const T ng = tanh_act(g[2 * H + j] + b[2 * H + j] + rg * hn);
          h[j] = (T(1) - zg) * hp[j] + zg * ng;  // as README.md (The math) writes h_t: an infinite h_prev stays infinite
          g[j] = rg;
          g[H + j] = zg;
          g[2 * H + j] = ng;
          g[3 * H + j] = hn;
        }
      } else if (phase == 0) {
        RNNCORE_IVDEP
        for (int64_t j = 0; j < n; ++j) {
          const T rg = sigmoid(g[j] + r[j] + b[j]);
          g[j] = rg;
          g[H + j] = sigmoid(g[H + j] + r[rs + j] + b[H + j]);
          g[3 * H + j] = rg * hp[j];
        }
      } else {
        RNNCORE_IVDEP
        for (int64_t j = 0; j < n; ++j) {
          const T ng = tanh_act(g[2 * H + j] + r[2 * rs + j] + b[2 * H + j]);
          const T zg = g[H + j];
          h[j] = (T(1) - zg) * hp[j] + zg * ng;  // as README.md (The math) writes h_t: an infinite h_prev stays infinite
          g[2 * H + j] = ng;
        }
      }
    }
  }

  // b_hn's gradient: the column sums of the recurrent-side gradient of n (reset_after).
  template <class T>
  static void param_grads(const AllSteps<T>& a) {
    if (ResetAfter) column_sums(a.drec + 2 * a.H + a.u0, a.R, a.u1 - a.u0, a.ldd, a.dp[kBhn] + a.u0);
  }

  // Phases run in reverse: seed form phase 1 (h, n and the raw dz), the driver's GEMM
  // dop = dn_pre W_hn, then phase 0 (r and z).
  template <class T>
  static void backward(int phase, const Step<T>& s) {
    const int64_t H = s.H, n = s.n;
    for (int64_t i = 0; i < s.m; ++i) {
      const T* __restrict g = s.g + i * s.ldg;
      const T* __restrict hp = s.h_prev + i * H;
      const T* __restrict dy = s.dy + i * H;
      T* __restrict dh = s.dh + i * H;
      T* __restrict dg = s.dg + i * s.ldd;
      if (ResetAfter) {
        T* __restrict dr = s.drec + i * s.ldd;
        RNNCORE_IVDEP
        for (int64_t j = 0; j < n; ++j) {
          const T rg = g[j], zg = g[H + j], ng = g[2 * H + j], hn = g[3 * H + j];
          const T dht = dh[j] + dy[j];
          const T dn = dht * zg * (T(1) - ng * ng);
          const T da_r = dn * hn * rg * (T(1) - rg);
          const T da_z = dht * (ng - hp[j]) * zg * (T(1) - zg);
          dg[j] = da_r;
          dg[H + j] = da_z;
          dg[2 * H + j] = dn;
          dr[j] = da_r;
          dr[H + j] = da_z;
          dr[2 * H + j] = dn * rg;
          dh[j] = dht * (T(1) - zg);
        }
      } else if (phase == 1) {
        RNNCORE_IVDEP
        for (int64_t j = 0; j < n; ++j) {
          const T zg = g[H + j], ng = g[2 * H + j];
          const T dht = dh[j] + dy[j];
          dg[2 * H + j] = dht * zg * (T(1) - ng * ng);
          dg[H + j] = dht * (ng - hp[j]);  // dz, finished in phase 0
          dh[j] = dht * (T(1) - zg);
        }
      } else {
        const T* __restrict dop = s.dop + i * H;
        RNNCORE_IVDEP
        for (int64_t j = 0; j < n; ++j) {
          const T rg = g[j], zg = g[H + j];
          dg[j] = dop[j] * hp[j] * rg * (T(1) - rg);
          dg[H + j] *= zg * (T(1) - zg);
          dh[j] += dop[j] * rg;
        }
      }
    }
  }
};

}  // namespace RNNCORE_NS
}  // namespace rnncore
