"""Pure-NumPy reference engine for rnncore: the oracle the C++ core is tested against.

Everything here follows the equations in README.md ("The math") literally, one time step at a time, so that it can be read
next to the equations. It is deliberately slow (a Python loop over time, layers and
directions); only the batch is vectorised inside a step.

Conventions (row-major, batch in rows)::

    x_t      (N, D)      one time step of the input
    h_t      (N, R)      hidden state: R = H, or the projection's P (LSTM with proj_size)
    c_t      (N, H)      cell state (the LSTM cells)
    W_ih     (G*H, D)    input weights, gates stacked (LSTM i,f,g,o; GRU r,z,n)
    W_hh     (G*H, R)    recurrent weights, same gate order
    b        (G*H,)      one bias per gate
    then the cell's own parameters, in the order the core lists them (param_list): b_hn (H,)
    for "gru_after" (reset_after=True); P (3, H) for "lstm_peephole"; the LayerNorm gains and
    shifts for "lstm_ln"; W_hr (R, H) last when the layers project.

"W x" in the notes is ``x @ W.T`` here.

Cells (STEPS): "rnn_tanh", "rnn_relu", "lstm", "lstm_peephole", "lstm_ln", "gru" (reset
applied to h before the recurrent matmul, the notes' form) and "gru_after" (reset applied
after the matmul, cuDNN form). In both GRU forms z weights the NEW candidate:
h_t = (1 - z) * h_{t-1} + z * n.

Lengths: a step t of row n is valid iff t < lengths[n]. Both directions use the same test,
which makes the reverse direction easy: iterating t from T-1 down to 0, a row stays at its
initial state until t reaches lengths[n]-1, i.e. it reads its own valid prefix backwards.
Each step is computed only on the rows that are valid at that time (fancy indexing), so
padding values never even enter the arithmetic (NaN in padding is harmless).
"""

import numpy as np

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
# Each cell has a forward step  fwd(w, x, h, c) -> (out, c_new, cache)  and a backward step
# bwd(w, cache, dout, dc) -> (dx, dh_prev, dc_prev, grads). `w` maps the parameter names of the
# cell's list (W_ih, W_hh, b, then its own) to arrays; `out` is the cell's output (h_new, or
# what a projection multiplies); `cache` holds exactly what the backward step needs; `grads`
# maps each parameter name to its gradient for this step alone. Arrays in a cache are never
# modified afterwards, so the tape survives any number of backward calls.

def _rnn_forward(act):
    def fwd(w, x, h, c):
        a = _affine(x, w["W_ih"], w["b"]) + h @ w["W_hh"].T      # (M, H)
        h_new = np.tanh(a) if act == "tanh" else np.maximum(a, 0)
        return h_new, None, {"x": x, "h": h, "h_new": h_new}
    return fwd


def _rnn_backward(act):
    def bwd(w, cache, dh, dc):
        x, h, h_new = cache["x"], cache["h"], cache["h_new"]
        one = x.dtype.type(1)
        if act == "tanh":
            da = dh * (one - h_new * h_new)                      # tanh' = 1 - tanh^2
        else:
            da = dh * (h_new > 0)                                # relu' = 1 where h > 0
        return da @ w["W_ih"], da @ w["W_hh"], None, {"W_ih": da.T @ x, "W_hh": da.T @ h, "b": da.sum(axis=0)}
    return bwd


def _lstm_forward(w, x, h, c, peephole=False):
    H = c.shape[1]
    a = _affine(x, w["W_ih"], w["b"]) + h @ w["W_hh"].T          # (M, 4H), chunks i,f,g,o
    if peephole:                                                  # P rows p_i, p_f, p_o
        p_i, p_f, p_o = w["P"]
        i = _sigmoid(a[:, 0 * H:1 * H] + p_i * c)
        f = _sigmoid(a[:, 1 * H:2 * H] + p_f * c)
    else:
        i = _sigmoid(a[:, 0 * H:1 * H])
        f = _sigmoid(a[:, 1 * H:2 * H])
    g = np.tanh(a[:, 2 * H:3 * H])
    c_new = f * c + i * g
    o = _sigmoid(a[:, 3 * H:4 * H] + (p_o * c_new if peephole else 0))
    tc = np.tanh(c_new)
    h_new = o * tc
    cache = {"x": x, "h": h, "c": c, "c_new": c_new, "i": i, "f": f, "g": g, "o": o, "tc": tc}
    return h_new, c_new, cache


def _lstm_backward(w, cache, dh, dc, peephole=False):
    i, f, g, o, tc, c, c_new = (cache[k] for k in ("i", "f", "g", "o", "tc", "c", "c_new"))
    x, h = cache["x"], cache["h"]
    one = x.dtype.type(1)
    da_o = dh * tc * o * (one - o)
    dct = dc + dh * o * (one - tc * tc)                          # total gradient on c_new
    if peephole:
        p_i, p_f, p_o = w["P"]
        dct = dct + da_o * p_o                                   # c_new also feeds o
    da_i = dct * g * i * (one - i)                               # back through the activations
    da_f = dct * c * f * (one - f)
    da_g = dct * i * (one - g * g)
    dc_prev = dct * f
    if peephole:
        dc_prev = dc_prev + da_i * p_i + da_f * p_f
    da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)       # (M, 4H)
    grads = {"W_ih": da.T @ x, "W_hh": da.T @ h, "b": da.sum(axis=0)}
    if peephole:
        grads["P"] = np.stack([(da_i * c).sum(axis=0), (da_f * c).sum(axis=0), (da_o * c_new).sum(axis=0)])
    return da @ w["W_ih"], da @ w["W_hh"], dc_prev, grads


LN_EPS = 1e-5  # the LayerNorm LSTM's epsilon


def _layer_norm(v, gamma, beta):
    """LN over each row: gamma * (v - mean) / sqrt(var + eps) + beta, population variance.
    Returns the result and (normalised v, 1 / sqrt(var + eps)) for the backward."""
    mu = v.mean(axis=1, keepdims=True)
    d = v - mu
    rstd = v.dtype.type(1) / np.sqrt((d * d).mean(axis=1, keepdims=True) + v.dtype.type(LN_EPS))
    n = d * rstd
    return gamma * n + beta, (n, rstd)


def _layer_norm_backward(dy, gamma, saved):
    """Gradient of the LN input, and of gamma and beta, given that of its output."""
    n, rstd = saved
    dn = dy * gamma
    dv = rstd * (dn - dn.mean(axis=1, keepdims=True) - n * (dn * n).mean(axis=1, keepdims=True))
    return dv, (dy * n).sum(axis=0), dy.sum(axis=0)


def _lstm_ln_forward(w, x, h, c):
    H = c.shape[1]
    ax, sx = _layer_norm(x @ w["W_ih"].T, w["ln_x_gamma"], w["ln_x_beta"])
    ah, sh = _layer_norm(h @ w["W_hh"].T, w["ln_h_gamma"], w["ln_h_beta"])
    a = ah + ax + w["b"]                                          # (M, 4H), chunks i,f,g,o
    i = _sigmoid(a[:, 0 * H:1 * H])
    f = _sigmoid(a[:, 1 * H:2 * H])
    g = np.tanh(a[:, 2 * H:3 * H])
    o = _sigmoid(a[:, 3 * H:4 * H])
    c_new = f * c + i * g                                         # carried as it is
    nc, sc = _layer_norm(c_new, w["ln_c_gamma"], w["ln_c_beta"])
    tc = np.tanh(nc)
    h_new = o * tc
    cache = {"x": x, "h": h, "c": c, "i": i, "f": f, "g": g, "o": o, "tc": tc, "sx": sx, "sh": sh, "sc": sc}
    return h_new, c_new, cache


def _lstm_ln_backward(w, cache, dh, dc):
    i, f, g, o, tc, c = (cache[k] for k in ("i", "f", "g", "o", "tc", "c"))
    x, h = cache["x"], cache["h"]
    one = x.dtype.type(1)
    da_o = dh * tc * o * (one - o)
    dnc = dh * o * (one - tc * tc)                               # gradient on LN(c_new)
    dcn, dgc, dbc = _layer_norm_backward(dnc, w["ln_c_gamma"], cache["sc"])
    dct = dc + dcn
    da_i = dct * g * i * (one - i)
    da_f = dct * c * f * (one - f)
    da_g = dct * i * (one - g * g)
    da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)       # gradient on the gates' sum
    dah, dgh, dbh = _layer_norm_backward(da, w["ln_h_gamma"], cache["sh"])
    dax, dgx, dbx = _layer_norm_backward(da, w["ln_x_gamma"], cache["sx"])
    grads = {"W_ih": dax.T @ x, "W_hh": dah.T @ h, "b": da.sum(axis=0),
             "ln_x_gamma": dgx, "ln_x_beta": dbx, "ln_h_gamma": dgh, "ln_h_beta": dbh,
             "ln_c_gamma": dgc, "ln_c_beta": dbc}
    return dax @ w["W_ih"], dah @ w["W_hh"], dct * f, grads


def _gru_forward(w, x, h, c):
    W_hh = w["W_hh"]
    H = h.shape[1]
    one = x.dtype.type(1)
    # Input part for all three gates at once; the recurrent part is split because the
    # candidate's recurrent matmul sees r * h instead of h.
    ax = _affine(x, w["W_ih"], w["b"])                           # (M, 3H), chunks r,z,n
    ah_rz = h @ W_hh[:2 * H].T                                   # (M, 2H)
    r = _sigmoid(ax[:, 0 * H:1 * H] + ah_rz[:, :H])
    z = _sigmoid(ax[:, 1 * H:2 * H] + ah_rz[:, H:])
    rh = r * h
    n = np.tanh(ax[:, 2 * H:3 * H] + rh @ W_hh[2 * H:].T)
    h_new = (one - z) * h + z * n
    return h_new, None, {"x": x, "h": h, "r": r, "z": z, "n": n, "rh": rh}


def _gru_backward(w, cache, dh, dc):
    W_hh = w["W_hh"]
    x, h = cache["x"], cache["h"]
    one = x.dtype.type(1)
    H = h.shape[1]
    r, z, n, rh = (cache[k] for k in ("r", "z", "n", "rh"))
    dn = dh * z
    dz = dh * (n - h)
    dh_prev = dh * (one - z)                                     # direct path through (1-z)*h
    da_n = dn * (one - n * n)
    drh = da_n @ W_hh[2 * H:]                                    # grad on r * h, (M, H)
    dr = drh * h
    dh_prev = dh_prev + drh * r
    da_r = dr * r * (one - r)
    da_z = dz * z * (one - z)
    da_rz = np.concatenate([da_r, da_z], axis=1)                 # (M, 2H)
    dh_prev = dh_prev + da_rz @ W_hh[:2 * H]
    da = np.concatenate([da_r, da_z, da_n], axis=1)              # (M, 3H), input-side grads
    # Recurrent weights: r,z rows saw h; the n rows saw r * h.
    dW_hh = np.concatenate([da_rz.T @ h, da_n.T @ rh], axis=0)
    return da @ w["W_ih"], dh_prev, None, {"W_ih": da.T @ x, "W_hh": dW_hh, "b": da.sum(axis=0)}


def _gru_after_forward(w, x, h, c):
    H = h.shape[1]
    one = x.dtype.type(1)
    ax = _affine(x, w["W_ih"], w["b"])                           # (M, 3H)
    ah = h @ w["W_hh"].T                                         # (M, 3H)
    r = _sigmoid(ax[:, 0 * H:1 * H] + ah[:, 0 * H:1 * H])
    z = _sigmoid(ax[:, 1 * H:2 * H] + ah[:, 1 * H:2 * H])
    hn = ah[:, 2 * H:3 * H] + w["b_hn"]                          # h W_hn^T + b_hn, (M, H)
    n = np.tanh(ax[:, 2 * H:3 * H] + r * hn)
    h_new = (one - z) * h + z * n
    return h_new, None, {"x": x, "h": h, "r": r, "z": z, "n": n, "hn": hn}


def _gru_after_backward(w, cache, dh, dc):
    x, h = cache["x"], cache["h"]
    one = x.dtype.type(1)
    r, z, n, hn = (cache[k] for k in ("r", "z", "n", "hn"))
    dn = dh * z
    dz = dh * (n - h)
    da_n = dn * (one - n * n)
    dr = da_n * hn
    dhn = da_n * r                                               # grad on h W_hn^T + b_hn
    da_r = dr * r * (one - r)
    da_z = dz * z * (one - z)
    da_x = np.concatenate([da_r, da_z, da_n], axis=1)            # grads on the x W_ih^T + b part
    da_h = np.concatenate([da_r, da_z, dhn], axis=1)             # grads on the h W_hh^T part
    dh_prev = dh * (one - z) + da_h @ w["W_hh"]
    grads = {"W_ih": da_x.T @ x, "W_hh": da_h.T @ h, "b": da_x.sum(axis=0), "b_hn": dhn.sum(axis=0)}
    return da_x @ w["W_ih"], dh_prev, None, grads


# Each cell's reference step: (forward, backward). A new cell adds its entry here.
STEPS = {
    "rnn_tanh": (_rnn_forward("tanh"), _rnn_backward("tanh")),
    "rnn_relu": (_rnn_forward("relu"), _rnn_backward("relu")),
    "lstm": (_lstm_forward, _lstm_backward),
    "lstm_peephole": (lambda w, x, h, c: _lstm_forward(w, x, h, c, peephole=True),
                      lambda w, cache, dh, dc: _lstm_backward(w, cache, dh, dc, peephole=True)),
    "lstm_ln": (_lstm_ln_forward, _lstm_ln_backward),
    "gru": (_gru_forward, _gru_backward),
    "gru_after": (_gru_after_forward, _gru_after_backward),
}


CELLS = tuple(STEPS)


def _step_forward(cell, w, x, h, c):
    """x (M, D), h (M, R), c (M, H) or None  ->  h_new (M, R), c_new or None, cache.

    A layer that projects (w has "W_hr") multiplies the cell's output by W_hr: h_new = out W_hr^T.
    """
    out, c_new, cache = STEPS[cell][0](w, x, h, c)
    if "W_hr" not in w:
        return out, c_new, cache
    return out @ w["W_hr"].T, c_new, {"cell": cache, "out": out}


def _step_backward(cell, w, cache, dh, dc):
    """Backward of one step on its valid rows.

    dh, dc: gradients w.r.t. h_new, c_new (dc None unless the cell has c).
    Returns dx (M, D), dh_prev (M, R), dc_prev (M, H) or None, and the parameter
    gradients of this step alone (name -> array).
    """
    if "W_hr" not in w:
        return STEPS[cell][1](w, cache, dh, dc)
    dx, dh_prev, dc_prev, grads = STEPS[cell][1](w, cache["cell"], dh @ w["W_hr"], dc)
    grads["W_hr"] = dh.T @ cache["out"]
    return dx, dh_prev, dc_prev, grads


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

    dy (T, N, R) gradient on this direction's output; dh_n (N, R), dc_n (N, H) on its final
    state. Rows that are not valid at a step are untouched by it (state carried through
    unchanged), so their running gradient simply passes by. Returns dx, dh0, dc0 and the
    parameter gradients (name -> array).
    """
    dh = dh_n.copy()
    dc = None if dc_n is None else dc_n.copy()
    dx = np.zeros(shape_x, dtype=dy.dtype)
    dw = {name: np.zeros_like(a) for name, a in w.items()}
    for t, rows, cache in reversed(steps):
        g_h = dh[rows] + dy[t, rows]                             # h_t feeds both y_t and step t+1
        g_c = None if dc is None else dc[rows]
        dx_t, dh_prev, dc_prev, grads = _step_backward(cell, w, cache, g_h, g_c)
        dx[t, rows] = dx_t
        dh[rows] = dh_prev
        if dc is not None:
            dc[rows] = dc_prev
        for name, g in grads.items():
            dw[name] += g
    return dx, dh, dc, dw


# ----------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------

def param_list(cell, projects=False):
    """The cell's parameter entries (name, shape as (mult, var) pairs, init), as the core describes
    them (rnncore.models.CELL_INFO), then the projection's W_hr when ``projects``."""
    info = _cell_info()[cell]
    return info["params"] + ([info["projection"]] if projects else [])


def _cell_info():
    from .models import CELL_INFO
    return CELL_INFO


def _check_and_copy_weights(cell, num_layers, dirs, weights, D, H, R, dtype):
    """Each entry: the layer's parameters in the cell's order (param_list), then None if any more.
    Returns, per entry, name -> a private copy in x's dtype, and how long the entry was."""
    entries = param_list(cell, R != H)
    names = ", ".join(e["name"] for e in entries)
    if len(weights) != num_layers * dirs:
        raise ValueError(f"weights: expected {num_layers * dirs} entries, got {len(weights)}")
    out = []
    for idx, entry in enumerate(weights):
        layer = idx // dirs
        size = {"1": 1, "D": D if layer == 0 else dirs * R, "H": H, "R": R}
        entry = tuple(entry)
        if len(entry) < len(entries) or any(a is not None for a in entry[len(entries):]):
            raise ValueError(f"weights[{idx}]: expected ({names}), then only None")
        w = {}
        for e, a in zip(entries, entry):
            if a is None:
                raise ValueError(f"weights[{idx}] {e['name']}: required for {cell}")
            shape = tuple(mult * size[var] for mult, var in e["shape"])
            # Copy (and bring to the dtype of x) so the tape is immune to later edits by the caller.
            a = np.array(a, dtype=dtype)
            if a.shape != shape:
                raise ValueError(f"weights[{idx}] {e['name']}: expected shape {shape}, got {a.shape}")
            w[e["name"]] = a
        out.append((w, len(entry)))
    return out


def forward(cell, num_layers, bidirectional, weights, x, h0, c0=None, lengths=None,
            masks=None, train=False, hidden_size=None):
    """Run a (stacked, optionally bidirectional) RNN over a time-major sequence.

    cell:        a name of rnncore.models.CELL_INFO: "rnn_tanh", "rnn_relu", "lstm",
                 "lstm_peephole", "lstm_ln", "gru" or "gru_after"
    num_layers:  int >= 1;  bidirectional: bool (dirs = 2 if True else 1)
    weights:     list of num_layers*dirs tuples, index layer*dirs + dir (dir 0 forward, 1
                 reverse), each the layer's parameters in the cell's order (param_list):
                 (W_ih, W_hh, b) then the cell's own (b_hn, P, LayerNorm gains), then W_hr when
                 the layers project; more entries may follow as None.
    x:           (T, N, D), float32 or float64; all arithmetic is done in this dtype.
    h0:          (num_layers*dirs, N, R); required, since R is read from its shape.
    hidden_size: H; None for R (no projection). R < H: the layers project (W_hr, LSTM only).
    c0:          (num_layers*dirs, N, H), LSTM cells only (None means zeros).
    lengths:     None or ints (N,), 0 <= len <= T, any order (0: the row is all padding and
                 its state passes through unchanged, as streaming an ended row needs).
    masks:       None or (num_layers-1, T, N, dirs*R): multiplies each non-final layer's output.
    train:       if True, also build the tape for `backward`.

    Returns (y, h_n, c_n, tape): y (T, N, dirs*R), h_n (num_layers*dirs, N, R),
    c_n (num_layers*dirs, N, H) for LSTM cells else None, tape (dict) or None.
    """
    if cell not in STEPS:
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
    R = h0.shape[2]
    H = R if hidden_size is None else int(hidden_size)
    if R != H and _cell_info()[cell]["projection"] is None:
        raise ValueError(f"h0: expected last dimension hidden_size={H} ({cell} has no projection), got {R}")

    has_c = "c" in _cell_info()[cell]["states"]
    if has_c:
        c0 = np.zeros((num_layers * dirs, N, H), dtype) if c0 is None else np.array(c0, dtype=dtype)
        if c0.shape != (num_layers * dirs, N, H):
            raise ValueError(f"c0: expected shape {(num_layers * dirs, N, H)}, got {c0.shape}")
    elif c0 is not None:
        raise ValueError(f"c0: only allowed for the LSTM cells, not {cell}")

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
        expected = (num_layers - 1, T, N, dirs * R)
        if masks.shape != expected:
            raise ValueError(f"masks: expected shape {expected}, got {masks.shape}")

    w_all = _check_and_copy_weights(cell, num_layers, dirs, weights, D, H, R, dtype)

    h_n = np.zeros_like(h0)
    c_n = np.zeros_like(c0) if has_c else None
    layer_inputs = []          # input to each layer (after the previous layer's mask)
    layer_steps = []           # per layer: list over dirs of step lists
    xin = x.copy()             # the tape keeps its own copy of x
    for layer in range(num_layers):
        y = np.zeros((T, N, dirs * R), dtype=dtype)
        steps_here = []
        for d in range(dirs):
            idx = layer * dirs + d
            y_d, h_d, c_d, steps = _run_direction(
                cell, w_all[idx][0], xin, h0[idx], c0[idx] if has_c else None,
                lengths, reverse=(d == 1), train=train)
            y[:, :, d * R:(d + 1) * R] = y_d
            h_n[idx] = h_d
            if has_c:
                c_n[idx] = c_d  # type: ignore[index]  # an array for the LSTM cells
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
            "T": T, "N": N, "D": D, "H": H, "R": R, "dtype": dtype, "has_c": has_c,
            "lengths": lengths,       # (N,) int64
            "weights": w_all,         # private copies, in x's dtype, and each entry's length
            "masks": masks,           # private copy or None
            "inputs": layer_inputs,   # per layer: (T, N, D_l) input it read
            "steps": layer_steps,     # [layer][dir] -> list of (t, rows, cache)
        }
    return y, h_n, c_n, tape


def backward(tape, dy=None, dh_n=None, dc_n=None):
    """Exact BPTT of `forward` (the call that produced `tape`, which must have train=True).

    dy (T, N, dirs*R), dh_n (num_layers*dirs, N, R), dc_n (LSTM cells only, (.., N, H)):
    upstream gradients, each None for zero. dy at padded positions is ignored (padding is
    constant zero). Returns (dx, dh0, dc0, dweights); dc0 is None unless the cell has c;
    dweights is a list like the weights: per entry a tuple of the gradients in the same order
    and of the same length (None where the entry had None), summed over time and batch.
    The tape is not modified, so backward may be called again on it.
    """
    if tape is None:
        raise ValueError("tape is None: run forward with train=True")
    cell, L, dirs = tape["cell"], tape["num_layers"], tape["dirs"]
    T, N, H, R, dtype = tape["T"], tape["N"], tape["H"], tape["R"], tape["dtype"]
    has_c = tape["has_c"]

    def _grad(arr, shape, name):
        if arr is None:
            return np.zeros(shape, dtype=dtype)
        arr = np.asarray(arr, dtype=dtype)
        if arr.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
        return arr

    dy = _grad(dy, (T, N, dirs * R), "dy")
    dh_n = _grad(dh_n, (L * dirs, N, R), "dh_n")
    if has_c:
        dc_n = _grad(dc_n, (L * dirs, N, H), "dc_n")
    elif dc_n is not None:
        raise ValueError(f"dc_n: only allowed for the LSTM cells, not {cell}")

    dh0 = np.zeros((L * dirs, N, R), dtype=dtype)
    dc0 = np.zeros((L * dirs, N, H), dtype=dtype) if has_c else None
    dweights = [None] * (L * dirs)

    dy_layer = dy                       # gradient on the current layer's (unmasked) output
    for layer in range(L - 1, -1, -1):
        xin = tape["inputs"][layer]
        dx_layer = np.zeros(xin.shape, dtype=dtype)
        for d in range(dirs):
            idx = layer * dirs + d
            w, given = tape["weights"][idx]
            dx_d, dh_d, dc_d, grads = _backprop_direction(
                cell, w, tape["steps"][layer][d],
                dy_layer[:, :, d * R:(d + 1) * R],
                dh_n[idx], dc_n[idx] if has_c else None, xin.shape)
            dx_layer += dx_d            # both directions read the same input
            dh0[idx] = dh_d
            if has_c:
                dc0[idx] = dc_d  # type: ignore[index]  # an array for the LSTM cells
            dweights[idx] = tuple(grads[name] for name in w) + (None,) * (given - len(w))
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
    def backward(tape, weights, masks, dy, dh_n, dc_n, need_dx=True):
        # the reference tape holds its own copies of the weights and masks
        dx, dh0, dc0, dw = backward(tape, dy, dh_n, dc_n)
        return (dx if need_dx else None), dh0, dc0, dw


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
