// One typed GEMM over the scipy-openblas32 CBLAS, whose symbols carry the prefix `scipy_`.
#pragma once
#include <cstdint>
#include <cstring>

#include <cblas.h>

#define RNNCORE_BLAS(name) scipy_##name

namespace rnncore {

// C (M x N, row stride ldc) = alpha * op(A) * op(B) + beta * C, all row-major.
// op(A) is M x K (A stored K x M when ta), op(B) is K x N (B stored N x K when tb).
// Empty products are handled here so callers never special-case a zero-row step.
inline void gemm_call(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                      int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  RNNCORE_BLAS(cblas_sgemm)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                            (blasint)M, (blasint)N, (blasint)K, alpha, A, (blasint)lda, B, (blasint)ldb, beta,
                            C, (blasint)ldc);
}
inline void gemm_call(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                      int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  RNNCORE_BLAS(cblas_dgemm)(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                            (blasint)M, (blasint)N, (blasint)K, alpha, A, (blasint)lda, B, (blasint)ldb, beta,
                            C, (blasint)ldc);
}

template <class T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
          T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // C = beta * C
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  gemm_call(ta, tb, M, N, K, T(1), A, lda, B, ldb, beta, C, ldc);
}

inline void blas_set_num_threads(int n) { RNNCORE_BLAS(openblas_set_num_threads)(n); }
inline int blas_get_num_threads() { return RNNCORE_BLAS(openblas_get_num_threads)(); }
inline const char* blas_corename() { return RNNCORE_BLAS(openblas_get_corename)(); }
inline const char* blas_config() { return RNNCORE_BLAS(openblas_get_config)(); }

}  // namespace rnncore
