"""The seed's table measured: the claims, the cells and budgets, the adding problem, and the three
experiments (speed and size; long-term memory and capacity on the adding problem; stability of the
gradients). ``run`` in this package's ``__init__`` puts them together with the verdicts."""

import math
import time

import numpy as np

import rnncore
from rnncore.train import Adam, Linear, clip_grad_norm, mse_loss

COLUMNS = ("Modelo", "Memoria a largo plazo", "Capacidad de modelado", "Velocidad / Tamaño")
SEED_TABLE = (
    ("RNN", "❌ Limitada", "Baja", "⚡ Rápida pero inestable"),
    ("LSTM", "✅ Alta", "Alta", "🐢 Más lenta, más precisa"),
    ("GRU", "✅ Media a alta", "Media-Alta", "⚡⚡ Un poco más rápida que LSTM"),
)
# Display name -> (class, constructor keywords). The first three are the seed's rows.
_CELLS = {
    "RNN": (rnncore.RNN, {"nonlinearity": "tanh"}),
    "LSTM": (rnncore.LSTM, {}),
    "GRU": (rnncore.GRU, {"reset_after": False}),
    "GRU (reset_after)": (rnncore.GRU, {"reset_after": True}),
}
BASELINE_MSE = 1.0 / 6.0  # the adding problem's target variance: MSE of always predicting 1

_COMMON = {
    "cells": ("RNN", "LSTM", "GRU", "GRU (reset_after)"),
    "dtype": "float32",
    "speed_threads": 1,         # small GEMMs: one thread is steadier (None: leave rnncore's setting)
    "train_threads": 1,         # small GEMMs; one thread also makes training bit-reproducible
    "lr": 3e-3,
    "clip": 1.0,
    "threshold": 0.05,          # "solved": held-out MSE below this (0.3 of the 1/6 baseline)
    "spike_factor": 10.0,       # a gradient spike: pre-clip norm above this times the median of
    "spike_window": 50,         # ... this many steps before it
    "early_stop": True,         # stop a rung once solved (never the shortest T: capacity needs the full budget)
    "lstm_forget_bias": 0.0,    # added to the LSTM's forget-gate bias at init; 0 keeps the library's init
    "workers": 2,               # processes for the training runs (one BLAS thread each)
    "stop_after_failures": 1,   # climb the ladder until this many consecutive failures
}
BUDGETS = {
    "quick": dict(_COMMON, speed_hidden=64, speed_T=50, speed_N=16, speed_warmup=1, speed_repeats=5,
                  hidden=32, batch=32, steps=1500, eval_every=50, eval_size=256, ladder=(5, 10, 20, 40, 80),
                  stability_T=40, stability_size=128, train_seeds=1),
    "default": dict(_COMMON, speed_hidden=128, speed_T=100, speed_N=32, speed_warmup=2, speed_repeats=15,
                    hidden=64, batch=64, steps=3000, eval_every=100, eval_size=1000,
                    ladder=(10, 25, 50, 100, 200), stability_T=100, stability_size=256, train_seeds=3),
    "full": dict(_COMMON, speed_hidden=128, speed_T=100, speed_N=32, speed_warmup=3, speed_repeats=30,
                 hidden=64, batch=64, steps=5000, eval_every=100, eval_size=2000,
                 ladder=(10, 25, 50, 100, 200, 400), stability_T=100, stability_size=512, train_seeds=5),
}


# ---- the task -----------------------------------------------------------------------------------

def adding_batch(rng, T, N, dtype=np.float32):
    """The adding problem. Returns x (T, N, 2), target (N, 1).

    x[..., 0] uniform in [0, 1); x[..., 1] is 1 at one step in [0, T//2) and one in [T//2, T),
    0 elsewhere; the target is the sum of the two marked values.
    """
    if T < 2:
        raise ValueError(f"T: the adding problem needs T >= 2, got {T}")
    x = np.zeros((T, N, 2), dtype)
    x[:, :, 0] = rng.random((T, N))
    rows = np.arange(N)
    first = rng.integers(0, T // 2, N)
    second = rng.integers(T // 2, T, N)
    x[first, rows, 1] = 1
    x[second, rows, 1] = 1
    target = (x[first, rows, 0] + x[second, rows, 0])[:, None]
    return x, target.astype(dtype)


def _rng(*key):
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _seed_int(*key):
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


def _make(cell, input_size, hidden, dtype, seed):
    cls, kw = _CELLS[cell]
    return cls(input_size, hidden, dtype=dtype, seed=seed, **kw)


def _final_h(state):
    return state[0] if isinstance(state, tuple) else state


class _Readout:
    """A cell plus a Linear on its final hidden state, trained together on the MSE."""

    def __init__(self, cell, hidden, dtype, seed):
        self.model = _make(cell, 2, hidden, dtype, _seed_int(seed, 0))
        self.linear = Linear(hidden, 1, dtype=dtype, seed=_seed_int(seed, 1))
        self.params = dict(self.model.parameters())
        self.params.update({"readout." + k: v for k, v in self.linear.parameters().items()})

    def predict(self, x):
        _, state, _ = self.model.forward(x, train=False)
        return self.linear.forward(_final_h(state)[-1])

    def loss_and_grads(self, x, target):
        """Training forward and backward; returns (loss, parameter grads, model grads incl. "x")."""
        _, state, tape = self.model.forward(x, train=True)
        h = _final_h(state)                             # (1, N, H)
        loss, dpred = mse_loss(self.linear.forward(h[-1]), target)
        dh = self.linear.backward(dpred)                # (N, H)
        g = self.model.backward(tape, dh_n=dh[None])    # for LSTM dc_n stays zero: c_n is not read out
        grads = {k: g[k] for k in self.model.parameters()}
        grads.update({"readout." + k: v for k, v in self.linear.grads.items()})
        return loss, grads, g

    def grad_through_time(self, x, target):
        """Mean over the batch of ||dLoss/dx_t||, for each t: (T,)."""
        _, _, g = self.loss_and_grads(x, target)
        return np.linalg.norm(g["x"].astype(np.float64), axis=2).mean(axis=1)


def _profile_summary(norms):
    norms = np.asarray(norms, dtype=np.float64)
    first, last = float(norms[0]), float(norms[-1])
    positive = norms[norms > 0]
    return {
        "first": first,
        "last": last,
        "first_over_last": first / last if last > 0 else None,
        "log10_first_over_last": math.log10(first / last) if first > 0 and last > 0 else None,
        "log10_max_over_min": (math.log10(positive.max() / positive.min()) if positive.size == norms.size
                               else None),
    }


# ---- the three experiments ----------------------------------------------------------------------

def _measure_speed(cfg, seed, dtype, say):
    H, T, N = cfg["speed_hidden"], cfg["speed_T"], cfg["speed_N"]
    rng = _rng(seed, 10)
    x = rng.standard_normal((T, N, H)).astype(dtype)
    dy = rng.standard_normal((T, N, H)).astype(dtype)   # a loss on every output: the usual training load
    calls = {}
    for i, cell in enumerate(cfg["cells"]):
        model = _make(cell, H, H, dtype, _seed_int(seed, 11, i))

        def infer(model=model):
            model.forward(x, train=False)

        def train(model=model):
            _, _, tape = model.forward(x, train=True)
            model.backward(tape, dy)

        calls[cell] = (model, {"infer": infer, "train": train})
        for _ in range(cfg["speed_warmup"]):
            infer()
            train()
    # Rounds interleave the cells so that a change in machine load hits all of them alike.
    times = {cell: {"infer": [], "train": []} for cell in calls}
    for _ in range(cfg["speed_repeats"]):
        for cell, (_, fns) in calls.items():
            for kind, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[cell][kind].append(time.perf_counter() - t0)
    out = {}
    for cell, (model, _) in calls.items():
        t_inf, t_train = (float(np.median(times[cell][k])) for k in ("infer", "train"))
        out[cell] = {
            "parameters": int(model.num_parameters()),
            "infer_ms": t_inf * 1e3,
            "train_ms": t_train * 1e3,
            "infer_seq_per_s": N / t_inf,
            "train_seq_per_s": N / t_train,
        }
        say(f"speed: {cell}: inference {N / t_inf:,.0f} seq/s, training {N / t_train:,.0f} seq/s, "
            f"{model.num_parameters():,} parameters")
    return out


def _spikes(norms, factor, window):
    """Steps whose gradient norm exceeds ``factor`` times the median of the ``window`` steps before."""
    norms = np.asarray(norms, dtype=np.float64)
    if norms.size <= window:
        return 0
    before = np.median(np.lib.stride_tricks.sliding_window_view(norms[:-1], window), axis=1)
    return int(np.sum(norms[window:] > factor * before))


def _train_adding(cell, T, rep, cfg, seed, dtype, full_budget):
    """One cell trained on the adding problem at length T. Returns (record, seconds).

    Unless ``full_budget``, training stops at the first evaluation that counts as solved.
    """
    t0 = time.perf_counter()
    cell_index = list(_CELLS).index(cell)
    net = _Readout(cell, cfg["hidden"], dtype, _seed_int(seed, 20, rep, cell_index))
    if cell == "LSTM" and cfg["lstm_forget_bias"]:
        H = cfg["hidden"]
        net.model.parameters()["b_l0"][H:2 * H] += dtype.type(cfg["lstm_forget_bias"])
    opt = Adam(net.params, lr=cfg["lr"])
    data = _rng(seed, 21, T, rep)                       # the same batches for every cell
    x_eval, y_eval = adding_batch(_rng(seed, 22, T), T, cfg["eval_size"], dtype)
    x_prof, y_prof = adding_batch(_rng(seed, 23, T), T, cfg["stability_size"], dtype)

    at_init = net.grad_through_time(x_prof, y_prof)
    norms, curve = [], []
    diverged = False
    for step in range(1, cfg["steps"] + 1):
        x, y = adding_batch(data, T, cfg["batch"], dtype)
        loss, grads, _ = net.loss_and_grads(x, y)
        norm = clip_grad_norm(grads, cfg["clip"])
        if not (math.isfinite(loss) and math.isfinite(norm)):
            diverged = True
            break
        opt.step(grads)
        norms.append(norm)
        if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
            mse = mse_loss(net.predict(x_eval), y_eval)[0]
            if not math.isfinite(mse):
                diverged = True
                break
            curve.append([step, mse])
            if mse < cfg["threshold"] and not full_budget:
                break
    final = curve[-1][1] if curve and not diverged else None
    trained = None if diverged else net.grad_through_time(x_prof, y_prof)
    record = {
        "T": T,
        "seed_index": rep,
        "full_budget": full_budget,
        "final_mse": final,
        "solved": final is not None and final < cfg["threshold"],
        "steps_to_solve": next((s for s, m in curve if m < cfg["threshold"]), None),
        "steps_done": len(norms),
        "diverged": diverged,
        "eval_curve": curve,
        "grad_norm_median": float(np.median(norms)) if norms else None,
        "grad_spikes": _spikes(norms, cfg["spike_factor"], cfg["spike_window"]),
        "grad_through_time_init": _profile_summary(at_init),
        "grad_through_time_trained": _profile_summary(trained) if trained is not None else None,
    }
    if T == cfg["stability_T"]:
        record["grad_norm_per_step_init"] = [float(v) for v in at_init]
        record["grad_norm_per_step_trained"] = [float(v) for v in trained] if trained is not None else None
    return record, time.perf_counter() - t0


def _climb(cell, rep, cfg, seed, say):
    """One seed of one cell up the ladder of T (plus the stability T). Returns (cell, rep, records, seconds)."""
    dtype = np.dtype(cfg["dtype"])
    rungs = sorted(set(cfg["ladder"]) | {cfg["stability_T"]})
    records, seconds, failures = [], {}, 0
    for T in rungs:
        if failures >= cfg["stop_after_failures"] and T != cfg["stability_T"]:
            continue
        full = T == min(cfg["ladder"]) or not cfg["early_stop"]
        record, s = _train_adding(cell, T, rep, cfg, seed, dtype, full)
        records.append(record)
        seconds[str(T)] = s
        mse = "diverged" if record["final_mse"] is None else f"{record['final_mse']:.2g}"
        when = f"solved at step {record['steps_to_solve']}" if record["solved"] else "not solved"
        say(f"memory: {cell} T={T} seed {rep}: held-out MSE {mse} ({when}), "
            f"{record['grad_spikes']} gradient spikes, {s:.1f} s")
        if T in cfg["ladder"]:
            failures = 0 if record["solved"] else failures + 1
    return cell, rep, records, seconds


_worker_queue = None


def _worker_init(queue, threads):
    global _worker_queue
    _worker_queue = queue
    rnncore.set_num_threads(threads)


def _climb_in_worker(cell, rep, cfg, seed):
    return _climb(cell, rep, cfg, seed, _worker_queue.put)


def _run_climbs(cfg, seed, say):
    """Every (cell, seed) climb, in ``cfg["workers"]`` processes; the results do not depend on how many."""
    jobs = [(cell, rep) for rep in range(cfg["train_seeds"]) for cell in cfg["cells"]]
    if cfg["workers"] <= 1:
        return [_climb(cell, rep, cfg, seed, say) for cell, rep in jobs]
    import concurrent.futures
    import multiprocessing
    import queue as queue_module

    # fork: no re-import of the caller's __main__; nothing but this thread runs in the parent here.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    lines = ctx.Queue()
    results = []
    with concurrent.futures.ProcessPoolExecutor(cfg["workers"], mp_context=ctx, initializer=_worker_init,
                                                initargs=(lines, cfg["train_threads"])) as pool:
        # the costliest cells first, so that the cheap ones fill in at the end
        order = sorted(jobs, key=lambda j: {"LSTM": 0, "GRU": 1, "GRU (reset_after)": 2}.get(j[0], 3))
        pending = {pool.submit(_climb_in_worker, cell, rep, cfg, seed) for cell, rep in order}
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=0.2)
            results += [f.result() for f in done]
            while True:
                try:
                    say(lines.get_nowait())
                except queue_module.Empty:
                    break
    while not lines.empty():
        say(lines.get())
    key = {job: i for i, job in enumerate(jobs)}
    return sorted(results, key=lambda r: key[(r[0], r[1])])


def _measure_memory(cfg, seed, say):
    climbs = _run_climbs(cfg, seed, say)
    memory, seconds = {}, {}
    for cell in cfg["cells"]:
        mine = [c for c in climbs if c[0] == cell]
        seconds[cell] = {f"{T}/{rep}": s for _, rep, _, secs in mine for T, s in secs.items()}
        runs = {}
        for T in sorted({r["T"] for _, _, records, _ in mine for r in records}):
            reps = [r for _, _, records, _ in mine for r in records if r["T"] == T]
            solved = sum(r["solved"] for r in reps)
            finals = sorted(r["final_mse"] for r in reps if r["final_mse"] is not None)
            runs[str(T)] = {
                "T": T,
                "seeds_run": len(reps),
                "seeds_total": cfg["train_seeds"],
                "solved_fraction": solved / cfg["train_seeds"],       # a seed that stopped below T failed
                "solved": 2 * solved > cfg["train_seeds"],           # a strict majority of all seeds
                "final_mse_median": float(np.median(finals)) if len(finals) == len(reps) else None,
                "seeds": reps,
            }
        solved_T = [r["T"] for r in runs.values() if r["solved"] and r["T"] in cfg["ladder"]]
        memory[cell] = {"largest_T_solved": max(solved_T) if solved_T else None, "runs": runs}
    return memory, seconds


def _profile_key(p):
    if p is None or p["last"] == 0.0:
        return math.inf
    return -math.inf if p["first"] == 0.0 else p["log10_first_over_last"]


def _median_profile(profiles):
    """The profile of the seed with the median first/last ratio (lower middle for an even count)."""
    ranked = sorted((p for p in profiles if p is not None), key=_profile_key)
    return ranked[(len(ranked) - 1) // 2] if ranked else None


def _stability(cfg, memory):
    out = {}
    T = str(cfg["stability_T"])
    # spike rates compare like with like: only the rungs that every cell trained on
    common = sorted(set.intersection(*(set(memory[c]["runs"]) for c in cfg["cells"])), key=int)
    for cell in cfg["cells"]:
        runs = memory[cell]["runs"]
        at_T = runs[T]["seeds"]
        every = [r for run in runs.values() for r in run["seeds"]]
        shared = [r for t in common for r in runs[t]["seeds"]]
        steps = sum(r["steps_done"] for r in shared)
        spikes = sum(r["grad_spikes"] for r in shared)
        out[cell] = {
            "T": cfg["stability_T"],
            "init": _median_profile([r["grad_through_time_init"] for r in at_T]),
            "trained": _median_profile([r["grad_through_time_trained"] for r in at_T]),
            "spike_rungs": [int(t) for t in common],
            "grad_spikes": spikes,
            "steps": steps,
            "grad_spikes_per_1000_steps": 1000.0 * spikes / steps if steps else None,
            "grad_spikes_all_runs": sum(r["grad_spikes"] for r in every),
            "steps_all_runs": sum(r["steps_done"] for r in every),
            "diverged_runs": sum(r["diverged"] for r in every),
            "runs": len(every),
        }
    return out


def _mse_at(memory, cell, T):
    run = memory[cell]["runs"].get(str(T))
    return None if run is None else run["final_mse_median"]
