// The one driver: layers x directions x time for every cell, the GEMM schedule, the workspace.
//
// Rows are kept in "slot" layout. Batch rows are sorted by length, longest first (stable), so
// the rows still running at step s are the first B[s] of them. Slot k (k = 0..T) has B[k-1]
// rows (B[-1] = N) and starts at row O[k]:
//   hs   slot 0 = h0, slot s+1 = h after step s            ((O[T+1]) x H)
//   g    slot s = step s's input projection, then its cache ((O[T]) x W, W = (G + extra) * H)
//   dG   slot s = step s's gate gradients                   ((O[T]) x G*H)
// Step s's gates and its h_prev sit at the same rows, so dW_hh over all steps is one GEMM;
// rows of slot s past B[s] (sequences that ended) are zero in g and dG. Without lengths the
// forward direction's slots are the natural (T, N) rows and no gather is needed.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <new>
#include <vector>

#include "platform.h"
#include "step.h"

namespace rnncore {

// Uninitialised, 64-byte aligned storage; throws std::bad_alloc (MemoryError in Python).
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(int64_t n) : n_(n) {
    if (n > 0) {
      size_t bytes = ((size_t(n) * sizeof(T) + 63) / 64) * 64;
      T* p = static_cast<T*>(workspace_malloc(bytes));
      if (!p) throw std::bad_alloc();
      p_ = std::unique_ptr<T, Free>(p, Free{bytes});
    }
  }
  T* data() const { return p_.get(); }
  int64_t size() const { return n_; }

 private:
  struct Free {
    size_t bytes = 0;
    void operator()(T* p) const { workspace_free(p, bytes); }
  };
  std::unique_ptr<T, Free> p_;
  int64_t n_ = 0;
};

struct Problem {
  int cell;  // the cell's code (kernels.cpp)
  int64_t T, N, D, H, layers, dirs;
  int64_t P = 0;  // the projection's size (LSTMP), 0 for none
  int64_t R() const { return P > 0 ? P : H; }  // the size of h
};

// One layer and direction's parameters, in the order of the cell's list (CellSpec::params), then
// W_hr when the layer projects; shapes as ParamInfo gives them.
template <class T>
struct LayerParams {
  const T* p[kMaxParams] = {};
};

template <class T>
struct LayerGrads {  // the same shapes, written (not accumulated)
  T* p[kMaxParams] = {};
};

struct Schedule {
  int64_t T = 0, N = 0;
  bool natural = true;        // every row runs all T steps: slots are the natural rows
  std::vector<int64_t> perm;  // sorted row i is batch row perm[i]
  std::vector<int64_t> len;   // length of sorted row i
  std::vector<int64_t> B;     // rows running at step s
  std::vector<int64_t> O;     // first row of slot k, k = 0..T+1
  Schedule(int64_t T, int64_t N, const int64_t* lengths);
  int64_t slot_rows(int64_t k) const { return k == 0 ? N : B[k - 1]; }
  // natural time index of sorted row i at step s, for direction d
  int64_t time(int d, int64_t s, int64_t i) const { return d == 0 ? s : len[i] - 1 - s; }
};

// What a training forward keeps for backward, and nothing more.
template <class T>
struct Tape {
  Problem p;
  Schedule sched;
  std::vector<Buffer<T>> inputs;  // per layer: its input (T, N, D_l), natural layout
  struct Dir {
    Buffer<T> hs;     // slot layout, (O[T+1], R)
    Buffer<T> cs;     // same, LSTM only
    Buffer<T> cache;  // slot layout, (O[T], W), cells that keep one
    Buffer<T> ms;     // a projecting layer's cell outputs m, g's slot rows, (O[T], H)
  };
  std::vector<Dir> dirs;  // layer-major, direction-minor
  Tape(const Problem& p, const int64_t* lengths) : p(p), sched(p.T, p.N, lengths) {}
  int64_t bytes() const;
};

// Thrown by forward and backward when interrupt_flag() (team.h) was set during the call: the
// call stopped at a stage boundary, freed its workspace and wrote nothing the caller keeps.
struct Interrupted : std::exception {
  const char* what() const noexcept override { return "interrupted"; }
};

// x (T, N, D); h0, c0 (layers*dirs, N, H) (c0 only for LSTM); lengths (N) or null;
// masks (layers-1, T, N, dirs*H) or null. Writes y (T, N, dirs*H), h_n, c_n. Returns the tape
// when train, else null.
template <class T>
std::unique_ptr<Tape<T>> forward(const Problem& p, const LayerParams<T>* params, const T* x, const T* h0,
                                 const T* c0, const int64_t* lengths, const T* masks, bool train, T* y,
                                 T* h_n, T* c_n);

// Bytes of the packed copies of the weights that the calling thread's last forward or backward
// held at once (its workspace; nothing is kept between calls).
int64_t packed_bytes_of_last_call();

// dy, dh_n, dc_n may be null (zero). Writes dx, dh0, dc0 and every parameter gradient.
template <class T>
void backward(const Tape<T>& tape, const LayerParams<T>* params, const T* masks, const T* dy, const T* dh_n,
              const T* dc_n, T* dx, T* dh0, T* dc0, const LayerGrads<T>* grads);

}  // namespace rnncore
