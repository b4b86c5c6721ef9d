"""Cells (one step), streaming in chunks, and truncated backpropagation through time."""

import numpy as np
import pytest

import rnncore

D, H, N = 5, 4, 3
KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_after"]


def make_cell(kind, dtype=np.float64, seed=0):
    if kind.startswith("rnn"):
        return rnncore.RNNCell(D, H, nonlinearity=kind[4:], dtype=dtype, seed=seed)
    if kind == "lstm":
        return rnncore.LSTMCell(D, H, dtype=dtype, seed=seed)
    return rnncore.GRUCell(D, H, reset_after=kind == "gru_after", dtype=dtype, seed=seed)


def make_model(kind, layers=1, dtype=np.float64, batch_first=False, bidirectional=False):
    kw = dict(num_layers=layers, dtype=dtype, batch_first=batch_first, bidirectional=bidirectional, seed=1)
    if kind.startswith("rnn"):
        return rnncore.RNN(D, H, nonlinearity=kind[4:], **kw)
    if kind == "lstm":
        return rnncore.LSTM(D, H, **kw)
    return rnncore.GRU(D, H, reset_after=kind == "gru_after", **kw)


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def by_hand(kind, p, x, h, c):
    """One step straight from the equations."""
    a = x @ p["W_ih"].T + p["b"]
    if kind == "rnn_tanh":
        return np.tanh(a + h @ p["W_hh"].T), None
    if kind == "rnn_relu":
        return np.maximum(a + h @ p["W_hh"].T, 0), None
    if kind == "lstm":
        a = a + h @ p["W_hh"].T
        i, f, g, o = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])
        c_new = f * c + i * g
        return o * np.tanh(c_new), c_new
    rh = h @ p["W_hh"].T
    r, z = sigmoid(a[:, :H] + rh[:, :H]), sigmoid(a[:, H:2 * H] + rh[:, H:2 * H])
    if kind == "gru":
        n = np.tanh(a[:, 2 * H:] + (r * h) @ p["W_hh"][2 * H:].T)
    else:
        n = np.tanh(a[:, 2 * H:] + r * (rh[:, 2 * H:] + p["b_hn"]))
    return (1 - z) * h + z * n, None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_cell_step_matches_equations(kind, dtype):
    rng = np.random.default_rng(0)
    cell = make_cell(kind, dtype)
    x, h, c = (rng.standard_normal((N, k)) for k in (D, H, H))
    p = {k: v.astype(np.float64) for k, v in cell.parameters().items()}
    want_h, want_c = by_hand(kind, p, x, h, c)
    state = (h.astype(dtype), c.astype(dtype)) if kind == "lstm" else h.astype(dtype)
    got = cell(x.astype(dtype), state)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    if kind == "lstm":
        np.testing.assert_allclose(got[0], want_h, **tol)
        np.testing.assert_allclose(got[1], want_c, **tol)
    else:
        np.testing.assert_allclose(got, want_h, **tol)


@pytest.mark.parametrize("kind", KINDS)
def test_cell_steps_equal_model_and_backward_matches_reference(kind):
    rng = np.random.default_rng(1)
    model = make_model(kind)
    cell = type(make_cell(kind)).from_model(model)
    assert cell.parameters()["W_hh"] is model.parameters()["W_hh_l0"]  # shared, not copied
    assert cell.to_model() is model
    T = 6
    x = rng.standard_normal((T, N, D))
    y, _ = model(x)
    state = None
    for t in range(T):  # the single-step path sums in another order: equal to rounding
        state = cell(x[t], state)
        h = state[0] if kind == "lstm" else state
        np.testing.assert_allclose(h, y[t], rtol=1e-13, atol=1e-15)
    # one training step against the reference model with T = 1
    ref = getattr(rnncore.reference, type(model).__name__)(D, H, **(
        {"nonlinearity": kind[4:]} if kind.startswith("rnn") else
        {"reset_after": kind == "gru_after"} if kind.startswith("gru") else {}))
    ref.load_state_dict(model.state_dict())
    st0 = (rng.standard_normal((N, H)), rng.standard_normal((N, H))) if kind == "lstm" else rng.standard_normal((N, H))
    st1, tape = cell.forward(x[0], st0, train=True)
    dh = rng.standard_normal((N, H))
    dc = rng.standard_normal((N, H)) if kind == "lstm" else None
    g = cell.backward(tape, dh, dc)
    ref_state = tuple(s[None] for s in st0) if kind == "lstm" else st0[None]
    _, _, rtape = ref.forward(x[:1], ref_state, train=True)
    rg = ref.backward(rtape, None, dh[None], None if dc is None else dc[None])
    np.testing.assert_allclose(g["x"], rg["x"][0], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(g["h"], rg["h0"][0], rtol=1e-11, atol=1e-13)
    if kind == "lstm":
        np.testing.assert_allclose(g["c"], rg["c0"][0], rtol=1e-11, atol=1e-13)
    for name in cell.parameters():
        np.testing.assert_allclose(g[name], rg[name + "_l0"], rtol=1e-11, atol=1e-13, err_msg=name)


def test_cell_conversions_and_errors():
    two = rnncore.LSTM(D, H, num_layers=2)
    with pytest.raises(ValueError, match="model: expected one layer and one direction"):
        rnncore.LSTMCell.from_model(two)
    with pytest.raises(TypeError, match="model: expected a LSTM, got GRU"):
        rnncore.LSTMCell.from_model(rnncore.GRU(D, H))
    cell = rnncore.GRUCell(D, H, reset_after=True, seed=3)
    assert sorted(cell.parameters()) == ["W_hh", "W_ih", "b", "b_hn"]
    other = rnncore.GRUCell(D, H, reset_after=True, seed=4)
    other.load_state_dict(cell.state_dict())
    x = np.ones((2, D), np.float32)
    np.testing.assert_array_equal(other(x), cell(x))
    with pytest.raises(ValueError, match=r"x: expected 2 dimensions \(N, input_size\)"):
        cell(np.ones((1, 2, D), np.float32))
    with pytest.raises(TypeError, match=r"state: expected a tuple \(h, c\)"):
        rnncore.LSTMCell(D, H)(x, np.zeros((2, H), np.float32))
    with pytest.raises(ValueError, match=r"h0: expected shape \(1, 2, 4\)"):
        cell(x, np.zeros((3, H), np.float32))


CHUNKINGS_EXACT = [[3, 4], [2, 3, 2], [7]]  # chunks of 2+ steps take the sequence path: bit-identical
CHUNKINGS_STEPS = [[1] * 7, [2, 1, 4]]      # single steps take the latency path: equal to rounding


def check_stream(model, x, sizes, kw, exact):
    batch_first = model.batch_first
    y_all, st_all = model(x, **kw)
    stream = model.stream(**kw)
    ys, t0 = [], 0
    for size in sizes:
        ys.append(stream(x[:, t0:t0 + size] if batch_first else x[t0:t0 + size]))
        t0 += size
    got = [np.concatenate(ys, axis=1 if batch_first else 0)]
    want = [y_all]
    for a, b in ((stream.state, st_all),):
        got += list(a) if isinstance(a, tuple) else [a]
        want += list(b) if isinstance(b, tuple) else [b]
    for g, w in zip(got, want):
        if exact:
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_chunks_equal_whole(kind, layers):
    rng = np.random.default_rng(layers)
    T, Nb = 7, 5
    lens = np.array([7, 2, 5, 1, 7])
    for batch_first in (False, True):
        model = make_model(kind, layers, np.float32, batch_first=batch_first)
        x = rng.standard_normal((Nb, T, D) if batch_first else (T, Nb, D)).astype(np.float32)
        for kw in ({}, {"lengths": lens}):
            for sizes in CHUNKINGS_EXACT:
                check_stream(model, x, sizes, kw, exact=True)
            for sizes in CHUNKINGS_STEPS:
                check_stream(model, x, sizes, kw, exact=False)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_chunks_equal_whole_at_size(kind):
    """Shapes where the BLAS and the step kernel take their blocked paths."""
    rng = np.random.default_rng(9)
    model = rnncore.LSTM(48, 80, num_layers=2, seed=2) if kind == "lstm" else rnncore.GRU(48, 80, num_layers=2)
    x = rng.standard_normal((40, 37, 48)).astype(np.float32)
    kw = {"lengths": rng.integers(0, 41, size=37)}
    check_stream(model, x, [5, 16, 2, 17], kw, exact=True)
    check_stream(model, x, [1] * 40, kw, exact=False)


def test_bidirectional_cannot_stream():
    with pytest.raises(ValueError, match="bidirectional model cannot stream"):
        rnncore.GRU(D, H, bidirectional=True).stream()


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_bptt_chains_to_the_full_gradient(kind):
    """Chunk backward with a constant carried-in state; chaining the chunks' "h0" gradients
    backwards reproduces full BPTT, and the last chunk alone agrees where it must."""
    rng = np.random.default_rng(5)
    T, Nb = 8, 4
    model = make_model(kind, 2)
    x = rng.standard_normal((T, Nb, D))
    lens = np.array([8, 3, 6, 5])
    dy = rng.standard_normal((T, Nb, H))
    y, st, tape = model.forward(x, lengths=lens, train=True)
    full = model.backward(tape, dy)

    stream = model.stream(lengths=lens)
    cuts = [0, 3, 5, 8]
    tapes = [stream.forward(x[a:b], train=True)[1] for a, b in zip(cuts, cuts[1:])]
    # last chunk alone: its dx agrees with full BPTT (nothing later feeds it)
    last = stream.backward(tapes[-1], dy[5:])
    np.testing.assert_allclose(last["x"], full["x"][5:], rtol=1e-11, atol=1e-13)
    # chain: each chunk's incoming-state gradient is the previous chunk's dh_n (and dc_n)
    total = {k: np.zeros_like(v) for k, v in model.parameters().items()}
    dx = [None] * 3
    carry = (None, None)
    for i in (2, 1, 0):
        g = stream.backward(tapes[i], dy[cuts[i]:cuts[i + 1]], *carry[:1 if kind != "lstm" else 2])
        dx[i] = g["x"]
        carry = (g["h0"], g.get("c0"))
        for k in total:
            total[k] += g[k]
    np.testing.assert_allclose(np.concatenate(dx), full["x"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(carry[0], full["h0"], rtol=1e-10, atol=1e-12)
    for k in total:
        np.testing.assert_allclose(total[k], full[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_lengths_pass_state_through(kind):
    rng = np.random.default_rng(6)
    model = make_model(kind, 2, bidirectional=True)
    ref = getattr(rnncore.reference, type(model).__name__)(D, H, num_layers=2, bidirectional=True, **(
        {"nonlinearity": kind[4:]} if kind.startswith("rnn") else
        {"reset_after": kind == "gru_after"} if kind.startswith("gru") else {}))
    ref.load_state_dict(model.state_dict())
    x = rng.standard_normal((4, 3, D))
    h0 = rng.standard_normal((4, 3, H))
    state = (h0, rng.standard_normal((4, 3, H))) if kind == "lstm" else h0
    lens = np.array([0, 4, 2])
    y, st, tape = model.forward(x, state, lengths=lens, train=True)
    yr, str_, rtape = ref.forward(x, state, lengths=lens, train=True)
    np.testing.assert_allclose(y, yr, rtol=1e-11, atol=1e-13)
    assert np.all(y[:, 0] == 0)
    h = st[0] if kind == "lstm" else st
    np.testing.assert_array_equal(h[:, 0], h0[:, 0])
    dy = rng.standard_normal(y.shape)
    g, gr = model.backward(tape, dy), ref.backward(rtape, dy)
    for k in gr:
        np.testing.assert_allclose(g[k], gr[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("kind", KINDS)
def test_latency_path_equals_checked_path(kind):
    """cell(x, state) skips the argument conversion when none is needed; same bits as forward,
    and arguments that need conversion (views, other containers) still compute the same."""
    rng = np.random.default_rng(12)
    cell = make_cell(kind, np.float32)
    x = rng.standard_normal((3, D)).astype(np.float32)
    h = rng.standard_normal((3, H)).astype(np.float32)
    state = (h, h * 0.5) if kind == "lstm" else h
    fast, checked = cell(x, state), cell.forward(x, state)[0]
    for a, b in zip(fast if kind == "lstm" else (fast,), checked if kind == "lstm" else (checked,)):
        np.testing.assert_array_equal(a, b)
    x_view = np.asfortranarray(x)
    state_list = [h, h * 0.5] if kind == "lstm" else h[:, ::1]
    again = cell(x_view, state_list)
    for a, b in zip(again if kind == "lstm" else (again,), fast if kind == "lstm" else (fast,)):
        np.testing.assert_array_equal(a, b)
