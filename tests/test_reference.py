"""Checks of the pure-NumPy reference engine (rnncore.reference) on its own.

The reference is the oracle for the C++ core, so it is validated independently here:
central finite differences for the backward, hand-written equations for single steps,
and the padding / reverse-direction semantics of README.md (The math) built by hand.
"""

import numpy as np
import pytest

from rnncore import reference

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru", "gru_after")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3, "gru_after": 3}


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def make_weights(rng, cell, num_layers, dirs, D, H, scale=0.6):
    """Random weights in the reference's layout: index layer*dirs + dir."""
    G = GATES[cell]
    weights = []
    for layer in range(num_layers):
        D_l = D if layer == 0 else dirs * H
        for _ in range(dirs):
            W_ih = rng.uniform(-scale, scale, (G * H, D_l))
            W_hh = rng.uniform(-scale, scale, (G * H, H))
            b = rng.uniform(-scale, scale, G * H)
            if cell == "rnn_relu":
                b = b + 0.3           # keep most units active, so relu's kink is rarely near
            b_hn = rng.uniform(-scale, scale, H) if cell == "gru_after" else None
            weights.append((W_ih, W_hh, b, b_hn))
    return weights


def make_problem(cell, num_layers, bidirectional, lengths, with_mask, seed, T=4, N=3, D=3, H=2):
    rng = np.random.default_rng(seed)
    dirs = 2 if bidirectional else 1
    weights = make_weights(rng, cell, num_layers, dirs, D, H)
    x = rng.standard_normal((T, N, D))
    h0 = 0.5 * rng.standard_normal((num_layers * dirs, N, H))
    c0 = 0.5 * rng.standard_normal((num_layers * dirs, N, H)) if cell == "lstm" else None
    masks = None
    if with_mask:
        p = 0.3
        keep = rng.uniform(size=(num_layers - 1, T, N, dirs * H)) >= p
        masks = keep / (1.0 - p)
        assert 0 < keep.sum() < keep.size          # the mask really drops something
    lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    return dict(cell=cell, num_layers=num_layers, bidirectional=bidirectional, weights=weights,
                x=x, h0=h0, c0=c0, lengths=lengths, masks=masks)


def run(p, train=False):
    return reference.forward(p["cell"], p["num_layers"], p["bidirectional"], p["weights"],
                             p["x"], p["h0"], c0=p["c0"], lengths=p["lengths"],
                             masks=p["masks"], train=train)


# ------------------------------------------------------------------------------------------
# finite differences
# ------------------------------------------------------------------------------------------

FD_CONFIGS = {
    # 2 layers, bidirectional, unsorted lengths, dropout mask between the layers
    "2layer_bidir_lengths_mask": dict(num_layers=2, bidirectional=True, lengths=[4, 1, 3],
                                      with_mask=True),
    # 1 layer, unidirectional, full lengths
    "1layer_uni": dict(num_layers=1, bidirectional=False, lengths=None, with_mask=False),
}


@pytest.mark.parametrize("config", sorted(FD_CONFIGS))
@pytest.mark.parametrize("cell", CELLS)
def test_backward_matches_finite_differences(cell, config):
    p = make_problem(cell, seed=1234, **FD_CONFIGS[config])
    rng = np.random.default_rng(99)
    y, h_n, c_n, tape = run(p, train=True)
    Wy = rng.standard_normal(y.shape)
    Wh = rng.standard_normal(h_n.shape)
    Wc = rng.standard_normal(c_n.shape) if cell == "lstm" else None

    def loss():
        y, h_n, c_n, _ = run(p)
        total = np.sum(y * Wy) + np.sum(h_n * Wh)
        if cell == "lstm":
            total += np.sum(c_n * Wc)
        return total

    dx, dh0, dc0, dweights = reference.backward(tape, dy=Wy, dh_n=Wh, dc_n=Wc)

    # (array to perturb in place, analytic gradient, name)
    checks = [(p["x"], dx, "x"), (p["h0"], dh0, "h0")]
    if cell == "lstm":
        checks.append((p["c0"], dc0, "c0"))
    else:
        assert dc0 is None
    for idx, (w, g) in enumerate(zip(p["weights"], dweights)):
        for k, name in enumerate(("W_ih", "W_hh", "b", "b_hn")):
            if w[k] is None:
                assert g[k] is None, f"weights[{idx}] {name}"
                continue
            assert g[k].shape == w[k].shape
            checks.append((w[k], g[k], f"weights[{idx}] {name}"))

    eps = 1e-6
    for arr, grad, name in checks:
        numeric = np.zeros_like(arr)
        flat, nflat = arr.reshape(-1), numeric.reshape(-1)       # views: arr is perturbed in place
        for j in range(flat.size):
            orig = flat[j]
            flat[j] = orig + eps
            lp = loss()
            flat[j] = orig - eps
            lm = loss()
            flat[j] = orig
            nflat[j] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=name)
        # The check must not be vacuous: something in every input and weight matters.
        assert np.any(np.abs(numeric) > 1e-6), name


# ------------------------------------------------------------------------------------------
# lengths and padding
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
def test_padding_is_inert(cell):
    p = make_problem(cell, num_layers=2, bidirectional=True, lengths=[4, 1, 3], with_mask=True,
                     seed=7)
    lengths = p["lengths"]
    T = p["x"].shape[0]
    pad = np.arange(T)[:, None] >= lengths[None, :]            # (T, N) True at padding
    assert pad.any()

    # Garbage (even NaN) in the padded input must not reach anything.
    p["x"][pad] = np.nan
    y, h_n, c_n, tape = run(p, train=True)
    assert np.all(y[pad] == 0.0)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(h_n))
    assert np.any(y[~pad] != 0.0)

    rng = np.random.default_rng(3)
    dy = rng.standard_normal(y.shape)
    dh_n = rng.standard_normal(h_n.shape)
    dc_n = rng.standard_normal(h_n.shape) if cell == "lstm" else None
    g1 = reference.backward(tape, dy=dy, dh_n=dh_n, dc_n=dc_n)
    dy2 = dy.copy()
    dy2[pad] = rng.standard_normal(dy2[pad].shape) * 1e3      # dy at padding is ignored
    g2 = reference.backward(tape, dy=dy2, dh_n=dh_n, dc_n=dc_n)
    _assert_grads_equal(g1, g2)
    dx = g1[0]
    assert np.all(dx[pad] == 0.0)
    assert np.all(np.isfinite(dx))


@pytest.mark.parametrize("cell", CELLS)
def test_row_equals_running_its_valid_prefix_alone(cell):
    """With lengths, row n must match a run on x[:len_n, n] alone without lengths
    (final state = state at the last valid step, reverse reads its own valid prefix)."""
    p = make_problem(cell, num_layers=2, bidirectional=True, lengths=[4, 1, 3], with_mask=True,
                     seed=11)
    y, h_n, c_n, _ = run(p)
    for n, L in enumerate(p["lengths"]):
        q = dict(p)
        q["x"] = p["x"][:L, n:n + 1].copy()
        q["h0"] = p["h0"][:, n:n + 1].copy()
        q["c0"] = None if p["c0"] is None else p["c0"][:, n:n + 1].copy()
        q["masks"] = p["masks"][:, :L, n:n + 1].copy()
        q["lengths"] = None
        y1, h1, c1, _ = run(q)
        np.testing.assert_allclose(y[:L, n:n + 1], y1, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(h_n[:, n:n + 1], h1, rtol=1e-13, atol=1e-14)
        if cell == "lstm":
            np.testing.assert_allclose(c_n[:, n:n + 1], c1, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
def test_reverse_direction_is_forward_math_on_reversed_prefix(cell):
    p = make_problem(cell, num_layers=1, bidirectional=True, lengths=[4, 1, 3], with_mask=False,
                     seed=5)
    H = p["h0"].shape[2]
    y, h_n, c_n, _ = run(p)
    for n, L in enumerate(p["lengths"]):
        # By hand: the reverse direction's weights, run forwards on the row's reversed prefix.
        x_rev = p["x"][:L, n:n + 1][::-1].copy()
        h0_rev = p["h0"][1:2, n:n + 1].copy()
        c0_rev = None if p["c0"] is None else p["c0"][1:2, n:n + 1].copy()
        yr, hr, cr, _ = reference.forward(cell, 1, False, [p["weights"][1]], x_rev, h0_rev,
                                          c0=c0_rev)
        np.testing.assert_allclose(y[:L, n, H:], yr[::-1, 0], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(h_n[1, n], hr[0, 0], rtol=1e-13, atol=1e-14)
        if cell == "lstm":
            np.testing.assert_allclose(c_n[1, n], cr[0, 0], rtol=1e-13, atol=1e-14)
        # And the forward half is the forward math on the unreversed prefix.
        yf, hf, _, _ = reference.forward(cell, 1, False, [p["weights"][0]],
                                         p["x"][:L, n:n + 1].copy(), p["h0"][0:1, n:n + 1].copy(),
                                         c0=None if p["c0"] is None else p["c0"][0:1, n:n + 1].copy())
        np.testing.assert_allclose(y[:L, n, :H], yf[:, 0], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(h_n[0, n], hf[0, 0], rtol=1e-13, atol=1e-14)


# ------------------------------------------------------------------------------------------
# one step against the equations written out by hand
# ------------------------------------------------------------------------------------------

def _one_step_by_hand(cell, w, x, h, c):
    W_ih, W_hh, b, b_hn = w
    H = h.shape[1]

    def part(M, k):  # rows of gate k
        return M[k * H:(k + 1) * H]

    if cell == "rnn_tanh":
        return np.tanh(x @ W_ih.T + h @ W_hh.T + b), None
    if cell == "rnn_relu":
        return np.maximum(x @ W_ih.T + h @ W_hh.T + b, 0.0), None
    if cell == "lstm":
        i = sigmoid(x @ part(W_ih, 0).T + h @ part(W_hh, 0).T + part(b, 0))
        f = sigmoid(x @ part(W_ih, 1).T + h @ part(W_hh, 1).T + part(b, 1))
        g = np.tanh(x @ part(W_ih, 2).T + h @ part(W_hh, 2).T + part(b, 2))
        o = sigmoid(x @ part(W_ih, 3).T + h @ part(W_hh, 3).T + part(b, 3))
        c_new = f * c + i * g
        return o * np.tanh(c_new), c_new
    r = sigmoid(x @ part(W_ih, 0).T + h @ part(W_hh, 0).T + part(b, 0))
    z = sigmoid(x @ part(W_ih, 1).T + h @ part(W_hh, 1).T + part(b, 1))
    if cell == "gru":
        n = np.tanh(x @ part(W_ih, 2).T + (r * h) @ part(W_hh, 2).T + part(b, 2))
    else:
        n = np.tanh(x @ part(W_ih, 2).T + part(b, 2) + r * (h @ part(W_hh, 2).T + b_hn))
    return (1 - z) * h + z * n, None


@pytest.mark.parametrize("cell", CELLS)
def test_one_step_matches_equations(cell):
    # The brief asks for LSTM; the other cells are just as cheap to pin down.
    p = make_problem(cell, num_layers=1, bidirectional=False, lengths=None, with_mask=False,
                     seed=21, T=1, N=4, D=3, H=3)
    y, h_n, c_n, _ = run(p)
    c_prev = None if p["c0"] is None else p["c0"][0]
    h_exp, c_exp = _one_step_by_hand(cell, p["weights"][0], p["x"][0], p["h0"][0], c_prev)
    np.testing.assert_allclose(y[0], h_exp, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(h_n[0], h_exp, rtol=1e-13, atol=1e-15)
    if cell == "lstm":
        np.testing.assert_allclose(c_n[0], c_exp, rtol=1e-13, atol=1e-15)
    else:
        assert c_n is None


def test_gru_forms_differ_and_z_weights_the_candidate():
    # With W_hh = 0 both GRU forms coincide (up to b_hn): h = (1-z) h_prev + z n. Saturating z
    # to 1 through its bias must give h = n exactly as tanh(x W_in^T + b_n [+ r*b_hn]).
    rng = np.random.default_rng(0)
    H, D = 2, 3
    W_ih = rng.standard_normal((3 * H, D))
    W_hh = np.zeros((3 * H, H))
    b = np.zeros(3 * H)
    b[H:2 * H] = 50.0                       # z = sigmoid(50) == 1 in float64
    x = rng.standard_normal((1, 2, D))
    h0 = rng.standard_normal((1, 2, H))
    y, _, _, _ = reference.forward("gru", 1, False, [(W_ih, W_hh, b, None)], x, h0)
    np.testing.assert_allclose(y[0], np.tanh(x[0] @ W_ih[2 * H:].T), rtol=1e-12, atol=1e-15)
    b[H:2 * H] = -50.0                      # z == 0: the state is carried over
    y, _, _, _ = reference.forward("gru", 1, False, [(W_ih, W_hh, b, None)], x, h0)
    np.testing.assert_allclose(y[0], h0[0], rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------
# tape, aliasing, dtype
# ------------------------------------------------------------------------------------------

def _assert_grads_equal(g1, g2):
    dx1, dh1, dc1, dw1 = g1
    dx2, dh2, dc2, dw2 = g2
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_array_equal(dh1, dh2)
    assert (dc1 is None) == (dc2 is None)
    if dc1 is not None:
        np.testing.assert_array_equal(dc1, dc2)
    for a, b in zip(dw1, dw2):
        for u, v in zip(a, b):
            assert (u is None) == (v is None)
            if u is not None:
                np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("cell", ("lstm", "gru_after"))
def test_tape_reusable_and_no_aliasing(cell):
    p = make_problem(cell, num_layers=2, bidirectional=True, lengths=[2, 4, 3], with_mask=True,
                     seed=3)
    originals = {k: np.copy(p[k]) for k in ("x", "h0", "c0", "masks") if p[k] is not None}
    w_orig = [tuple(None if a is None else a.copy() for a in w) for w in p["weights"]]
    y, h_n, c_n, tape = run(p, train=True)
    rng = np.random.default_rng(8)
    dy = rng.standard_normal(y.shape)
    dh_n = rng.standard_normal(h_n.shape)
    g1 = reference.backward(tape, dy=dy, dh_n=dh_n)

    # forward / backward did not write into the caller's arrays.
    for k, v in originals.items():
        np.testing.assert_array_equal(p[k], v, err_msg=k)
    for a, b in zip(w_orig, p["weights"]):
        for u, v in zip(a, b):
            if u is not None:
                np.testing.assert_array_equal(u, v)

    # Outputs are fresh arrays, not views of the inputs.
    for out in (y, h_n, c_n) + tuple(a for a in g1[:3]):
        if out is None:
            continue
        for k in originals:
            assert not np.shares_memory(out, p[k])
    # Scribbling over outputs, gradients and the caller's inputs must not corrupt the tape.
    y[...] = 7.0
    h_n[...] = 7.0
    g1_saved = tuple(None if a is None else a.copy() for a in g1[:3]), \
        [tuple(None if a is None else a.copy() for a in w) for w in g1[3]]
    g1[0][...] = 7.0
    p["x"][...] = 7.0
    p["h0"][...] = 7.0
    for w in p["weights"]:
        w[0][...] = 7.0
    g2 = reference.backward(tape, dy=dy, dh_n=dh_n)
    _assert_grads_equal(g1_saved[0] + (g1_saved[1],), g2)
    # Missing upstream gradients are zeros.
    g0 = reference.backward(tape)
    assert np.all(g0[0] == 0.0) and np.all(g0[1] == 0.0)
    g_only_h = reference.backward(tape, dh_n=dh_n)
    g_explicit = reference.backward(tape, dy=np.zeros_like(dy), dh_n=dh_n,
                                    dc_n=np.zeros_like(dh_n) if cell == "lstm" else None)
    _assert_grads_equal(g_only_h, g_explicit)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_stays_float32(cell):
    p = make_problem(cell, num_layers=2, bidirectional=True, lengths=[4, 1, 3], with_mask=True,
                     seed=2)
    y64, h64, _, tape64 = run(p, train=True)
    g64 = reference.backward(tape64, dy=np.ones_like(y64))
    q = dict(p)
    q["x"] = p["x"].astype(np.float32)
    q["h0"] = p["h0"].astype(np.float32)
    q["c0"] = None if p["c0"] is None else p["c0"].astype(np.float32)
    q["masks"] = p["masks"].astype(np.float32)
    q["weights"] = [tuple(None if a is None else a.astype(np.float32) for a in w)
                    for w in p["weights"]]
    y32, h32, c32, tape32 = run(q, train=True)
    g32 = reference.backward(tape32, dy=np.ones_like(y32))
    assert y32.dtype == np.float32 and h32.dtype == np.float32
    assert c32 is None or c32.dtype == np.float32
    assert all(a.dtype == np.float32 for a in g32[:2])
    assert all(a.dtype == np.float32 for w in g32[3] for a in w if a is not None)
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g32[0], g64[0], rtol=1e-3, atol=1e-4)


def test_sigmoid_saturation_is_warning_free():
    p = make_problem("lstm", num_layers=1, bidirectional=False, lengths=None, with_mask=False,
                     seed=4)
    p["x"] = p["x"] * 1e4                   # drive the gates far into saturation
    # Underflow to 0 is fine (and ignored by NumPy's default settings); overflow, 0/0 and
    # inf-inf are what a naive 1/(1+exp(-a)) or exp(a)/(1+exp(a)) would risk.
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y, _, _, tape = run(p, train=True)
        reference.backward(tape, dy=np.ones_like(y))
    assert np.all(np.isfinite(y))
