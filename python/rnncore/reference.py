"""Pure-NumPy reference engine for rnncore: the oracle the C++ core is tested against.

Everything here follows the equations in README.md ("The math") literally, one time step at a time, so that it can be read
next to the equations. It is deliberately slow (a Python loop over time, layers and
directions); only the batch is vectorised inside a step.

Conventions (row-major, batch in rows)::

    x_t      (N, D)      one time step of the input
    h_t, c_t (N, H)      hidden / cell state
    W_ih     (G*H, D)    input weights, gates stacked (LSTM i,f,g,o; GRU r,z,n)
    W_hh     (G*H, H)    recurrent weights, same gate order
    b        (G*H,)      one bias per gate
    b_hn     (H,)        only for "gru_after" (reset_after=True)

"W x" in the notes is ``x @ W.T`` here.

Cells: "rnn_tanh", "rnn_relu", "lstm", "gru" (reset applied to h before the recurrent
matmul, the notes' form) and "gru_after" (reset applied after the matmul, cuDNN form).
In both GRU forms z weights the NEW candidate:  h_t = (1 - z) * h_{t-1} + z * n.

Lengths: a step t of row n is valid iff t < lengths[n]. Both directions use the same test,
which makes the reverse direction easy: iterating t from T-1 down to 0, a row stays at its
initial state until t reaches lengths[n]-1, i.e. it reads its own valid prefix backwards.
Each step is computed only on the rows that are valid at that time (fancy indexing), so
padding values never even enter the arithmetic (NaN in padding is harmless).
"""

import numpy as np

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru", "gru_after")
_NUM_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3, "gru_after": 3}


# ----------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------

def _sigmoid(a):
    """Logistic sigmoid, overflow-free and in the dtype of `a`."""
    # exp(-|a|) is in (0, 1], so neither branch can overflow.
    e = np.exp(-np.abs(a))
    one = a.dtype.type(1)
    return np.where(a >= 0, one / (one + e), e / (one + e))


def _affine(x, W, b):
    """x @ W.T + b  with x (M, K), W (R, K), b (R,) -> (M, R)."""
    return x @ W.T + b


# ----------------------------------------------------------------------------------------
# one cell step: forward and backward on the rows that are valid at this time
# ----------------------------------------------------------------------------------------
#
# Each forward step returns (h_new, c_new, cache); `cache` is a dict holding exactly what
# the matching backward step needs. Arrays in a cache are never modified afterwards, so the
# tape survives any number of backward calls.

def _step_forward(cell, w, x, h, c):
    """x (M, D), h (M, H), c (M, H) or None  ->  h_new (M, H), c_new or None, cache."""
    W_ih, W_hh, b, b_hn = w
    H = h.shape[1]
    one = x.dtype.type(1)

    if cell in ("rnn_tanh", "rnn_relu"):
        a = _affine(x, W_ih, b) + h @ W_hh.T                    # (M, H)
        h_new = np.tanh(a) if cell == "rnn_tanh" else np.maximum(a, 0)
        return h_new, None, {"x": x, "h": h, "h_new": h_new}

    if cell == "lstm":
        a = _affine(x, W_ih, b) + h @ W_hh.T                    # (M, 4H), chunks i,f,g,o
        i = _sigmoid(a[:, 0 * H:1 * H])
        f = _sigmoid(a[:, 1 * H:2 * H])
        g = np.tanh(a[:, 2 * H:3 * H])
        o = _sigmoid(a[:, 3 * H:4 * H])
        c_new = f * c + i * g
        tc = np.tanh(c_new)
        h_new = o * tc
        cache = {"x": x, "h": h, "c": c, "i": i, "f": f, "g": g, "o": o, "tc": tc}
        return h_new, c_new, cache

    if cell == "gru":
        # Input part for all three gates at once; the recurrent part is split because the
        # candidate's recurrent matmul sees r * h instead of h.
        ax = _affine(x, W_ih, b)                                 # (M, 3H), chunks r,z,n
        ah_rz = h @ W_hh[:2 * H].T                               # (M, 2H)
        r = _sigmoid(ax[:, 0 * H:1 * H] + ah_rz[:, :H])
        z = _sigmoid(ax[:, 1 * H:2 * H] + ah_rz[:, H:])
        rh = r * h
        n = np.tanh(ax[:, 2 * H:3 * H] + rh @ W_hh[2 * H:].T)
        h_new = (one - z) * h + z * n
        cache = {"x": x, "h": h, "r": r, "z": z, "n": n, "rh": rh}
        return h_new, None, cache

    if cell == "gru_after":
        ax = _affine(x, W_ih, b)                                 # (M, 3H)
        ah = h @ W_hh.T                                          # (M, 3H)
        r = _sigmoid(ax[:, 0 * H:1 * H] + ah[:, 0 * H:1 * H])
        z = _sigmoid(ax[:, 1 * H:2 * H] + ah[:, 1 * H:2 * H])
        hn = ah[:, 2 * H:3 * H] + b_hn                           # h W_hn^T + b_hn, (M, H)
        n = np.tanh(ax[:, 2 * H:3 * H] + r * hn)
        h_new = (one - z) * h + z * n
        cache = {"x": x, "h": h, "r": r, "z": z, "n": n, "hn": hn}
        return h_new, None, cache

    raise ValueError(f"unknown cell {cell!r}")


def _step_backward(cell, w, cache, dh, dc):
    """Backward of one step on its valid rows.

    dh, dc: gradients w.r.t. h_new, c_new (M, H) (dc None unless lstm).
    Returns dx (M, D), dh_prev (M, H), dc_prev (M, H) or None, and the parameter
    gradients (dW_ih, dW_hh, db, db_hn or None) of this step alone.
    """
    W_ih, W_hh, b, b_hn = w
    x, h = cache["x"], cache["h"]
    one = x.dtype.type(1)

    if cell in ("rnn_tanh", "rnn_relu"):
        h_new = cache["h_new"]
        if cell == "rnn_tanh":
            da = dh * (one - h_new * h_new)                     # tanh' = 1 - tanh^2
        else:
            da = dh * (h_new > 0)                                # relu' = 1 where h > 0
        dx = da @ W_ih
        dh_prev = da @ W_hh
        return dx, dh_prev, None, (da.T @ x, da.T @ h, da.sum(axis=0), None)

    if cell == "lstm":
        i, f, g, o, tc, c = (cache[k] for k in ("i", "f", "g", "o", "tc", "c"))
        do = dh * tc
        dct = dc + dh * o * (one - tc * tc)                      # total gradient on c_new
        di = dct * g
        df = dct * c
        dg = dct * i
        dc_prev = dct * f
        da = np.concatenate([di * i * (one - i),                 # back through the activations
                             df * f * (one - f),
                             dg * (one - g * g),
                             do * o * (one - o)], axis=1)        # (M, 4H)
        dx = da @ W_ih
        dh_prev = da @ W_hh
        return dx, dh_prev, dc_prev, (da.T @ x, da.T @ h, da.sum(axis=0), None)

    if cell == "gru":
        H = h.shape[1]
        r, z, n, rh = (cache[k] for k in ("r", "z", "n", "rh"))
        dn = dh * z
        dz = dh * (n - h)
        dh_prev = dh * (one - z)                                 # direct path through (1-z)*h
        da_n = dn * (one - n * n)
        drh = da_n @ W_hh[2 * H:]                                # grad on r * h, (M, H)
        dr = drh * h
        dh_prev = dh_prev + drh * r
        da_r = dr * r * (one - r)
        da_z = dz * z * (one - z)
        da_rz = np.concatenate([da_r, da_z], axis=1)             # (M, 2H)
        dh_prev = dh_prev + da_rz @ W_hh[:2 * H]
        da = np.concatenate([da_r, da_z, da_n], axis=1)          # (M, 3H), input-side grads
        dx = da @ W_ih
        # Recurrent weights: r,z rows saw h; the n rows saw r * h.
        dW_hh = np.concatenate([da_rz.T @ h, da_n.T @ rh], axis=0)
        return dx, dh_prev, None, (da.T @ x, dW_hh, da.sum(axis=0), None)

    if cell == "gru_after":
        r, z, n, hn = (cache[k] for k in ("r", "z", "n", "hn"))
        dn = dh * z
        dz = dh * (n - h)
        da_n = dn * (one - n * n)
        dr = da_n * hn
        dhn = da_n * r                                           # grad on h W_hn^T + b_hn
        da_r = dr * r * (one - r)
        da_z = dz * z * (one - z)
        da_x = np.concatenate([da_r, da_z, da_n], axis=1)        # grads on the x W_ih^T + b part
        da_h = np.concatenate([da_r, da_z, dhn], axis=1)         # grads on the h W_hh^T part
        dx = da_x @ W_ih
        dh_prev = dh * (one - z) + da_h @ W_hh
        return dx, dh_prev, None, (da_x.T @ x, da_h.T @ h, da_x.sum(axis=0), dhn.sum(axis=0))

    raise ValueError(f"unknown cell {cell!r}")


# ----------------------------------------------------------------------------------------
# one direction of one layer over the whole sequence
# ----------------------------------------------------------------------------------------

def _run_direction(cell, w, xin, h0, c0, lengths, reverse, train):
    """xin (T, N, D_l); h0, c0 (N, H).  Returns y (T, N, H), h_n, c_n, steps.

    `steps` (train only) lists (t, rows, cache) in processing order; rows are the batch
    indices valid at time t.
    """
    T, N, _ = xin.shape
    H = h0.shape[1]
    h = h0.copy()
    c = None if c0 is None else c0.copy()
    y = np.zeros((T, N, H), dtype=xin.dtype)                     # padding stays exactly zero
    steps = []
    times = range(T - 1, -1, -1) if reverse else range(T)
    for t in times:
        rows = np.nonzero(t < lengths)[0]
        if rows.size == 0:
            continue
        # Fancy indexing copies, so caches never alias h / c that are updated below.
        h_new, c_new, cache = _step_forward(cell, w, xin[t, rows], h[rows],
                                            None if c is None else c[rows])
        h[rows] = h_new
        if c is not None:
            c[rows] = c_new
        y[t, rows] = h_new
        if train:
            steps.append((t, rows, cache))
    return y, h, c, steps


def _backprop_direction(cell, w, steps, dy, dh_n, dc_n, shape_x):
    """Exact BPTT through one direction of one layer.

    dy (T, N, H) gradient on this direction's output; dh_n, dc_n (N, H) on its final state.
    Rows that are not valid at a step are untouched by it (state carried through unchanged),
    so their running gradient simply passes by.
    """
    W_ih, W_hh, b, b_hn = w
    dh = dh_n.copy()
    dc = None if dc_n is None else dc_n.copy()
    dx = np.zeros(shape_x, dtype=dy.dtype)
    dW_ih = np.zeros_like(W_ih)
    dW_hh = np.zeros_like(W_hh)
    db = np.zeros_like(b)
    db_hn = None if b_hn is None else np.zeros_like(b_hn)
    for t, rows, cache in reversed(steps):
        g_h = dh[rows] + dy[t, rows]                             # h_t feeds both y_t and step t+1
        g_c = None if dc is None else dc[rows]
        dx_t, dh_prev, dc_prev, (gWi, gWh, gb, gbhn) = _step_backward(cell, w, cache, g_h, g_c)
        dx[t, rows] = dx_t
        dh[rows] = dh_prev
        if dc is not None:
            dc[rows] = dc_prev
        dW_ih += gWi
        dW_hh += gWh
        db += gb
        if db_hn is not None:
            db_hn += gbhn
    return dx, dh, dc, (dW_ih, dW_hh, db, db_hn)


# ----------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------

def _check_and_copy_weights(cell, num_layers, dirs, weights, D, H, dtype):
    G = _NUM_GATES[cell]
    if len(weights) != num_layers * dirs:
        raise ValueError(f"weights: expected {num_layers * dirs} entries, got {len(weights)}")
    out = []
    for idx, entry in enumerate(weights):
        layer = idx // dirs
        D_l = D if layer == 0 else dirs * H
        if len(entry) != 4:
            raise ValueError(f"weights[{idx}]: expected (W_ih, W_hh, b, b_hn)")
        W_ih, W_hh, b, b_hn = entry
        # Copy (and bring to the dtype of x) so the tape is immune to later edits by the caller.
        W_ih = np.array(W_ih, dtype=dtype)
        W_hh = np.array(W_hh, dtype=dtype)
        b = np.array(b, dtype=dtype)
        if W_ih.shape != (G * H, D_l):
            raise ValueError(f"weights[{idx}] W_ih: expected shape {(G * H, D_l)}, got {W_ih.shape}")
        if W_hh.shape != (G * H, H):
            raise ValueError(f"weights[{idx}] W_hh: expected shape {(G * H, H)}, got {W_hh.shape}")
        if b.shape != (G * H,):
            raise ValueError(f"weights[{idx}] b: expected shape {(G * H,)}, got {b.shape}")
        if cell == "gru_after":
            if b_hn is None:
                raise ValueError(f"weights[{idx}] b_hn: required for gru_after")
            b_hn = np.array(b_hn, dtype=dtype)
            if b_hn.shape != (H,):
                raise ValueError(f"weights[{idx}] b_hn: expected shape {(H,)}, got {b_hn.shape}")
        elif b_hn is not None:
            raise ValueError(f"weights[{idx}] b_hn: only allowed for gru_after")
        out.append((W_ih, W_hh, b, b_hn))
    return out


def forward(cell, num_layers, bidirectional, weights, x, h0, c0=None, lengths=None,
            masks=None, train=False):
    """Run a (stacked, optionally bidirectional) RNN over a time-major sequence.

    cell:        "rnn_tanh", "rnn_relu", "lstm", "gru" or "gru_after"
    num_layers:  int >= 1;  bidirectional: bool (dirs = 2 if True else 1)
    weights:     list of num_layers*dirs tuples (W_ih, W_hh, b, b_hn), index layer*dirs + dir
                 (dir 0 forward, 1 reverse); b_hn is None except for "gru_after".
    x:           (T, N, D), float32 or float64; all arithmetic is done in this dtype.
    h0:          (num_layers*dirs, N, H); required, since H is read from its shape.
    c0:          same shape, lstm only (None means zeros).
    lengths:     None or ints (N,), 0 <= len <= T, any order (0: the row is all padding and
                 its state passes through unchanged, as streaming an ended row needs).
    masks:       None or (num_layers-1, T, N, dirs*H): multiplies each non-final layer's output.
    train:       if True, also build the tape for `backward`.

    Returns (y, h_n, c_n, tape): y (T, N, dirs*H), h_n (num_layers*dirs, N, H),
    c_n like h_n for lstm else None, tape (dict) or None.
    """
    if cell not in _NUM_GATES:
        raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")
    num_layers = int(num_layers)
    if num_layers < 1:
        raise ValueError("num_layers must be >= 1")
    dirs = 2 if bidirectional else 1
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x: expected float32 or float64, got {x.dtype}")
    dtype = x.dtype
    if x.ndim != 3:
        raise ValueError(f"x: expected (T, N, D), got shape {x.shape}")
    T, N, D = x.shape

    h0 = np.array(h0, dtype=dtype)                                # copy
    if h0.ndim != 3 or h0.shape[:2] != (num_layers * dirs, N):
        raise ValueError(f"h0: expected ({num_layers * dirs}, {N}, H), got shape {h0.shape}")
    H = h0.shape[2]

    is_lstm = cell == "lstm"
    if is_lstm:
        c0 = np.zeros_like(h0) if c0 is None else np.array(c0, dtype=dtype)
        if c0.shape != h0.shape:
            raise ValueError(f"c0: expected shape {h0.shape}, got {c0.shape}")
    elif c0 is not None:
        raise ValueError("c0: only allowed for lstm")

    if lengths is None:
        lengths = np.full(N, T, dtype=np.int64)
    else:
        lengths = np.array(lengths, dtype=np.int64)
        if lengths.shape != (N,):
            raise ValueError(f"lengths: expected shape ({N},), got {lengths.shape}")
        if np.any(lengths < 0) or np.any(lengths > T):
            raise ValueError(f"lengths: every entry must be in [0, {T}]")

    if masks is not None:
        masks = np.array(masks, dtype=dtype)
        expected = (num_layers - 1, T, N, dirs * H)
        if masks.shape != expected:
            raise ValueError(f"masks: expected shape {expected}, got {masks.shape}")

    w_all = _check_and_copy_weights(cell, num_layers, dirs, weights, D, H, dtype)

    h_n = np.zeros_like(h0)
    c_n = np.zeros_like(c0) if is_lstm else None
    layer_inputs = []          # input to each layer (after the previous layer's mask)
    layer_steps = []           # per layer: list over dirs of step lists
    xin = x.copy()             # the tape keeps its own copy of x
    for layer in range(num_layers):
        y = np.zeros((T, N, dirs * H), dtype=dtype)
        steps_here = []
        for d in range(dirs):
            idx = layer * dirs + d
            y_d, h_d, c_d, steps = _run_direction(
                cell, w_all[idx], xin, h0[idx], c0[idx] if is_lstm else None,
                lengths, reverse=(d == 1), train=train)
            y[:, :, d * H:(d + 1) * H] = y_d
            h_n[idx] = h_d
            if is_lstm:
                c_n[idx] = c_d  # type: ignore[index]  # an array for the LSTM
            steps_here.append(steps)
        layer_inputs.append(xin)
        layer_steps.append(steps_here)
        if layer < num_layers - 1:
            # Padding in y is already zero, so the mask cannot leak anything into padding.
            xin = y * masks[layer] if masks is not None else y
    tape = None
    if train:
        tape = {
            "cell": cell, "num_layers": num_layers, "dirs": dirs,
            "T": T, "N": N, "D": D, "H": H, "dtype": dtype,
            "lengths": lengths,       # (N,) int64
            "weights": w_all,         # private copies, in x's dtype
            "masks": masks,           # private copy or None
            "inputs": layer_inputs,   # per layer: (T, N, D_l) input it read
            "steps": layer_steps,     # [layer][dir] -> list of (t, rows, cache)
        }
    return y, h_n, c_n, tape


def backward(tape, dy=None, dh_n=None, dc_n=None):
    """Exact BPTT of `forward` (the call that produced `tape`, which must have train=True).

    dy (T, N, dirs*H), dh_n (num_layers*dirs, N, H), dc_n (lstm only): upstream gradients,
    each None for zero. dy at padded positions is ignored (padding is constant zero).
    Returns (dx, dh0, dc0, dweights); dc0 is None unless lstm; dweights is a list like the
    weights, of tuples (dW_ih, dW_hh, db, db_hn or None), summed over time and batch.
    The tape is not modified, so backward may be called again on it.
    """
    if tape is None:
        raise ValueError("tape is None: run forward with train=True")
    cell, L, dirs = tape["cell"], tape["num_layers"], tape["dirs"]
    T, N, D, H, dtype = tape["T"], tape["N"], tape["D"], tape["H"], tape["dtype"]
    is_lstm = cell == "lstm"

    def _grad(arr, shape, name):
        if arr is None:
            return np.zeros(shape, dtype=dtype)
        arr = np.asarray(arr, dtype=dtype)
        if arr.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
        return arr

    dy = _grad(dy, (T, N, dirs * H), "dy")
    dh_n = _grad(dh_n, (L * dirs, N, H), "dh_n")
    if is_lstm:
        dc_n = _grad(dc_n, (L * dirs, N, H), "dc_n")
    elif dc_n is not None:
        raise ValueError("dc_n: only allowed for lstm")

    dh0 = np.zeros((L * dirs, N, H), dtype=dtype)
    dc0 = np.zeros((L * dirs, N, H), dtype=dtype) if is_lstm else None
    dweights = [None] * (L * dirs)

    dy_layer = dy                       # gradient on the current layer's (unmasked) output
    for layer in range(L - 1, -1, -1):
        xin = tape["inputs"][layer]
        dx_layer = np.zeros(xin.shape, dtype=dtype)
        for d in range(dirs):
            idx = layer * dirs + d
            dx_d, dh_d, dc_d, grads = _backprop_direction(
                cell, tape["weights"][idx], tape["steps"][layer][d],
                dy_layer[:, :, d * H:(d + 1) * H],
                dh_n[idx], dc_n[idx] if is_lstm else None, xin.shape)
            dx_layer += dx_d            # both directions read the same input
            dh0[idx] = dh_d
            if is_lstm:
                dc0[idx] = dc_d  # type: ignore[index]  # an array for the LSTM
            dweights[idx] = grads
        if layer > 0:
            # This layer's input was y_{layer-1} * mask: chain rule through the multiply.
            # dx_layer is already zero at padding, matching the zeroed padding of y.
            masks = tape["masks"]
            dy_layer = dx_layer * masks[layer - 1] if masks is not None else dx_layer
        else:
            dx = dx_layer
    return dx, dh0, dc0, dweights


# ----------------------------------------------------------------------------------------
# the same model classes as rnncore's, computing with the functions above
# ----------------------------------------------------------------------------------------

from . import models as _models  # noqa: E402  (models does not import this module)


class _ReferenceEngine:
    forward = staticmethod(forward)

    @staticmethod
    def backward(tape, weights, masks, dy, dh_n, dc_n):
        # the reference tape holds its own copies of the weights and masks
        return backward(tape, dy, dh_n, dc_n)


class RNN(_models.RNN):
    """rnncore.RNN computed by the NumPy reference; float64 by default."""

    _engine = _ReferenceEngine
    _default_dtype = np.float64


class LSTM(_models.LSTM):
    """rnncore.LSTM computed by the NumPy reference; float64 by default."""

    _engine = _ReferenceEngine
    _default_dtype = np.float64


class GRU(_models.GRU):
    """rnncore.GRU computed by the NumPy reference; float64 by default."""

    _engine = _ReferenceEngine
    _default_dtype = np.float64
