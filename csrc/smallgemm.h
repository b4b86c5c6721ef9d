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

#if defined(__AVX512F__)
constexpr int kVecBytes = 64, kMR = 4, kNV = 4;
#elif defined(__AVX2__)
constexpr int kVecBytes = 32, kMR = 4, kNV = 2;
#else
constexpr int kVecBytes = 16, kMR = 4, kNV = 2;
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
  static int64_t packed_size(int64_t K, int64_t Nc) { return panels(Nc) * K * NW; }

  // B[k][n] = trans ? src[n * ld + k] : src[k * ld + n]
  static void pack(const T* src, int64_t ld, bool trans, int64_t K, int64_t Nc, T* Bp) {
    for (int64_t p = 0; p < panels(Nc); ++p)
      for (int64_t k = 0; k < K; ++k) {
        T* dst = Bp + (p * K + k) * NW;
        for (int64_t c = 0; c < NW; ++c) {
          const int64_t n = p * NW + c;
          dst[c] = n >= Nc ? T(0) : trans ? src[n * ld + k] : src[k * ld + n];
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
  // B rows are ldb apart: NW when packed, the matrix's own row stride when not
  template <int MR>
  static void tile(int64_t K, const T* A, int64_t lda, const T* Bp, int64_t ldb, bool add, T* C, int64_t ldc,
                   int64_t cols) {
    V acc[MR][kNV];
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < kNV; ++v) acc[r][v] = V{} * T(0);
    for (int64_t k = 0; k < K; ++k) {
      V b[kNV];
      for (int v = 0; v < kNV; ++v) b[v] = load(Bp + k * ldb + v * L);
      for (int r = 0; r < MR; ++r) {
        const T a = A[r * lda + k];
        for (int v = 0; v < kNV; ++v) acc[r][v] += a * b[v];
      }
    }
    for (int r = 0; r < MR; ++r) {
      T* c = C + r * ldc;
      if (cols == NW) {
        for (int v = 0; v < kNV; ++v) store(c + v * L, add ? acc[r][v] + load(c + v * L) : acc[r][v]);
      } else {  // the last, partial panel
        T tmp[NW];
        for (int v = 0; v < kNV; ++v) store(tmp + v * L, acc[r][v]);
        for (int64_t j = 0; j < cols; ++j) c[j] = add ? c[j] + tmp[j] : tmp[j];
      }
    }
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
    for (int64_t p = 0; p < panels(Nc); ++p) {
      const T* Bpan = ldb ? B + p * NW : B + p * K * NW;
      const int64_t ld = ldb ? ldb : NW;
      const int64_t cols = Nc - p * NW < NW ? Nc - p * NW : NW;
      T* Cp = C + p * NW;
      if (ldb && cols < NW) {  // unpacked, last partial panel: a full-width load would overrun B
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < cols; ++j) {
            T acc = T(0);
            for (int64_t k = 0; k < K; ++k) acc += A[i * lda + k] * Bpan[k * ld + j];
            Cp[i * ldc + j] = add ? Cp[i * ldc + j] + acc : acc;
          }
        continue;
      }
      int64_t i = 0;
      for (; i + kMR <= M; i += kMR) tile<kMR>(K, A + i * lda, lda, Bpan, ld, add, Cp + i * ldc, ldc, cols);
      switch (M - i) {
        case 3: tile<3>(K, A + i * lda, lda, Bpan, ld, add, Cp + i * ldc, ldc, cols); break;
        case 2: tile<2>(K, A + i * lda, lda, Bpan, ld, add, Cp + i * ldc, ldc, cols); break;
        case 1: tile<1>(K, A + i * lda, lda, Bpan, ld, add, Cp + i * ldc, ldc, cols); break;
        default: break;
      }
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
