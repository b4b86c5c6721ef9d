"""Step latency: one step of each cell at N = 1, rnncore's cells against PyTorch's.

The cell API is for latency (a live stream, generation one step at a time), so the cost of a
single step — Python call, two products with the weights and the pointwise pass — is what counts.
For each cell: the median time of one inference step (a block of steps divided by its length),
and of one training step (forward and backward of that step), over interleaved rounds.
"""

import time

import numpy as np

import rnncore

CELLS = [("RNN-tanh", "rnn_tanh"), ("LSTM", "lstm"), ("GRU", "gru"), ("GRU-ra", "gru_after")]


def _rnncore_cell(kind, H, seed):
    if kind == "rnn_tanh":
        return rnncore.RNNCell(H, H, seed=seed)
    if kind == "lstm":
        return rnncore.LSTMCell(H, H, seed=seed)
    return rnncore.GRUCell(H, H, reset_after=kind == "gru_after", seed=seed)


def _torch_cell(torch, kind, cell):
    """PyTorch's cell with rnncore's weights (None: PyTorch has no such cell)."""
    if kind == "gru":
        return None
    H = cell.hidden_size
    mod = {"rnn_tanh": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru_after": torch.nn.GRUCell}[kind](H, H)
    sd = rnncore.to_torch_state_dict({k + "_l0": v for k, v in cell.parameters().items()}, kind)
    mod.load_state_dict({k[:-3]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()})
    return mod


def _block(f, n):
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n


def run(H=256, threads=2, steps=400, rounds=7, seed=0, progress=None):
    """Returns a JSON-ready dict: per cell, median microseconds per step for each peer and mode."""
    try:
        import torch
    except ImportError:
        torch = None
    before = rnncore.get_num_threads()
    rnncore.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, H)).astype(np.float32)
    out = {"N": 1, "H": H, "D": H, "threads": threads, "steps_per_block": steps, "rounds": rounds,
           "torch": None if torch is None else torch.__version__, "cells": []}
    try:
        for label, kind in CELLS:
            if progress:
                progress(f"step latency: {label}")
            cell = _rnncore_cell(kind, H, seed)
            h = np.zeros((1, H), np.float32)
            state = (h, h) if kind == "lstm" else h
            fns = {"rnncore": {"inference": lambda: cell(x, state),
                               "training": lambda: cell.backward(cell.forward(x, state, train=True)[1],
                                                                 np.ones((1, H), np.float32))}}
            row = {"cell": label, "kind": kind, "agree": None}
            tc = _torch_cell(torch, kind, cell) if torch is not None else None
            if tc is not None:
                xt = torch.from_numpy(x)
                ht = torch.zeros(1, H)
                tstate = (ht, ht) if kind == "lstm" else ht

                def t_inf():
                    with torch.inference_mode():
                        return tc(xt, tstate)

                xg = xt.clone().requires_grad_(True)

                def t_train():
                    o = tc(xg, tstate)
                    (o[0] if kind == "lstm" else o).sum().backward()

                fns["torch"] = {"inference": t_inf, "training": t_train}
                got = cell(x, state)
                want = t_inf()
                got_h = got[0] if kind == "lstm" else got
                want_h = (want[0] if kind == "lstm" else want).numpy()
                row["agree"] = float(np.abs(got_h - want_h).max())
            else:
                row["torch_reason"] = ("PyTorch has no reset-before GRU" if kind == "gru" else
                                       "torch is not importable")
            for mode in ("inference", "training"):
                times = {p: [] for p in fns}
                for f in fns.values():
                    _block(f[mode], 20)
                for r in range(rounds):
                    order = list(fns) if r % 2 == 0 else list(fns)[::-1]
                    for p in order:
                        times[p].append(_block(fns[p][mode], steps))
                row[mode] = {p: float(np.median(v)) * 1e6 for p, v in times.items()}
            out["cells"].append(row)
    finally:
        rnncore.set_num_threads(before)
    return out


def _fmt(us):
    return f"{us:.1f}"


def _rows(res):
    rows = []
    for c in res["cells"]:
        r = [c["cell"]]
        for mode in ("inference", "training"):
            mine = c[mode]["rnncore"]
            other = c[mode].get("torch")
            r += [_fmt(mine), _fmt(other) if other else "n/a", f"{other / mine:.2f}x" if other else ""]
        rows.append(r)
    return rows


HEADER = ["cell", "inference rnncore us", "PyTorch us", "speed-up", "training rnncore us", "PyTorch us",
          "speed-up"]


def _text_rows(header, rows):
    rows = [header] + rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def to_text(res, width=None):
    """The table for a terminal; narrower than its full width when ``width`` asks: inference and
    training as two tables."""
    lines = [f"\n== step latency: one step, N={res['N']}, D=H={res['H']}, float32, {res['threads']} threads "
             f"(median per step; speed-up = PyTorch / rnncore) =="]
    rows = _rows(res)
    table = _text_rows(HEADER, rows)
    if not width or max(len(line) for line in table) <= width:
        return "\n".join(lines + table)
    for mode, cols in (("inference", [0, 1, 2, 3]), ("training", [0, 4, 5, 6])):
        header = ["cell"] + [f"{mode} rnncore us", "PyTorch us", "speed-up"]
        lines += _text_rows(header, [[r[i] for i in cols] for r in rows]) + [""]
    return "\n".join(lines[:-1])


def to_markdown(res):
    lines = [f"## Step latency (cells, N = {res['N']}, D = H = {res['H']}, float32, {res['threads']} threads)", "",
             "One step of `rnncore.RNNCell/LSTMCell/GRUCell` against `torch.nn.RNNCell/LSTMCell/GRUCell` with the "
             "same weights: median microseconds per step over interleaved blocks of "
             f"{res['steps_per_block']} steps; training = forward and backward of the step.", "",
             "| " + " | ".join(HEADER) + " |", "|---|" + "---:|" * (len(HEADER) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(res)]
    return "\n".join(lines) + "\n"
