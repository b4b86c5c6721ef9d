"""rnncore against PyTorch's nn.RNN / nn.LSTM / nn.GRU, through the weight conversions.

A torch module is built, its state dict converted with ``rnncore.from_torch_state_dict`` into an
rnncore model of the same configuration and dtype, and both are run on the same input and initial
states: outputs, final states and every gradient must agree to rounding error.

Gradients live in different parameterisations. rnncore's parameters are a linear function of
torch's, theta_r = A theta_t, so for the same loss grad_t = A^T grad_r. With S = diag(+1, or -1
on the GRU's z rows) and, per layer and direction:

    W_ih = S weight_ih          W_hh = S weight_hh
    LSTM / RNN:  b = bias_ih + bias_hh
    GRU:         b = S (bias_ih + [bias_hh_r, bias_hh_z, 0]),   b_hn = bias_hh_n

we get dweight = S dW, dbias_ih = S db (every row), dbias_hh = S db on all rows except the GRU's
n rows, where dbias_hh_n = db_hn. Hence, in rnncore's layout (S is its own inverse):

    dW_ih = S dweight_ih,  dW_hh = S dweight_hh,  db = S dbias_ih,  db_hn = dbias_hh[n rows]

and torch's dbias_hh must equal dbias_ih on the rows they share (checked as well).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnncore  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

torch.set_num_threads(1)

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru_after")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru_after": 3}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
TOL = {np.float64: dict(rtol=1e-9, atol=1e-11), np.float32: dict(rtol=1e-4, atol=1e-4)}
DTYPE_IDS = {np.float32: "f32", np.float64: "f64"}

T, N, D, H = 6, 4, 5, 7
LENGTHS = [3, 6, 1, 5]                     # unsorted, includes 1 and T

# Largest absolute difference seen per dtype (printed at the end with ``pytest -s``).
MAX_ERR = {np.float32: 0.0, np.float64: 0.0}


@pytest.fixture(scope="module", autouse=True)
def _report_max_err():
    yield
    print("\nmax |rnncore - torch|: " + ", ".join(f"{DTYPE_IDS[k]} {v:.3g}" for k, v in MAX_ERR.items()))


def assert_close(actual, expected, dtype, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype}"
    if actual.size:
        MAX_ERR[dtype] = max(MAX_ERR[dtype], float(np.max(np.abs(actual.astype(np.float64) - expected))))
    np.testing.assert_allclose(actual, expected, err_msg=what, **TOL[dtype])


# ------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------

def make_torch(cell, num_layers, bidirectional, batch_first, dtype, seed=0, bias=True):
    torch.manual_seed(seed)
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
              dtype=TORCH_DTYPE[dtype])
    if cell.startswith("rnn_"):
        return torch.nn.RNN(D, H, nonlinearity=cell[4:], **kw)
    if cell == "lstm":
        return torch.nn.LSTM(D, H, **kw)
    return torch.nn.GRU(D, H, **kw)


def make_rnncore(cell, num_layers, bidirectional, batch_first, dtype):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, dtype=dtype, seed=0)
    if cell.startswith("rnn_"):
        return rnncore.RNN(D, H, nonlinearity=cell[4:], **kw)
    if cell == "lstm":
        return rnncore.LSTM(D, H, **kw)
    return rnncore.GRU(D, H, reset_after=True, **kw)


def make_pair(cell, num_layers, bidirectional, batch_first, dtype, bias=True):
    tm = make_torch(cell, num_layers, bidirectional, batch_first, dtype, bias=bias)
    rm = make_rnncore(cell, num_layers, bidirectional, batch_first, dtype)
    params = rnncore.from_torch_state_dict(tm.state_dict(), cell)
    for name, a in params.items():
        assert a.dtype == np.dtype(dtype), name
    before = rm.state_dict()
    rm.load_state_dict(params)
    assert any(not np.array_equal(before[k], rm.parameters()[k]) for k in before)   # really replaced
    return tm, rm


def make_data(cell, num_layers, bidirectional, batch_first, dtype, seed=1):
    """x, h0, c0, dy, dh_n, dc_n in the user's layout (c0/dc_n None unless LSTM)."""
    rng = np.random.default_rng(seed)
    dirs = 2 if bidirectional else 1
    xshape = (N, T, D) if batch_first else (T, N, D)
    yshape = xshape[:2] + (dirs * H,)
    sshape = (num_layers * dirs, N, H)
    lstm = cell == "lstm"
    x = rng.standard_normal(xshape).astype(dtype)
    h0 = (0.5 * rng.standard_normal(sshape)).astype(dtype)
    c0 = (0.5 * rng.standard_normal(sshape)).astype(dtype) if lstm else None
    dy = rng.standard_normal(yshape).astype(dtype)
    dh = rng.standard_normal(sshape).astype(dtype)
    dc = rng.standard_normal(sshape).astype(dtype) if lstm else None
    return x, h0, c0, dy, dh, dc


def padding_mask(lengths, batch_first):
    """1 at valid steps, 0 at padding, shaped (T, N, 1) or (N, T, 1)."""
    valid = (np.arange(T)[:, None] < np.asarray(lengths)[None, :]).astype(np.float64)   # (T, N)
    return (valid.T if batch_first else valid)[:, :, None]


def run_torch(tm, cell, x, h0, c0, dy, dh, dc, lengths=None):
    """Forward and backward in torch; returns y, h_n, c_n, dx, dh0, dc0 and the parameter grads."""
    bf = tm.batch_first
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True) if c0 is not None else None
    state = (h0t, c0t) if cell == "lstm" else h0t
    tm.zero_grad(set_to_none=True)
    if lengths is None:
        y, st = tm(xt, state)
    else:
        packed = pack_padded_sequence(xt, torch.tensor(lengths, dtype=torch.int64), batch_first=bf,
                                      enforce_sorted=False)
        yp, st = tm(packed, state)
        y, out_lengths = pad_packed_sequence(yp, batch_first=bf, total_length=T)
        assert out_lengths.tolist() == list(lengths)
    h_n, c_n = st if cell == "lstm" else (st, None)
    loss = (y * torch.tensor(dy)).sum() + (h_n * torch.tensor(dh)).sum()
    if cell == "lstm":
        loss = loss + (c_n * torch.tensor(dc)).sum()
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in tm.named_parameters()}
    return dict(y=y.detach().numpy(), h_n=h_n.detach().numpy(),
                c_n=None if c_n is None else c_n.detach().numpy(),
                dx=xt.grad.numpy(), dh0=h0t.grad.numpy(), dc0=None if c0t is None else c0t.grad.numpy(),
                params=grads)


def torch_grads_in_rnncore_layout(grads, cell, dtype):
    """Map torch's parameter gradients into rnncore's names and layout (see the module docstring)."""
    G = GATES[cell]
    sign = np.ones(G * H)
    if cell == "gru_after":
        sign[H:2 * H] = -1.0
    out = {}
    for name in grads:
        if not name.startswith("weight_ih"):
            continue
        sfx = name[len("weight_ih"):]
        out["W_ih" + sfx] = sign[:, None] * grads["weight_ih" + sfx]
        out["W_hh" + sfx] = sign[:, None] * grads["weight_hh" + sfx]
        if "bias_ih" + sfx not in grads:
            continue
        g_ih, g_hh = grads["bias_ih" + sfx], grads["bias_hh" + sfx]
        shared = slice(0, 2 * H) if cell == "gru_after" else slice(None)
        # Both torch biases enter the same pre-activation on these rows: identical gradients.
        np.testing.assert_allclose(g_hh[shared], g_ih[shared], err_msg="torch bias grads" + sfx, **TOL[dtype])
        out["b" + sfx] = sign * g_ih
        if cell == "gru_after":
            out["b_hn" + sfx] = g_hh[2 * H:].copy()
    return out


def check_against_torch(cell, num_layers, bidirectional, batch_first, dtype, lengths=None, bias=True):
    tm, rm = make_pair(cell, num_layers, bidirectional, batch_first, dtype, bias=bias)
    x, h0, c0, dy, dh, dc = make_data(cell, num_layers, bidirectional, batch_first, dtype)
    state = (h0, c0) if cell == "lstm" else h0

    y, st, tape = rm.forward(x, state, lengths=lengths, train=True)
    h_n, c_n = st if cell == "lstm" else (st, None)
    # rnncore gets dy as is (padding must be ignored); torch gets dy zeroed at padding.
    grads = rm.backward(tape, dy, dh, dc)

    dy_torch = dy if lengths is None else (dy * padding_mask(lengths, batch_first)).astype(dtype)
    ref = run_torch(tm, cell, x, h0, c0, dy_torch, dh, dc, lengths)

    assert_close(y, ref["y"], dtype, "y")
    assert_close(h_n, ref["h_n"], dtype, "h_n")
    if cell == "lstm":
        assert_close(c_n, ref["c_n"], dtype, "c_n")
    if lengths is not None:
        pad = padding_mask(lengths, batch_first)[:, :, 0] == 0
        assert pad.any()
        assert np.all(y[pad] == 0), "y at padding"
        assert np.all(grads["x"][pad] == 0), "dx at padding"

    # Same call inference-mode gives the same outputs.
    y2, st2 = rm(x, state, lengths=lengths)
    np.testing.assert_array_equal(y2, y)

    assert_close(grads["x"], ref["dx"], dtype, "dx")
    assert_close(grads["h0"], ref["dh0"], dtype, "dh0")
    if cell == "lstm":
        assert_close(grads["c0"], ref["dc0"], dtype, "dc0")
    else:
        assert "c0" not in grads
    expected = torch_grads_in_rnncore_layout(ref["params"], cell, dtype)
    if not bias:       # rnncore always has biases; torch's have no gradient to compare against
        expected = {k: v for k, v in expected.items() if k.startswith("W_")}
    names = {n for n, _ in rm._param_shapes()}
    assert set(expected) <= names and set(grads) - {"x", "h0", "c0"} == names
    if bias:
        assert set(expected) == names
    for name in sorted(expected):
        assert_close(grads[name], expected[name], dtype, "d" + name)
    return grads, ref


CONFIGS = [(L, bd, bf) for L in (1, 2) for bd in (False, True) for bf in (False, True)]
CONFIG_IDS = [f"L{L}-{'bi' if bd else 'uni'}-{'bf' if bf else 'tm'}" for L, bd, bf in CONFIGS]


# ------------------------------------------------------------------------------------------
# full-length sequences
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("num_layers,bidirectional,batch_first", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch(cell, num_layers, bidirectional, batch_first, dtype):
    check_against_torch(cell, num_layers, bidirectional, batch_first, dtype)


# ------------------------------------------------------------------------------------------
# unsorted lengths vs packed sequences
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("num_layers,bidirectional,batch_first", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_packed(cell, num_layers, bidirectional, batch_first, dtype):
    check_against_torch(cell, num_layers, bidirectional, batch_first, dtype, lengths=LENGTHS)


@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_without_bias(cell):
    """torch modules with bias=False convert (rnncore's biases become zero)."""
    tm, rm = make_pair(cell, 2, True, False, np.float64, bias=False)
    for name, a in rm.parameters().items():
        if not name.startswith("W_"):
            assert not a.any(), name
    check_against_torch(cell, 2, True, False, np.float64, lengths=LENGTHS, bias=False)


# ------------------------------------------------------------------------------------------
# conversions
# ------------------------------------------------------------------------------------------

def torch_outputs(tm, cell, x, h0, c0):
    with torch.no_grad():
        state = (torch.tensor(h0), torch.tensor(c0)) if cell == "lstm" else torch.tensor(h0)
        y, st = tm(torch.tensor(x), state)
    st = st if cell == "lstm" else (st,)
    return [y.numpy()] + [s.numpy() for s in st]


def load_into_torch(tm, sd):
    tm.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("cell", CELLS)
def test_torch_round_trip(cell, dtype):
    """to_torch(from_torch(sd)) loaded into a fresh torch module computes what the original did."""
    tm = make_torch(cell, 2, True, True, dtype, seed=0)
    fresh = make_torch(cell, 2, True, True, dtype, seed=1)
    x, h0, c0, *_ = make_data(cell, 2, True, True, dtype)
    want = torch_outputs(tm, cell, x, h0, c0)
    assert not np.allclose(torch_outputs(fresh, cell, x, h0, c0)[0], want[0])    # not trivially equal

    sd = rnncore.to_torch_state_dict(rnncore.from_torch_state_dict(tm.state_dict(), cell), cell)
    assert set(sd) == set(tm.state_dict())
    for k, v in sd.items():
        assert v.dtype == np.dtype(dtype), k
    load_into_torch(fresh, sd)
    got = torch_outputs(fresh, cell, x, h0, c0)
    for g, w, what in zip(got, want, ("y", "h_n", "c_n")):
        assert_close(g, w, dtype, what)
    # Weights survive exactly (the sign flips are exact); only the bias split changes.
    orig = tm.state_dict()
    for k in sd:
        if k.startswith("weight"):
            np.testing.assert_array_equal(sd[k], orig[k].numpy(), err_msg=k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("cell", CELLS)
def test_rnncore_round_trip_is_exact(cell, dtype):
    rm = make_rnncore(cell, 2, True, False, dtype)
    params = rm.state_dict()
    back = rnncore.from_torch_state_dict(rnncore.to_torch_state_dict(params, cell), cell)
    assert set(back) == set(params)
    for k in params:
        assert back[k].dtype == params[k].dtype, k
        np.testing.assert_array_equal(back[k], params[k], err_msg=k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("cell", CELLS)
def test_rnncore_weights_in_torch(cell, dtype):
    """rnncore's own (seeded) parameters, exported, make a torch module computing the same thing."""
    rm = make_rnncore(cell, 2, True, False, dtype)
    tm = make_torch(cell, 2, True, False, dtype, seed=3)
    load_into_torch(tm, rnncore.to_torch_state_dict(rm.parameters(), cell))
    x, h0, c0, *_ = make_data(cell, 2, True, False, dtype, seed=5)
    y, st = rm(x, (h0, c0) if cell == "lstm" else h0)
    got = [y] + (list(st) if cell == "lstm" else [st])
    for g, w, what in zip(got, torch_outputs(tm, cell, x, h0, c0), ("y", "h_n", "c_n")):
        assert_close(g, w, dtype, what)


def test_seed_form_gru_has_no_torch_equivalent():
    sd = make_torch("gru_after", 1, False, False, np.float64).state_dict()
    with pytest.raises(ValueError, match="gru"):
        rnncore.from_torch_state_dict(sd, "gru")
    params = make_rnncore("gru_after", 1, False, False, np.float64).state_dict()
    with pytest.raises(ValueError, match="gru"):
        rnncore.to_torch_state_dict(params, "gru")
    with pytest.raises(ValueError):
        rnncore.from_torch_state_dict(sd, "lstm_typo")
