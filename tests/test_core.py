"""The C++ core against the NumPy reference: outputs, final states and every gradient."""

import itertools
import zlib

import numpy as np
import pytest

import rnncore

T, N, D, H = 6, 5, 4, 3
LENGTHS = np.array([3, 6, 1, 6, 4])  # unsorted, with 1 and T


def make(kind, dtype, layers=1, bidirectional=False, dropout=0.0, batch_first=False, seed=0, ref=False):
    ns = rnncore.reference if ref else rnncore
    kw = dict(num_layers=layers, bidirectional=bidirectional, dropout=dropout, batch_first=batch_first,
              dtype=dtype, seed=seed)
    if kind.startswith("rnn"):
        return ns.RNN(D, H, nonlinearity=kind[4:], **kw)
    if kind == "lstm":
        return ns.LSTM(D, H, **kw)
    return ns.GRU(D, H, reset_after=kind == "gru_after", **kw)


def pair(kind, dtype, **kw):
    """The fast model and a float64 reference with the same parameters (and dropout stream)."""
    fast = make(kind, dtype, **kw)
    ref = make(kind, np.float64, ref=True, **kw)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def inputs(model, rng, with_state, lengths):
    L = model.num_layers * model.dirs
    x = rng.standard_normal((T, N, D))
    if model.batch_first:
        x = x.transpose(1, 0, 2).copy()
    state = None
    if with_state:
        state = rng.standard_normal((L, N, H))
        if isinstance(model, rnncore.LSTM):
            state = (state, rng.standard_normal((L, N, H)))
    return x, state, lengths


def cast(v, dtype):
    if v is None:
        return None
    if isinstance(v, tuple):
        return tuple(cast(a, dtype) for a in v)
    return v.astype(dtype)


def tolerances(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)


def check_close(got, want, dtype, what):
    np.testing.assert_allclose(got, want, err_msg=what, **tolerances(dtype))


def run_both(fast, ref, dtype, x, state, lengths, rng):
    y, st, tape = fast.forward(cast(x, dtype), cast(state, dtype), lengths=lengths, train=True)
    y_r, st_r, tape_r = ref.forward(x, state, lengths=lengths, train=True)
    assert y.dtype == dtype and y.shape == y_r.shape
    check_close(y, y_r, dtype, "y")
    for a, b in zip(st if isinstance(st, tuple) else (st,), st_r if isinstance(st_r, tuple) else (st_r,)):
        check_close(a, b, dtype, "final state")
    dy = rng.standard_normal(y_r.shape)
    h_shape = (st_r[0] if isinstance(st_r, tuple) else st_r).shape
    dh_n = rng.standard_normal(h_shape)
    dc_n = rng.standard_normal(h_shape) if isinstance(st_r, tuple) else None
    g = fast.backward(tape, cast(dy, dtype), cast(dh_n, dtype), cast(dc_n, dtype))
    g_r = ref.backward(tape_r, dy, dh_n, dc_n)
    assert sorted(g) == sorted(g_r)
    for name in g_r:
        assert g[name].dtype == dtype and g[name].shape == g_r[name].shape, name
        scale = max(1.0, float(np.abs(g_r[name]).max()))  # float32 sums over T*N terms
        np.testing.assert_allclose(g[name], g_r[name], err_msg=name, rtol=tolerances(dtype)["rtol"],
                                   atol=tolerances(dtype)["atol"] * scale)
    return y, g


CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_after"]


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layers,bidirectional", list(itertools.product([1, 2, 3], [False, True])))
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "state"])
def test_matches_reference(kind, dtype, layers, bidirectional, with_lengths, with_state):
    rng = np.random.default_rng(zlib.crc32(repr((kind, layers, bidirectional, with_lengths, with_state)).encode()))
    fast, ref = pair(kind, dtype, layers=layers, bidirectional=bidirectional)
    x, state, lengths = inputs(fast, rng, with_state, LENGTHS if with_lengths else None)
    run_both(fast, ref, dtype, x, state, lengths, rng)


@pytest.mark.parametrize("kind", CELLS)
def test_dropout_batch_first_and_mask_stream(kind):
    """Dropout between layers: same seed, same masks, so fast and reference agree in training."""
    rng = np.random.default_rng(7)
    fast, ref = pair(kind, np.float64, layers=3, bidirectional=True, dropout=0.4, batch_first=True, seed=3)
    x, state, _ = inputs(fast, rng, True, None)
    lengths = LENGTHS
    y1, _ = run_both(fast, ref, np.float64, x, state, lengths, rng)
    # the stream moves on: a second training call draws other masks
    y2, _ = run_both(fast, ref, np.float64, x, state, lengths, rng)
    assert not np.allclose(y1, y2)
    # inference applies no dropout: equal to a model without dropout
    plain = make(kind, np.float64, layers=3, bidirectional=True, batch_first=True)
    plain.load_state_dict(fast.state_dict())
    np.testing.assert_array_equal(fast(x, state, lengths=lengths)[0], plain(x, state, lengths=lengths)[0])


@pytest.mark.parametrize("kind", CELLS)
def test_padding_is_inert(kind):
    """Outputs past a row's length are zero; garbage there changes nothing, dy there is ignored."""
    rng = np.random.default_rng(1)
    m = make(kind, np.float64, layers=2, bidirectional=True)
    x, state, _ = inputs(m, rng, True, None)
    y, st, tape = m.forward(x, state, lengths=LENGTHS, train=True)
    x2 = x.copy()
    dy = rng.standard_normal(y.shape)
    dy2 = dy.copy()
    for n, length in enumerate(LENGTHS):
        assert np.all(y[length:, n] == 0)
        x2[length:, n] = 1e3
        dy2[length:, n] = 1e3
    y2, st2, tape2 = m.forward(x2, state, lengths=LENGTHS, train=True)
    np.testing.assert_array_equal(y, y2)
    g, g2 = m.backward(tape, dy), m.backward(tape2, dy2)
    for name in g:
        if name != "x":
            np.testing.assert_array_equal(g[name], g2[name], err_msg=name)
    for n, length in enumerate(LENGTHS):
        assert np.all(g2["x"][length:, n] == 0)


@pytest.mark.parametrize("kind", CELLS)
def test_lengths_equal_separate_calls(kind):
    """A padded batch gives each row what a call on that row alone, cut to its length, gives."""
    rng = np.random.default_rng(2)
    m = make(kind, np.float64, layers=2, bidirectional=True)
    x, state, _ = inputs(m, rng, True, None)
    y, st = m(x, state, lengths=LENGTHS)
    h = st[0] if isinstance(st, tuple) else st
    for n, length in enumerate(LENGTHS):
        s_n = None if state is None else (tuple(a[:, n:n + 1] for a in state) if isinstance(state, tuple)
                                          else state[:, n:n + 1])
        y_n, st_n = m(np.ascontiguousarray(x[:length, n:n + 1]), s_n)
        np.testing.assert_allclose(y[:length, n:n + 1], y_n, rtol=1e-12, atol=1e-14)
        h_n = st_n[0] if isinstance(st_n, tuple) else st_n
        np.testing.assert_allclose(h[:, n:n + 1], h_n, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_views_are_accepted(kind):
    """Non-contiguous, reversed and batch_first views compute the same as contiguous copies."""
    rng = np.random.default_rng(3)
    m = make(kind, np.float32, layers=2, bidirectional=True)
    big = rng.standard_normal((T, 2 * N, 2 * D)).astype(np.float32)
    view = big[::-1, ::2, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(m(view)[0], m(np.ascontiguousarray(view))[0])
    bf = make(kind, np.float32, layers=2, bidirectional=True, batch_first=True)
    bf.load_state_dict(m.state_dict())
    y_bf, _ = bf(view.transpose(1, 0, 2))  # a transposed view, not a copy
    np.testing.assert_array_equal(y_bf, m(view)[0].transpose(1, 0, 2))


def test_empty_batch():
    m = make("lstm", np.float32, layers=2, bidirectional=True)
    x = np.zeros((T, 0, D), np.float32)
    y, (h, c), tape = m.forward(x, train=True)
    assert y.shape == (T, 0, 2 * H) and h.shape == (4, 0, H) and c.shape == (4, 0, H)
    g = m.backward(tape, np.zeros_like(y))
    assert g["x"].shape == x.shape
    assert all(np.all(g[k] == 0) for k in m.parameters())


def test_tape_survives_two_backwards_and_holds_no_inference_state():
    rng = np.random.default_rng(4)
    m = make("gru", np.float32, layers=2)
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    y, h, tape = m.forward(x, train=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    g1, g2 = m.backward(tape, dy), m.backward(tape, dy)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])
    assert tape.nbytes > 0
    assert m.forward(x, train=False)[2] is None


def test_deterministic():
    rng = np.random.default_rng(5)
    m = make("lstm", np.float32, layers=2, bidirectional=True)
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    a = m.forward(x, lengths=LENGTHS, train=True)
    b = m.forward(x, lengths=LENGTHS, train=True)
    np.testing.assert_array_equal(a[0], b[0])
    ga, gb = m.backward(a[2], np.ones_like(a[0])), m.backward(b[2], np.ones_like(b[0]))
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k])


def assert_same_bits_for_any_threads(m, x, lens, dy, counts):
    """Training forward and backward with each thread count: identical bits. Returns y."""
    before = rnncore.get_num_threads()
    out = []
    try:
        for n in counts:
            rnncore.set_num_threads(n)
            y, st, tape = m.forward(x, lengths=lens, train=True)
            out.append((y, m.backward(tape, dy)))
    finally:
        rnncore.set_num_threads(before)
    for y, g in out[1:]:
        np.testing.assert_array_equal(y, out[0][0])
        for k in g:
            np.testing.assert_array_equal(g[k], out[0][1][k], err_msg=k)
    return out[0][0]


@pytest.mark.parametrize("kind", CELLS)
def test_results_do_not_depend_on_threads(kind):
    rng = np.random.default_rng(8)
    m = make(kind, np.float32, layers=2, bidirectional=True)
    x = rng.standard_normal((T, 40, D)).astype(np.float32)
    lens = rng.integers(1, T + 1, size=40)
    dy = rng.standard_normal((T, 40, 2 * H)).astype(np.float32)
    assert_same_bits_for_any_threads(m, x, lens, dy, (1, 2, 3))


def test_larger_shapes_float32():
    """Shapes where the BLAS takes its blocked paths and the kernels their vector loops."""
    rng = np.random.default_rng(6)
    Tb, Nb, Db, Hb = 12, 19, 40, 67  # 19 rows: the time loop splits them over 2 threads
    for cls, kw in [(rnncore.LSTM, {}), (rnncore.GRU, {"reset_after": False}), (rnncore.RNN, {})]:
        m = cls(Db, Hb, num_layers=2, bidirectional=True, seed=1, **kw)
        r = getattr(rnncore.reference, cls.__name__)(Db, Hb, num_layers=2, bidirectional=True, **kw)
        r.load_state_dict(m.state_dict())
        x = rng.standard_normal((Tb, Nb, Db))
        lens = rng.integers(1, Tb + 1, size=Nb)
        y, _, tape = m.forward(x.astype(np.float32), lengths=lens, train=True)
        y_r, _, tape_r = r.forward(x, lengths=lens, train=True)
        np.testing.assert_allclose(y, y_r, rtol=1e-4, atol=1e-5)
        dy = rng.standard_normal(y.shape)
        g, g_r = m.backward(tape, dy.astype(np.float32)), r.backward(tape_r, dy)
        for k in g_r:
            np.testing.assert_allclose(g[k], g_r[k], rtol=1e-3, atol=1e-4 * max(1, np.abs(g_r[k]).max()),
                                       err_msg=k)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_large_gemms_split_over_threads_give_identical_bits(kind):
    """Shapes large enough that every GEMM before and after the time loop is split over the
    team: the bits must not change with the number of threads."""
    rng = np.random.default_rng(10)
    cls = {"lstm": rnncore.LSTM, "gru": rnncore.GRU, "rnn_tanh": rnncore.RNN}[kind]
    m = cls(64, 64, num_layers=2, bidirectional=True, seed=4)
    x = rng.standard_normal((20, 70, 64)).astype(np.float32)
    lens = rng.integers(1, 21, size=70)
    dy = rng.standard_normal((20, 70, 128)).astype(np.float32)
    y = assert_same_bits_for_any_threads(m, x, lens, dy, (1, 2, 4))
    ref = getattr(rnncore.reference, cls.__name__)(64, 64, num_layers=2, bidirectional=True)
    ref.load_state_dict(m.state_dict())
    np.testing.assert_allclose(y, ref(x.astype(np.float64), lengths=lens)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru", "gru_after"])
@pytest.mark.parametrize("ref", [False, True])
def test_backward_without_the_input_gradient(kind, ref):
    """input_grad=False skips dx (the first layer's input product): no "x" entry, and every other
    gradient the same bits as with it; two layers, both directions, lengths, batch_first."""
    m = make(kind, np.float64, layers=2, bidirectional=True, batch_first=True, seed=4, ref=ref)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, T, D))
    y, _, tape = m.forward(x, lengths=LENGTHS, train=True)
    dy = rng.standard_normal(y.shape)
    full = m.backward(tape, dy)
    part = m.backward(tape, dy, input_grad=False)
    assert "x" in full and "x" not in part
    assert sorted(part) == sorted(k for k in full if k != "x")
    for k in part:
        assert part[k].tobytes() == full[k].tobytes(), k
    with pytest.raises(TypeError, match="input_grad: expected a bool"):
        m.backward(tape, dy, input_grad=1)
