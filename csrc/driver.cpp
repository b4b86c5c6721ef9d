#include "driver.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <system_error>
#include <cstdlib>

#include "platform.h"
#if RNNCORE_X86
#include <xmmintrin.h>
#endif

#include "blas.h"
#include "dispatch.h"
#include "team.h"

namespace rnncore {

// Subnormal operands and results make x86 take a microcode assist per operation (calls 15-120x
// slower, measured), so the time loops compute with flush-to-zero and denormals-are-zero, on the
// calling thread and (taking its mode) on the team's, and give the caller's control word back.
class FlushSubnormals {
#if RNNCORE_X86
  static constexpr unsigned kFtzDaz = 0x8040;  // MXCSR bits FTZ (15) and DAZ (6)
  unsigned saved_ = _mm_getcsr();

 public:
  FlushSubnormals() { _mm_setcsr(saved_ | kFtzDaz); }
  ~FlushSubnormals() { _mm_setcsr(saved_); }
#elif defined(__aarch64__)
  static constexpr uint64_t kFz = uint64_t(1) << 24;  // FPCR.FZ
  uint64_t saved_ = read();
  static uint64_t read() {
    uint64_t v;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(v));
    return v;
  }
  static void write(uint64_t v) { __asm__ __volatile__("msr fpcr, %0" : : "r"(v)); }

 public:
  FlushSubnormals() { write(saved_ | kFz); }
  ~FlushSubnormals() { write(saved_); }
#endif
 public:
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;
};

Schedule::Schedule(int64_t T_, int64_t N_, const int64_t* lengths) : T(T_), N(N_) {
  perm.resize(N);
  len.resize(N);
  std::iota(perm.begin(), perm.end(), int64_t(0));
  if (lengths) {
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
    for (int64_t i = 0; i < N; ++i) len[i] = lengths[perm[i]];
  } else {
    std::fill(len.begin(), len.end(), T);
  }
  natural = std::all_of(len.begin(), len.end(), [&](int64_t l) { return l == T; });
  B.assign(T, 0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t s = 0; s < len[i]; ++s) ++B[s];
  O.assign(T + 2, 0);
  for (int64_t k = 0; k <= T; ++k) O[k + 1] = O[k] + slot_rows(k);
}

template <class T>
int64_t Tape<T>::bytes() const {
  int64_t n = 0;
  for (const auto& b : inputs) n += b.size();
  for (const auto& d : dirs) n += d.hs.size() + d.cs.size() + d.cache.size() + d.ms.size();
  return n * int64_t(sizeof(T));
}

namespace {

template <class T>
void zero(T* p, int64_t n) {
  if (n > 0) std::memset(p, 0, size_t(n) * sizeof(T));
}

// dst slot rows (slot layout, `width` columns) <- natural rows of src (row (t, n) at
// src + (t*N + n) * src_ld). Rows of ended sequences are zeroed.
template <class T>
void gather(const Schedule& S, int d, const T* src, int64_t src_ld, int64_t width, T* dst) {
  for (int64_t s = 0; s < S.T; ++s) {
    T* slot = dst + S.O[s] * width;
    for (int64_t i = 0; i < S.B[s]; ++i) {
      const T* row = src + (S.time(d, s, i) * S.N + S.perm[i]) * src_ld;
      std::memcpy(slot + i * width, row, size_t(width) * sizeof(T));
    }
    zero(slot + S.B[s] * width, (S.slot_rows(s) - S.B[s]) * width);
  }
}

// natural rows of dst (+)= slot rows of src; slot `s + shift` holds step s.
template <class T>
void scatter(const Schedule& S, int d, const T* src, int64_t width, int shift, T* dst, int64_t dst_ld, bool add) {
  for (int64_t s = 0; s < S.T; ++s) {
    const T* slot = src + S.O[s + shift] * width;
    for (int64_t i = 0; i < S.B[s]; ++i) {
      T* row = dst + (S.time(d, s, i) * S.N + S.perm[i]) * dst_ld;
      const T* r = slot + i * width;
      if (add)
        for (int64_t j = 0; j < width; ++j) row[j] += r[j];
      else
        std::memcpy(row, r, size_t(width) * sizeof(T));
    }
  }
}

// sorted rows <-> batch rows of an (N, H) state
template <class T>
void permute_in(const Schedule& S, const T* src, int64_t H, T* dst) {
  for (int64_t i = 0; i < S.N; ++i)
    if (src)
      std::memcpy(dst + i * H, src + S.perm[i] * H, size_t(H) * sizeof(T));
    else
      zero(dst + i * H, H);
}
template <class T>
void permute_out(const Schedule& S, const T* src, int64_t H, T* dst) {
  for (int64_t i = 0; i < S.N; ++i) std::memcpy(dst + S.perm[i] * H, src + i * H, size_t(H) * sizeof(T));
}
// final state of each row: slot len[i] of a slot-layout buffer
template <class T>
void final_state(const Schedule& S, const T* slots, int64_t H, T* dst) {
  for (int64_t i = 0; i < S.N; ++i)
    std::memcpy(dst + S.perm[i] * H, slots + (S.O[S.len[i]] + i) * H, size_t(H) * sizeof(T));
}

// The largest packed copy of the weights (W_hh slices, W_ih) that this thread's last forward or
// backward held at once: workspace of the call, freed when it returns.
thread_local int64_t tl_packed_bytes = 0;
void note_packed(int64_t bytes) { tl_packed_bytes = std::max(tl_packed_bytes, bytes); }

void check_interrupt() {
  if (interrupted()) throw Interrupted();
}

// Work between two stage boundaries of the large GEMMs (where Ctrl-C is seen): about 5 to 10 ms
// of one core.
constexpr int64_t kStageFlops = int64_t(1) << 30;

// A large GEMM (as gemm<T>) over the team: the rows of C are split over the threads, each part a
// one-thread BLAS call (the BLAS's own pool stays at one thread: its idle workers would spin
// against the team). Every element of C is summed as in a one-part call, so results do not
// depend on the number of threads. Long GEMMs run in stages: rows of C in turn or, for the
// weight gradients (A transposed, K = every step's rows), chunks of K accumulated in turn; the
// chunks depend on the sizes only.
template <class T>
void team_gemm(int threads, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
               const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  constexpr int64_t kRowAlign = 16, kMinFlops = int64_t(1) << 23;
  const int64_t flops = 2 * M * N * K;
  int parts = int(std::max<int64_t>(1, std::min<int64_t>(threads, M / (2 * kRowAlign))));
  if (flops < kMinFlops) parts = 1;
  const int64_t kchunks = ta ? std::max<int64_t>(1, std::min<int64_t>(K / 1024, flops / kStageFlops)) : 1;
  const int64_t mstages = ta ? 1 : std::max<int64_t>(1, std::min<int64_t>(M / (2 * kRowAlign), flops / kStageFlops));
  if (parts == 1 && kchunks == 1 && mstages == 1) {
    gemm<T>(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
    check_interrupt();
    return;
  }
  const int64_t kstep = (K + kchunks - 1) / kchunks;
  const int64_t mstep = ((M + mstages - 1) / mstages + kRowAlign - 1) / kRowAlign * kRowAlign;
  const bool done = run_stages(parts, parts, kchunks * mstages, [&](int q, int64_t stage) {
    const int64_t kc = stage / mstages, ms = stage % mstages;
    const int64_t k0 = std::min(K, kc * kstep), k1 = std::min(K, k0 + kstep);
    const int64_t s0 = std::min(M, ms * mstep), s1 = std::min(M, s0 + mstep);
    const int64_t pstep = ((s1 - s0 + parts - 1) / parts + kRowAlign - 1) / kRowAlign * kRowAlign;
    const int64_t i0 = std::min(s1, s0 + q * pstep), i1 = std::min(s1, i0 + pstep);
    if (i1 <= i0) return;
    const T* Aq = ta ? A + k0 * lda + i0 : A + i0 * lda + k0;  // A is K x M when transposed
    const T* Bq = tb ? B + k0 : B + k0 * ldb;                  // B is N x K when transposed
    gemm<T>(ta, tb, i1 - i0, N, k1 - k0, Aq, lda, Bq, ldb, kc == 0 ? beta : T(1), C + i0 * ldc, ldc);
  });
  if (!done) throw Interrupted();
}

// How the time loop's work is split over the team: `rows` groups of batch rows times `cols`
// slices of the H hidden units. An item (row group r, slice c) computes, at every step, the
// recurrent GEMM's columns of its units (all gates of each unit) for its rows, then the cell's
// pointwise pass on them; a slice's rows of W_hh are packed once per call and stay in the cache
// of the thread that owns the slice. Row groups need no exchange between threads but each reads
// all of W_hh; slices exchange h_t once per step (the stage boundary) and each reads only its
// part of W_hh.
struct Split {
  int rows = 1, cols = 1;
  std::vector<int64_t> row_cut{0, 0}, unit_cut{0, 0};
  std::vector<int64_t> out_cut{0, 0};  // a projecting layer's h (P wide): slice c owns [out_cut[c], out_cut[c+1])
  std::vector<int64_t> group_cut{0, 0};  // whole-row cells: item c's rows of the pointwise stage
  int items() const { return rows * cols; }
};

constexpr int64_t kMinRows = 8;  // a row group's GEMM below this loses more than a thread gains

// The rule: slices first, as many as threads while each keeps at least one panel of the step
// GEMM (`align` units: 32 for float with AVX-512), then row groups of at least kMinRows rows for
// the threads left (README, "How it is built": chosen by timing both splits on 2 cores).
// Rows [0, N) in `parts` groups that carry about equal numbers of valid steps.
std::vector<int64_t> row_groups(const Schedule& S, int parts) {
  const int64_t N = S.N;
  std::vector<int64_t> cut(parts + 1, N);
  cut[0] = 0;
  const int64_t total = std::accumulate(S.len.begin(), S.len.end(), int64_t(0));
  int64_t acc = 0, p = 1;
  for (int64_t i = 0; i < N && p < parts; ++i) {
    acc += S.len[i];
    if (acc * parts >= total * p) cut[p++] = i + 1;
  }
  return cut;
}

// Whole-row cells (a pointwise pass over all H units of a row): `rows_only` splits by rows alone;
// `two_phase` splits the GEMMs by slices and the pointwise pass by row groups (group_cut), one
// stage each.
Split plan_split(const Schedule& S, int64_t H, int64_t P, int threads, bool single_step, int64_t align,
                 bool rows_only, bool two_phase = false) {
  Split sp;
  const int64_t N = S.N;
  if (!single_step && threads > 1 && N > 0) {
    const int max_cols = rows_only ? 1 : int(std::max<int64_t>(1, H / align));
    const int max_rows = two_phase ? 1 : int(std::max<int64_t>(1, N / kMinRows));
    sp.cols = std::min(threads, max_cols);
    sp.rows = std::max(1, std::min(threads / sp.cols, max_rows));
  }
  sp.row_cut = row_groups(S, sp.rows);
  sp.group_cut = row_groups(S, sp.cols);
  // slices: equal shares of whole blocks of `align` units
  sp.unit_cut.assign(sp.cols + 1, H);
  const int64_t blocks = (H + align - 1) / align;
  for (int c = 0; c < sp.cols; ++c) sp.unit_cut[c] = std::min(H, blocks * c / sp.cols * align);
  sp.out_cut.assign(sp.cols + 1, P);
  const int64_t pblocks = (P + align - 1) / align;
  for (int c = 0; c < sp.cols; ++c) sp.out_cut[c] = std::min(P, pblocks * c / sp.cols * align);
  return sp;
}

template <class T>
struct Layer {  // one layer and direction, as the time loops see it
  const CellSpec<T>& cell;
  const StepGemm<T>& step;
  const Schedule& S;
  const LayerParams<T>& w;
  int64_t D, H;
  int d;
  int threads;
  int64_t R;  // the size of h: H, or the projection's P
  bool projects() const { return R != H; }
  const T* W_hr() const { return w.p[cell.num_params]; }  // (R, H), when projecting
  int64_t G() const { return cell.gates * H; }
  int64_t W() const {  // cache row
    return (cell.gates + cell.extra_cols) * H + (cell.extra_scalars + 15) / 16 * 16;
  }
  int64_t ldd() const { return (cell.gates + cell.grad_cols) * H; }      // gradient row
  const T* W_ih() const { return w.p[0]; }
  const T* W_hh() const { return w.p[1]; }
  // the parameters as a step of a slice sees them: advanced to its first unit
  void slice_params(int64_t j0, Step<T>& st) const {
    for (int k = 0; k < cell.num_params; ++k) st.p[k] = w.p[k] ? w.p[k] + j0 : nullptr;
  }
  int64_t block_rows(int k) const { return cell.blocks[k].row1 - cell.blocks[k].row0; }
  // A call of one step (the cell API, streaming step by step) is about latency: its products
  // with the weights use dot-product kernels on the weights as they are, with no packing and no
  // BLAS call. They sum in another order than the sequence path: results agree to rounding.
  bool single_step() const { return S.T == 1; }
  // the layer input in slot layout: the natural rows themselves when the map is the identity
  const T* slot_input(const T* in, Buffer<T>& buf) const {
    if (S.natural && d == 0) return in;
    buf = Buffer<T>(S.O[S.T] * D);
    gather(S, d, in, D, D, buf.data());
    return buf.data();
  }
};

// The hooks' view of every step (step.h, AllSteps): the schedule and the parameters.
template <class T>
void fill_steps(const Layer<T>& L, AllSteps<T>& a) {
  a.steps = L.S.T;
  a.H = L.H;
  a.gates = L.cell.gates;
  a.R = L.S.O[L.S.T];
  a.O = L.S.O.data();
  a.B = L.S.B.data();
  for (int k = 0; k < L.cell.num_params; ++k) a.p[k] = L.w.p[k];
}

// A hook over the team, once: [0, n) in shares of whole `group`-sized groups, each thread's share
// set by `share` (row-wise hooks: rows r0, r1; param_grads: units u0, u1).
template <class T, class Share>
void run_split(const Layer<T>& L, void (*hook)(const AllSteps<T>&), const AllSteps<T>& a, int64_t n, int64_t group,
               const Share& share) {
  const int64_t groups = (n + group - 1) / group;
  const int items = int(std::max<int64_t>(1, std::min<int64_t>(L.threads, groups)));
  if (!run_stages(L.threads, items, 1, [&](int it, int64_t) {
        AllSteps<T> mine = a;
        const int64_t i0 = std::min(n, groups * it / items * group), i1 = std::min(n, groups * (it + 1) / items * group);
        share(mine, i0, i1);
        if (i1 > i0) hook(mine);
      }))
    throw Interrupted();
}

// Row-wise hooks get whole groups of `group` rows (kPartialRows for a cell with partial_cols).
template <class T>
void run_rowwise(const Layer<T>& L, void (*hook)(const AllSteps<T>&), const AllSteps<T>& a, int64_t group = 16) {
  run_split(L, hook, a, a.R, group, [](AllSteps<T>& m, int64_t i0, int64_t i1) { m.r0 = i0, m.r1 = i1; });
}
template <class T>
void run_unitwise(const Layer<T>& L, void (*hook)(const AllSteps<T>&), const AllSteps<T>& a) {
  run_split(L, hook, a, L.H, 16, [](AllSteps<T>& m, int64_t i0, int64_t i1) { m.u0 = i0, m.u1 = i1; });
}

// W_hh packed by slice, for each block k and slice c. Forward: B = the block's rows of the
// slice's units, transposed (K = H, columns gate-major, then unit). Backward: B = the block's
// rows, the slice's columns (K = rows of the block, columns = units).
template <class T>
struct PackedSlices {
  Buffer<T> buf;
  std::vector<int64_t> off;     // k * cols + c
  std::vector<int64_t> ih_off;  // (c * gates + q): W_ih's rows of gate q of slice c, transposed
  std::vector<int64_t> hr_off;  // c: W_hr's slice c, when projecting
  int cols = 1, gates = 1;
  // the columns of W_hh that backward's slice c owns: its units, or its part of h when projecting
  static int64_t bwd_col0(const Layer<T>& L, const Split& sp, int c) {
    return L.projects() ? sp.out_cut[c] : sp.unit_cut[c];
  }
  static int64_t bwd_cols(const Layer<T>& L, const Split& sp, int c) {
    return L.projects() ? sp.out_cut[c + 1] - sp.out_cut[c] : sp.unit_cut[c + 1] - sp.unit_cut[c];
  }
  bool per_gate = false;  // forward W_hh packed gate by gate (two-phase whole-row cells)
  PackedSlices(const Layer<T>& L, const Split& sp, bool fwd, bool with_ih = false, bool per_gate_ = false)
      : cols(sp.cols), gates(L.cell.gates), per_gate(per_gate_ && fwd) {
    if (L.single_step()) return;
    int64_t total = 0;
    for (int k = 0; k < L.cell.num_blocks; ++k)
      for (int c = 0; c < sp.cols; ++c) {
        off.push_back(total);
        const int64_t w = sp.unit_cut[c + 1] - sp.unit_cut[c], rows = L.block_rows(k) * L.H;
        if (per_gate)
          total += L.block_rows(k) * L.step.packed_size(L.R, w);
        else
          total += fwd ? L.step.packed_size(L.R, L.block_rows(k) * w) : L.step.packed_size(rows, bwd_cols(L, sp, c));
      }
    if (L.projects())
      for (int c = 0; c < sp.cols; ++c) {
        hr_off.push_back(total);
        total += fwd ? L.step.packed_size(L.H, sp.out_cut[c + 1] - sp.out_cut[c])
                     : L.step.packed_size(L.R, sp.unit_cut[c + 1] - sp.unit_cut[c]);
      }
    if (with_ih)
      for (int c = 0; c < sp.cols; ++c)
        for (int q = 0; q < gates; ++q) {
          ih_off.push_back(total);
          total += L.step.packed_size(L.D, sp.unit_cut[c + 1] - sp.unit_cut[c]);
        }
    buf = Buffer<T>(total);
  }
  T* at(int k, int c) const { return buf.data() ? buf.data() + off[k * cols + c] : nullptr; }
  T* ih(int c, int q) const { return buf.data() + ih_off[c * gates + q]; }
  T* hr(int c) const { return buf.data() ? buf.data() + hr_off[c] : nullptr; }
  // per_gate: gate q of slice c's rows of W_hh, transposed (K = R, w columns)
  T* gate(const Layer<T>& L, const Split& sp, int c, int q) const {
    return at(0, c) + q * L.step.packed_size(L.R, sp.unit_cut[c + 1] - sp.unit_cut[c]);
  }
  void pack(const Layer<T>& L, const Split& sp, bool fwd, int c) const {
    const int64_t H = L.H, R = L.R, j0 = sp.unit_cut[c], w = sp.unit_cut[c + 1] - j0;
    for (int k = 0; k < L.cell.num_blocks; ++k) {
      const T* rows = L.W_hh() + L.cell.blocks[k].row0 * H * R;
      const int64_t c0 = bwd_col0(L, sp, c), cw = bwd_cols(L, sp, c);
      if (fwd && per_gate)
        for (int q = 0; q < L.block_rows(k); ++q)
          L.step.pack(rows + (q * H + j0) * R, R, true, R, w, w, 0, gate(L, sp, c, q));
      else if (fwd)
        L.step.pack(rows + j0 * R, R, true, R, L.block_rows(k) * w, w, H, at(k, c));
      else if (cw > 0)
        L.step.pack(rows + c0, R, false, L.block_rows(k) * H, cw, cw, cw, at(k, c));
    }
    if (L.projects()) {  // forward: h's part p = m W_hr[p]^T; backward: dm's units = dh W_hr[:, units]
      const int64_t p0 = sp.out_cut[c], pw = sp.out_cut[c + 1] - p0;
      if (fwd && pw > 0)
        L.step.pack(L.W_hr() + p0 * H, H, true, H, pw, pw, 0, hr(c));
      else if (!fwd)
        L.step.pack(L.W_hr() + j0, H, false, R, w, w, w, hr(c));
    }
    if (!ih_off.empty())
      for (int q = 0; q < gates; ++q) L.step.pack(L.W_ih() + (q * H + j0) * L.D, L.D, true, L.D, w, w, 0, ih(c, q));
  }
};

// One item of the split: rows [i0, i1) of row group r, units [j0, j0 + w) of slice c.
struct Place {
  int r, c;
  int64_t i0, i1, j0, w;
  Place(const Split& sp, int it)
      : r(it / sp.cols), c(it % sp.cols), i0(sp.row_cut[r]), i1(sp.row_cut[r + 1]), j0(sp.unit_cut[c]),
        w(sp.unit_cut[c + 1] - sp.unit_cut[c]) {}
};

// A time loop over the team, forward or backward: stage 0 packs each slice of W_hh (by the
// slice's first row group, so that it lands in the cache of the thread that uses it), then
// body(place, stage) for stages [0, stages), with flush-to-zero.
template <class T, class Body>
void run_time_loop(const Layer<T>& L, const Split& sp, const PackedSlices<T>& packed, bool fwd, int64_t stages,
                   const Body& body) {
  const int64_t first = packed.buf.data() ? 1 : 0;
  FlushSubnormals ftz;  // the team's workers take the caller's mode for the call (team.h)
  if (!run_stages(L.threads, sp.items(), first + stages, [&](int it, int64_t stage) {
        const Place pl(sp, it);
        if (stage < first) {
          if (pl.r == 0) packed.pack(L, sp, fwd, pl.c);
          return;
        }
        body(pl, stage - first);
      }))
    throw Interrupted();
}

// Inference from this many rows on computes each step's input projection inside the time loop,
// by the item that uses it, just before the step: its rows are then in cache for the pointwise
// pass, and one step of it is kept instead of all T. Below 8 rows one GEMM over all steps keeps
// each panel of W_ih busier and was faster when timed on 2 cores; training keeps the projection
// before the loop (it stores every step anyway; no faster inside when timed).
constexpr int64_t kFuseRows = 8;

// The input projection of every step, g (R x G, row stride ldg) = x (R x D) W_ih^T, on the
// step GEMM's kernel: the team packs W_ih's column panels (stage 0), then each thread computes a
// share of the rows with every column (stage 1), in blocks of rows and panels that stay in L1
// and L2 (smallgemm.h); a general BLAS at these sizes (R of tens to thousands of rows) reaches less.
template <class T>
void project(const Layer<T>& L, const T* x, int64_t R, T* g, int64_t ldg) {
  const int64_t G = L.G(), D = L.D;
  const int64_t NW = L.step.packed_size(1, 1);  // columns per panel
  const int64_t panels = (G + NW - 1) / NW;
  Buffer<T> Bp(L.step.packed_size(D, G));
  note_packed(Bp.size() * int64_t(sizeof(T)));
  const int items = int(std::max<int64_t>(1, std::min<int64_t>({int64_t(L.threads), panels, (R + 7) / 8})));
  // rows in stages of bounded work (a Ctrl-C check between them), each split over the items
  const int64_t stages = std::max<int64_t>(1, std::min<int64_t>((R + 63) / 64, 2 * R * D * G / kStageFlops));
  const int64_t srows = (R + stages - 1) / stages;
  if (!run_stages(L.threads, items, 1 + stages, [&](int it, int64_t stage) {
        if (stage == 0) {  // panels [p0, p1): columns [p0 * NW, p1 * NW)
          const int64_t p0 = panels * it / items, p1 = panels * (it + 1) / items;
          const int64_t c0 = p0 * NW, c1 = std::min(G, p1 * NW);
          if (c1 > c0) L.step.pack(L.W_ih() + c0 * D, D, true, D, c1 - c0, c1 - c0, 0, Bp.data() + p0 * D * NW);
          return;
        }
        const int64_t s0 = std::min(R, (stage - 1) * srows), s1 = std::min(R, s0 + srows);
        const int64_t rows = ((s1 - s0 + items - 1) / items + 7) / 8 * 8;
        const int64_t r0 = std::min(s1, s0 + it * rows), r1 = std::min(s1, r0 + rows);
        if (r1 > r0) L.step.gemm(r1 - r0, D, G, x + r0 * D, D, Bp.data(), false, g + r0 * ldg, ldg);
      }))
    throw Interrupted();
}

template <class T>
void forward_dir(const Layer<T>& L, const T* in, const T* h0, const T* c0, bool train, T* y, int64_t y_ld,
                 T* h_n, T* c_n, typename Tape<T>::Dir* keep) {
  const Schedule& S = L.S;
  const CellSpec<T>& cell = L.cell;
  const int64_t H = L.H, Rh = L.R, G = L.G(), W = L.W(), R = S.O[S.T];
  const bool proj = L.projects();
  if (cell.project_done && !cell.whole_rows) throw std::logic_error("a cell with project_done has whole rows");

  Buffer<T> xbuf, gbuf, hbuf, cbuf, mbuf;
  const T* xp = L.slot_input(in, xbuf);
  // (a cell's project_done then runs there too, on the step's rows: a cell with one has whole rows)
  const bool fused = !L.single_step() && !train && S.N >= kFuseRows;
  gbuf = Buffer<T>((fused && !train ? S.N : R) * W);  // one slot: the projection in the loop, inference
  hbuf = Buffer<T>(S.O[S.T + 1] * Rh);
  const bool c_slots = train;  // backward needs every c; inference updates one (N, H) in place
  if (cell.has_c) cbuf = Buffer<T>(c_slots ? S.O[S.T + 1] * H : S.N * H);
  // A projecting layer's cell writes m (H wide), which the projection turns into h: every step's
  // (in g's slot rows) when training, else one step's.
  if (proj) mbuf = Buffer<T>(train ? R * H : S.N * H);
  Buffer<T> rec(S.N * G);
  T* g = gbuf.data();
  T* hs = hbuf.data();
  T* cs = cbuf.data();
  T* ms = mbuf.data();
  auto mrow = [&](int64_t s, int64_t i) { return ms + ((train ? S.O[s] : 0) + i) * H; };

  // input projection of every step: one GEMM (or inside the loop, step by step)
  if (L.single_step())
    L.step.gemm_nt(R, L.D, G, xp, L.D, L.W_ih(), L.D, false, g, W);
  else if (!fused)
    project(L, xp, R, g, W);
  // A whole-row cell runs each step in two stages: the GEMMs by unit slices (each thread keeps its
  // slice of the weights), then the pointwise pass by row groups, on whole rows (recf), where
  // project_done also runs on the step's rows. With a projection it splits by rows alone.
  const bool two = cell.whole_rows && !proj && !L.single_step();
  if (cell.project_done && !fused && !two) {
    AllSteps<T> a;
    fill_steps(L, a);
    a.g = g;
    a.ldg = W;
    run_rowwise(L, cell.project_done, a);
  }
  auto gslot = [&](int64_t s) { return fused && !train ? g : g + S.O[s] * W; };
  if (!(fused && !train))
    for (int64_t s = 0; s < S.T; ++s) zero(g + (S.O[s] + S.B[s]) * W, (S.slot_rows(s) - S.B[s]) * W);
  if (proj && train)
    for (int64_t s = 0; s < S.T; ++s) zero(ms + (S.O[s] + S.B[s]) * H, (S.slot_rows(s) - S.B[s]) * H);
  permute_in(S, h0, Rh, hs);
  if (cell.has_c) permute_in(S, c0, H, cs);

  if (two && cell.num_blocks != 1) throw std::logic_error("a whole-row cell has one recurrent GEMM");
  const Split sp = plan_split(S, H, proj ? Rh : 0, L.threads, L.single_step(), L.step.packed_size(1, 1),
                              cell.whole_rows && !two, two);
  const PackedSlices<T> packed(L, sp, true, fused, two);
  note_packed(packed.buf.size() * int64_t(sizeof(T)));
  Buffer<T> recf(two ? S.N * G : 0);
  const int nb = cell.num_blocks, per_step = two ? 2 : nb + (proj ? 1 : 0);

  // a project_done cell's hook on m rows of one step's projection (whole rows)
  auto project_done_on = [&](T* rows, int64_t m) {
    AllSteps<T> a;
    fill_steps(L, a);
    a.g = rows;
    a.ldg = W;
    a.r1 = m;
    cell.project_done(a);
  };
  // The cell's forward phase k of step s on rows [i0, i0 + m), units [j0, j0 + w), its recurrent
  // GEMM's result at rec (gate stride rs).
  auto cell_forward = [&](int64_t s, int k, int64_t i0, int64_t m, int64_t j0, int64_t w, const T* rec_rows,
                          int64_t rs) {
    Step<T> st;
    st.m = m;
    st.n = w;
    st.H = H;
    st.g = gslot(s) + i0 * W + j0;
    st.ldg = W;
    st.rec = rec_rows;
    st.rs = rs;
    L.slice_params(j0, st);
    if (proj) {  // a projecting cell reads no h_prev (its h_prev enters only through W_hh)
      st.h = mrow(s, i0) + j0;
    } else {
      st.h_prev = hs + (S.O[s] + i0) * H + j0;
      st.h = hs + (S.O[s + 1] + i0) * H + j0;
    }
    if (cell.has_c) {
      st.c_prev = cs + ((c_slots ? S.O[s] : 0) + i0) * H + j0;
      st.c = cs + ((c_slots ? S.O[s + 1] : 0) + i0) * H + j0;
    }
    cell.forward(k, st);
  };
  auto two_phase = [&](const Place& pl, int64_t s, int k) {
    const int c = pl.c;
    if (k == 0) {  // slice c of every running row: its projection (fused), its recurrent GEMM
      const int64_t m = S.B[s], j0 = pl.j0, w = pl.w;
      if (m <= 0 || w <= 0) return;
      T* g_rows = gslot(s);
      if (fused)
        for (int q = 0; q < cell.gates; ++q)
          L.step.gemm(m, L.D, w, xp + S.O[s] * L.D, L.D, packed.ih(c, q), false, g_rows + q * H + j0, W);
      for (int q = 0; q < cell.gates; ++q)
        L.step.gemm(m, H, w, hs + S.O[s] * H, H, packed.gate(L, sp, c, q), false, recf.data() + q * H + j0, G);
      return;
    }
    const int64_t r0 = sp.group_cut[c], m = std::min(S.B[s], sp.group_cut[c + 1]) - r0;
    if (m <= 0) return;
    if (cell.project_done) project_done_on(gslot(s) + r0 * W, m);
    cell_forward(s, 0, r0, m, 0, H, recf.data() + r0 * G, H);
  };

  // stage s * per_step + k: block k's GEMM of step s and the cell's phase k, for one item; then,
  // when projecting, the item's part of h = m W_hr^T
  run_time_loop(L, sp, packed, true, S.T * per_step, [&](const Place& pl, int64_t stage) {
    const int64_t s = stage / per_step;
    const int k = int(stage % per_step);
    if (two) return two_phase(pl, s, k);
    const int c = pl.c;
    const int64_t i0 = pl.i0, i1 = pl.i1, j0 = pl.j0, w = pl.w;
    const int64_t m = std::min(S.B[s], i1) - i0;
    if (m <= 0) return;
    if (k == nb) {  // the projection
      const int64_t p0 = sp.out_cut[c], pw = sp.out_cut[c + 1] - p0;
      T* out = hs + (S.O[s + 1] + i0) * Rh + p0;
      if (pw <= 0) return;
      if (const T* B = packed.hr(c))
        L.step.gemm(m, H, pw, mrow(s, i0), H, B, false, out, Rh);
      else
        L.step.gemm_nt(m, H, pw, mrow(s, i0), H, L.W_hr() + p0 * H, H, false, out, Rh);
      return;
    }
    T* rec_it = rec.data() + i0 * G + (i1 - i0) * cell.gates * j0;
    const int64_t ldr = cell.gates * w;
    const Block& bk = cell.blocks[k];
    T* g_rows = gslot(s) + i0 * W;
    if (fused && k == 0) {
      for (int q = 0; q < cell.gates; ++q)
        L.step.gemm(m, L.D, w, xp + (S.O[s] + i0) * L.D, L.D, packed.ih(c, q), false, g_rows + q * H + j0, W);
      if (cell.project_done) project_done_on(g_rows, m);
    }
    const T* op = bk.op_col < 0 ? hs + (S.O[s] + i0) * Rh : g_rows + bk.op_col * H;
    const int64_t ld = bk.op_col < 0 ? Rh : W;
    if (const T* B = packed.at(k, c)) {
      L.step.gemm(m, Rh, L.block_rows(k) * w, op, ld, B, false, rec_it + bk.row0 * w, ldr);
    } else {
      for (int q = bk.row0; q < bk.row1; ++q)
        L.step.gemm_nt(m, Rh, w, op, ld, L.W_hh() + (q * H + j0) * Rh, Rh, false, rec_it + q * w, ldr);
    }
    cell_forward(s, k, i0, m, j0, w, rec_it, w);
  });

  scatter(S, L.d, hs, Rh, 1, y + L.d * Rh, y_ld, false);
  final_state(S, hs, Rh, h_n);
  if (cell.has_c) {
    if (c_slots)
      final_state(S, cs, H, c_n);
    else
      permute_out(S, cs, H, c_n);
  }
  if (keep) {
    keep->hs = std::move(hbuf);
    keep->cs = std::move(cbuf);
    keep->ms = std::move(mbuf);
    if (cell.keeps_cache) keep->cache = std::move(gbuf);
  }
}

template <class T>
void backward_dir(const Layer<T>& L, const typename Tape<T>::Dir& kept, const T* in, const T* dy, int64_t dy_ld,
                  const T* dh_n, const T* dc_n, T* dx, T* dh0, T* dc0, const LayerGrads<T>& gr) {
  const Schedule& S = L.S;
  const CellSpec<T>& cell = L.cell;
  const int64_t H = L.H, Rh = L.R, G = L.G(), W = L.W(), R = S.O[S.T];
  const bool proj = L.projects();
  const T* hs = kept.hs.data();
  const T* cs = kept.cs.data();
  const T* g = kept.cache.data();
  const T* ms = kept.ms.data();

  // upstream output gradient in slot layout
  Buffer<T> dybuf;
  const T* dyp = dy;  // used as it is when the slots are its natural rows
  if (!(dy && S.natural && L.d == 0 && dy_ld == Rh)) {
    dybuf = Buffer<T>(R * Rh);
    if (dy)
      gather(S, L.d, dy + L.d * Rh, dy_ld, Rh, dybuf.data());
    else
      zero(dybuf.data(), R * Rh);
    dyp = dybuf.data();
  }
  const int64_t ldd = L.ldd();
  Buffer<T> dGbuf(R * ldd), dRbuf(cell.separate_rec_grad ? R * ldd : 0);
  T* dG = dGbuf.data();
  T* dR = cell.separate_rec_grad ? dRbuf.data() : dG;
  for (int64_t s = 0; s < S.T; ++s) {
    const int64_t dead = S.slot_rows(s) - S.B[s];
    zero(dG + (S.O[s] + S.B[s]) * ldd, dead * ldd);
    if (dR != dG) zero(dR + (S.O[s] + S.B[s]) * ldd, dead * ldd);
  }
  Buffer<T> dH(S.N * Rh), dC(cell.has_c ? S.N * H : 0), dop(S.N * H);
  permute_in(S, dh_n, Rh, dH.data());
  if (cell.has_c) permute_in(S, dc_n, H, dC.data());
  // A projecting layer: the gradient of h at every step (dh carried plus dy, g's slot rows) for
  // dW_hr, the gradient of m at one step, and no dy for the cell (it is in dm).
  Buffer<T> dHT(proj ? R * Rh : 0), dm(proj ? S.N * H : 0), nody(proj ? S.N * H : 0);
  if (proj) {
    zero(nody.data(), S.N * H);
    for (int64_t s = 0; s < S.T; ++s) zero(dHT.data() + (S.O[s] + S.B[s]) * Rh, (S.slot_rows(s) - S.B[s]) * Rh);
  }

  const bool two = cell.whole_rows && !proj && !L.single_step();  // as in forward_dir
  const Split sp = plan_split(S, H, proj ? Rh : 0, L.threads, L.single_step(), L.step.packed_size(1, 1),
                              cell.whole_rows && !two, two);
  const PackedSlices<T> packed(L, sp, false);
  note_packed(packed.buf.size() * int64_t(sizeof(T)));
  const int nb = cell.num_blocks;
  if (proj && nb != 1) throw std::logic_error("a projecting cell has one recurrent GEMM");
  const int64_t pairs = S.T * nb;

  // The cell's backward phase k of step s, on one item's rows and units.
  auto cell_backward = [&](const Place& pl, int64_t s, int k, int64_t m) {
    const int64_t i0 = pl.i0, j0 = pl.j0;
    Step<T> st;
    st.m = m;
    st.n = pl.w;
    st.H = H;
    st.ldg = W;
    st.g = const_cast<T*>(g) + (S.O[s] + i0) * W + j0;  // read only in backward
    if (!proj) {
      st.h_prev = hs + (S.O[s] + i0) * H + j0;
      st.h = const_cast<T*>(hs) + (S.O[s + 1] + i0) * H + j0;
    }
    if (cell.has_c) {
      st.c_prev = cs + (S.O[s] + i0) * H + j0;
      st.c = const_cast<T*>(cs) + (S.O[s + 1] + i0) * H + j0;
      st.dc = dC.data() + i0 * H + j0;
    }
    st.dy = proj ? nody.data() + i0 * H + j0 : dyp + (S.O[s] + i0) * H + j0;
    st.dg = dG + (S.O[s] + i0) * ldd + j0;
    st.drec = dR + (S.O[s] + i0) * ldd + j0;
    st.ldd = ldd;
    st.dh = (proj ? dm.data() : dH.data()) + i0 * H + j0;
    st.dop = dop.data() + i0 * H + j0;
    L.slice_params(j0, st);
    cell.backward(k, st);
  };
  // Block k's GEMM of step s into the item's columns (c0, cw) of d h_prev or of the extra operand.
  auto block_gemm = [&](const Place& pl, int64_t s, int k, int64_t m, int64_t c0, int64_t cw, bool add) {
    const Block& bk = cell.blocks[k];
    const bool to_h = bk.op_col < 0;  // d h_prev accumulates; the extra operand's gradient is fresh
    T* out = to_h ? dH.data() + pl.i0 * Rh + c0 : dop.data() + pl.i0 * H + c0;
    const int64_t ldo = to_h ? Rh : H;
    const T* dgates = dR + (S.O[s] + pl.i0) * ldd + bk.row0 * H;
    if (cw <= 0) return;
    if (const T* B = packed.at(k, pl.c))
      L.step.gemm(m, L.block_rows(k) * H, cw, dgates, ldd, B, to_h && add, out, ldo);
    else
      L.step.gemm_nn(m, L.block_rows(k) * H, cw, dgates, ldd, L.W_hh() + bk.row0 * H * Rh + c0, Rh, to_h && add,
                     out, ldo);
  };

  if (two) {
    // Whole-row cells: stage 2p, the GEMM of step T - p (slice c of d h_prev, every running row);
    // stage 2p + 1, the pointwise backward of step T - 1 - p on row group c, whole rows.
    run_time_loop(L, sp, packed, false, 2 * S.T + 1, [&](const Place& pl, int64_t stage) {
      const int64_t p = stage / 2;
      if (stage % 2 == 0) {
        if (p > 0 && S.B[S.T - p] > 0) block_gemm(pl, S.T - p, 0, S.B[S.T - p], pl.j0, pl.w, true);
        return;
      }
      const int64_t s = S.T - 1 - p;
      Place rows = pl;
      rows.i0 = sp.group_cut[pl.c];
      rows.i1 = sp.group_cut[pl.c + 1];
      rows.j0 = 0;
      rows.w = H;
      const int64_t m = std::min(S.B[s], rows.i1) - rows.i0;
      if (m > 0) cell_backward(rows, s, 0, m);
    });
  } else if (!proj) {
    // Pair p = (step s, block k), steps from the last, blocks in reverse: the cell's backward phase
    // k on the item's units, then (next stage, once every unit's gate gradients are there) block
    // k's GEMM into the item's units of d h_prev or of the extra operand.
    auto pair_of = [&](int64_t p, int64_t& s, int& k) {
      s = S.T - 1 - p / nb;
      k = nb - 1 - int(p % nb);
    };
    run_time_loop(L, sp, packed, false, pairs + 1, [&](const Place& pl, int64_t stage) {
      int64_t s;
      int k;
      if (stage > 0) {  // the previous pair's GEMM
        pair_of(stage - 1, s, k);
        const int64_t m = std::min(S.B[s], pl.i1) - pl.i0;
        if (m > 0) block_gemm(pl, s, k, m, pl.j0, pl.w, true);
      }
      if (stage == pairs) return;
      pair_of(stage, s, k);
      const int64_t m = std::min(S.B[s], pl.i1) - pl.i0;
      if (m > 0) cell_backward(pl, s, k, m);
    });
  } else {
    // Projecting: two stages per step, steps from the last. Stage 2p: the GEMM of step s + 1 into
    // the item's part of d h_prev (for every row it ran), then dy of step s added to it (its running
    // rows), which makes dh_s, kept for dW_hr. Stage 2p + 1: dm = dh_s W_hr on the item's units,
    // then the cell's backward phase. A last stage: step 0's GEMM, which leaves dh0.
    run_time_loop(L, sp, packed, false, 2 * S.T + 1, [&](const Place& pl, int64_t stage) {
      const int64_t s = S.T - 1 - stage / 2;
      const int64_t p0 = sp.out_cut[pl.c], pw = sp.out_cut[pl.c + 1] - p0;
      if (stage % 2 == 0) {
        if (s + 1 < S.T) {
          const int64_t m = std::min(S.B[s + 1], pl.i1) - pl.i0;
          if (m > 0) block_gemm(pl, s + 1, 0, m, p0, pw, false);
        }
        if (s < 0) return;
        const int64_t m = std::min(S.B[s], pl.i1) - pl.i0;
        for (int64_t i = pl.i0; i < pl.i0 + m; ++i) {
          T* d = dH.data() + i * Rh + p0;
          const T* dyr = dyp + (S.O[s] + i) * Rh + p0;
          T* keep = dHT.data() + (S.O[s] + i) * Rh + p0;
          for (int64_t j = 0; j < pw; ++j) keep[j] = d[j] = d[j] + dyr[j];
        }
        return;
      }
      const int64_t m = std::min(S.B[s], pl.i1) - pl.i0;
      if (m <= 0) return;
      T* dmr = dm.data() + pl.i0 * H + pl.j0;
      if (const T* B = packed.hr(pl.c))
        L.step.gemm(m, Rh, pl.w, dH.data() + pl.i0 * Rh, Rh, B, false, dmr, H);
      else
        L.step.gemm_nn(m, Rh, pl.w, dH.data() + pl.i0 * Rh, Rh, L.W_hr() + pl.j0, H, false, dmr, H);
      cell_backward(pl, s, 0, m);
    });
  }
  permute_out(S, dH.data(), Rh, dh0);
  if (cell.has_c) permute_out(S, dC.data(), H, dc0);

  // after the loop: b, the cell's own parameters, then one GEMM each for every block of dW_hh,
  // W_hr, dW_ih and dx
  AllSteps<T> all;
  fill_steps(L, all);
  all.g = const_cast<T*>(g);
  all.ldg = W;
  all.hs = proj ? nullptr : hs;
  all.cs = cs;
  all.dg = dG;
  all.drec = dR;
  all.ldd = ldd;
  for (int k = 0; k < cell.num_params; ++k) all.dp[k] = gr.p[k];
  run_unitwise(L, L.step.bias_grad, all);  // the bias's gradient (step.h)
  Buffer<T> partials(cell.partial_cols ? (R + kPartialRows - 1) / kPartialRows * cell.partial_cols * H : 0);
  all.partials = partials.data();
  if (cell.param_grads && !cell.partial_cols) run_unitwise(L, cell.param_grads, all);
  for (int k = 0; k < cell.num_blocks; ++k) {
    const Block& bk = cell.blocks[k];
    const T* op = bk.op_col < 0 ? hs : g + bk.op_col * H;
    team_gemm<T>(L.threads, true, false, (bk.row1 - bk.row0) * H, Rh, R, dR + bk.row0 * H, ldd, op,
                 bk.op_col < 0 ? Rh : W, T(0), gr.p[1] + bk.row0 * H * Rh, Rh);
  }
  if (proj) team_gemm<T>(L.threads, true, false, Rh, H, R, dHT.data(), Rh, ms, H, T(0), gr.p[cell.num_params], H);
  if (cell.input_grads) run_rowwise(L, cell.input_grads, all, cell.partial_cols ? kPartialRows : 16);
  if (cell.param_grads && cell.partial_cols) run_unitwise(L, cell.param_grads, all);
  Buffer<T> xbuf;
  const T* xp = L.slot_input(in, xbuf);
  team_gemm<T>(L.threads, true, false, G, L.D, R, dG, ldd, xp, L.D, T(0), gr.p[0], L.D);
  // dx null: the first layer's input needs no gradient
  if (dx && S.natural && L.d == 0) {
    team_gemm<T>(L.threads, false, false, R, L.D, G, dG, ldd, L.W_ih(), L.D, T(1), dx, L.D);
  } else if (dx) {
    Buffer<T> dxp(R * L.D);
    team_gemm<T>(L.threads, false, false, R, L.D, G, dG, ldd, L.W_ih(), L.D, T(0), dxp.data(), L.D);
    scatter(S, L.d, dxp.data(), L.D, 0, dx, L.D, true);
  }
}

}  // namespace

int64_t packed_bytes_of_last_call() { return tl_packed_bytes; }

template <class T>
std::unique_ptr<Tape<T>> forward(const Problem& p, const LayerParams<T>* params, const T* x, const T* h0,
                                 const T* c0, const int64_t* lengths, const T* masks, bool train, T* y,
                                 T* h_n, T* c_n) {
  const Kernels<T> kern = kernels<T>(p.cell);
  const int threads = team_size();
  tl_packed_bytes = 0;
  auto tape = std::make_unique<Tape<T>>(p, lengths);
  const Schedule& S = tape->sched;
  const int64_t TN = p.T * p.N, out_w = p.dirs * p.R(), state = p.N * p.R(), cstate = p.N * p.H;
  if (train) {
    tape->inputs.resize(p.layers);
    tape->dirs.resize(p.layers * p.dirs);
    tape->inputs[0] = Buffer<T>(TN * p.D);
    if (TN > 0) std::memcpy(tape->inputs[0].data(), x, size_t(TN * p.D) * sizeof(T));
  }
  Buffer<T> in_buf, out_buf;
  const T* in = x;
  for (int64_t l = 0; l < p.layers; ++l) {
    const int64_t D = l == 0 ? p.D : out_w;
    const bool last = l == p.layers - 1;
    if (!last) out_buf = Buffer<T>(TN * out_w);
    T* out = last ? y : out_buf.data();
    if (!S.natural) zero(out, TN * out_w);  // padding stays zero
    for (int d = 0; d < p.dirs; ++d) {
      const int64_t k = l * p.dirs + d;
      Layer<T> L{kern.cell, kern.step, S, params[k], D, p.H, d, threads, p.R()};
      forward_dir(L, in, h0 + k * state, c0 ? c0 + k * cstate : nullptr, train, out, out_w, h_n + k * state,
                  c_n ? c_n + k * cstate : nullptr, train ? &tape->dirs[k] : nullptr);
    }
    if (last) break;
    if (masks) {
      const T* mk = masks + l * TN * out_w;
      T* o = out_buf.data();
      for (int64_t i = 0; i < TN * out_w; ++i) o[i] *= mk[i];
    }
    in_buf = std::move(out_buf);
    in = in_buf.data();
    if (train) {
      tape->inputs[l + 1] = std::move(in_buf);
      in = tape->inputs[l + 1].data();
    }
  }
  if (!train) tape.reset();
  return tape;
}

template <class T>
void backward(const Tape<T>& tape, const LayerParams<T>* params, const T* masks, const T* dy, const T* dh_n,
              const T* dc_n, T* dx, T* dh0, T* dc0, const LayerGrads<T>* grads) {
  const Problem& p = tape.p;
  const Kernels<T> kern = kernels<T>(p.cell);
  const int threads = team_size();
  tl_packed_bytes = 0;
  const Schedule& S = tape.sched;
  const int64_t TN = p.T * p.N, out_w = p.dirs * p.R(), state = p.N * p.R(), cstate = p.N * p.H;
  Buffer<T> dy_buf, din_buf;
  for (int64_t l = p.layers - 1; l >= 0; --l) {
    const int64_t D = l == 0 ? p.D : out_w;
    if (l > 0) din_buf = Buffer<T>(TN * D);
    T* din = l == 0 ? dx : din_buf.data();  // null: no gradient of the input wanted
    if (din) zero(din, TN * D);
    for (int d = 0; d < p.dirs; ++d) {
      const int64_t k = l * p.dirs + d;
      Layer<T> L{kern.cell, kern.step, S, params[k], D, p.H, d, threads, p.R()};
      backward_dir(L, tape.dirs[k], tape.inputs[l].data(), dy, out_w, dh_n ? dh_n + k * state : nullptr,
                   dc_n ? dc_n + k * cstate : nullptr, din, dh0 + k * state, dc0 ? dc0 + k * cstate : nullptr,
                   grads[k]);
    }
    if (l == 0) break;
    if (masks) {
      const T* mk = masks + (l - 1) * TN * out_w;
      for (int64_t i = 0; i < TN * out_w; ++i) din[i] *= mk[i];
    }
    dy_buf = std::move(din_buf);
    dy = dy_buf.data();
  }
}

#define RNNCORE_INSTANTIATE(T)                                                                               \
  template struct Tape<T>;                                                                                   \
  template std::unique_ptr<Tape<T>> forward<T>(const Problem&, const LayerParams<T>*, const T*, const T*,    \
                                               const T*, const int64_t*, const T*, bool, T*, T*, T*);        \
  template void backward<T>(const Tape<T>&, const LayerParams<T>*, const T*, const T*, const T*, const T*, T*, \
                            T*, T*, const LayerGrads<T>*);
RNNCORE_INSTANTIATE(float)
RNNCORE_INSTANTIATE(double)

}  // namespace rnncore
