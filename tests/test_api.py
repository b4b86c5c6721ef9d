"""The public API: construction, parameters, state dicts, threads, and bad input."""

import numpy as np
import pytest

import rnncore


def lstm(**kw):
    return rnncore.LSTM(4, 3, num_layers=2, bidirectional=True, seed=0, **kw)


def test_issue_api_calls():
    lstm_ = rnncore.LSTM(input_size=16, hidden_size=64, num_layers=2, bidirectional=True, batch_first=False,
                         dropout=0.0, dtype=np.float32, seed=0)
    gru = rnncore.GRU(16, 64, reset_after=False)
    rnn = rnncore.RNN(16, 64, nonlinearity="tanh")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 16)).astype(np.float32)
    lens = np.array([5, 2, 4])
    h0 = np.zeros((1, 3, 64), np.float32)
    y, h_n = gru(x)
    y2, h_n2 = gru(x, h0, lengths=lens)
    assert y.shape == (5, 3, 64) and h_n.shape == (1, 3, 64)
    np.testing.assert_array_equal(h_n2[0, 1], y2[1, 1])  # final state = last valid output
    y, (h_n, c_n) = lstm_(x, (np.zeros((4, 3, 64), np.float32),) * 2, lengths=lens)
    assert y.shape == (5, 3, 128) and c_n.shape == (4, 3, 64)
    y, state, tape = lstm_.forward(x, None, lengths=lens, train=True)
    grads = lstm_.backward(tape, np.ones_like(y), dh_n=None, dc_n=None)
    assert {"x", "h0", "c0", "W_ih_l0", "W_hh_l1_reverse", "b_l1"} <= set(grads)
    assert rnn(x)[0].shape == (5, 3, 64)
    ref = rnncore.reference.LSTM(16, 64, num_layers=2, bidirectional=True, dtype=np.float64)
    ref.load_state_dict(lstm_.state_dict())
    np.testing.assert_allclose(ref(x.astype(np.float64), lengths=lens)[0], lstm_(x, lengths=lens)[0], atol=1e-5)


def test_parameter_names_shapes_and_init():
    g = rnncore.GRU(5, 4, num_layers=2, reset_after=True, bidirectional=True, seed=1)
    p = g.parameters()
    assert p["W_ih_l0"].shape == (12, 5) and p["W_ih_l1_reverse"].shape == (12, 8)
    assert p["W_hh_l1"].shape == (12, 4) and p["b_l0"].shape == (12,) and p["b_hn_l1_reverse"].shape == (4,)
    assert len(p) == 16 and g.num_parameters() == sum(a.size for a in p.values())
    assert all(np.abs(a).max() <= 0.5 for a in p.values())  # uniform in +-1/sqrt(H)
    assert "b_hn_l0" not in rnncore.GRU(5, 4).parameters()
    # same seed, same parameters; another seed, others
    np.testing.assert_array_equal(rnncore.GRU(5, 4, seed=1).parameters()["W_hh_l0"],
                                  rnncore.GRU(5, 4, seed=1).parameters()["W_hh_l0"])
    assert not np.array_equal(rnncore.GRU(5, 4, seed=1).parameters()["W_hh_l0"],
                              rnncore.GRU(5, 4, seed=2).parameters()["W_hh_l0"])


def test_parameters_are_live_and_state_dict_is_a_copy():
    m = lstm()
    x = np.ones((2, 1, 4), np.float32)
    y0 = m(x)[0]
    sd = m.state_dict()
    sd["b_l0"][:] = 5  # a copy: the model does not change
    np.testing.assert_array_equal(m(x)[0], y0)
    m.parameters()["b_l0"][:] = 5  # live: it does
    assert not np.array_equal(m(x)[0], y0)
    m.load_state_dict({k: v.astype(np.float64) for k, v in sd.items()})  # cast on load
    assert m.parameters()["b_l0"].dtype == np.float32 and np.all(m.parameters()["b_l0"] == 5)


def test_load_state_dict_checks_before_changing():
    m = lstm()
    before = m.state_dict()
    bad = m.state_dict()
    bad["W_hh_l1"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"W_hh_l1.*\(12, 3\).*\(3, 3\)"):
        m.load_state_dict(bad)
    missing = m.state_dict()
    del missing["b_l0_reverse"]
    with pytest.raises(ValueError, match="missing.*b_l0_reverse"):
        m.load_state_dict(missing)
    ints = m.state_dict()
    ints["b_l0"] = np.zeros(12, np.int32)
    with pytest.raises(TypeError, match="b_l0.*int32"):
        m.load_state_dict(ints)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_threads():
    n = rnncore.get_num_threads()
    rnncore.set_num_threads(1)
    assert rnncore.get_num_threads() == 1
    rnncore.set_num_threads(n)
    assert rnncore.get_num_threads() == n
    with pytest.raises(ValueError, match="n: expected an integer from 1 to"):
        rnncore.set_num_threads(0)
    info = rnncore.blas_info()
    assert info["corename"] and info["kernels"] in ("avx512", "avx2", "baseline")


X = np.zeros((3, 2, 4), np.float32)
H0 = np.zeros((4, 2, 3), np.float32)


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda m: m(X[0]), ValueError, r"x: expected 3 dimensions.*\(2, 4\)"),
    (lambda m: m(np.zeros((3, 2, 5), np.float32)), ValueError, r"x: .*input_size=4.*\(3, 2, 5\)"),
    (lambda m: m(np.zeros((0, 2, 4), np.float32)), ValueError, r"x: expected at least one time step"),
    (lambda m: m(X.astype(np.float64)), TypeError, r"x: expected dtype float32.*got float64"),
    (lambda m: m(X.astype(np.float16)), TypeError, r"x: .*float16"),
    (lambda m: m(X.astype(np.int32)), TypeError, r"x: .*int32"),
    (lambda m: m(X.tolist()), TypeError, r"x: expected a numpy.ndarray.*list"),
    (lambda m: m(X, (H0, H0[:2])), ValueError, r"c0: expected shape \(4, 2, 3\).*\(2, 2, 3\)"),
    (lambda m: m(X, H0), TypeError, r"state: expected a tuple \(h0, c0\)"),
    (lambda m: m(X, (H0.astype(np.float64), H0)), TypeError, r"h0: .*float64"),
    (lambda m: m(X, lengths=[3, 4]), ValueError, r"lengths: expected values in \[0, T=3\].*max 4"),
    (lambda m: m(X, lengths=[-1, 1]), ValueError, r"lengths: .*min -1"),
    (lambda m: m(X, lengths=[1, 2, 3]), ValueError, r"lengths: expected shape \(2,\).*\(3,\)"),
    (lambda m: m(X, lengths=[1.0, 2.0]), TypeError, r"lengths: expected integers, got dtype float64"),
    (lambda m: m(X, lengths=np.array([True, True])), TypeError, r"lengths: .*bool"),
])
def test_bad_call_arguments(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(lstm())


def test_bad_backward_arguments():
    m, other = lstm(), lstm()
    y, st, tape = m.forward(X, train=True)
    with pytest.raises(ValueError, match=r"dy: expected shape \(3, 2, 6\).*\(3, 2, 3\)"):
        m.backward(tape, np.zeros((3, 2, 3), np.float32))
    with pytest.raises(TypeError, match=r"dy: .*float64"):
        m.backward(tape, np.zeros((3, 2, 6)))
    with pytest.raises(ValueError, match=r"dh_n: expected shape"):
        m.backward(tape, None, np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="tape: it was made by another model"):
        other.backward(tape)
    with pytest.raises(TypeError, match="tape: expected the tape"):
        m.backward(None)
    g = rnncore.GRU(4, 3)
    y, h, t = g.forward(X, train=True)
    with pytest.raises(ValueError, match="dc_n: GRU has no cell state"):
        g.backward(t, None, None, np.zeros((1, 2, 3), np.float32))


@pytest.mark.parametrize("make,exc,pattern", [
    (lambda: rnncore.LSTM(0, 3), ValueError, "input_size: expected a positive int, got 0"),
    (lambda: rnncore.LSTM(4, 2.5), TypeError, "hidden_size: expected a positive int, got float"),
    (lambda: rnncore.LSTM(4, 3, num_layers=True), TypeError, "num_layers"),
    (lambda: rnncore.LSTM(4, 3, dtype=np.float16), TypeError, "dtype: expected float32 or float64, got float16"),
    (lambda: rnncore.LSTM(4, 3, dtype="complex128"), TypeError, "dtype: .*complex128"),
    (lambda: rnncore.LSTM(4, 3, dropout=1.0), ValueError, r"dropout: expected a probability in \[0, 1\)"),
    (lambda: rnncore.RNN(4, 3, nonlinearity="sigmoid"), ValueError, "nonlinearity: expected 'tanh' or 'relu'"),
    (lambda: rnncore.GRU(4, 3, reset_after="yes"), TypeError, "reset_after: expected a bool"),
])
def test_bad_construction(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


def test_broken_parameter_is_reported_not_used():
    m = lstm()
    m.parameters()["W_hh_l0"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"parameter 'W_hh_l0': expected shape \(12, 3\), got \(3, 3\)"):
        m(X)
    m.parameters()["W_hh_l0"] = np.zeros((12, 3))
    with pytest.raises(TypeError, match=r"parameter 'W_hh_l0': expected dtype float32, got float64"):
        m(X)


def test_core_rejects_what_python_would_not_send():
    """The binding's own checks: a bad call straight into the core raises, never crashes."""
    w = [(np.zeros((12, 4), np.float32), np.zeros((12, 3), np.float32), np.zeros(12, np.float32), None)]
    x, h0 = np.zeros((3, 2, 4), np.float32), np.zeros((1, 2, 3), np.float32)
    core = rnncore._core
    with pytest.raises(ValueError, match="W_hh: expected shape"):
        core.forward(2, 1, 1, [(w[0][0], w[0][0], w[0][2], None)], x, h0, h0, None, None, False)
    with pytest.raises(TypeError, match="h0: expected dtype float32"):
        core.forward(2, 1, 1, w, x, h0.astype(np.float64), h0, None, None, False)
    with pytest.raises(ValueError, match="x: must be C-contiguous"):
        core.forward(2, 1, 1, w, np.zeros((3, 4, 4), np.float32)[:, ::2], h0, h0, None, None, False)
    with pytest.raises(ValueError, match=r"lengths: each must be in \[0, T\]"):
        core.forward(2, 1, 1, w, x, h0, h0, np.array([-1, 3]), None, False)
    with pytest.raises(ValueError, match="c0: required"):
        core.forward(2, 1, 1, w, x, h0, None, None, None, False)
    huge = np.lib.stride_tricks.as_strided(x, (2**31, 1, 4), (0, 0, 4))  # no memory behind it
    with pytest.raises(ValueError, match="sizes too large"):
        core.forward(2, 1, 1, w, huge, h0[:, :1], h0[:, :1], None, None, False)


def test_load_state_dict_repairs_replaced_parameters():
    """A live entry replaced or deleted through parameters() is restored whole, not half-copied."""
    m = lstm()
    good = m.state_dict()
    m.parameters()["W_hh_l0"] = np.zeros((2, 2), np.float32)
    del m.parameters()["b_l1"]
    m.load_state_dict(good)
    for k, v in good.items():
        np.testing.assert_array_equal(m.parameters()[k], v)
    assert m(X)[0].shape == (3, 2, 6)


# ---- a model holds its own parameters only --------------------------------------------------

def test_foreign_entries_are_refused_where_they_enter(tmp_path):
    """parameters() is live, but it takes only the model's own names: an extra entry (a readout's
    weights, say) once made a checkpoint that load() refused, and a state_dict that would not load back."""
    m = lstm()
    p = m.parameters()
    names = set(p)
    ways = [lambda: p.__setitem__("head.W", np.zeros(3, np.float32)),
            lambda: p.update({"head.W": np.zeros(3, np.float32)}),
            lambda: p.update(W_ih_l0=p["W_ih_l0"], extra=np.zeros(1)),
            lambda: p.setdefault("head.b", np.zeros(3, np.float32)),
            lambda: p.__ior__({"head.W": np.zeros(3, np.float32)})]
    for way in ways:
        with pytest.raises(ValueError, match=r"^parameters: '(head\.[Wb]|extra)' is not a parameter of this LSTM"):
            way()
        assert set(p) == names
    combined = {**p, "head.W": np.zeros(3, np.float32)}      # the way to hold more: a dict of your own
    assert len(combined) == len(names) + 1 and set(m.parameters()) == names
    copied = p.copy()
    copied["head.W"] = np.zeros(3)
    assert type(copied) is dict and set(m.parameters()) == names
    p["b_l0"] = np.ones(12, np.float32)                      # its own names may still be replaced
    p.update(b_l1=np.ones(12, np.float32))
    assert p.setdefault("b_l0") is p["b_l0"]
    m.save(tmp_path / "m.npz")
    back = rnncore.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.parameters()["b_l0"], 1)
    m.load_state_dict(m.state_dict())
    back.load_state_dict(m.state_dict())


def test_a_model_loads_what_it_saved_or_says_why_not(tmp_path):
    """A parameter removed or reshaped through parameters(): state_dict and save name it instead of
    producing something load_state_dict or load would refuse."""
    m = lstm()
    del m.parameters()["b_l1"]
    with pytest.raises(TypeError, match=r"^parameter 'b_l1': expected an ndarray, got NoneType"):
        m.state_dict()
    with pytest.raises(TypeError, match=r"^parameter 'b_l1'"):
        m.save(tmp_path / "m.npz")
    m = lstm()
    m.parameters()["W_hh_l0"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"^parameter 'W_hh_l0': expected shape \(12, 3\), got \(2, 2\)"):
        m.state_dict()
    m = lstm()
    m.parameters()["W_hh_l0"] = m.parameters()["W_hh_l0"].astype(np.float64)   # another dtype: load_state_dict casts
    again = rnncore.LSTM(4, 3, num_layers=2, bidirectional=True, seed=1)
    again.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(again.parameters()["W_hh_l0"], m.parameters()["W_hh_l0"].astype(np.float32))


def test_masked_parameters_are_refused():
    """x and states refuse masked arrays (their mask would be ignored); so do parameters, wherever they enter."""
    m = lstm()
    before = m.state_dict()
    w = np.ma.masked_array(before["W_hh_l0"], mask=np.eye(12, 3, dtype=bool))
    with pytest.raises(TypeError, match=r"^parameters\['W_hh_l0'\]: masked arrays are not supported"):
        m.parameters()["W_hh_l0"] = w
    with pytest.raises(TypeError, match=r"^parameters\['W_hh_l0'\]: masked arrays"):
        m.parameters().update(W_hh_l0=w)
    with pytest.raises(TypeError, match=r"^state_dict\['W_hh_l0'\]: masked arrays are not supported"):
        m.load_state_dict({**before, "W_hh_l0": w})
    cell = rnncore.LSTMCell(4, 3, seed=0)
    with pytest.raises(TypeError, match=r"^state_dict\['b_l0'\]: masked arrays"):
        cell.load_state_dict({**cell.state_dict(), "b": np.ma.masked_array(np.zeros(12, np.float32))})
    for k, v in m.parameters().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
        assert type(v) is np.ndarray
    dict.__setitem__(m.parameters(), "W_hh_l0", w)      # past the dict's own check: the call still refuses it
    with pytest.raises(TypeError, match=r"^parameter 'W_hh_l0': masked arrays are not supported"):
        m(X)
    with pytest.raises(TypeError, match=r"^parameter 'W_hh_l0': masked"):
        m.state_dict()


def test_masked_torch_state_dicts_are_refused():
    sd = rnncore.to_torch_state_dict(lstm().parameters(), "lstm")
    sd["weight_hh_l0"] = np.ma.masked_array(sd["weight_hh_l0"])
    with pytest.raises(TypeError, match=r"^state_dict\['weight_hh_l0'\]: masked arrays"):
        rnncore.LSTM.from_torch_state_dict(sd)
    with pytest.raises(TypeError, match=r"masked arrays"):
        rnncore.from_torch_state_dict(sd, "lstm")
