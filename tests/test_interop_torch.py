"""Module-level PyTorch interop: Model.from_torch, model.to_torch, Model.from_torch_state_dict.

(tests/test_torch.py checks the underlying state-dict conversions in depth.)
"""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnncore  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

torch.set_num_threads(1)

T, N, D, H = 5, 3, 4, 6
LENGTHS = [2, 5, 1]
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru_after")
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
TOL = {np.float64: dict(rtol=1e-9, atol=1e-11), np.float32: dict(rtol=1e-4, atol=1e-5)}
MAX_ERR = {np.float32: 0.0, np.float64: 0.0}
CONFIGS = [(L, bd) for L in (1, 2) for bd in (False, True)]
CONFIG_IDS = [f"L{L}-{'bi' if bd else 'uni'}" for L, bd in CONFIGS]


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\nmax |rnncore - torch| (outputs, states, gradients): f32 {MAX_ERR[np.float32]:.3g}, "
          f"f64 {MAX_ERR[np.float64]:.3g}")


def close(actual, expected, dtype, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == np.dtype(dtype), what
    MAX_ERR[dtype] = max(MAX_ERR[dtype], float(np.abs(actual.astype(np.float64) - expected).max()))
    np.testing.assert_allclose(actual, expected, err_msg=what, **TOL[dtype])


def torch_module(cell, num_layers, bidirectional, batch_first, dtype, seed=0, **kw):
    torch.manual_seed(seed)
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
              dtype=TORCH_DTYPE[dtype], **kw)
    if cell.startswith("rnn_"):
        return torch.nn.RNN(D, H, nonlinearity=cell[4:], **kw)
    return {"lstm": torch.nn.LSTM, "gru_after": torch.nn.GRU}[cell](D, H, **kw)


def rnncore_model(cell, num_layers, bidirectional, batch_first, dtype, **kw):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, dtype=dtype, seed=0, **kw)
    if cell.startswith("rnn_"):
        return rnncore.RNN(D, H, nonlinearity=cell[4:], **kw)
    if cell == "lstm":
        return rnncore.LSTM(D, H, **kw)
    return rnncore.GRU(D, H, reset_after=cell == "gru_after", **kw)


def torch_run(tm, x, h0, c0, dy, dh, lengths):
    """Forward and backward of sum(y * dy) + sum(h_n * dh) in torch."""
    xt, h0t = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    c0t = None if c0 is None else torch.tensor(c0, requires_grad=True)
    state = h0t if c0t is None else (h0t, c0t)
    inp = xt if lengths is None else pack_padded_sequence(xt, torch.tensor(lengths), batch_first=tm.batch_first,
                                                         enforce_sorted=False)
    y, st = tm(inp, state)
    if lengths is not None:
        y, _ = pad_packed_sequence(y, batch_first=tm.batch_first, total_length=T)
    h_n = st if c0t is None else st[0]
    (((y * torch.tensor(dy)).sum()) + (h_n * torch.tensor(dh)).sum()).backward()
    out = dict(y=y.detach().numpy(), h_n=h_n.detach().numpy(), dx=xt.grad.numpy(), dh0=h0t.grad.numpy())
    if c0t is not None:
        out.update(c_n=st[1].detach().numpy(), dc0=c0t.grad.numpy())
    out["params"] = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    return out


def in_rnncore_layout(grads, cell):
    """torch parameter gradients as rnncore's: S dweight, S dbias_ih, and dbias_hh's n rows for b_hn."""
    sign = np.ones(len(grads["bias_ih_l0"]))
    if cell == "gru_after":
        sign[H:2 * H] = -1
    out = {}
    for k, g in grads.items():
        kind = k.split("_l")[0]
        sfx = k[len(kind):]
        if kind == "weight_ih":
            out["W_ih" + sfx] = sign[:, None] * g
        elif kind == "weight_hh":
            out["W_hh" + sfx] = sign[:, None] * g
        elif kind == "bias_ih":
            out["b" + sfx] = sign * g
        elif cell == "gru_after":
            out["b_hn" + sfx] = g[2 * H:]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("num_layers,bidirectional", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_from_torch_computes_what_torch_does(cell, num_layers, bidirectional, dtype):
    batch_first = bidirectional       # both layouts, across the grid
    lengths = LENGTHS if num_layers == 2 else None
    tm = torch_module(cell, num_layers, bidirectional, batch_first, dtype, dropout=0.25 if num_layers > 1 else 0.0)
    cls = {"rnn_tanh": rnncore.RNN, "rnn_relu": rnncore.RNN, "lstm": rnncore.LSTM, "gru_after": rnncore.GRU}[cell]
    rm = cls.from_torch(tm)
    assert type(rm) is cls and rm.cell == cell and rm.dtype == np.dtype(dtype)
    assert (rm.input_size, rm.hidden_size, rm.num_layers, rm.bidirectional, rm.batch_first, rm.dropout) == \
        (D, H, num_layers, bidirectional, batch_first, tm.dropout)

    rng = np.random.default_rng(1)
    dirs = 2 if bidirectional else 1
    xs = (N, T, D) if batch_first else (T, N, D)
    x = rng.standard_normal(xs).astype(dtype)
    h0 = rng.standard_normal((num_layers * dirs, N, H)).astype(dtype)
    c0 = rng.standard_normal(h0.shape).astype(dtype) if cell == "lstm" else None
    dy = rng.standard_normal(xs[:2] + (dirs * H,)).astype(dtype)
    dh = rng.standard_normal(h0.shape).astype(dtype)
    if lengths is not None:          # torch's padded outputs are constant: no gradient flows from there
        valid = np.arange(T)[:, None] < np.array(lengths)[None, :]
        dy *= (valid.T if batch_first else valid)[:, :, None]

    rm.dropout = 0.0                 # kept above; switched off (torch: eval) to compare gradients
    y, st, tape = rm.forward(x, h0 if c0 is None else (h0, c0), lengths=lengths, train=True)
    ref = torch_run(tm.eval(), x, h0, c0, dy, dh, lengths)
    close(y, ref["y"], dtype, "y")
    close(st[0] if c0 is not None else st, ref["h_n"], dtype, "h_n")
    if c0 is not None:
        close(st[1], ref["c_n"], dtype, "c_n")
    grads = rm.backward(tape, dy, dh, None if c0 is None else np.zeros_like(c0))
    close(grads["x"], ref["dx"], dtype, "dx")
    close(grads["h0"], ref["dh0"], dtype, "dh0")
    if c0 is not None:
        close(grads["c0"], ref["dc0"], dtype, "dc0")
    expected = in_rnncore_layout(ref["params"], cell)
    assert set(expected) == set(rm.parameters())
    for name, g in expected.items():
        close(grads[name], g, dtype, "d" + name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("num_layers,bidirectional", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_round_trip_through_torch_is_exact(cell, num_layers, bidirectional, dtype):
    rm = rnncore_model(cell, num_layers, bidirectional, not bidirectional, dtype, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # no dropout warning from torch for one layer either
        tm = rm.to_torch()
    want = {"lstm": torch.nn.LSTM, "gru_after": torch.nn.GRU}.get(cell, torch.nn.RNN)
    assert type(tm) is want
    assert (tm.input_size, tm.hidden_size, tm.num_layers, tm.bidirectional, tm.batch_first, tm.dropout, tm.bias) == \
        (D, H, num_layers, bidirectional, not bidirectional, 0.5, True)
    assert all(p.dtype == TORCH_DTYPE[dtype] for p in tm.parameters())
    if cell.startswith("rnn_"):
        assert tm.nonlinearity == cell[4:]
    back = rnncore.from_torch(tm)
    assert type(back) is type(rm) and repr(back) == repr(rm)
    assert set(back.parameters()) == set(rm.parameters())
    for k, a in rm.parameters().items():
        assert back.parameters()[k].dtype == a.dtype
        np.testing.assert_array_equal(back.parameters()[k], a, err_msg=k)

    x = np.random.default_rng(2).standard_normal((N, T, D) if tm.batch_first else (T, N, D)).astype(dtype)
    with torch.no_grad():
        y_t, _ = tm.eval()(torch.from_numpy(x))
    close(rm(x)[0], y_t.numpy(), dtype, "y of to_torch()")


def test_default_gru_has_no_torch_equivalent():
    with pytest.raises(ValueError, match="reset_after=False.*no PyTorch equivalent"):
        rnncore.GRU(D, H).to_torch()
    assert isinstance(rnncore.GRU(D, H, reset_after=True).to_torch(), torch.nn.GRU)
    assert rnncore.GRU.from_torch(torch.nn.GRU(D, H)).reset_after is True


@pytest.mark.parametrize("cell", CELLS)
def test_from_torch_state_dict_infers_the_configuration(cell):
    tm = torch_module(cell, 2, True, False, np.float64)
    cls = {"lstm": rnncore.LSTM, "gru_after": rnncore.GRU}.get(cell, rnncore.RNN)
    kw = {"nonlinearity": cell[4:]} if cls is rnncore.RNN else {}
    rm = cls.from_torch_state_dict(tm.state_dict(), batch_first=True, dropout=0.1, **kw)
    assert (rm.input_size, rm.hidden_size, rm.num_layers, rm.bidirectional, rm.batch_first, rm.dropout,
            rm.dtype, rm.cell) == (D, H, 2, True, True, 0.1, np.float64, cell)
    same = cls.from_torch(tm)
    for k, a in same.parameters().items():
        np.testing.assert_array_equal(rm.parameters()[k], a, err_msg=k)
    # plain arrays work as well as tensors
    arrays = {k: v.numpy() for k, v in tm.state_dict().items()}
    np.testing.assert_array_equal(cls.from_torch_state_dict(arrays, **kw).parameters()["W_hh_l1_reverse"],
                                  same.parameters()["W_hh_l1_reverse"])


def test_from_torch_state_dict_without_biases_and_errors():
    sd = torch.nn.LSTM(D, H, num_layers=2, bias=False).state_dict()
    rm = rnncore.LSTM.from_torch_state_dict(sd)
    assert rm.num_layers == 2 and rm.dtype == np.float32
    assert not any(a.any() for k, a in rm.parameters().items() if k.startswith("b"))

    gru_sd = torch.nn.GRU(D, H).state_dict()
    with pytest.raises(ValueError, match="expected shape"):
        rnncore.LSTM.from_torch_state_dict(gru_sd)
    with pytest.raises(ValueError, match="missing.*bias_hh_l0"):
        rnncore.GRU.from_torch_state_dict({k: v for k, v in gru_sd.items() if k != "bias_hh_l0"})
    with pytest.raises(ValueError, match="not those of"):
        rnncore.GRU.from_torch_state_dict({**gru_sd, "weight_hr_l0": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="missing.*weight_hh_l1"):
        rnncore.GRU.from_torch_state_dict({**gru_sd, "weight_ih_l1": torch.zeros(3 * H, H)})
    with pytest.raises(TypeError, match="unexpected arguments"):
        rnncore.LSTM.from_torch_state_dict(sd, nonlinearity="relu")
    with pytest.raises(TypeError, match="float32 or float64"):
        rnncore.GRU.from_torch_state_dict({k: v.half() for k, v in gru_sd.items()})


def test_from_torch_rejects_what_it_cannot_represent():
    with pytest.raises(TypeError, match="LSTM.from_torch needs a torch.nn.LSTM, got torch.nn.GRU"):
        rnncore.LSTM.from_torch(torch.nn.GRU(D, H))
    with pytest.raises(TypeError, match="torch.nn.RNN, LSTM or GRU"):
        rnncore.from_torch(torch.nn.Linear(D, H))
    assert rnncore.from_torch(torch.nn.LSTM(D, H, proj_size=2)).proj_size == 2  # LSTMP is carried (test_variants)
    with pytest.raises(TypeError, match="float32 or float64"):
        rnncore.from_torch(torch.nn.GRU(D, H).to(torch.bfloat16))


def test_broken_parameter_is_named_not_exported():
    rm = rnncore.LSTM(D, H)
    rm.parameters()["W_hh_l0"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="W_hh_l0"):
        rm.to_torch()
