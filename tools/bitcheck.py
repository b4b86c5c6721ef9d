"""Fingerprints of rnncore's results on a fixed set of calls, to show that a change of the core
leaves them bit for bit as they were.

    python tools/bitcheck.py save FILE      # on the code before the change
    python tools/bitcheck.py compare FILE   # on the code after it: lists every call that differs

Each call builds a model from a fixed seed and fixed inputs, runs inference, a training forward
and backward, and (for one-layer, one-direction models) the one-step cell API, and records the
SHA-256 of every output array's bytes. Every cell, both dtypes, 1 and 2 layers, both directions,
with and without lengths, batch sizes below and above the thread split's thresholds, and 1 and 2
threads.
"""

import hashlib
import json
import sys

import numpy as np

import rnncore


def _models():
    for cls, extra in ((rnncore.RNN, {"nonlinearity": "tanh"}), (rnncore.RNN, {"nonlinearity": "relu"}),
                       (rnncore.LSTM, {}), (rnncore.GRU, {"reset_after": False}), (rnncore.GRU, {"reset_after": True})):
        for dtype in (np.float32, np.float64):
            for layers, bidir, T, N, D, H, lengths in ((1, False, 7, 1, 5, 64, False), (2, True, 6, 3, 4, 8, True),
                                                       (1, False, 5, 20, 9, 40, True), (2, False, 9, 17, 16, 96, False)):
                yield cls, extra, dtype, layers, bidir, T, N, D, H, lengths


def _digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def fingerprints():
    out = {}
    for threads in (1, 2):
        rnncore.set_num_threads(threads)
        for cls, extra, dtype, layers, bidir, T, N, D, H, with_len in _models():
            key = f"{cls.__name__}{extra} {np.dtype(dtype).name} L{layers} bi{int(bidir)} T{T} N{N} D{D} H{H} " \
                  f"len{int(with_len)} threads{threads}"
            m = cls(D, H, num_layers=layers, bidirectional=bidir, dtype=dtype, seed=7, **extra)
            rng = np.random.default_rng(11)
            x = rng.standard_normal((T, N, D)).astype(dtype)
            lengths = rng.integers(0, T + 1, N) if with_len else None
            y, st = m(x, lengths=lengths)
            parts = {"y": y, **({"h_n": st[0], "c_n": st[1]} if isinstance(st, tuple) else {"h_n": st})}
            y2, st2, tape = m.forward(x, lengths=lengths, train=True)
            dy = rng.standard_normal(y2.shape).astype(dtype)
            grads = m.backward(tape, dy)
            parts["y_train"] = y2
            parts.update({"d" + k: v for k, v in grads.items()})
            if layers == 1 and not bidir:
                cell = {"RNN": rnncore.RNNCell, "LSTM": rnncore.LSTMCell, "GRU": rnncore.GRUCell}[cls.__name__]
                c = cell.from_model(m)
                s = c(x[0])
                parts["cell"] = np.concatenate([a.ravel() for a in (s if isinstance(s, tuple) else (s,))])
            out[key] = {k: _digest(v) for k, v in sorted(parts.items())}
    rnncore.set_num_threads(2)
    return out


def main(argv):
    if len(argv) != 3 or argv[1] not in ("save", "compare"):
        print(__doc__)
        return 2
    now = fingerprints()
    if argv[1] == "save":
        with open(argv[2], "w") as f:
            json.dump(now, f, indent=1, sort_keys=True)
        print(f"{len(now)} calls, {sum(len(v) for v in now.values())} arrays fingerprinted")
        return 0
    with open(argv[2]) as f:
        then = json.load(f)
    bad = [(k, a) for k, v in then.items() for a, h in v.items() if now.get(k, {}).get(a) != h]
    for k, a in bad:
        print(f"DIFFERS: {k}: {a}")
    print(f"{len(then)} calls, {sum(len(v) for v in then.values())} arrays compared, {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
