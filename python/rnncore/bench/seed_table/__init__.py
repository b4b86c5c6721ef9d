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

import platform
import time

import numpy as np

import rnncore

from .measure import (BASELINE_MSE, BUDGETS, COLUMNS, SEED_TABLE, _CELLS, _measure_memory, _measure_speed,
                      _stability, adding_batch)
from .present import to_markdown, to_text
from .verdicts import _verdicts

__all__ = ["run", "to_markdown", "to_text", "deterministic_part", "adding_batch", "BUDGETS", "SEED_TABLE", "COLUMNS"]


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
