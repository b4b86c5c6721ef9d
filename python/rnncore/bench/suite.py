"""The benchmark suite: scenarios, the timing loop, the agreement check, the machine description.

Results are plain dicts and lists (JSON-ready); ``report`` renders them.

Method, per scenario (one cell, mode, shape, dtype and thread count):
  1. every peer builds the same model (rnncore's parameters, converted for PyTorch) and gets the
     same inputs; each runs once and its outputs (training: also every gradient) are compared with
     rnncore's. A peer that disagrees is flagged: still timed, never used in a summary.
  2. warm-ups, then a few rounds (``rounds``); each round visits every peer once, in an order
     that rotates from round to round (rnncore, torch, ref / torch, ref, rnncore / ...), so that
     every peer sees the same drift of the machine's speed. A visit is a block of back-to-back
     timed runs (the timed runs of a peer are split over the rounds). The NumPy reference gets
     fewer runs.
  3. each visit starts with a pause excluded from the timing (``Quiesce``): after a call, a
     multi-threaded OpenBLAS's workers (NumPy's) and ONNX Runtime's pool busy-wait ~0.1 s, and on
     a 2-core machine a spinning pool of one library steals the cores the next one needs. The
     pause waits until this process's worker threads are idle. Short calls then get one untimed
     run (their own pool fell asleep meanwhile): blocks measure the steady state a loop sees.
     ``isolation_check`` compares this with each peer run alone.
  4. per peer: median (the reported time), min, quartiles and IQR of the timed runs.
"""

import ctypes
import datetime
import gc
import math
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

import numpy as np

import rnncore

from .peers import GATES, PEER_ALIASES, PEER_CLASSES, Case, Inputs, ReferencePeer, make_model

SCHEMA = "rnncore-bench/1"
CELLS = ("rnn_tanh", "lstm", "gru", "gru_after")
CELL_LABELS = {"rnn_tanh": "RNN-tanh", "rnn_relu": "RNN-relu", "lstm": "LSTM", "gru": "GRU",
               "gru_after": "GRU-ra"}
CELL_DESCRIPTIONS = {"rnn_tanh": "simple RNN, tanh", "rnn_relu": "simple RNN, relu", "lstm": "LSTM",
                     "gru": "GRU, reset gate before the matmul (rnncore's default, the notes' form)",
                     "gru_after": "GRU, reset_after=True (PyTorch/cuDNN form)"}
CELL_ALIASES = {"rnn": "rnn_tanh", "tanh": "rnn_tanh", "rnn-tanh": "rnn_tanh", "relu": "rnn_relu",
                "rnn-relu": "rnn_relu", "gru_before": "gru", "gru-before": "gru", "gru-ra": "gru_after",
                "gru-after": "gru_after", "gru_reset_after": "gru_after", "gru-reset-after": "gru_after"}
MODES = ("inference", "training")
PEER_ORDER = ("rnncore", "torch", "onnxruntime", "reference")

# (T, N, D, H)
DEFAULT_SHAPES = [(100, 1, 256, 256), (100, 8, 256, 256), (100, 64, 256, 256), (50, 32, 512, 512),
                  (200, 16, 128, 128), (50, 128, 1024, 1024)]
QUICK_SHAPES = [(100, 1, 256, 256), (100, 64, 256, 256)]
FULL_EXTRA_SHAPES = [(100, 256, 256, 256), (400, 4, 256, 256)]
VARLEN_SHAPE = (100, 64, 256, 256)

ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OPENBLAS_VERBOSE",
            "OPENBLAS_THREAD_TIMEOUT", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
            "OMP_PROC_BIND", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "KMP_AFFINITY", "MKL_NUM_THREADS",
            "MKL_DEBUG_CPU_TYPE", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "DNNL_MAX_CPU_ISA",
            "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")

TOLERANCE = {"float32": 1e-3, "float64": 1e-7}   # relative and absolute (see agreement())


@dataclass
class Config:
    preset: str = "default"
    cells: Tuple[str, ...] = CELLS
    modes: Tuple[str, ...] = MODES
    shapes: List[tuple] = field(default_factory=lambda: list(DEFAULT_SHAPES))
    varlen: List[tuple] = field(default_factory=lambda: [VARLEN_SHAPE])
    dtypes: Tuple[str, ...] = ("float32",)
    threads: Tuple[int, ...] = (os.cpu_count() or 1,)
    peers: Tuple[str, ...] = PEER_ORDER
    repeats: Optional[int] = None      # fixed number of timed rounds; None: from target_s
    min_repeats: int = 3
    max_repeats: int = 21
    target_s: float = 1.0              # timed seconds of the slowest peer per scenario, when repeats is None
    warmup: int = 2                    # runs before timing, the first being the agreement check ...
    warmup_below_s: float = 0.25       # ... the others only for calls shorter than this
    ref_repeats: int = 3               # the NumPy reference: at most this many timed runs
    ref_max_gflop: Optional[float] = 50.0   # ... and none on cases above this (None: everywhere)
    rounds: int = 3                    # visits per peer; the timed runs are split into blocks over them
    gap_ms: float = 20.0               # pause before each visit: at least this, until the pools are idle
    max_gap_ms: float = 500.0
    rewarm_below_ms: float = 20.0      # calls shorter than this get one untimed run after each pause
    seed: int = 0
    isolation_check: bool = True
    gemm_size: int = 2048


PRESETS = {
    "quick": dict(shapes=list(QUICK_SHAPES), varlen=[VARLEN_SHAPE], min_repeats=4, max_repeats=10, rounds=2,
                  target_s=0.05, warmup=1, ref_repeats=1),
    "default": dict(),
    "full": dict(shapes=DEFAULT_SHAPES + FULL_EXTRA_SHAPES, min_repeats=5, max_repeats=50, target_s=3.0, rounds=5,
                 warmup=3, ref_repeats=5, ref_max_gflop=None,
                 threads=tuple(sorted({1, os.cpu_count() or 1}))),
}


def make_config(preset="default", **overrides):
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    kw = dict(PRESETS[preset])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return Config(preset=preset, **kw)


def normalize_cell(name):
    n = name.strip().lower()
    n = CELL_ALIASES.get(n, n)
    if n not in GATES:
        raise ValueError(f"unknown cell {name!r}: expected one of rnn_tanh, rnn_relu, lstm, gru, gru_after "
                         f"(aliases: rnn, gru-ra, gru_reset_after)")
    return n


def normalize_peer(name):
    n = name.strip().lower()
    n = PEER_ALIASES.get(n, n)
    if n not in PEER_CLASSES:
        raise ValueError(f"unknown peer {name!r}: expected one of {', '.join(PEER_ORDER)}")
    return n


# ------------------------------------------------------------------------------------------
# FLOPs, statistics, agreement
# ------------------------------------------------------------------------------------------

def flops(cell, mode, steps, D, H):
    """steps = valid (time, row) pairs, T*N at full length. Training counts forward + backward ~ 3x."""
    fwd = 2.0 * steps * (D + H) * GATES[cell] * H
    return fwd * (3.0 if mode == "training" else 1.0)


def stats(times_s):
    a = np.asarray(times_s, dtype=np.float64) * 1e3
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"n": int(a.size), "median_ms": float(med), "min_ms": float(a.min()), "max_ms": float(a.max()),
            "mean_ms": float(a.mean()), "q1_ms": float(q1), "q3_ms": float(q3), "iqr_ms": float(q3 - q1),
            "times_ms": [float(v) for v in a]}


def agreement(expected, got, dtype):
    """Compare a peer's outputs with rnncore's, array by array.

    An element passes when |got - expected| <= tol * max(1, max|expected|) + tol * |expected|:
    absolute for values of order one, relative to the array's scale for sums over time and batch
    (parameter gradients). Returns a JSON-ready dict; "ok" is False on any failure or NaN.
    """
    tol = TOLERANCE[str(np.dtype(dtype))]
    by_output, failures = {}, []
    for name, exp in expected.items():
        if name not in got:
            continue
        e = np.asarray(exp, dtype=np.float64)
        g = np.asarray(got[name], dtype=np.float64)
        if e.shape != g.shape:
            failures.append(f"{name}: shape {g.shape} != {e.shape}")
            by_output[name] = None
            continue
        if e.size == 0:
            by_output[name] = 0.0
            continue
        diff = np.abs(g - e)
        if not np.all(np.isfinite(diff)):
            failures.append(f"{name}: not finite")
            by_output[name] = None
            continue
        by_output[name] = float(diff.max())
        scale = max(1.0, float(np.abs(e).max()))
        bad = diff > tol * scale + tol * np.abs(e)
        if bad.any():
            failures.append(f"{name}: {int(bad.sum())} of {e.size} elements off, max |diff| {diff.max():.3g}")
    missing = sorted(set(expected) - set(got))
    finite = [v for v in by_output.values() if v is not None]
    return {"ok": not failures and bool(by_output), "max_abs_diff": max(finite) if finite else None,
            "max_abs_diff_dx": by_output.get("dx"), "by_output": by_output, "compared": sorted(by_output),
            "not_compared": missing, "failures": failures, "tolerance": {"rtol": tol, "atol": tol}}


# ------------------------------------------------------------------------------------------
# the OpenBLAS libraries loaded in this process (rnncore's and NumPy's), through ctypes
# ------------------------------------------------------------------------------------------

def _loaded_paths(needle):
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if needle in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


class LoadedBlas:
    """An OpenBLAS already loaded in this process; dlopen of the same file returns the same copy."""

    def __init__(self, path, suffix, int_type):
        self.path = path
        self.lib = ctypes.CDLL(path)
        self.int = int_type
        self._suffix = suffix

    def _fn(self, *names):
        for n in names:
            for cand in (n + self._suffix, "scipy_" + n + self._suffix, n):
                f = getattr(self.lib, cand, None)
                if f is not None:
                    return f
        return None

    def corename(self):
        f = self._fn("openblas_get_corename")
        if f is None:
            return None
        f.restype = ctypes.c_char_p
        return f().decode()

    def config(self):
        f = self._fn("openblas_get_config")
        if f is None:
            return None
        f.restype = ctypes.c_char_p
        return f().decode()

    def get_threads(self):
        f = self._fn("openblas_get_num_threads")
        return None if f is None else int(f())

    def set_threads(self, n):
        f = self._fn("openblas_set_num_threads")
        if f is None:
            return False
        f.argtypes = [ctypes.c_int]
        f(n)
        return True

    def gemm(self, a, b, c):
        """c = a @ b, row-major, float32 or float64, through cblas_?gemm."""
        f = self._fn("cblas_sgemm" if a.dtype == np.float32 else "cblas_dgemm")
        if f is None:
            raise RuntimeError("no cblas_?gemm in " + self.path)
        real = ctypes.c_float if a.dtype == np.float32 else ctypes.c_double
        I = self.int
        M, K = a.shape
        N = b.shape[1]
        f.restype = None
        f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, I, I, I, real, ctypes.c_void_p, I,
                      ctypes.c_void_p, I, real, ctypes.c_void_p, I]
        f(101, 111, 111, M, N, K, 1.0, a.ctypes.data, K, b.ctypes.data, N, 0.0, c.ctypes.data, N)


def rnncore_blas():
    """rnncore's OpenBLAS (the scipy-openblas32 wheel: 32-bit ints, ``scipy_`` prefix): the library
    loaded here whose build string is the one rnncore reports."""
    want = rnncore.blas_info().get("config")
    for p in _loaded_paths("openblas"):
        if "numpy" in p or "libscipy_openblas" not in os.path.basename(p):
            continue
        try:
            lib = LoadedBlas(p, "", ctypes.c_int)
        except OSError:
            continue
        if lib.config() == want and lib._fn("cblas_sgemm") is not None:
            return lib
    return None


def numpy_blas():
    """NumPy's own OpenBLAS (numpy.libs/libscipy_openblas64_*, ILP64, suffix 64_), if that is its BLAS."""
    np.ones((2, 2)) @ np.ones((2, 2))
    for p in _loaded_paths("openblas"):
        if "numpy" in p and "openblas" in os.path.basename(p).lower():
            for suffix, it in (("64_", ctypes.c_int64), ("", ctypes.c_int)):
                try:
                    lib = LoadedBlas(p, suffix, it)
                except OSError:
                    break
                if lib._fn("openblas_get_num_threads") is not None and lib._fn("cblas_sgemm") is not None:
                    return lib
    return None


def _timings(fn, reps, warmup=0):
    """Seconds of `reps` timed calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def _time_best(fn, reps):
    """The shortest of `reps` timed calls after two untimed ones: a peak is the best the library
    reached here (a median would count passing slowdowns of the machine against it)."""
    return float(np.min(_timings(fn, reps, warmup=2)))


def gemm_peaks(threads, dtypes, size, peers, rblas, nblas, reps=5):
    """GFLOP/s of one size^3 GEMM per BLAS reachable from Python, per thread count and dtype.

    The denominator of "% of peak" is the best of them. rnncore exposes no BLAS call, so its own
    OpenBLAS is called through ctypes (the very copy rnncore uses, which rnncore keeps at one
    thread inside its own thread team: set to n threads for this measurement, then restored);
    NumPy's matmul uses NumPy's separate OpenBLAS; torch.mm uses MKL.
    """
    out = {}
    if size <= 0:
        return out
    torch = getattr(peers.get("torch"), "_torch", None)
    for n in threads:
        for dt in dtypes:
            rng = np.random.default_rng(0)
            a = rng.standard_normal((size, size)).astype(dt)
            b = rng.standard_normal((size, size)).astype(dt)
            c = np.empty((size, size), dt)
            fl = 2.0 * size ** 3
            entry = {}
            if rblas is not None:
                before = rblas.get_threads()
                rblas.set_threads(n)
                try:
                    entry["rnncore_openblas"] = fl / _time_best(lambda: rblas.gemm(a, b, c), reps) / 1e9
                finally:
                    if before:
                        rblas.set_threads(before)
            if nblas is not None:
                nblas.set_threads(n)
            if nblas is not None or n == (os.cpu_count() or 1):
                entry["numpy_matmul"] = fl / _time_best(lambda: np.matmul(a, b, out=c), reps) / 1e9
            if torch is not None:
                old = torch.get_num_threads()
                torch.set_num_threads(n)
                ta, tb = torch.from_numpy(a), torch.from_numpy(b)
                tc = torch.from_numpy(c)
                entry["torch_mm"] = fl / _time_best(lambda: torch.mm(ta, tb, out=tc), reps) / 1e9
                torch.set_num_threads(old)
            best = max(entry, key=entry.get) if entry else None
            out[f"{dt}/t{n}"] = {"threads": n, "dtype": dt, "size": size, "gflops": entry,
                                  "best": entry.get(best), "best_source": best}
            time.sleep(0.05)
    return out


# ------------------------------------------------------------------------------------------
# the machine
# ------------------------------------------------------------------------------------------

def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [x for x in ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile") if x in flags]
    except OSError:
        pass
    return []


def _mem_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def cpu_snapshot():
    """(all CPUs' ticks, idle ticks, this process's ticks) from /proc, or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            mine = f.read().rsplit(")", 1)[1].split()
        return sum(v[:8]), v[3] + v[4], int(mine[11]) + int(mine[12])   # idle+iowait; utime+stime
    except (OSError, ValueError, IndexError):
        return None


def others_share(a, b):
    """Fraction of all CPUs' time used by other processes between two cpu_snapshot()s."""
    if a is None or b is None or b[0] - a[0] <= 0:
        return None
    total = b[0] - a[0]
    return max(0.0, min(1.0, ((total - (b[1] - a[1])) - (b[2] - a[2])) / total))


def others_cpu_share(seconds=0.5):
    """Fraction of all CPUs' time that other processes used over a short idle wait."""
    a = cpu_snapshot()
    time.sleep(seconds)
    return others_share(a, cpu_snapshot())


def loadavg():
    try:
        return [float(v) for v in os.getloadavg()]
    except OSError:
        return None


def _git_commit():
    here = os.path.dirname(os.path.abspath(rnncore.__file__))
    head = os.path.join(here, "..", "..", ".git", "HEAD")
    try:
        with open(head) as f:
            ref = f.read().strip()
        if ref.startswith("ref:"):
            with open(os.path.join(here, "..", "..", ".git", ref[5:])) as f:
                return f.read().strip()
        return ref
    except OSError:
        return None


def _install_kind():
    """Where rnncore runs from, without this machine's paths: a wheel install or a source tree."""
    parts = os.path.dirname(rnncore.__file__).split(os.sep)
    return "site-packages" if "site-packages" in parts else "source tree"


def describe_machine(peers, rblas, nblas):
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    info = {
        "cpu": _cpu_model(), "cpu_flags": _cpu_flags(), "logical_cpus": os.cpu_count(), "usable_cpus": affinity,
        "memory_gib": _mem_gib(), "os": platform.platform(), "python": sys.version.split()[0],
        "numpy": np.__version__, "rnncore": rnncore.__version__, "rnncore_install": _install_kind(),
        "rnncore_git_commit": _git_commit(),
        "rnncore_blas": rnncore.blas_info(),
        "rnncore_blas_library": os.path.basename(rblas.path) if rblas else None,
        "rnncore_openblas_threads": rblas.get_threads() if rblas else None,
        "numpy_blas": ({"library": os.path.basename(nblas.path), "corename": nblas.corename(), "config": nblas.config(),
                        "threads": nblas.get_threads()} if nblas else None),
        "env": {k: os.environ.get(k, "unset") for k in ENV_VARS},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": loadavg(),
        "others_cpu_share_start": others_cpu_share(),
    }
    torch = getattr(peers.get("torch"), "_torch", None)
    if torch is not None:
        info["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads(),
                         "interop_threads": torch.get_num_interop_threads(),
                         "mkl": bool(torch.backends.mkl.is_available()),
                         "mkldnn": bool(torch.backends.mkldnn.is_available()),
                         "cpu_capability": _torch_capability(torch)}
    return info


def _torch_capability(torch):
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:
        return None


# ------------------------------------------------------------------------------------------
# scenarios
# ------------------------------------------------------------------------------------------

def _shape_id(s):
    return "x".join(str(v) for v in s)


def scenario_list(cfg):
    """Every scenario as a dict (no measurements yet), in run order."""
    shapes = []
    for s in cfg.shapes:
        shapes.append((tuple(s), False))
        if tuple(s) in [tuple(v) for v in cfg.varlen]:
            shapes.append((tuple(s), True))
    for v in cfg.varlen:
        if tuple(v) not in [tuple(s) for s in cfg.shapes]:
            shapes += [(tuple(v), False), (tuple(v), True)]   # the full-length twin it is compared with
    out = []
    for n in cfg.threads:
        for dt in cfg.dtypes:
            for mode in cfg.modes:
                for cell in cfg.cells:
                    for shape, varlen in shapes:
                        T, N, D, H = shape
                        lengths = None
                        if varlen:
                            rng = np.random.default_rng([cfg.seed, T, N, 1])
                            lengths = rng.integers(1, T + 1, size=N).astype(np.int64)
                        steps = int(lengths.sum()) if varlen else T * N
                        sid = f"{cell}/{mode}/{_shape_id(shape)}{'/varlen' if varlen else ''}/{dt}/t{n}"
                        out.append({"id": sid, "cell": cell, "cell_label": CELL_LABELS[cell], "mode": mode,
                                    "T": T, "N": N, "D": D, "H": H, "dtype": dt, "threads": n,
                                    "varlen": varlen, "lengths": None if lengths is None else lengths.tolist(),
                                    "valid_steps": steps, "full_steps": T * N,
                                    "twin": (f"{cell}/{mode}/{_shape_id(shape)}/{dt}/t{n}" if varlen else None),
                                    "flops": flops(cell, mode, steps, D, H)})
    return out


def make_inputs(sc, seed):
    T, N, D, H = sc["T"], sc["N"], sc["D"], sc["H"]
    dt = np.dtype(sc["dtype"])
    rng = np.random.default_rng([seed, T, N, D, H, list(GATES).index(sc["cell"])])
    x = rng.standard_normal((T, N, D)).astype(dt)
    h0 = rng.uniform(-0.5, 0.5, (1, N, H)).astype(dt)
    c0 = rng.uniform(-0.5, 0.5, (1, N, H)).astype(dt) if sc["cell"] == "lstm" else None
    dy = rng.standard_normal((T, N, H)).astype(dt)
    lengths = None
    if sc["lengths"] is not None:
        lengths = np.asarray(sc["lengths"], np.int64)
        dy[np.arange(T)[:, None] >= lengths[None, :]] = 0   # no gradient arrives at padding
    params = _init_params(sc["cell"], D, H, dt, seed)
    case = Case(sc["cell"], sc["mode"], T, N, D, H, dt, lengths)
    return case, params, Inputs(x, h0, c0, dy)


def _init_params(cell, D, H, dt, seed):
    """rnncore's initialisation, uniform in +-1/sqrt(H), from a seed shared by every cell and shape."""
    m = make_model(rnncore, cell, D, H, dt)
    rng = np.random.default_rng([seed, 7])
    k = 1.0 / math.sqrt(H)
    return {name: rng.uniform(-k, k, a.shape).astype(dt) for name, a in m.parameters().items()}


# ------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------

def make_peers(names, nblas=None):
    """name -> Peer for the names asked for (rnncore always first)."""
    names = ["rnncore"] + [n for n in names if n != "rnncore"]
    out = {}
    for n in names:
        out[n] = ReferencePeer(nblas) if n == "reference" else PEER_CLASSES[n]()
    return out


class Quiesce:
    """The pause before each visit of a peer, excluded from the timing.

    After a call, a multi-threaded OpenBLAS's workers (NumPy's) and ONNX Runtime's pool busy-wait
    ~0.1 s before they sleep; PyTorch's OpenMP team a few ms; rnncore's team about 0.1 ms. On 2 cores a spinning
    pool steals the cores the next library needs (measured: 10-50x slower calls). The pause lasts
    at least ``min_s``, then until the process's other threads burnt less than 10 % of a core
    over 5 ms (per-thread CPU time from /proc/self/task/*/schedstat), at most ``max_s``. Without
    schedstat it sleeps ``fallback_s``. ``waits`` keeps every pause (seconds).
    """

    def __init__(self, min_s, max_s=0.5, fallback_s=0.15):
        self.min_s, self.max_s, self.fallback_s = min_s, max_s, fallback_s
        self.main = str(threading.get_native_id()) if hasattr(threading, "get_native_id") else None
        self.ok = self.main is not None and self._workers_ns() is not None
        self.waits = []

    def _workers_ns(self):
        total = 0
        try:
            tids = os.listdir("/proc/self/task")
        except OSError:
            return None
        for tid in tids:
            if tid == self.main:
                continue
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue   # a thread that just ended
        return total

    def __call__(self):
        t0 = time.perf_counter()
        if not self.ok:
            time.sleep(max(self.min_s, self.fallback_s))
        else:
            time.sleep(self.min_s)
            last = self._workers_ns()
            while time.perf_counter() - t0 < self.max_s:
                time.sleep(0.005)
                now = self._workers_ns()
                if now - last < 0.5e6:
                    break
                last = now
        w = time.perf_counter() - t0
        self.waits.append(w)
        return w


class _NoPause:
    waits = []

    def __call__(self):
        return 0.0


def _timed(prep):
    prep.clear()
    t0 = time.perf_counter()
    prep.run()
    return time.perf_counter() - t0


class _Progress:
    def __init__(self, total, callback):
        self.total, self.i, self.cb = total, 0, callback
        self.label = ""

    def step(self, label):
        self.i += 1
        self.label = label
        if self.cb:
            self.cb(self.i, self.total, label)

    def detail(self, text):
        if self.cb:
            self.cb(self.i, self.total, f"{self.label} {text}")


def run_scenario(sc, peers, cfg, progress=None):
    """Measure one scenario; returns sc with "peers" filled in (name -> result dict).

    The cyclic garbage collector is off meanwhile (a full collection costs ~0.1 s with torch loaded;
    the runs free their memory by reference counting) and runs once before.
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _run_scenario(sc, peers, cfg, progress)
    finally:
        if enabled:
            gc.enable()


def _run_scenario(sc, peers, cfg, progress):
    case, params, inputs = make_inputs(sc, cfg.seed)
    pause = Quiesce(cfg.gap_ms / 1000.0, cfg.max_gap_ms / 1000.0)
    res = {}
    prepared = {}
    for name, peer in peers.items():
        why = peer.skip_reason()
        if why:
            res[name] = {"status": "skipped", "reason": why}
            continue
        why = peer.unsupported(case)
        if why:
            res[name] = {"status": "n/a", "reason": why}
            continue
        if peer.reduced and cfg.ref_max_gflop is not None and sc["flops"] > cfg.ref_max_gflop * 1e9:
            res[name] = {"status": "skipped",
                         "reason": f"too slow: the {cfg.preset} suite runs the NumPy reference only up to "
                                   f"{cfg.ref_max_gflop:g} GFLOP per call (--full runs it)"}
            continue
        try:
            prepared[name] = peer.prepare(case, params, inputs)
        except Exception as e:
            res[name] = {"status": "error", "reason": f"prepare failed: {type(e).__name__}: {e}"}

    # 1. one run each, outputs compared with rnncore's
    first = {}
    baseline = None
    for name, prep in list(prepared.items()):
        if progress:
            progress.detail(f"{name} (check)")
        pause()
        try:
            first[name] = [_timed(prep)]
            outs = prep.outputs()
        except Exception as e:
            res[name] = {"status": "error", "reason": f"run failed: {type(e).__name__}: {e}"}
            del prepared[name]
            continue
        prep.clear()
        if name == "rnncore":
            baseline = outs
            res[name] = {"status": "ok"}
        else:
            chk = agreement(baseline, outs, sc["dtype"]) if baseline is not None else None
            ok = chk is not None and chk["ok"]
            res[name] = {"status": "ok" if ok else "flagged", "check": chk}
            if not ok:
                res[name]["reason"] = ("DISAGREES with rnncore: " + "; ".join(chk["failures"][:3])) if chk else \
                    "no rnncore result to compare with"
        del outs
    if "rnncore" not in prepared:
        return dict(sc, peers=res, repeats=0)

    # 2. warm-ups (the first run was one), then the timed rounds
    names = list(prepared)
    for name in names:
        if peers[name].reduced or cfg.warmup < 2 or first[name][0] > cfg.warmup_below_s:
            continue
        pause()
        first[name] += [_timed(prepared[name]) for _ in range(cfg.warmup - 1)]
    est = {n: min(first[n]) for n in names}
    if cfg.repeats is not None:
        R = int(cfg.repeats)
    else:
        slowest = max(est[n] for n in names if not peers[n].reduced)
        R = int(min(cfg.max_repeats, max(cfg.min_repeats, math.ceil(cfg.target_s / max(slowest, 1e-6)))))
    want = {n: (min(R, cfg.ref_repeats) if peers[n].reduced else R) for n in names}
    rewarm = {n: int(est[n] < cfg.rewarm_below_ms / 1000.0) for n in names}
    times, errors = interleave({n: prepared[n] for n in names}, want, min(cfg.rounds, R), rewarm, pause, progress)
    for name, msg in errors.items():
        res[name] = {"status": "error", "reason": msg}
    prepared.clear()

    base = stats(times["rnncore"]) if times["rnncore"] else None
    for name in names:
        if res[name]["status"] not in ("ok", "flagged") or not times[name]:
            continue
        st = stats(times[name])
        res[name].update(st)
        res[name]["gflops"] = sc["flops"] / (st["median_ms"] / 1e3) / 1e9
        res[name]["rewarm"] = rewarm[name]
        if name != "rnncore" and base:
            res[name]["speedup"] = st["median_ms"] / base["median_ms"]
    waits = np.asarray(pause.waits) * 1e3
    return dict(sc, peers=res, repeats=R, rounds=min(cfg.rounds, R),
                pause_ms={"median": float(np.median(waits)), "max": float(waits.max()), "n": int(waits.size)}
                if waits.size else None)


def interleave(prepared, want, rounds, rewarm, pause, progress=None):
    """Timed runs in `rounds` rounds; each round visits every peer once, in an order that rotates
    from round to round. A visit: pause(), `rewarm[n]` untimed runs (short calls: their own pool
    fell asleep during the pause), then a block of back-to-back timed runs, ~want[n] / rounds.
    Returns ({name: [seconds]}, {name: error message})."""
    names = list(prepared)
    times = {n: [] for n in names}
    errors = {}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            # spread want[n] over the rounds: after round r, about want * (r + 1) / rounds runs
            block = math.ceil(want[name] * (r + 1) / rounds) - len(times[name])
            if name in errors or block <= 0:
                continue
            if progress:
                progress.detail(f"{name} (round {r + 1}/{rounds})")
            pause()
            try:
                for _ in range(rewarm[name]):
                    _timed(prepared[name])
                for _ in range(block):
                    times[name].append(_timed(prepared[name]))
            except Exception as e:
                errors[name] = f"run failed: {type(e).__name__}: {e}"
            prepared[name].clear()
    return times, errors


def isolation_check(cfg, peers, progress_cb=None, reps=None, settle_s=0.3, shape=(100, 32, 256, 256)):
    """How much interleaving distorts the times, on one representative case: each peer alone (back
    to back, after the others went idle) against round-robin without any pause (one run per visit)
    and against the suite's method (pauses, rounds, blocks)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _isolation_check(cfg, peers, progress_cb, reps, settle_s, shape)
    finally:
        if enabled:
            gc.enable()


def _isolation_check(cfg, peers, progress_cb, reps, settle_s, shape):
    cell = "lstm" if "lstm" in cfg.cells else cfg.cells[0]
    mode = "inference" if "inference" in cfg.modes else cfg.modes[0]
    T, N, D, H = shape
    sc = {"cell": cell, "mode": mode, "T": T, "N": N, "D": D, "H": H, "dtype": cfg.dtypes[0], "lengths": None}
    case, params, inputs = make_inputs(sc, cfg.seed)
    reps = reps or (6 if cfg.preset == "quick" else 10)
    prepared = {}
    for name, peer in peers.items():
        if peer.skip_reason() or peer.unsupported(case):
            continue
        try:
            prepared[name] = peer.prepare(case, params, inputs)
        except Exception:
            continue
    if len(prepared) < 2:
        return None
    if progress_cb:
        progress_cb(0, 1, f"isolation check: {CELL_LABELS[cell]} {mode} ({T},{N},{D},{H})")
    for p in prepared.values():
        for _ in range(2):
            _timed(p)
    reduced = {n for n in prepared if peers[n].reduced}
    want = {n: (max(2, reps // 4) if n in reduced else reps) for n in prepared}
    alone = {}
    for name, p in prepared.items():
        time.sleep(settle_s)   # the previous library's workers go idle
        alone[name] = [_timed(p) for _ in range(want[name])]
    rewarm = {n: int(np.median(alone[n]) < cfg.rewarm_below_ms / 1000.0) for n in prepared}
    pause = Quiesce(cfg.gap_ms / 1000.0, cfg.max_gap_ms / 1000.0)
    time.sleep(settle_s)
    naive = interleave(prepared, want, reps, {n: 0 for n in prepared}, _NoPause())[0]
    time.sleep(settle_s)
    suite_way = interleave(prepared, want, min(cfg.rounds, reps), rewarm, pause)[0]
    out = {"case": {"cell": cell, "mode": mode, "T": T, "N": N, "D": D, "H": H, "dtype": cfg.dtypes[0]},
           "reps": reps, "gap_ms": cfg.gap_ms, "rounds": min(cfg.rounds, reps),
           "pause_ms_median": float(np.median(pause.waits) * 1e3) if pause.waits else None,
           "schedstat": pause.ok, "peers": {}}
    for name in prepared:
        a = float(np.median(alone[name]) * 1e3)
        e = {"alone_ms": a}
        for label, ts in (("interleaved_no_gap", naive), ("interleaved_gap", suite_way)):
            m = float(np.median(ts[name]) * 1e3)
            e[label + "_ms"] = m
            e[label + "_ratio"] = m / a
        out["peers"][name] = e
    for p in prepared.values():
        p.clear()
    return out


BUSY_SHARE = 0.10   # other processes' share of the CPUs above which a scenario counts as contended


def _summaries(scenarios):
    """Geometric-mean speed-up of rnncore over each peer, per threads/dtype/mode, from agreeing peers
    and, when there are any, from scenarios run while no other process used the CPUs much."""
    groups = {}
    for sc in scenarios:
        busy = (sc.get("others_cpu_share") or 0.0) > BUSY_SHARE
        for name, r in sc["peers"].items():
            if name == "rnncore" or "speedup" not in r:
                continue
            key = (sc["threads"], sc["dtype"], sc["mode"], name)
            g = groups.setdefault(key, {"threads": sc["threads"], "dtype": sc["dtype"], "mode": sc["mode"],
                                        "peer": name, "quiet": [], "busy": [], "flagged": 0})
            if r["status"] == "flagged":
                g["flagged"] += 1
            else:
                g["busy" if busy else "quiet"].append((r["speedup"], sc["id"]))
    out = []
    for g in groups.values():
        quiet, busy = g.pop("quiet"), g.pop("busy")
        use = quiet or busy
        g["busy_left_out"] = len(busy) if quiet else 0
        g["from_busy_rows"] = not quiet and bool(busy)
        if use:
            s = [v for v, _ in use]
            g.update(n=len(s), geomean=float(np.exp(np.mean(np.log(s)))), min=float(min(s)), max=float(max(s)),
                     min_case=use[int(np.argmin(s))][1], max_case=use[int(np.argmax(s))][1])
        else:
            g.update(n=0, geomean=None, min=None, max=None, min_case=None, max_case=None)
        out.append(g)
    return out


def _varlen_pairs(scenarios):
    by_id = {sc["id"]: sc for sc in scenarios}
    out = []
    for sc in scenarios:
        if not sc["varlen"] or sc["twin"] not in by_id:
            continue
        full = by_id[sc["twin"]]
        e = {"id": sc["id"], "twin": full["id"], "cell": sc["cell"], "mode": sc["mode"], "threads": sc["threads"],
             "dtype": sc["dtype"], "T": sc["T"], "N": sc["N"], "D": sc["D"], "H": sc["H"],
             "valid_steps": sc["valid_steps"], "full_steps": sc["full_steps"],
             "steps_ratio": sc["valid_steps"] / sc["full_steps"], "peers": {}}
        for name, r in sc["peers"].items():
            f = full["peers"].get(name, {})
            if "median_ms" in r and "median_ms" in f:
                e["peers"][name] = {"varlen_ms": r["median_ms"], "full_ms": f["median_ms"],
                                    "time_ratio": r["median_ms"] / f["median_ms"],
                                    "flagged": r["status"] == "flagged" or f["status"] == "flagged"}
        out.append(e)
    return out


def run(cfg, progress=None):
    """Run the whole suite; returns the results dict (JSON-ready; report.py renders it).

    Objects alive once the peers are imported are frozen out of the garbage collector meanwhile
    (gc.freeze), so the collection before each scenario does not walk torch's modules (~0.1 s).
    """
    before = _thread_counts()
    try:
        return _run(cfg, progress)
    finally:
        gc.unfreeze()
        _restore_thread_counts(before)


def _thread_counts():
    """The thread counts the suite changes (rnncore's, PyTorch's if imported, NumPy's OpenBLAS)."""
    torch = sys.modules.get("torch")
    nblas = numpy_blas()
    return {"rnncore": rnncore.get_num_threads(),
            "torch": torch.get_num_threads() if torch is not None else None,
            "numpy": (nblas, nblas.get_threads()) if nblas is not None else None}


def _restore_thread_counts(before):
    rnncore.set_num_threads(before["rnncore"])
    torch = sys.modules.get("torch")
    if torch is not None and before["torch"] is not None:
        torch.set_num_threads(before["torch"])
    if before["numpy"] is not None and before["numpy"][1]:
        before["numpy"][0].set_threads(before["numpy"][1])


def _run(cfg, progress):
    t_start = time.time()
    rblas = rnncore_blas()
    nblas = numpy_blas()
    peers = make_peers([normalize_peer(p) for p in cfg.peers], nblas)
    gc.collect()
    gc.freeze()
    machine = describe_machine(peers, rblas, nblas)
    peer_info = {}
    for name, p in peers.items():
        why = p.skip_reason()
        peer_info[name] = {"label": p.label, "available": why is None, "reason": why,
                           "version": p.version() if why is None else None}

    scenarios = scenario_list(cfg)
    bar = _Progress(len(scenarios), progress)
    if progress:
        progress(0, len(scenarios), "GEMM peak")
    peaks = gemm_peaks(cfg.threads, cfg.dtypes, cfg.gemm_size, peers, rblas, nblas,
                       reps=3 if cfg.preset == "quick" else 5)

    threads_set = {}
    iso = {}
    results = []
    current = None
    for sc in scenarios:
        if sc["threads"] != current:
            current = sc["threads"]
            threads_set[str(current)] = {n: p.set_threads(current) for n, p in peers.items()
                                         if p.skip_reason() is None}
            if cfg.isolation_check:
                iso[str(current)] = isolation_check(cfg, peers, progress)
        bar.step(f"{CELL_LABELS[sc['cell']]} {sc['mode']} ({sc['T']},{sc['N']},{sc['D']},{sc['H']})"
                 f"{' varlen' if sc['varlen'] else ''} {sc['dtype']} t{sc['threads']}")
        snap = cpu_snapshot()
        results.append(run_scenario(sc, peers, cfg, bar))
        results[-1]["others_cpu_share"] = others_share(snap, cpu_snapshot())
        for name, r in results[-1]["peers"].items():
            if name in peer_info and r["status"] in ("ok", "flagged"):
                peer_info[name]["used"] = True

    for sc in results:
        peak = peaks.get(f"{sc['dtype']}/t{sc['threads']}", {}).get("best")
        for r in sc["peers"].values():
            if "gflops" in r and peak:
                r["peak_fraction"] = r["gflops"] / peak
    machine["loadavg_end"] = loadavg()
    machine["others_cpu_share_end"] = others_cpu_share()
    cfg_dict = asdict(cfg)
    return {
        "schema": SCHEMA,
        "config": cfg_dict,
        "machine": machine,
        "gemm_peak": peaks,
        "threads_set": threads_set,
        "peers": peer_info,
        "method": method_notes(cfg),
        "isolation_check": iso,
        "scenarios": results,
        "summary": _summaries(results),
        "varlen": _varlen_pairs(results),
        "duration_s": time.time() - t_start,
    }


def method_notes(cfg):
    return {
        "timing": (f"time.perf_counter around one call, Python's cyclic garbage collector off; per scenario "
                   f"{cfg.warmup} untimed run(s) per peer (the first is the agreement check; calls over "
                   f"{cfg.warmup_below_s:g} s get only that one), then {cfg.rounds} rounds; "
                   f"each round visits every peer once in a rotating order and runs a block of its timed runs back to "
                   f"back; reported: median, with min, quartiles and IQR"),
        "repeats": (f"{cfg.repeats} timed runs per peer" if cfg.repeats else
                    f"{cfg.min_repeats}-{cfg.max_repeats} timed runs per peer, enough for ~{cfg.target_s:g} s of the "
                    f"slowest peer"),
        "reference": (f"the NumPy reference is slow: at most {cfg.ref_repeats} timed run(s), one warm-up"
                      + (f", and not run above {cfg.ref_max_gflop:g} GFLOP per call" if cfg.ref_max_gflop else "")),
        "pause": (f"before each visit of a peer, a pause excluded from the timing: at least {cfg.gap_ms:g} ms, then "
                  f"until this process's worker threads are idle (per-thread CPU time from /proc/self/task/*/schedstat "
                  f"stops growing; at most {cfg.max_gap_ms:g} ms). A multi-threaded OpenBLAS (NumPy's) and ONNX "
                  f"Runtime keep their workers spinning ~0.1 s after a call, PyTorch's OpenMP team a few ms; on 2 cores a "
                  f"spinning pool slows the next library down many times. Calls shorter than {cfg.rewarm_below_ms:g} ms "
                  f"get one untimed run after the pause (their own workers fell asleep), so blocks measure the "
                  f"steady state"),
        "threads": "the same n for every peer: rnncore.set_num_threads(n), torch.set_num_threads(n), NumPy's "
                   "OpenBLAS (the reference) set to n through ctypes, ONNX Runtime intra_op_num_threads=n",
        "agreement": (f"before timing, every peer's outputs (training: and gradients of x, states and parameters) "
                      f"are compared with rnncore's; float32 tolerance {TOLERANCE['float32']:g} "
                      f"(float64 {TOLERANCE['float64']:g}) absolute on values of order one, relative to the array's "
                      f"scale otherwise; a peer that disagrees is flagged and left out of the summaries"),
        "flops": "forward 2*T*N*(D+H)*G*H (valid steps only with lengths), training 3x forward",
        "varlen": "torch: pack_padded_sequence(enforce_sorted=False) and pad_packed_sequence inside the timing",
        "peers": ("PyTorch: torch.nn.RNN/LSTM/GRU with rnncore's weights (to_torch_state_dict), torch.inference_mode "
                  "for inference, autograd (y.backward(dy)) for training; ONNX Runtime: the model's own export "
                  "(model.to_onnx), CPUExecutionProvider, inter_op_num_threads=1, lengths as a graph input; NumPy "
                  "reference: rnncore.reference in float32"),
    }
