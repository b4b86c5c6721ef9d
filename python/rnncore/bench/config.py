"""The benchmark suite's configuration: cells, modes, peers, shapes, presets and tolerances.

``make_config(preset, **overrides)`` gives the ``Config`` that ``suite.run`` takes; the presets are
those of ``rnncore-bench --quick`` / (default) / ``--full``.
"""

import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .peers import GATES, PEER_ALIASES, PEER_CLASSES

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
    shapes: List[Tuple[int, ...]] = field(default_factory=lambda: list(DEFAULT_SHAPES))
    varlen: List[Tuple[int, ...]] = field(default_factory=lambda: [VARLEN_SHAPE])
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


BUSY_SHARE = 0.10   # other processes' share of the CPUs above which a scenario counts as contended
