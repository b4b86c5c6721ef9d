"""What the time loop is measured against: its floors, its GEMM, and its behaviour under load.

- Step floor: at N = 1 a step must read all of W_hh. A bare GEMV time loop over rnncore's team —
  each thread packs its slice of W_hh once and keeps it, one GEMV and one stage boundary per
  step, no pointwise pass, no input projection — is what a step cannot beat on this machine.
  Each cell's sequence inference at (T, 1, H, H) is timed beside it (interleaved rounds) and
  reported per step and as a ratio to the floor.
- Step GEMM: the time loop's own GEMM kernel (one thread, B packed and hot) against the OpenBLAS
  that rnncore ships (``cblas_sgemm``, one thread, the same M, K, N), and both against one core's
  SGEMM peak measured here.
- Contention: a busy process pinned to one core; an LSTM (100, 1, 256) call with
  ``set_num_threads(2)`` against the same call with ``set_num_threads(1)`` pinned to the idle
  core, in alternating rounds. A team that waits by spinning for a descheduled partner would be
  many times slower; rnncore's should stay close to one thread's time.
"""

import os
import subprocess
import sys
import time

import numpy as np

import rnncore
from rnncore import _core

from .machine import rnncore_blas
from .timing import _time_best, _timings

FLOOR_CELLS = [("RNN-tanh", "rnn_tanh", 1), ("LSTM", "lstm", 4), ("GRU", "gru", 3), ("GRU-ra", "gru_after", 3)]


def _model(kind, H):
    if kind == "rnn_tanh":
        return rnncore.RNN(H, H, seed=0)
    if kind == "lstm":
        return rnncore.LSTM(H, H, seed=0)
    return rnncore.GRU(H, H, reset_after=kind == "gru_after", seed=0)


def _median_call(f, n):
    return float(np.median(_timings(f, n)))


def step_floor(H=256, T=100, threads=2, rounds=5, calls=15):
    """Per cell: rnncore's inference at (T, 1, H, H), microseconds per step, and the GEMV floor."""
    before = rnncore.get_num_threads()
    rnncore.set_num_threads(threads)
    out = {"H": H, "T": T, "N": 1, "threads": threads, "rounds": rounds, "cells": []}
    try:
        x = np.random.default_rng(0).standard_normal((T, 1, H)).astype(np.float32)
        for label, kind, G in FLOOR_CELLS:
            m = _model(kind, H)
            m(x)
            mine, floor = [], []
            for _ in range(rounds):
                mine.append(_median_call(lambda: m(x), calls) / T)
                floor.append(_core.bench_gemv_floor(G * H, H, T, threads, 3))
            us, fl = float(np.median(mine)) * 1e6, float(np.median(floor)) * 1e6
            out["cells"].append({"cell": label, "rows": G * H, "rnncore_us_per_step": us, "floor_us_per_step": fl,
                                 "ratio": us / fl})
    finally:
        rnncore.set_num_threads(before)
    return out


def step_gemm(Ms=(1, 8, 16, 32, 64, 128), K=256, N=1024, peak_size=1024, rounds=5):
    """The time loop's GEMM and OpenBLAS's sgemm, one thread each, GFLOP/s at the same sizes."""
    blas = rnncore_blas()
    out = {"K": K, "N": N, "threads": 1, "rows": [], "peak": None, "blas": None}
    if blas is None:
        out["skipped"] = "rnncore's OpenBLAS not found in this process"
        return out
    old = blas.get_threads()
    blas.set_threads(1)
    try:
        out["blas"] = blas.corename()
        a = np.random.default_rng(0).standard_normal((peak_size, peak_size)).astype(np.float32)
        c = np.empty_like(a)
        t = min(_time_best(lambda: blas.gemm(a, a, c), 3) for _ in range(rounds))
        out["peak"] = {"size": peak_size, "gflops": 2 * peak_size**3 / t / 1e9, "by": "OpenBLAS sgemm"}
        for M in Ms:
            flops = 2 * M * K * N
            reps = max(3, int(2e8 / flops))
            A = np.random.default_rng(1).standard_normal((M, K)).astype(np.float32)
            B = np.random.default_rng(2).standard_normal((K, N)).astype(np.float32)
            C = np.empty((M, N), np.float32)
            mine, theirs = [], []
            for _ in range(rounds):
                mine.append(_core.bench_step_gemm(M, K, N, reps, 1))
                t0 = time.perf_counter()
                for _ in range(reps):
                    blas.gemm(A, B, C)
                theirs.append((time.perf_counter() - t0) / reps)
            g_mine, g_blas = flops / np.median(mine) / 1e9, flops / np.median(theirs) / 1e9
            out["rows"].append({"M": M, "rnncore_gflops": g_mine, "openblas_gflops": g_blas})
        best = max([out["peak"]["gflops"]] + [r["rnncore_gflops"] for r in out["rows"]])
        if best > out["peak"]["gflops"]:
            out["peak"] = {"size": None, "gflops": best, "by": "rnncore's step GEMM (higher than OpenBLAS here)"}
        for r in out["rows"]:
            r["rnncore_peak_fraction"] = r["rnncore_gflops"] / out["peak"]["gflops"]
            r["openblas_peak_fraction"] = r["openblas_gflops"] / out["peak"]["gflops"]
    finally:
        blas.set_threads(old if old else 1)
    return out


_BURNER = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def contention(rounds=7, calls=20, T=100, N=1, H=256):
    """Two threads with one core busy against one thread on the idle core (alternating rounds)."""
    out = {"shape": [T, N, H, H], "rounds": rounds}
    if not hasattr(os, "sched_setaffinity"):
        out["skipped"] = "no CPU affinity on this platform"
        return out
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        out["skipped"] = "fewer than two usable CPUs"
        return out
    idle, busy = cpus[0], cpus[1]
    m = rnncore.LSTM(H, H, seed=0)
    x = np.random.default_rng(0).standard_normal((T, N, H)).astype(np.float32)
    before = rnncore.get_num_threads()
    burner = subprocess.Popen([sys.executable, "-c", _BURNER, str(busy)])
    stats0 = rnncore.team_stats()
    one, two = [], []
    try:
        time.sleep(0.2)
        for _ in range(rounds):
            os.sched_setaffinity(0, {idle})
            rnncore.set_num_threads(1)
            m(x)
            one.append(_median_call(lambda: m(x), calls))
            os.sched_setaffinity(0, set(cpus))
            rnncore.set_num_threads(2)
            m(x)
            two.append(_median_call(lambda: m(x), calls))
    finally:
        os.sched_setaffinity(0, set(cpus))
        rnncore.set_num_threads(before)
        burner.kill()
        burner.wait()
    stats1 = rnncore.team_stats()
    out.update({"one_thread_idle_core_ms": float(np.median(one)) * 1e3, "two_threads_ms": float(np.median(two)) * 1e3,
                "busy_cpu": busy, "idle_cpu": idle,
                "team": {k: stats1[k] - stats0[k] for k in stats1}})
    out["ratio"] = out["two_threads_ms"] / out["one_thread_idle_core_ms"]
    return out


def run(threads=2, quick=False, progress=None):
    res = {}
    for name, fn in (("step_floor", lambda: step_floor(threads=threads, rounds=3 if quick else 5)),
                     ("step_gemm", lambda: step_gemm(rounds=3 if quick else 5)),
                     ("contention", lambda: contention(rounds=3 if quick else 7))):
        if progress:
            progress(name.replace("_", " "))
        res[name] = fn()
    return res


def _table(header, rows):
    return ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def to_markdown(res):
    out = []
    sf = res.get("step_floor")
    if sf:
        out += [f"## Step floor (N = 1, D = H = {sf['H']}, T = {sf['T']}, float32, {sf['threads']} threads)", "",
                "rnncore's sequence inference per step (whole call / T, input projection included) against a bare "
                "GEMV time loop over the same team that reads the same W_hh (G*H rows) from the threads' caches "
                "(`_core.bench_gemv_floor`); medians of interleaved rounds.", ""]
        out += _table(["cell", "W_hh rows", "rnncore us/step", "GEMV floor us/step", "ratio"],
                      [[c["cell"], str(c["rows"]), f"{c['rnncore_us_per_step']:.2f}", f"{c['floor_us_per_step']:.2f}",
                        f"{c['ratio']:.2f}x"] for c in sf["cells"]]) + [""]
    sg = res.get("step_gemm")
    if sg and not sg.get("skipped"):
        pk = sg["peak"]
        out += [f"## Step GEMM (one thread, K = {sg['K']}, N = {sg['N']}, float32)", "",
                f"The time loop's GEMM kernel (B packed once, hot) against rnncore's OpenBLAS `cblas_sgemm` "
                f"({sg['blas']}) at the same sizes; one core's peak: {pk['gflops']:.1f} GFLOP/s ({pk['by']}"
                + (f", {pk['size']}^3" if pk.get("size") else "") + ").", ""]
        out += _table(["M", "rnncore GFLOP/s", "% peak", "OpenBLAS GFLOP/s", "% peak"],
                      [[str(r["M"]), f"{r['rnncore_gflops']:.1f}", f"{100 * r['rnncore_peak_fraction']:.0f}%",
                        f"{r['openblas_gflops']:.1f}", f"{100 * r['openblas_peak_fraction']:.0f}%"] for r in sg["rows"]])
        out += [""]
    ct = res.get("contention")
    if ct:
        out += ["## Contention (LSTM, T,N,D,H = " + ",".join(map(str, ct["shape"])) + ", float32)", ""]
        if ct.get("skipped"):
            out += [f"Skipped: {ct['skipped']}.", ""]
        else:
            t = ct["team"]
            out += [f"A busy process pinned to CPU {ct['busy_cpu']}. One thread pinned to the idle CPU "
                    f"{ct['idle_cpu']}: {ct['one_thread_idle_core_ms']:.3f} ms; two threads: "
                    f"{ct['two_threads_ms']:.3f} ms, **{ct['ratio']:.2f}x** the one-thread time (medians over "
                    f"{ct['rounds']} alternating rounds). Team meanwhile: {t['team_calls']} calls on the team, "
                    f"{t['solo_calls']} run alone after a stall, {t['stalls']} stalls, {t['steals']} items taken "
                    "over.", ""]
    return "\n".join(out)


def to_text(res):
    return "\n" + to_markdown(res).replace("## ", "== ")
