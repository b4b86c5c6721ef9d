// Python bindings: check arrays, allocate outputs, release the GIL, call the driver.
// The friendly argument checking lives in python/rnncore/models.py; the checks here only make
// sure that nothing reaching the driver can read or write out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <csignal>
#define RNNCORE_SIGINT 1
#endif

#include "blas.h"
#include "dispatch.h"
#include "driver.h"
#include "microbench.h"
#include "platform.h"
#include "team.h"

namespace py = pybind11;
using namespace rnncore;

namespace {

struct PyTape {  // a training forward's tape, float or double
  std::unique_ptr<Tape<float>> f;
  std::unique_ptr<Tape<double>> d;
  int64_t bytes() const { return f ? f->bytes() : d ? d->bytes() : 0; }
};

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

// Ctrl-C during a long call. Python's own SIGINT handler only notes the signal for the main
// thread's next bytecode, which a call in C++ never reaches. During a call on the main thread,
// a handler of ours also raises the team's interrupt flag, then hands the signal to the handler
// that was there; the call stops at the next time step (or GEMM) and the binding lets Python
// run its handler, which raises KeyboardInterrupt.
int64_t g_main_thread = -1;
#ifdef RNNCORE_SIGINT
struct sigaction g_prev_sigint;
void on_sigint(int sig, siginfo_t* info, void* ctx) {
  interrupt_flag().store(1);
  if (g_prev_sigint.sa_flags & SA_SIGINFO) {
    if (g_prev_sigint.sa_sigaction) g_prev_sigint.sa_sigaction(sig, info, ctx);
  } else if (g_prev_sigint.sa_handler != SIG_DFL && g_prev_sigint.sa_handler != SIG_IGN) {
    g_prev_sigint.sa_handler(sig);
  }
}
#endif
class WatchInterrupt {
 public:
  WatchInterrupt() {
#ifdef RNNCORE_SIGINT
    if (int64_t(PyThread_get_thread_ident()) != g_main_thread) return;
    struct sigaction cur;
    if (sigaction(SIGINT, nullptr, &cur) != 0) return;
    if (!(cur.sa_flags & SA_SIGINFO) && (cur.sa_handler == SIG_DFL || cur.sa_handler == SIG_IGN)) return;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigint) return;
    g_prev_sigint = cur;
    struct sigaction mine = cur;
    mine.sa_flags |= SA_SIGINFO;
    mine.sa_sigaction = on_sigint;
    interrupt_flag().store(0);
    if (sigaction(SIGINT, &mine, nullptr) != 0) return;
    active_ = true;
    watch_interrupt(true);
#endif
  }
  ~WatchInterrupt() {
#ifdef RNNCORE_SIGINT
    if (!active_) return;
    watch_interrupt(false);
    struct sigaction cur;
    if (sigaction(SIGINT, nullptr, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigint)
      sigaction(SIGINT, &g_prev_sigint, nullptr);
    interrupt_flag().store(0);
#endif
  }
  WatchInterrupt(const WatchInterrupt&) = delete;
  WatchInterrupt& operator=(const WatchInterrupt&) = delete;

 private:
  bool active_ = false;
};

// Runs `work` (the driver) without the GIL, with Ctrl-C watched; an interrupted call raises
// KeyboardInterrupt, or runs again if the Python handler chose not to raise.
template <class F>
void run_released(const F& work) {
  // rnncore's OpenBLAS works single-threaded inside the team (threadpoolctl may have changed it)
  if (blas_get_num_threads() != 1) blas_set_num_threads(1);
  for (;;) {
    bool stopped = false;
    {
      WatchInterrupt watch;
      py::gil_scoped_release nogil;
      try {
        work();
      } catch (const Interrupted&) {
        stopped = true;
      }
    }
    if (!stopped) return;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }
}

// Whether the array's dtype is T's, native byte order. By value: an unpickled or copied array's
// dtype is equal to T's but not the same object (the identity test is only the fast path).
template <class T>
bool has_dtype(const py::array& a) {
  const py::dtype want = py::dtype::of<T>();
  return a.dtype().is(want) || a.dtype().equal(want);
}

// The array as a C-contiguous T array of exactly `shape`, or a ValueError/TypeError.
template <class T>
py::array_t<T> checked(const py::handle& obj, const char* name, const std::vector<int64_t>& shape) {
  if (!py::isinstance<py::array>(obj)) throw py::type_error(std::string(name) + ": expected a numpy array");
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!has_dtype<T>(a))
    throw py::type_error(std::string(name) + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) +
                         ", got " + std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": must be C-contiguous");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(std::string(name) + ": must be aligned");
  std::vector<int64_t> got(a.shape(), a.shape() + a.ndim());
  if (got != shape)
    throw py::value_error(std::string(name) + ": expected shape " + shape_str(shape) + ", got " + shape_str(got));
  return py::reinterpret_borrow<py::array_t<T>>(a);
}

template <class T>
const T* optional(const py::object& obj, const char* name, const std::vector<int64_t>& shape,
                  std::vector<py::array_t<T>>& keep) {
  if (obj.is_none()) return nullptr;
  keep.push_back(checked<T>(obj, name, shape));
  return keep.back().data();
}

// An output array. Large ones take their memory from the workspace pool (platform.h) and give it
// back there when NumPy frees them: in a training loop the next call's outputs and gradients then
// reuse warm memory, not pages the C library has just given back to the system.
struct PooledBlock {
  void* p;
  size_t bytes;
};
template <class T>
py::array_t<T> empty(const std::vector<int64_t>& shape) {
  const std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  size_t n = 1;
  for (int64_t d : shape) n *= size_t(d);
  size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
  if (bytes < WorkspacePool::kMinBytes) return py::array_t<T>(dims);
  auto* block = new PooledBlock{nullptr, bytes};
  block->p = workspace_malloc(block->bytes);  // updates bytes to the block's own size
  if (!block->p) {
    delete block;
    throw std::bad_alloc();
  }
  auto give_back = [](void* b) {
    auto* blk = static_cast<PooledBlock*>(b);
    workspace_free(blk->p, blk->bytes);
    delete blk;
  };
  py::capsule owner;
  try {
    owner = py::capsule(block, give_back);
  } catch (...) {
    give_back(block);
    throw;
  }
  return py::array_t<T>(dims, static_cast<T*>(block->p), owner);
}

struct Config {
  Problem p;
  CellSpec<double> cell;  // facts only (the kernels are the driver's business)
  int num_params;         // the cell's, then W_hr when the layer projects
  std::vector<ParamInfo> params;
  int gates;
  bool has_c;
};

CellSpec<double> cell_facts(int code) {
  const CellSpec<double> c = code >= 0 ? kernels<double>(code).cell : CellSpec<double>{};
  if (!c.name) throw py::value_error("cell: unknown code " + std::to_string(code));
  return c;
}

Config config(int cell, int64_t layers, int64_t dirs, int64_t T, int64_t N, int64_t D, int64_t H, int64_t P) {
  const CellSpec<double> spec = cell_facts(cell);
  if (layers < 1 || (dirs != 1 && dirs != 2) || T < 1 || N < 0 || D < 1 || H < 1 || P < 0)
    throw py::value_error("invalid sizes");
  if (P > 0 && !spec.can_project) throw py::value_error(std::string("proj_size: the ") + spec.name + " cell has no projection");
  if (P >= H) throw py::value_error("proj_size: must be below hidden_size");
  const int G = spec.gates;
  // every count the BLAS sees is a 32-bit int, and (T + 1) * N rows of (G + 1) * H columns must fit
  const int64_t lim = int64_t(1) << 31;
  const int64_t cache_row = (G + spec.extra_cols) * H + (spec.extra_scalars + 15) / 16 * 16;
  const int64_t wide = std::max<int64_t>({D, dirs * H, (G + 1) * H, cache_row, (G + spec.grad_cols) * H});
  if ((T + 1) * N >= lim || wide >= lim || (T + 1) * N > (int64_t(1) << 62) / wide / 8)
    throw py::value_error("sizes too large: T=" + std::to_string(T) + ", N=" + std::to_string(N) +
                          ", D=" + std::to_string(D) + ", H=" + std::to_string(H));
  Config c{Problem{cell, T, N, D, H, layers, dirs, P}, spec, spec.num_params, {}, G, spec.has_c};
  c.params.assign(spec.params, spec.params + spec.num_params);
  if (P > 0) c.params.push_back(kProjection);
  c.num_params = int(c.params.size());
  return c;
}

// A parameter's shape for a layer of input size D.
std::vector<int64_t> shape_of(const ParamInfo& info, int64_t D, int64_t H, int64_t R) {
  std::vector<int64_t> s;
  for (int k = 0; k < info.ndim; ++k) {
    const Dim& d = info.dims[k];
    const int64_t v = d.var == Var::D ? D : d.var == Var::H ? H : d.var == Var::R ? R : 1;
    s.push_back(d.mult * v);
  }
  return s;
}

// Each entry of `weights` is a sequence of the layer's parameters in the cell's order (Config::params);
// entries past those may be given as None.
template <class T>
std::vector<LayerParams<T>> params_of(const Config& c, const py::list& weights, std::vector<py::array_t<T>>& keep) {
  const Problem& p = c.p;
  if (int64_t(weights.size()) != p.layers * p.dirs)
    throw py::value_error("weights: expected " + std::to_string(p.layers * p.dirs) + " entries");
  std::vector<LayerParams<T>> out;
  for (int64_t k = 0; k < p.layers * p.dirs; ++k) {
    auto t = weights[k].cast<py::sequence>();
    auto bad = [&](const char* more) {  // the message names the cell's parameters
      std::string names;
      for (const ParamInfo& info : c.params) names += std::string(names.empty() ? "" : ", ") + info.name;
      return py::value_error("weights: each entry is (" + names + ")" + more);
    };
    if (int64_t(t.size()) < c.num_params) throw bad("");
    for (size_t q = size_t(c.num_params); q < t.size(); ++q)
      if (!t[q].is_none()) throw bad(", then only None");
    const int64_t D = k < p.dirs ? p.D : p.dirs * p.R();
    LayerParams<T> lp;
    for (int q = 0; q < c.num_params; ++q) {
      keep.push_back(checked<T>(t[q], c.params[q].name, shape_of(c.params[q], D, p.H, p.R())));
      lp.p[q] = keep.back().data();
    }
    out.push_back(lp);
  }
  return out;
}

template <class T>
py::tuple forward_t(const Config& c, const py::list& weights, const py::array& x_, const py::array& h0_,
                    const py::object& c0_, const py::object& lengths_, const py::object& masks_, bool train) {
  const Problem& p = c.p;
  std::vector<py::array_t<T>> keep;
  auto params = params_of<T>(c, weights, keep);
  const std::vector<int64_t> state{p.layers * p.dirs, p.N, p.R()}, cstate{p.layers * p.dirs, p.N, p.H};
  auto x = checked<T>(x_, "x", {p.T, p.N, p.D});
  auto h0 = checked<T>(h0_, "h0", state);
  const T* c0 = c.has_c ? optional<T>(c0_, "c0", cstate, keep) : nullptr;
  if (c.has_c && !c0) throw py::value_error("c0: required for LSTM");
  const T* masks = optional<T>(masks_, "masks", {p.layers - 1, p.T, p.N, p.dirs * p.R()}, keep);
  const int64_t* lengths = nullptr;
  py::array_t<int64_t> lens;
  if (!lengths_.is_none()) {
    lens = checked<int64_t>(lengths_, "lengths", {p.N});
    for (int64_t i = 0; i < p.N; ++i)
      if (lens.data()[i] < 0 || lens.data()[i] > p.T) throw py::value_error("lengths: each must be in [0, T]");
    lengths = lens.data();
  }
  auto y = empty<T>({p.T, p.N, p.dirs * p.R()});
  auto h_n = empty<T>(state);
  py::object c_n = py::none();
  T* c_n_ptr = nullptr;
  if (c.has_c) {
    auto a = empty<T>(cstate);
    c_n_ptr = a.mutable_data();
    c_n = a;
  }
  std::unique_ptr<Tape<T>> tape;
  run_released([&] {
    tape = forward<T>(p, params.data(), x.data(), h0.data(), c0, lengths, masks, train, y.mutable_data(),
                      h_n.mutable_data(), c_n_ptr);
  });
  py::object t = py::none();
  if (tape) {
    PyTape pt;
    if constexpr (std::is_same_v<T, float>) pt.f = std::move(tape); else pt.d = std::move(tape);
    t = py::cast(std::move(pt));
  }
  return py::make_tuple(y, h_n, c_n, t);
}

template <class T>
py::tuple backward_t(const Tape<T>& tape, const py::list& weights, const py::object& masks_, const py::object& dy_,
                     const py::object& dh_n_, const py::object& dc_n_, bool need_dx) {
  const Problem& p = tape.p;
  const Config c = config(p.cell, p.layers, p.dirs, p.T, p.N, p.D, p.H, p.P);
  std::vector<py::array_t<T>> keep;
  auto params = params_of<T>(c, weights, keep);
  const std::vector<int64_t> state{p.layers * p.dirs, p.N, p.R()}, cstate{p.layers * p.dirs, p.N, p.H};
  const T* masks = optional<T>(masks_, "masks", {p.layers - 1, p.T, p.N, p.dirs * p.R()}, keep);
  const T* dy = optional<T>(dy_, "dy", {p.T, p.N, p.dirs * p.R()}, keep);
  const T* dh_n = optional<T>(dh_n_, "dh_n", state, keep);
  const T* dc_n = c.has_c ? optional<T>(dc_n_, "dc_n", cstate, keep) : nullptr;

  py::object dx = py::none();
  T* dx_ptr = nullptr;
  if (need_dx) {
    auto a = empty<T>({p.T, p.N, p.D});
    dx_ptr = a.mutable_data();
    dx = a;
  }
  auto dh0 = empty<T>(state);
  py::object dc0 = py::none();
  T* dc0_ptr = nullptr;
  if (c.has_c) {
    auto a = empty<T>(cstate);
    dc0_ptr = a.mutable_data();
    dc0 = a;
  }
  py::list grads_out;
  std::vector<LayerGrads<T>> grads;
  for (int64_t k = 0; k < p.layers * p.dirs; ++k) {
    const int64_t D = k < p.dirs ? p.D : p.dirs * p.R();
    LayerGrads<T> lg;
    py::tuple out(c.num_params);
    for (int q = 0; q < c.num_params; ++q) {
      auto a = empty<T>(shape_of(c.params[q], D, p.H, p.R()));
      lg.p[q] = a.mutable_data();
      out[q] = a;
    }
    grads.push_back(lg);
    grads_out.append(out);
  }
  run_released([&] {
    backward<T>(tape, params.data(), masks, dy, dh_n, dc_n, dx_ptr, dh0.mutable_data(), dc0_ptr, grads.data());
  });
  return py::make_tuple(dx, dh0, dc0, grads_out);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "rnncore's C++ core: one driver for RNN, LSTM and GRU over OpenBLAS";

  py::class_<PyTape>(m, "Tape", "What a training forward keeps for backward (opaque).")
      .def_property_readonly("nbytes", &PyTape::bytes, "bytes held by the tape");

  m.def(
      "forward",
      [](int cell, int64_t layers, int64_t dirs, const py::list& weights, const py::array& x, const py::array& h0,
         const py::object& c0, const py::object& lengths, const py::object& masks, bool train, int64_t hidden_size) {
        if (x.ndim() != 3) throw py::value_error("x: expected 3 dimensions");
        if (h0.ndim() != 3) throw py::value_error("h0: expected 3 dimensions");
        // h0 is (layers * dirs, N, R): its last dimension is the hidden size, or the projection's
        const int64_t H = hidden_size > 0 ? hidden_size : h0.shape(2), P = hidden_size > 0 ? h0.shape(2) : 0;
        const Config c = config(cell, layers, dirs, x.shape(0), x.shape(1), x.shape(2), H, P == H ? 0 : P);
        if (has_dtype<float>(x)) return forward_t<float>(c, weights, x, h0, c0, lengths, masks, train);
        if (has_dtype<double>(x)) return forward_t<double>(c, weights, x, h0, c0, lengths, masks, train);
        throw py::type_error("x: expected float32 or float64, got " + std::string(py::str(x.dtype())));
      },
      py::arg("cell"), py::arg("layers"), py::arg("dirs"), py::arg("weights"), py::arg("x"), py::arg("h0"),
      py::arg("c0"), py::arg("lengths"), py::arg("masks"), py::arg("train"), py::arg("hidden_size") = 0,
      "forward(cell, layers, dirs, weights, x, h0, c0, lengths, masks, train, hidden_size=0) -> (y, h_n, c_n, tape)\n\n"
      "The whole network over the sequence. cell: a code of cell_info(); weights: per layer and direction, "
      "the cell's parameters in its order (cell_info()[name]['params'], then W_hr when projecting), more "
      "entries only None; x (T, N, D), h0 (layers * dirs, N, R) and c0 (layers * dirs, N, H) of one dtype, "
      "float32 or float64, C-contiguous; hidden_size H (0: R, no projection; else h0's R < H is the "
      "projection's size); lengths (N,) int64 or None; masks (layers - 1, T, N, dirs * R) dropout masks or "
      "None. Returns y (T, N, dirs * R), h_n, c_n (None but for the LSTM cells) and a Tape when train is "
      "true (else None). Arguments are checked only as far as memory safety needs: rnncore.models checks "
      "them for users.");

  m.def(
      "backward",
      [](const PyTape& t, const py::list& weights, const py::object& masks, const py::object& dy,
         const py::object& dh_n, const py::object& dc_n, bool need_dx) {
        if (t.f) return backward_t<float>(*t.f, weights, masks, dy, dh_n, dc_n, need_dx);
        if (t.d) return backward_t<double>(*t.d, weights, masks, dy, dh_n, dc_n, need_dx);
        throw py::value_error("tape: empty");
      },
      py::arg("tape"), py::arg("weights"), py::arg("masks"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
      py::arg("need_dx") = true,
      "backward(tape, weights, masks, dy, dh_n, dc_n, need_dx=True) -> (dx, dh0, dc0, grads)\n\n"
      "Backpropagation through time of the forward that made tape, with the same weights and masks. "
      "dy (T, N, dirs * H), dh_n and dc_n (layers * dirs, N, H) may each be None (zero). Returns dx "
      "(None when need_dx is false: the first layer's input GEMM is skipped), dh0, dc0 (None but for "
      "the LSTM) and per layer and direction (dW_ih, dW_hh, db, db_hn or None).");

  m.def(
      "cell_info",
      [] {
        // What each cell is, from its kernel struct (cells/*.h), in the order of the codes.
        py::dict out;
        const char* vars[] = {"1", "D", "H", "R"};
        const char* inits[] = {"uniform", "ones", "zeros"};
        auto param = [&](const ParamInfo& info) {
          py::list shape;
          for (int k = 0; k < info.ndim; ++k)
            shape.append(py::make_tuple(info.dims[k].mult, vars[int(info.dims[k].var)]));
          py::dict d;
          d["name"] = info.name;
          d["shape"] = py::tuple(shape);
          d["init"] = inits[int(info.init)];
          return d;
        };
        for (int code = 0;; ++code) {
          const CellSpec<double> c = kernels<double>(code).cell;
          if (!c.name) break;
          py::dict d;
          d["code"] = code;
          d["gates"] = c.gates;
          d["states"] = c.has_c ? py::tuple(py::make_tuple("h", "c")) : py::tuple(py::make_tuple("h"));
          py::list params;
          for (int k = 0; k < c.num_params; ++k) params.append(param(c.params[k]));
          d["params"] = params;
          d["projection"] = c.can_project ? py::object(param(kProjection)) : py::object(py::none());
          d["torch"] = c.torch;
          d["keras"] = c.keras;
          d["onnx"] = c.onnx;
          out[c.name] = d;
        }
        return out;
      },
      "name -> what the cell is: code, gates, states, params (name, shape as (mult, var) pairs with var "
      "'1', 'D', 'H' or 'R' (the size of h), init), projection (W_hr's entry, or None), and the names of "
      "its PyTorch, Keras and ONNX counterparts ('' for none)");

  // rnncore runs its own threads (team.h); the BLAS works single-threaded inside them. The team
  // starts as large as the BLAS would have been (OPENBLAS_NUM_THREADS or cores).
  set_team_size(blas_get_num_threads());
  blas_set_num_threads(1);
  prepare_for_fork();
  g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<int64_t>();
  m.def("set_num_threads", &set_team_size, py::arg("n"),
        "Threads of rnncore's team for the calls from now on (1 to MAX_THREADS; unchecked here: "
        "rnncore.set_num_threads checks it).");
  m.def("get_num_threads", &team_size, "Threads of rnncore's team.");
  m.attr("MAX_THREADS") = kMaxThreads;
  m.def("packed_bytes_of_last_call", &packed_bytes_of_last_call,
        "bytes of the packed weights (W_hh slices, W_ih) the calling thread's last forward or backward held");
  m.def("bench_step_gemm", &bench_step_gemm, py::arg("M"), py::arg("K"), py::arg("N"), py::arg("reps"),
        py::arg("rounds"), py::call_guard<py::gil_scoped_release>(),
        "seconds per call of the time loop's GEMM, C (M x N) = A (M x K) B, B packed and hot");
  m.def("bench_gemv_floor", &bench_gemv_floor, py::arg("rows"), py::arg("K"), py::arg("steps"),
        py::arg("threads"), py::arg("rounds"), py::call_guard<py::gil_scoped_release>(),
        "seconds per step of a bare GEMV time loop over the team (one stage boundary per step)");
  m.def("team_stats", [] {
    const TeamStats t = team_stats();
    py::dict d;
    d["team_calls"] = t.team_calls;
    d["solo_calls"] = t.solo_calls;
    d["steals"] = t.steals;
    d["stalls"] = t.stalls;
    d["moves"] = t.moves;
    d["workers"] = t.workers;
    d["openmp_calls"] = t.openmp_calls;
    return d;
  }, "Counters of the team since the process started (rnncore.team_stats explains them).");
  m.def("attach_openmp", [](const std::string& path) { return attach_openmp(path.c_str()); }, py::arg("path"),
        "run the team's calls on the threads of the OpenMP runtime already loaded from `path` ('': the "
        "process's global symbols); returns whether it was found (team.h)");
  m.def("detach_openmp", &detach_openmp, "run the team's calls on rnncore's own threads again");
  m.def("openmp_attached", &openmp_attached, "whether calls run on a lent OpenMP runtime's threads");
  m.def("workspace_kept", [] { return WorkspacePool::get().held(); },
        "bytes of freed workspace blocks kept for later calls (platform.h, WorkspacePool)");
  m.def("release_workspace", [] { WorkspacePool::get().release(); },
        "give every kept workspace block back to the system");
  m.def("blas_corename", &blas_corename, "OpenBLAS's kernel family on this CPU (openblas_get_corename).");
  m.def("blas_config", &blas_config, "OpenBLAS's build configuration string (openblas_get_config).");
  m.def("kernel_isa", &kernel_isa, "instruction-set build of the pointwise kernels in use");
}

// For threadpoolctl (rnncore/_threadpool.py): the team's size, read and set through the library
// file like any native thread pool.
extern "C" RNNCORE_EXPORT int rnncore_get_num_threads() { return team_size(); }
extern "C" RNNCORE_EXPORT void rnncore_set_num_threads(int n) { set_team_size(n); }
