"""The benchmark suite: scenarios, the agreement check, running them, summaries.

Results are plain dicts and lists (JSON-ready); ``report`` renders them. The configuration is in
``config``, the timing loops in ``timing``, the machine's description in ``machine``.

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

import gc
import math
import sys
import time
from dataclasses import asdict

import numpy as np

import rnncore

from .config import BUSY_SHARE, CELL_LABELS, SCHEMA, TOLERANCE, normalize_peer
from .machine import cpu_snapshot, describe_machine, loadavg, numpy_blas, others_cpu_share, others_share, rnncore_blas
from .peers import GATES, PEER_CLASSES, Case, Inputs, ReferencePeer, make_model
from .timing import Quiesce, _NoPause, _timed, flops, gemm_peaks, interleave, stats


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
