"""The seed's comparison table, measured with rnncore.

The lecture notes the project grew from end with a table (Spanish) that claims:

    | Modelo | Memoria a largo plazo | Capacidad de modelado | Velocidad / Tamaño            |
    | RNN    | ❌ Limitada           | Baja                  | ⚡ Rápida pero inestable       |
    | LSTM   | ✅ Alta               | Alta                  | 🐢 Más lenta, más precisa      |
    | GRU    | ✅ Media a alta       | Media-Alta            | ⚡⚡ Un poco más rápida que LSTM |

``run()`` measures each claim for tanh RNN, LSTM, GRU (the notes' reset-before form) and, as an
extra row the notes do not cover, GRU with reset_after:

- speed: median wall time of inference (forward) and training (forward + backward with a
  gradient on every output) at equal hidden size, as sequences/s; parameter counts.
- long-term memory: the adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015) over a
  ladder of sequence lengths T, every cell trained with the same budget; the largest T whose
  held-out MSE falls below a threshold well under the 1/6 of always predicting 1.
- modelling capacity / precision: held-out MSE after the full budget at the shortest T, where
  memory is not the limit.
- stability: ||dLoss/dx_t|| along time at initialisation and after training (vanishing), and
  gradient-norm spikes during training (exploding).

``to_markdown(result)`` and ``to_text(result)`` put the seed's claims beside the numbers and say,
per column, whether the measurements agree. The result is a JSON-serialisable dict; with the same
seed every field except the timings is reproduced exactly (training runs on one BLAS thread per
worker process, and each run's seeds depend only on the seed, the cell and T, so the number of
workers does not matter either; ``deterministic_part`` drops the timing fields).

Budgets: "quick" ~10 s (smoke tests), "default" ~10 min on two cores (three seeds, T up to
200), "full" an hour or more (five seeds, T up to 400). Cost grows with T and, for the LSTM at
long T, with training: its backward slows as the vanishing gradient turns subnormal.
"""

import math
import platform
import time

import numpy as np

import rnncore
from rnncore.train import Adam, Linear, clip_grad_norm, mse_loss

__all__ = ["run", "to_markdown", "to_text", "deterministic_part", "BUDGETS", "SEED_TABLE", "COLUMNS"]

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


# ---- the entry point ----------------------------------------------------------------------------

def run(budget="default", seed=0, progress=None, config=None, **overrides):
    """Measure the seed's table. Returns a JSON-serialisable dict.

    budget: "quick" (~10 s), "default" (~10 minutes on two cores) or "full" (an hour or more);
    config / overrides: replace entries of that budget's configuration (see ``BUDGETS``), e.g.
    ``run("quick", steps=50, ladder=(5, 10))``. progress: optional callable(str) for status lines.
    """
    if budget not in BUDGETS:
        raise ValueError(f"budget: expected one of {sorted(BUDGETS)}, got {budget!r}")
    cfg = dict(BUDGETS[budget])
    for extra in (config or {}, overrides):
        unknown = sorted(set(extra) - set(cfg))
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; known: {sorted(cfg)}")
        cfg.update(extra)
    cfg["cells"] = tuple(cfg["cells"])
    cfg["ladder"] = tuple(int(t) for t in cfg["ladder"])
    for cell in cfg["cells"]:
        if cell not in _CELLS:
            raise ValueError(f"cells: unknown cell {cell!r}; known: {list(_CELLS)}")
    dtype = np.dtype(cfg["dtype"])
    say = progress if progress is not None else (lambda line: None)

    started = time.perf_counter()
    threads_before = rnncore.get_num_threads()
    try:
        if cfg["speed_threads"] is not None:
            rnncore.set_num_threads(int(cfg["speed_threads"]))
        speed_threads = rnncore.get_num_threads()
        t0 = time.perf_counter()
        speed = _measure_speed(cfg, seed, dtype, say)
        t_speed = time.perf_counter() - t0
        rnncore.set_num_threads(int(cfg["train_threads"]))
        t0 = time.perf_counter()
        memory, run_seconds = _measure_memory(cfg, seed, say)
        t_memory = time.perf_counter() - t0
    finally:
        rnncore.set_num_threads(threads_before)
    stability = _stability(cfg, memory)

    json_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    return {
        "benchmark": "seed_table",
        "budget": budget,
        "seed": seed,
        "config": json_cfg,
        "task": {"name": "adding problem", "baseline_mse": BASELINE_MSE, "threshold": cfg["threshold"]},
        "seed_table": {"columns": list(COLUMNS), "rows": [list(r) for r in SEED_TABLE]},
        "speed": speed,
        "memory": memory,
        "stability": stability,
        "verdicts": _verdicts(cfg, speed, memory, stability),
        "environment": {
            "rnncore": getattr(rnncore, "__version__", "?"),
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "blas": rnncore.blas_info().get("corename"),
            "speed_threads": speed_threads,
            "train_threads": int(cfg["train_threads"]),
        },
        "timings": {"speed_s": t_speed, "memory_s": t_memory, "total_s": time.perf_counter() - started,
                    "runs_s": run_seconds},
    }


_TIMING_SPEED_KEYS = ("infer_ms", "train_ms", "infer_seq_per_s", "train_seq_per_s")


def deterministic_part(result):
    """A copy of ``result`` without the fields that depend on timing (reproducible for a seed)."""
    out = {k: v for k, v in result.items() if k not in ("timings", "environment")}
    out["speed"] = {c: {k: v for k, v in s.items() if k not in _TIMING_SPEED_KEYS}
                    for c, s in result["speed"].items()}
    out["verdicts"] = {k: v for k, v in result["verdicts"].items() if k != "Velocidad / Tamaño"}
    return out


# ---- reading the numbers against the seed's claims ---------------------------------------------

def _mse_at(memory, cell, T):
    run = memory[cell]["runs"].get(str(T))
    return None if run is None else run["final_mse_median"]


_TIE = 1.5   # MSEs (and spike rates) within this factor of each other count as equal: a few seeds are noisy


def _div(a, b):
    return a / b if b else math.inf


def _verdicts(cfg, speed, memory, stability):
    """Per seed column: {"verdict": "agrees" | "partly" | "disagrees" | "n/a", "checks": [[ok, text], ...],
    "reading": one line}. Each check is one of the seed's claims against the measurement."""
    if not all(c in cfg["cells"] for c in ("RNN", "LSTM", "GRU")):
        na = {"verdict": "n/a", "checks": [], "reading": "needs the RNN, LSTM and GRU rows"}
        return {col: dict(na) for col in COLUMNS[1:]}

    def verdict(checks):
        passed = sum(ok for ok, _ in checks)
        word = "agrees" if passed == len(checks) else ("disagrees" if passed == 0 else "partly")
        reading = f"{passed} of {len(checks)} claims hold: " + "; ".join(
            ("✓ " if ok else "✗ ") + text for ok, text in checks)
        return {"verdict": word, "checks": [[bool(ok), text] for ok, text in checks], "reading": reading}

    three = ("RNN", "LSTM", "GRU")
    out = {}

    reach = {c: memory[c]["largest_T_solved"] or 0 for c in three}
    reached = ", ".join(f"{c} {reach[c] or 'none'}" for c in three)
    checks = [
        (reach["RNN"] < min(reach["LSTM"], reach["GRU"]), f"RNN limited (largest T solved: {reached})"),
        (reach["LSTM"] >= reach["GRU"], "LSTM (alta) reaches at least as far as GRU (media a alta)"),
    ]
    both = min(reach["LSTM"], reach["GRU"])
    if both:
        # the ladder's resolution can hide a difference: compare how reliably and how fast both learn there
        how = {}
        for c in ("LSTM", "GRU"):
            seeds = memory[c]["runs"][str(both)]["seeds"]
            steps = [r["steps_to_solve"] for r in seeds if r["solved"]]
            how[c] = (len(steps), float(np.median(steps)), memory[c]["runs"][str(both)]["seeds_total"])
        checks.append((how["LSTM"][0] >= how["GRU"][0] and how["LSTM"][1] <= _TIE * how["GRU"][1],
                       f"LSTM learns T={both} at least as reliably and, within {_TIE:g}x, as fast as GRU "
                       f"(seeds solved, median step: LSTM {how['LSTM'][0]}/{how['LSTM'][2]} at "
                       f"{how['LSTM'][1]:.0f}, GRU {how['GRU'][0]}/{how['GRU'][2]} at {how['GRU'][1]:.0f})"))
    out[COLUMNS[1]] = verdict(checks)

    T0 = min(cfg["ladder"])
    mse = {c: _mse_at(memory, c, T0) for c in three}
    inf = {c: (math.inf if v is None else v) for c, v in mse.items()}
    shown = ", ".join(f"{c} {_g(mse[c])}" for c in three)
    checks = [
        (inf["RNN"] > _TIE * max(inf["LSTM"], inf["GRU"]), f"RNN low (held-out MSE at T={T0}: {shown})"),
        (inf["LSTM"] <= _TIE * inf["GRU"], f"LSTM (alta) at least as precise as GRU (media-alta), within "
                                           f"{_TIE:g}x (LSTM/GRU = {_div(inf['LSTM'], inf['GRU']):.2f})"),
    ]
    out[COLUMNS[2]] = verdict(checks)

    tr = {c: speed[c]["train_seq_per_s"] for c in three}
    size = {c: speed[c]["parameters"] for c in three}
    ratio = tr["GRU"] / tr["LSTM"]
    st = {c: stability[c] for c in three}

    def vanish(c):
        return _profile_key(st[c]["trained"] or st[c]["init"])

    rate = {c: st[c]["grad_spikes_per_1000_steps"] or 0.0 for c in three}
    Ts = cfg["stability_T"]
    checks = [
        (tr["RNN"] > max(tr["LSTM"], tr["GRU"]),
         f"RNN fast (training: RNN {tr['RNN']:,.0f}, GRU {tr['GRU']:,.0f}, LSTM {tr['LSTM']:,.0f} seq/s)"),
        (vanish("RNN") < min(vanish("LSTM"), vanish("GRU")) - 1.0,
         f"RNN unstable: its gradient vanishes most (first/last ||dL/dx_t|| at T={Ts} after training: "
         + ", ".join(f"{c} {_ratio(st[c]['trained'] or st[c]['init'])}" for c in three) + ")"),
        (rate["RNN"] > _TIE * max(rate["LSTM"], rate["GRU"]),
         f"RNN unstable: clearly (>{_TIE:g}x) the most gradient spikes (per 1000 steps: "
         + ", ".join(f"{c} {rate[c]:.1f}" for c in three) + ")"),
        (tr["LSTM"] < min(tr["RNN"], tr["GRU"]), "LSTM slowest"),
        (size["LSTM"] > max(size["RNN"], size["GRU"]),
         f"LSTM largest ({size['LSTM']:,} parameters; GRU {size['GRU']:,}, RNN {size['RNN']:,})"),
        (inf["LSTM"] <= _TIE * min(inf["GRU"], inf["RNN"]), f"LSTM most precise, within {_TIE:g}x "
                                                             f"(MSE at T={T0}: {shown})"),
        (1.0 < ratio <= 2.0, f"GRU a little faster than LSTM (trains {ratio:.2f}x as fast; 'a little' = 1-2x)"),
    ]
    out[COLUMNS[3]] = verdict(checks)
    return out


# ---- presentation -------------------------------------------------------------------------------

def _g(v, digits=2):
    return "—" if v is None else f"{v:.{digits}g}"


def _pow10(v):
    return "—" if v is None else f"10^{v:+.1f}"


def _ratio(profile):
    """A gradient profile's first/last ratio as a power of ten; "0" when the first step underflowed."""
    if not profile:
        return "—"
    if profile["first"] == 0.0 and profile["last"] > 0:
        return "0 (underflow)"
    return _pow10(profile["log10_first_over_last"])


def _run_cell(run):
    """One ladder rung for the tables: held-out MSE (median over the seeds that ran it), ✓ when
    solved and the median step the solving seeds got there, and k/n seeds solved when n > 1."""
    if run is None:
        return "—"
    text = _g(run["final_mse_median"])
    solved = [r["steps_to_solve"] for r in run["seeds"] if r["solved"]]
    if run["solved"]:
        text += f" ✓ paso {int(np.median(solved))}"
    if run["seeds_total"] > 1:
        text += f" ({len(solved)}/{run['seeds_total']})"
    return text


def _first_failure(mem):
    failed = [r["T"] for r in mem["runs"].values() if not r["solved"]]
    return min(failed) if failed else None


def _measured_rows(result):
    cfg = result["config"]
    T0 = min(cfg["ladder"])
    seed_rows = {r[0]: r for r in SEED_TABLE}
    rows = []
    for cell in cfg["cells"]:
        mem, sp, st = result["memory"][cell], result["speed"][cell], result["stability"][cell]
        reach, fail = mem["largest_T_solved"], _first_failure(mem)
        memory = f"resuelve hasta T={reach}" if reach else "no resuelve ningún T"
        if reach:
            memory += f": {_run_cell(mem['runs'][str(reach)])}"
        if fail:
            memory += f"; falla T={fail}: {_run_cell(mem['runs'][str(fail)])}"
        rate = st["grad_spikes_per_1000_steps"]
        rows.append({
            "cell": cell,
            "seed": seed_rows.get(cell, (cell, "—", "—", "—"))[1:],
            "memory": memory,
            "capacity": f"MSE {_g(_mse_at(result['memory'], cell, T0))} a T={T0}",
            "speed": (f"{sp['train_seq_per_s']:,.0f} sec/s entrenamiento, {sp['infer_seq_per_s']:,.0f} inferencia; "
                      f"{sp['parameters']:,} parámetros; gradiente 1.º/último {_ratio(st['trained'])}; "
                      f"{'—' if rate is None else f'{rate:.1f}'} picos/1000 pasos"),
        })
    return rows


def _method_lines(result):
    cfg, task, env = result["config"], result["task"], result["environment"]
    forget = (f" LSTM forget-gate bias +{cfg['lstm_forget_bias']:g} at init." if cfg["lstm_forget_bias"] else "")
    return [
        f"Speed: {cfg['dtype']}, H = D = {cfg['speed_hidden']}, T = {cfg['speed_T']}, N = {cfg['speed_N']}; "
        f"median of {cfg['speed_repeats']} interleaved rounds after {cfg['speed_warmup']} warm-up; training = "
        f"forward + backward with a gradient on every output; {env['speed_threads']} BLAS thread(s), "
        f"kernel {env['blas']}. Wall-clock numbers: they move with the machine's load.",
        f"Long-term memory: adding problem (Hochreiter & Schmidhuber 1997), 1 layer, H = {cfg['hidden']}, "
        f"Linear readout of the final hidden state; per cell and T at most {cfg['steps']} Adam steps "
        f"(lr {cfg['lr']}, batch {cfg['batch']}, global gradient-norm clip {cfg['clip']}), the same batches for "
        f"every cell, {cfg['train_seeds']} seed(s); held-out set of {cfg['eval_size']}, evaluated every "
        f"{cfg['eval_every']} steps. Solved = held-out MSE < {task['threshold']:g} (always predicting 1 scores "
        f"{task['baseline_mse']:.3f}); "
        + ("a rung stops once solved; " if cfg["early_stop"] else "")
        + f"the ladder {', '.join(map(str, cfg['ladder']))} stops after {cfg['stop_after_failures']} failure(s)."
        + forget,
        f"Modelling capacity / precision: held-out MSE after the full {cfg['steps']} steps at T = "
        f"{min(cfg['ladder'])}, where memory is not the limit; MSEs within {_TIE:g}x count as equal.",
        f"Stability at T = {cfg['stability_T']}: mean over the batch of ||dLoss/dx_t||, first step over last "
        f"(below 1 = vanishing), at initialisation and after training (the median seed); spikes = training steps whose pre-clip "
        f"gradient norm exceeds {cfg['spike_factor']:g}x the median of the {cfg['spike_window']} steps before, "
        f"counted over the rungs every cell trained on (T = "
        f"{', '.join(map(str, next(iter(result['stability'].values()))['spike_rungs']))}).",
    ]


def to_markdown(result):
    """A Markdown section: the seed's table, the measured values beside it, and a reading per column."""
    cfg = result["config"]
    header = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines = ["## The seed's comparison table, measured with rnncore", "", "What the notes claim:", ""] + header
    lines += ["| **" + r[0] + "** | " + " | ".join(r[1:]) + " |" for r in SEED_TABLE]
    lines += ["", f"Measured (budget `{result['budget']}`, seed {result['seed']}); the notes' words, then → what "
                  "rnncore measures:", ""] + header
    for row in _measured_rows(result):
        claim = row["seed"]
        lines.append(f"| **{row['cell']}** | {claim[0]} → {row['memory']} | {claim[1]} → {row['capacity']} | "
                     f"{claim[2]} → {row['speed']} |")
    lines += ["", "Reading, per column (✓ the measurement supports the claim, ✗ it does not):", ""]
    for col in COLUMNS[1:]:
        v = result["verdicts"][col]
        lines.append(f"- **{col}** — {v['verdict']}. {v['reading']}.")

    T_all = _all_T(result)
    lines += ["", "Adding problem, held-out MSE by sequence length (✓ solved, at the step given; — not run):", "",
              "| Modelo | " + " | ".join(f"T={T}" for T in T_all) + " |", "|" + "---|" * (len(T_all) + 1)]
    for cell in cfg["cells"]:
        runs = result["memory"][cell]["runs"]
        lines.append(f"| {cell} | " + " | ".join(_run_cell(runs.get(str(T))) for T in T_all) + " |")

    lines += ["", f"Speed, size and stability (gradients at T = {cfg['stability_T']}):", "",
              "| Modelo | parámetros | entrenamiento (sec/s) | inferencia (sec/s) | ‖dL/dx₁‖ / ‖dL/dx_T‖ al inicio "
              "| tras entrenar | picos de gradiente |", "|---|---|---|---|---|---|---|"]
    for cell in cfg["cells"]:
        sp, st = result["speed"][cell], result["stability"][cell]
        lines.append(f"| {cell} | {sp['parameters']:,} | {sp['train_seq_per_s']:,.0f} | {sp['infer_seq_per_s']:,.0f} "
                     f"| {_ratio(st['init'])} | {_ratio(st['trained'])} | "
                     f"{st['grad_spikes']} en {st['steps']:,} pasos |")
    lines += ["", "How it was measured:", ""] + ["- " + m for m in _method_lines(result)]
    lines += ["", f"Run time {result['timings']['total_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def _all_T(result):
    return sorted({int(T) for m in result["memory"].values() for T in m["runs"]})


def _table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))] + \
        [fmt.format(*map(str, r)).rstrip() for r in rows]


def to_text(result):
    """The same content for a terminal."""
    cfg = result["config"]
    out = [f"The seed's comparison table, measured with rnncore (budget {result['budget']}, seed {result['seed']})",
           "", "The notes claim:", ""]
    out += _table(COLUMNS, SEED_TABLE)
    out += ["", "Measured:", ""]
    T0 = min(cfg["ladder"])
    rows = []
    for cell in cfg["cells"]:
        mem, sp, st = result["memory"][cell], result["speed"][cell], result["stability"][cell]
        rate = st["grad_spikes_per_1000_steps"]
        rows.append([cell, mem["largest_T_solved"] or "none", _g(_mse_at(result["memory"], cell, T0)),
                     f"{sp['train_seq_per_s']:,.0f}", f"{sp['infer_seq_per_s']:,.0f}", f"{sp['parameters']:,}",
                     _ratio(st["init"]), _ratio(st["trained"]), "—" if rate is None else f"{rate:.1f}"])
    out += _table(["cell", "max T solved", f"MSE at T={T0}", "train seq/s", "infer seq/s", "params",
                   f"grad 1st/last T={cfg['stability_T']} init", "trained", "spikes/1000 steps"], rows)
    T_all = _all_T(result)
    out += ["", "Adding problem, held-out MSE by T (✓ solved, at the step given):", ""]
    out += _table(["cell"] + [f"T={T}" for T in T_all],
                  [[cell] + [_run_cell(result["memory"][cell]["runs"].get(str(T))) for T in T_all]
                   for cell in cfg["cells"]])
    out += [""]
    for col in COLUMNS[1:]:
        v = result["verdicts"][col]
        out.append(f"{col}: {v['verdict']}. {v['reading']}.")
    out += [""] + _method_lines(result) + ["", f"Run time {result['timings']['total_s']:.0f} s."]
    return "\n".join(out) + "\n"
