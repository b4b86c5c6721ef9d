"""What a training forward keeps for backward, in bytes per time step per batch row, against the
least a backward that recomputes no matrix product needs.

    python benchmarks/tape_memory.py [--T 100] [--N 32] [--D 256] [--H 256] [--dtype float32]

Kept (csrc/driver.h, Tape), per valid step of a row, in values:
    the layer-0 input (a copy of x)                      D
    each upper layer's input (the layer below's output)  dirs * H       per upper layer
    per layer and direction: h                           H
                             c (LSTM)                    H
                             gate cache (LSTM, GRU)      4 H   LSTM i, f, g, o; GRU r, z, n and a fourth block
    dropout masks (training, dropout > 0)                dirs * H       per upper layer, as full floats
plus, per row rather than per step, the initial state's slot (H, LSTM 2 H) per layer and direction.

Beside the tape: the packed copies of the weights that a call holds while it runs (W_hh in one
slice per thread, and W_ih when the input projection is packed), as the core reports them
(``_core.packed_bytes_of_last_call``): workspace, freed when the call returns, and independent of
T and N. Printed per stack in bytes, for the forward and the backward.

The least a backward needs without recomputing a matrix product, per layer and direction: h, and
LSTM c, i, f, g, o (6 H); GRU r, z, n (4 H); GRU reset_after also h W_hn^T + b_hn (5 H); RNN h (H).
The layer-0 input D counts too (the caller may change x after the forward). An upper layer's input
is its lower layer's h times the dropout mask, so it needs nothing beyond 1 bit per mask value.
"""

import argparse

import numpy as np

import rnncore

CELLS = {
    "rnn_tanh": (lambda D, H, **kw: rnncore.RNN(D, H, **kw), 1),
    "lstm": (lambda D, H, **kw: rnncore.LSTM(D, H, **kw), 6),
    "gru": (lambda D, H, **kw: rnncore.GRU(D, H, **kw), 4),
    "gru_after": (lambda D, H, **kw: rnncore.GRU(D, H, reset_after=True, **kw), 5),
}


def minimum_values(cell, D, H, layers, dirs, dropout):
    """Values per step per row that a backward without recomputed products needs (masks as bits)."""
    per_dir = CELLS[cell][1] * H
    masks = (layers - 1) * dirs * H / (8 * 4) if dropout else 0  # bits, in float32 values
    return D + layers * dirs * per_dir + masks


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--N", type=int, default=32)
    ap.add_argument("--D", type=int, default=256)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    a = ap.parse_args()
    dt = np.dtype(a.dtype)
    x = np.random.default_rng(0).standard_normal((a.T, a.N, a.D)).astype(dt)
    print(f"T={a.T}, N={a.N}, D={a.D}, H={a.H}, {dt}, {rnncore.get_num_threads()} threads; bytes per step per "
          f"batch row (tape.nbytes / (T * N)); 'least' = what backward needs without recomputing a product; "
          f"'packed' = bytes of packed weights a call holds while it runs (not per step)\n")
    head = (f"{'cell':10} {'stack':24} {'kept':>9} {'least':>9} {'kept/least':>10} {'packed fwd':>11} "
            f"{'packed bwd':>11}   extra over least")
    print(head)
    print("-" * len(head))
    for cell, (build, _) in CELLS.items():
        for layers, bi, dropout in [(1, False, 0.0), (2, True, 0.0), (2, True, 0.2)]:
            m = build(a.D, a.H, num_layers=layers, bidirectional=bi, dropout=dropout, dtype=dt, seed=0)
            y, _, tape = m.forward(x, train=True)
            packed_fwd = rnncore._core.packed_bytes_of_last_call()
            m.backward(tape, np.ones_like(y))
            packed_bwd = rnncore._core.packed_bytes_of_last_call()
            kept = tape.nbytes / (a.T * a.N)
            least = minimum_values(cell, a.D, a.H, layers, m.dirs, dropout) * dt.itemsize
            extra = []
            if cell == "gru":
                extra.append(f"r*h_prev {layers * m.dirs * a.H * dt.itemsize}")
            if layers > 1:
                extra.append(f"upper inputs {(layers - 1) * m.dirs * a.H * dt.itemsize}")
            if dropout:
                extra.append(f"masks as floats {(layers - 1) * m.dirs * a.H * (dt.itemsize - 1 / 8):.0f}")
            extra.append(f"initial-state slots {kept - least - sum(float(e.split()[-1]) for e in extra):.0f}")
            stack = f"{layers} layer{'s' if layers > 1 else ''}{', bidir' if bi else ''}" + \
                (f", p={dropout}" if dropout else "")
            print(f"{cell:10} {stack:24} {kept:9.0f} {least:9.0f} {kept / least:10.2f} {packed_fwd:11d} "
                  f"{packed_bwd:11d}   {'; '.join(extra)}")


if __name__ == "__main__":
    main()
