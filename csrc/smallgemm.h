// The per-step GEMMs of the time loop: C (M x Nc) = A (M x K) * B (K x Nc) (+ C), with B a
// weight matrix fixed for the whole sequence, packed once before the loop. M is a batch
// (often 1 to 64 rows), where a general BLAS spends its time packing B at every call.
//
// Packed layout: column panels of NW = NV * L values (L = lanes of one vector):
//   panel p, row k at Bp + (p * K + k) * NW; the last panel is zero padded.
#pragma once
#include <cstdint>
#include <cstring>

#include "isa.h"

namespace rnncore {
namespace RNNCORE_NS {

// A panel is kNV vectors wide. Many rows: kMR rows x 1 panel per tile, over blocks of rows x
// panels sized for L1 and L2 (gemm_b). Few rows (less than kMR): 2 rows x kFewP panels, for
// enough independent accumulators. Every output sums its products in k order, whatever the tile:
// results do not depend on M, on how rows are grouped, or on whether B is packed.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64, kNV = 2, kMR = 8, kFewP = 4;  // 32 registers
#elif defined(__AVX2__)
constexpr int kVecBytes = 32, kNV = 2, kMR = 4, kFewP = 2;  // 16 registers
#else
constexpr int kVecBytes = 16, kNV = 2, kMR = 4, kFewP = 2;
#endif

template <class T> struct VecOf;
template <> struct VecOf<float> { typedef float type __attribute__((vector_size(kVecBytes))); };
template <> struct VecOf<double> { typedef double type __attribute__((vector_size(kVecBytes))); };

template <class T>
struct SmallGemm {
  using V = typename VecOf<T>::type;
  static constexpr int L = kVecBytes / int(sizeof(T));
  static constexpr int NW = kNV * L;

  static int64_t panels(int64_t Nc) { return (Nc + NW - 1) / NW; }
  // Many rows (packed B, M >= kMR): the product runs in blocks of rows x panels, so that a block
  // of panels (about kBlockBBytes) stays in L2 while the row blocks pass over it, and a row block
  // of A (about kBlockABytes) stays in L1 while the block's panels pass over it. Every output
  // still sums its K products in order in one tile: the blocking changes no result.
  static constexpr int64_t kBlockBBytes = int64_t(256) << 10, kBlockABytes = int64_t(16) << 10;
  static int64_t packed_size(int64_t K, int64_t Nc) { return panels(Nc) * K * NW; }

  // B[k][n] = trans ? src[e(n) * ld + k] : src[k * ld + e(n)], where e(n) = (n / group) * gstride
  // + n % group gathers groups of `group` columns `gstride` apart (a unit slice of every gate).
  static void pack(const T* src, int64_t ld, bool trans, int64_t K, int64_t Nc, int64_t group, int64_t gstride,
                   T* Bp) {
    for (int64_t p = 0; p < panels(Nc); ++p) {
      int64_t e[NW];  // source column (or row, transposed) of each of the panel's columns; -1: padding
      for (int c = 0; c < NW; ++c) {
        const int64_t n = p * NW + c;
        e[c] = n >= Nc ? -1 : (n / group) * gstride + n % group;
      }
      T* dst = Bp + p * K * NW;
      bool run = !trans;  // not transposed, and the panel's columns NW consecutive ones of src
      for (int c = 0; c < NW; ++c) run = run && e[c] >= 0 && e[c] == e[0] + c;
      if (run) {  // each row of the panel is a piece of a row of src (backward's W_hh slices)
        for (int64_t k = 0; k < K; ++k) std::memcpy(dst + k * NW, src + k * ld + e[0], sizeof(T) * NW);
      } else if (trans) {  // column c of the panel is row e[c] of src: NW rows read side by side
        const T* rows[NW];
        for (int c = 0; c < NW; ++c) rows[c] = src + (e[c] < 0 ? 0 : e[c]) * ld;
        for (int64_t k = 0; k < K; ++k)
          for (int c = 0; c < NW; ++c) dst[k * NW + c] = e[c] < 0 ? T(0) : rows[c][k];
      } else {
        for (int64_t k = 0; k < K; ++k)
          for (int c = 0; c < NW; ++c) dst[k * NW + c] = e[c] < 0 ? T(0) : src[k * ld + e[c]];
      }
    }
  }

  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(T* p, V v) { std::memcpy(p, &v, sizeof v); }

  // Accumulators stay in registers: nothing takes their address.
  // MR rows of A times P panels of B. Panel q's row k is at B + q * pstride + k * ldb (packed:
  // pstride = K * NW, ldb = NW; unpacked: pstride = NW, ldb = the row stride). The last panel
  // holds `cols` real columns (a packed panel is zero padded, so it is read in full).
  template <int MR, int P>
  static void tile(int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, int64_t pstride, bool add, T* C,
                   int64_t ldc, int64_t cols) {
    V acc[MR][P * kNV];
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < P * kNV; ++j) acc[r][j] = V{} * T(0);
    for (int64_t k = 0; k < K; ++k) {
      V b[P * kNV];
      for (int q = 0; q < P; ++q)
        for (int v = 0; v < kNV; ++v) b[q * kNV + v] = load(B + q * pstride + k * ldb + v * L);
      for (int r = 0; r < MR; ++r) {
        const T a = A[r * lda + k];
        for (int j = 0; j < P * kNV; ++j) acc[r][j] += a * b[j];
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int q = 0; q < P; ++q) {
        T* c = C + r * ldc + q * NW;
        if (q < P - 1 || cols == NW) {
          for (int v = 0; v < kNV; ++v) {
            const V out = acc[r][q * kNV + v];
            store(c + v * L, add ? out + load(c + v * L) : out);
          }
        } else {  // the last, partial panel
          T tmp[NW];
          for (int v = 0; v < kNV; ++v) store(tmp + v * L, acc[r][q * kNV + v]);
          for (int64_t j = 0; j < cols; ++j) c[j] = add ? c[j] + tmp[j] : tmp[j];
        }
      }
  }

  // all M rows against P panels: blocks of MR rows, the rest in halving blocks
  template <int MR, int P>
  static void tile_rows(int64_t M, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, int64_t pstride,
                        bool add, T* C, int64_t ldc, int64_t cols) {
    int64_t i = 0;
    for (; i + MR <= M; i += MR) tile<MR, P>(K, A + i * lda, lda, B, ldb, pstride, add, C + i * ldc, ldc, cols);
    if constexpr (MR > 1)
      if (i < M) tile_rows<MR / 2, P>(M - i, K, A + i * lda, lda, B, ldb, pstride, add, C + i * ldc, ldc, cols);
  }

  // C (M x Nc) (+)= A (M x K) * W^T with W (Nc x K) as it is (row stride ldw): dot products, for
  // a single step (the cell API), where packing W would cost more than the product. MR rows of A
  // against NC rows of W at a time; NR <= NC of those W rows are real.
  template <int MR, int NC>
  static void dots(int64_t K, const T* A, int64_t lda, const T* W, int64_t ldw, int NR, bool add, T* C,
                   int64_t ldc) {
    V acc[MR][NC];
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NC; ++c) acc[r][c] = V{} * T(0);
    int64_t k = 0;
    for (; k + L <= K; k += L) {
      V w[NC];
      for (int c = 0; c < NC; ++c) w[c] = load(W + (c < NR ? c : 0) * ldw + k);
      for (int r = 0; r < MR; ++r) {
        const V a = load(A + r * lda + k);
        for (int c = 0; c < NC; ++c) acc[r][c] += a * w[c];
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NC; ++c) {
        if (c >= NR) break;
        T lanes[L];  // acc itself stays in registers: nothing indexes it at run time
        store(lanes, acc[r][c]);
        for (int half = L / 2; half > 0; half /= 2)  // pairwise: a short dependency chain
          for (int l = 0; l < half; ++l) lanes[l] += lanes[l + half];
        T sum = lanes[0];
        for (int64_t kk = k; kk < K; ++kk) sum += A[r * lda + kk] * W[c * ldw + kk];
        C[r * ldc + c] = add ? C[r * ldc + c] + sum : sum;
      }
  }

  template <int MR, int NC>
  static void dots_rows(int64_t K, int64_t Nc, const T* A, int64_t lda, const T* W, int64_t ldw, bool add, T* C,
                        int64_t ldc) {
    for (int64_t n = 0; n < Nc; n += NC) {
      const int nr = int(Nc - n < NC ? Nc - n : NC);
      dots<MR, NC>(K, A, lda, W + n * ldw, ldw, nr, add, C + n, ldc);
    }
  }

  static void gemm_nt(int64_t M, int64_t K, int64_t Nc, const T* A, int64_t lda, const T* W, int64_t ldw,
                      bool add, T* C, int64_t ldc) {
    for (int64_t i = 0; i < M; i += 4) {
      const T* a = A + i * lda;
      T* c = C + i * ldc;
      switch (M - i < 4 ? M - i : 4) {
        case 4: dots_rows<4, 4>(K, Nc, a, lda, W, ldw, add, c, ldc); break;
        case 3: dots_rows<3, 4>(K, Nc, a, lda, W, ldw, add, c, ldc); break;
        case 2: dots_rows<2, 8>(K, Nc, a, lda, W, ldw, add, c, ldc); break;
        default: dots_rows<1, 8>(K, Nc, a, lda, W, ldw, add, c, ldc); break;
      }
    }
  }

  // C = A * B (add = false) or C += A * B (add = true). Packed B (ldb = 0): as pack() left it.
  // Unpacked B: row stride ldb > 0.
  static void gemm_b(int64_t M, int64_t K, int64_t Nc, const T* A, int64_t lda, const T* B, int64_t ldb, bool add,
                     T* C, int64_t ldc) {
    const bool packed = ldb == 0;
    const int64_t pstride = packed ? K * NW : NW, ld = packed ? NW : ldb;
    const int64_t full = Nc / NW;  // panels without padding
    int64_t p = 0;
    if (M < kMR)
      for (; p + kFewP <= full; p += kFewP)
        tile_rows<2, kFewP>(M, K, A, lda, B + p * pstride, ld, pstride, add, C + p * NW, ldc, NW);
    if (packed && M >= kMR) {  // blocks of rows x panels (kBlockBBytes)
      const int64_t np = panels(Nc), row_bytes = K * int64_t(sizeof(T));
      const int64_t bp = kBlockBBytes / (row_bytes * NW) > 1 ? kBlockBBytes / (row_bytes * NW) : 1;
      const int64_t br = kBlockABytes / row_bytes / kMR * kMR > kMR ? kBlockABytes / row_bytes / kMR * kMR : kMR;
      for (int64_t p0 = 0; p0 < np; p0 += bp) {
        const int64_t p1 = p0 + bp < np ? p0 + bp : np;
        for (int64_t i0 = 0; i0 < M; i0 += br) {
          const int64_t rows = M - i0 < br ? M - i0 : br;
          for (int64_t q = p0; q < p1; ++q) {
            const int64_t cols = Nc - q * NW < NW ? Nc - q * NW : NW;
            tile_rows<kMR, 1>(rows, K, A + i0 * lda, lda, B + q * pstride, ld, pstride, add, C + i0 * ldc + q * NW,
                              ldc, cols);
          }
        }
      }
      return;
    }
    for (; p < panels(Nc); ++p) {
      const int64_t cols = Nc - p * NW < NW ? Nc - p * NW : NW;
      const T* Bp = B + p * pstride;
      T* Cp = C + p * NW;
      if (!packed && cols < NW) {  // unpacked, last partial panel: a full-width load would overrun B
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < cols; ++j) {
            T acc = T(0);
            for (int64_t k = 0; k < K; ++k) acc += A[i * lda + k] * Bp[k * ld + j];
            Cp[i * ldc + j] = add ? Cp[i * ldc + j] + acc : acc;
          }
        continue;
      }
      tile_rows<kMR, 1>(M, K, A, lda, Bp, ld, pstride, add, Cp, ldc, cols);
    }
  }
  static void gemm(int64_t M, int64_t K, int64_t Nc, const T* A, int64_t lda, const T* Bp, bool add, T* C,
                   int64_t ldc) {
    gemm_b(M, K, Nc, A, lda, Bp, 0, add, C, ldc);
  }
  static void gemm_nn(int64_t M, int64_t K, int64_t Nc, const T* A, int64_t lda, const T* B, int64_t ldb, bool add,
                      T* C, int64_t ldc) {
    gemm_b(M, K, Nc, A, lda, B, ldb, add, C, ldc);
  }
};

}  // namespace RNNCORE_NS
}  // namespace rnncore
