// What the driver hands a cell's pointwise kernels for one time step: rows [0, m) of the
// batch rows still running at that step (the driver keeps them first), hidden units [0, n) of a
// slice of the H units (the pointers start at the slice's first unit; a thread of the team owns
// a slice, with all of its units' gates). Every matrix is row-major; the leading dimension is
// given where it is not the obvious one. Gate k of unit j sits at column k * H + j of g, b, dg
// and drec, and at column k * rs + j of rec.
#pragma once
#include <cstdint>

namespace rnncore {

template <class T>
struct Step {
  int64_t m = 0;  // rows this step
  int64_t n = 0;  // units of the slice
  int64_t H = 0;  // hidden size: the gate stride of g, b, dg, drec, the row stride of states

  // Forward.
  T* g = nullptr;            // (m, ldg): in, the input projection in columns [0, G*H);
  int64_t ldg = 0;           //   out, the cell's cache (activated gates, extras), in place
  const T* rec = nullptr;    // (m, G*rs): the recurrent GEMM's result for the slice, block by block
  int64_t rs = 0;            //   its gate stride
  const T* b = nullptr;      // (G*H,)
  const T* b_hn = nullptr;   // (H,), GRU reset_after only
  const T* h_prev = nullptr; // (m, H)
  T* h = nullptr;            // (m, H): out in forward, read in backward
  const T* c_prev = nullptr; // (m, H), LSTM; may alias c in inference
  T* c = nullptr;            // (m, H), LSTM

  // Backward.
  const T* dy = nullptr;     // (m, H): gradient of the output at this step
  T* dh = nullptr;           // (m, H): in dh_t carried from the step after; out, the part of
                             //   dh_{t-1} that does not go through W_hh (the driver adds that)
  T* dc = nullptr;           // (m, H): in dc_t, out dc_{t-1} (LSTM)
  T* dg = nullptr;           // (m, G*H): gradient of the gate pre-activations, input side
  T* drec = nullptr;         // (m, G*H): same, recurrent side (== dg unless the cell separates them)
  T* dop = nullptr;          // (m, H): gradient of an extra GEMM operand (GRU seed form: r * h_prev)
};

// One recurrent GEMM of a step: gate rows [row0, row1) * H of W_hh times an operand, which is
// h_prev (op_col < 0) or the cache column block starting at op_col * H (made by an earlier phase).
struct Block {
  int row0, row1, op_col;
};

}  // namespace rnncore

namespace rnncore {

enum class CellKind : int { rnn_tanh = 0, rnn_relu = 1, lstm = 2, gru = 3, gru_after = 4 };

// Everything the driver needs to know about a cell: its facts and its pointwise kernels.
template <class T>
struct CellSpec {
  int gates = 1;            // G
  int extra_cols = 0;       // cache columns beyond the G*H gates, in units of H
  bool has_c = false;       // a second state (LSTM)
  bool keeps_cache = false; // backward reads the cache (else only h, c)
  bool separate_rec_grad = false;
  bool has_b_hn = false;
  int num_blocks = 1;
  Block blocks[2] = {};
  void (*forward)(int phase, const Step<T>&) = nullptr;   // phase k runs after block k's GEMM
  void (*backward)(int phase, const Step<T>&) = nullptr;  // phase k runs before block k's GEMM
};

// The time loop's GEMM (smallgemm.h): B (K x Nc) packed once, then C (+)= A (M x K) * B.
template <class T>
struct StepGemm {
  int64_t (*packed_size)(int64_t K, int64_t Nc) = nullptr;
  // B[k][n] = trans ? src[e(n) * ld + k] : src[k * ld + e(n)], e(n) = (n / group) * gstride + n % group
  void (*pack)(const T* src, int64_t ld, bool trans, int64_t K, int64_t Nc, int64_t group, int64_t gstride,
               T* Bp) = nullptr;
  void (*gemm)(int64_t M, int64_t K, int64_t Nc, const T* A, int64_t lda, const T* Bp, bool add, T* C,
               int64_t ldc) = nullptr;
  // Unpacked weights, for a single step. C (+)= A * W^T, W (Nc x K) row-major:
  void (*gemm_nt)(int64_t M, int64_t K, int64_t Nc, const T* A, int64_t lda, const T* W, int64_t ldw, bool add,
                  T* C, int64_t ldc) = nullptr;
  // C (+)= A * B, B (K x Nc) row-major:
  void (*gemm_nn)(int64_t M, int64_t K, int64_t Nc, const T* A, int64_t lda, const T* B, int64_t ldb, bool add,
                  T* C, int64_t ldc) = nullptr;
};

// What one instruction-set build provides for a cell.
template <class T>
struct Kernels {
  CellSpec<T> cell;
  StepGemm<T> step;
};

}  // namespace rnncore
