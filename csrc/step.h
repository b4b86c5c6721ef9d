// What the driver hands a cell's pointwise kernels for one time step: rows [0, m) of the
// batch rows still running at that step (the driver keeps them first), hidden units [0, n) of a
// slice of the H units (the pointers start at the slice's first unit; a thread of the team owns
// a slice, with all of its units' gates). Every matrix is row-major; the leading dimension is
// given where it is not the obvious one. Gate k of unit j sits at column k * H + j of g, b, dg
// and drec, and at column k * rs + j of rec.
#pragma once
#include <cstdint>

#include "isa.h"

namespace rnncore {

constexpr int kMaxParams = 12;  // parameters of one layer and direction, the projection's included

template <class T>
struct Step {
  int64_t m = 0;  // rows this step
  int64_t n = 0;  // units of the slice
  int64_t H = 0;  // hidden size: the gate stride of g, p[k], dg and drec; the row stride of c and
                  //   of h (the cell's output, before any projection)

  // The layer's parameters, in the order of the cell's list (CellSpec::params), each advanced to
  // the slice's first unit: element (q, j) of a parameter of shape (rows, H) or (rows * H,) is
  // p[k][q * H + j]. Kernels read the vectors among them (b, b_hn, peepholes, LayerNorm gains).
  const T* p[kMaxParams] = {};

  // Forward.
  T* g = nullptr;            // (m, ldg): in, the input projection in columns [0, G*H);
  int64_t ldg = 0;           //   out, the cell's cache (activated gates, extras), in place
  const T* rec = nullptr;    // (m, G*rs): the recurrent GEMM's result for the slice, block by block
  int64_t rs = 0;            //   its gate stride
  const T* h_prev = nullptr; // (m, H)
  T* h = nullptr;            // (m, H): out in forward, read in backward
  const T* c_prev = nullptr; // (m, H), LSTM; may alias c in inference
  T* c = nullptr;            // (m, H), LSTM

  // Backward.
  const T* dy = nullptr;     // (m, H): gradient of the output at this step
  T* dh = nullptr;           // (m, H): in dh_t carried from the step after; out, the part of
                             //   dh_{t-1} that does not go through W_hh (the driver adds that)
  T* dc = nullptr;           // (m, H): in dc_t, out dc_{t-1} (LSTM)
  T* dg = nullptr;           // (m, ldd): gradient of the gate pre-activations, input side, in
  int64_t ldd = 0;           //   columns [0, G*H), then the cell's own columns (grad_cols)
  T* drec = nullptr;         // (m, ldd): same, recurrent side (== dg unless the cell separates them)
  T* dop = nullptr;          // (m, H): gradient of an extra GEMM operand (GRU seed form: r * h_prev)
};

// What a cell's hooks outside the time loop see: every step's rows at once, in the driver's slot
// layout (driver.h). Step s's rows are [O[s], O[s] + B[s]) of g, dg and drec; its h_prev and
// c_prev are the same rows of hs and cs, its h and c the rows [O[s+1], O[s+1] + B[s]).
template <class T>
struct AllSteps {
  int64_t steps = 0, H = 0, R = 0;  // steps, hidden size, rows of g (O[steps])
  int gates = 1;
  int64_t r0 = 0, r1 = 0;           // the rows a row-wise hook (project_done, input_grads) works on
  int64_t u0 = 0, u1 = 0;           // the units whose parameters' gradients param_grads computes
  const int64_t* O = nullptr;       // steps + 2 slot offsets
  const int64_t* B = nullptr;       // rows running at each step
  const T* p[kMaxParams] = {};      // the parameters (not advanced)
  T* g = nullptr;                   // (R, ldg): the projection (project_done), the cache (grads)
  int64_t ldg = 0;
  const T* hs = nullptr;            // slot layout, H wide (the cell's output, before any projection)
  const T* cs = nullptr;
  T* dg = nullptr;                  // (R, ldd)
  T* drec = nullptr;
  int64_t ldd = 0;
  T* dp[kMaxParams] = {};           // out: the gradients of the cell's own parameters (param_grads)
  T* partials = nullptr;            // (groups of kPartialRows rows, partial_cols * H): what input_grads
                                    //   sums for param_grads, group by group (cells with partial_cols)
};

// A cell with partial_cols sums its parameters' gradients in two passes: input_grads, row-wise,
// sums every group of kPartialRows rows (rows [64 k, 64 k + 64)) into row k of `partials` while
// it reads those rows anyway; param_grads then adds the groups' sums in order. The groups do not
// depend on the thread count, so neither do the results.
constexpr int64_t kPartialRows = 64;

// One recurrent GEMM of a step: gate rows [row0, row1) * H of W_hh times an operand, which is
// h_prev (op_col < 0) or the cache column block starting at op_col * H (made by an earlier phase).
struct Block {
  int row0, row1, op_col;
};

}  // namespace rnncore

namespace rnncore {

// A parameter's shape: up to two dimensions, each mult * (1, D, H or R), where D is the layer's
// input size, H the hidden size and R the size of h: the projection's P when the layer projects,
// else H. How it starts: uniform in [-1/sqrt(H), 1/sqrt(H)], ones or zeros.
enum class Var : int { one = 0, D = 1, H = 2, R = 3 };
struct Dim {
  int mult;
  Var var;
};
enum class Init : int { uniform = 0, ones = 1, zeros = 2 };
struct ParamInfo {
  const char* name;  // without the layer's suffix: "W_ih" stands for W_ih_l0, W_ih_l0_reverse, ...
  int ndim;
  Dim dims[2];
  Init init;
};

// The projection of LSTMP (PyTorch's proj_size): h = W_hr (o * tanh(c)), W_hr (R, H). The driver
// owns it; for a cell that allows it (can_project), W_hr then ends the parameter list.
constexpr ParamInfo kProjection{"W_hr", 2, {{1, Var::R}, {1, Var::H}}, Init::uniform};

// Everything the driver and the bindings know of a cell: what it is (exported as
// _core.cell_info(), which the Python layer reads), how its work is laid out, and its kernels.
// Parameters 0, 1, 2 are always W_ih (G*H, D), W_hh (G*H, R) and b (G*H,).
template <class T>
struct CellSpec {
  const char* name = nullptr;  // rnncore's name: "lstm", "gru_after", ...
  int gates = 1;               // G
  bool has_c = false;          // a second state, c (H wide)
  int num_params = 0;
  ParamInfo params[kMaxParams] = {};
  bool can_project = false;
  const char* torch = "";      // the counterpart in PyTorch, Keras and ONNX ("" for none)
  const char* keras = "";
  const char* onnx = "";

  int extra_cols = 0;       // cache columns beyond the G*H gates, in units of H
  int extra_scalars = 0;    // then this many values per row (padded to a multiple of 16)
  bool keeps_cache = false; // backward reads the cache (else only h, c)
  bool separate_rec_grad = false;
  int grad_cols = 0;        // columns of dg beyond G*H, in units of H
  int partial_cols = 0;     // sums (in units of H) that input_grads makes per group of kPartialRows rows
                            //   for param_grads
                            //   (0: param_grads reads dg itself, before input_grads)
  bool whole_rows = false;  // the pointwise pass needs every unit of a row: the GEMMs run by unit
                            //   slices, then (one stage more) the pointwise pass by row groups
  int num_blocks = 1;
  Block blocks[2] = {};
  void (*forward)(int phase, const Step<T>&) = nullptr;   // phase k runs after block k's GEMM
  void (*backward)(int phase, const Step<T>&) = nullptr;  // phase k runs before block k's GEMM
  // Optional hooks outside the time loop (null: nothing to do), over the team: the row-wise ones
  // each on rows [r0, r1), param_grads each on units [u0, u1) (the entries of a (rows, H) or
  // (rows * H,) parameter at those units), summing over every row in order.
  void (*project_done)(const AllSteps<T>&) = nullptr;  // after the input projection (in the time
                                                       //   loop's pointwise stage for whole-row cells)
  void (*input_grads)(const AllSteps<T>&) = nullptr;   // after the loop, turns dg into the gradient
                                                       //   of the input projection (default: it is)
  void (*param_grads)(const AllSteps<T>&) = nullptr;   // the gradients of parameters 3 and on (the
                                                       //   bias's, dp[2], is summed before)
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
  // The bias's gradient after the loop (a unit-wise hook): here so that its sums, too, are
  // compiled for this CPU's instruction set.
  void (*bias_grad)(const AllSteps<T>&) = nullptr;
};

// What one instruction-set build provides for a cell.
template <class T>
struct Kernels {  // cell.name is null for a code past the last cell
  CellSpec<T> cell;
  StepGemm<T> step;
};

}  // namespace rnncore

namespace rnncore {

// The parameters every cell starts with, for G gates.
constexpr ParamInfo weight_ih(int G) { return {"W_ih", 2, {{G, Var::H}, {1, Var::D}}, Init::uniform}; }
constexpr ParamInfo weight_hh(int G) { return {"W_hh", 2, {{G, Var::H}, {1, Var::R}}, Init::uniform}; }
constexpr ParamInfo bias(int G) { return {"b", 1, {{G, Var::H}, {0, Var::one}}, Init::uniform}; }
// A per-unit vector (rows of H), rows * H long (ndim 1) or (rows, H) (ndim 2).
constexpr ParamInfo unit_vector(const char* name, int rows, Init init) {
  return {name, 1, {{rows, Var::H}, {0, Var::one}}, init};
}
constexpr ParamInfo unit_rows(const char* name, int rows, Init init) {
  return {name, 2, {{rows, Var::one}, {1, Var::H}}, init};
}

}  // namespace rnncore

namespace rnncore {

// What a cell's kernel struct (cells/*.h) says by default; a cell overrides what differs. Its
// parameter list `params` starts with weight_ih(G), weight_hh(G), bias(G).
struct CellDefaults {
  enum : int { kWih = 0, kWhh = 1, kBias = 2 };  // indices in p[] and params[]
  static constexpr bool has_c = false;
  static constexpr bool can_project = false;
  static constexpr const char* torch = "";
  static constexpr const char* keras = "";
  static constexpr const char* onnx = "";
  static constexpr int extra_cols = 0;
  static constexpr int extra_scalars = 0;
  static constexpr bool keeps_cache = true;
  static constexpr bool separate_rec_grad = false;
  static constexpr int grad_cols = 0;
  static constexpr int partial_cols = 0;
  static constexpr bool whole_rows = false;
  static constexpr int num_blocks = 1;
};

}  // namespace rnncore

namespace rnncore {
namespace RNNCORE_NS {  // compiled per instruction-set level (isa.h)

// out[j] = sum over rows r of a[r * ld + j], rows in order: the same sums whatever the threads.
template <class T>
void column_sums(const T* __restrict a, int64_t rows, int64_t cols, int64_t ld, T* __restrict out) {
  for (int64_t j = 0; j < cols; ++j) out[j] = T(0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) out[j] += a[r * ld + j];
}

// The bias's gradient on units [u0, u1) of every gate: the gates' gradient summed over every row,
// in order (a unit-wise hook of the driver's own, StepGemm::bias_grad).
template <class T>
void bias_grad(const AllSteps<T>& a) {
  for (int q = 0; q < a.gates; ++q)
    column_sums(a.dg + q * a.H + a.u0, a.R, a.u1 - a.u0, a.ldd, a.dp[CellDefaults::kBias] + q * a.H + a.u0);
}

}  // namespace RNNCORE_NS
}  // namespace rnncore
