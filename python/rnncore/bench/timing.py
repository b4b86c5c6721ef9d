"""Timing: FLOP counts, statistics of timed runs, the timing loops, the pause between peers, and the
GEMM peak that "% of peak" is measured against."""

import math
import os
import threading
import time
from typing import List

import numpy as np

from .peers import GATES

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
    waits: List[float] = []

    def __call__(self):
        return 0.0


def _timed(prep):
    prep.clear()
    t0 = time.perf_counter()
    prep.run()
    return time.perf_counter() - t0


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
