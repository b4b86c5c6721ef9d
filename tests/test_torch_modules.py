"""rnncore.torch: LSTM, GRU and RNN as torch.nn modules on rnncore's core, against torch.nn.

Parity is checked in float64 to 1e-10 relative (largest difference over the largest value of
each tensor): outputs, final states and the gradients of the input, the initial states and every
parameter, for every cell, 1-3 layers, both directions, batch_first, PackedSequence (sorted and
unsorted), unbatched input, with and without hx.
"""

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnncore  # noqa: E402
import rnncore.torch as rt  # noqa: E402
from rnncore import models  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

torch.set_num_threads(1)

KINDS = {"lstm": (rt.LSTM, torch.nn.LSTM, {}), "gru": (rt.GRU, torch.nn.GRU, {}),
         "rnn_tanh": (rt.RNN, torch.nn.RNN, {}), "rnn_relu": (rt.RNN, torch.nn.RNN, {"nonlinearity": "relu"})}
T, N, D, H = 6, 4, 5, 7
LENGTHS = [3, 6, 1, 5]
RTOL = 1e-10


def _pair(kind, seed=0, dtype=torch.float64, **kw):
    ours, theirs, extra = KINDS[kind]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ours(D, H, dtype=dtype, **extra, **kw)
        b = theirs(D, H, dtype=dtype, **extra, **kw)
    b.load_state_dict(a.state_dict())
    return a, b


def _close(a, b, what, rtol=RTOL):
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape, what
    scale = max(b.abs().max().item(), 1e-300)
    err = (a - b).abs().max().item() / scale
    assert err <= rtol, f"{what}: relative difference {err:.3g}"


def _flat(out):
    """The tensors of (y, hidden) in a fixed order: y (data of a PackedSequence), h_n, c_n."""
    y, hidden = out
    y = y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y
    return [y] + (list(hidden) if isinstance(hidden, tuple) else [hidden])


def _run(module, make_input, hx, weights):
    """Forward, then backward of sum(w * out) over every output; returns outputs and gradients."""
    module.zero_grad()
    x, leaf = make_input()
    hx = None if hx is None else (tuple(h.clone().requires_grad_(True) for h in hx) if isinstance(hx, tuple)
                                  else hx.clone().requires_grad_(True))
    outs = _flat(module(x, hx))
    sum(((o * w).sum() for o, w in zip(outs, weights)), torch.zeros((), dtype=outs[0].dtype)).backward()
    grads = {"input": leaf.grad}
    if hx is not None:
        for i, h in enumerate(hx if isinstance(hx, tuple) else (hx,)):
            grads[f"hx{i}"] = h.grad
    grads.update({n: p.grad for n, p in module.named_parameters()})
    return outs, grads


def _compare(kind, make_input, hx_shape, with_hx, **kw):
    a, b = _pair(kind, **kw)
    g = torch.Generator().manual_seed(1)
    hx = None
    if with_hx:
        h = torch.randn(hx_shape, generator=g, dtype=torch.float64)
        hx = (h, torch.randn(hx_shape, generator=g, dtype=torch.float64)) if kind == "lstm" else h
    with torch.no_grad():
        shapes = [o.shape for o in _flat(b(make_input()[0], hx))]
    weights = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    outs_a, grads_a = _run(a, make_input, hx, weights)
    outs_b, grads_b = _run(b, make_input, hx, weights)
    for i, (oa, ob) in enumerate(zip(outs_a, outs_b)):
        _close(oa, ob, f"output {i}")
    assert set(grads_a) == set(grads_b)
    for name in grads_b:
        assert grads_a[name] is not None, name
        _close(grads_a[name], grads_b[name], f"gradient of {name}")
    return a, b


def _dense_input(batch_first, batched=True):
    g = torch.Generator().manual_seed(2)
    base = torch.randn(T, N, D, generator=g, dtype=torch.float64)
    if not batched:
        base = base[:, 0]
    elif batch_first:
        base = base.transpose(0, 1).contiguous()

    def make():
        leaf = base.clone().requires_grad_(True)
        return leaf, leaf
    return make


@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_matches_torch(kind, num_layers, bidirectional, batch_first):
    dirs = 2 if bidirectional else 1
    for with_hx in (True, False):
        _compare(kind, _dense_input(batch_first), (num_layers * dirs, N, H), with_hx, num_layers=num_layers,
                 bidirectional=bidirectional, batch_first=batch_first)


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_matches_torch_packed(kind, bidirectional, enforce_sorted):
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    g = torch.Generator().manual_seed(3)
    base = torch.randn(T, N, D, generator=g, dtype=torch.float64)

    def make():
        leaf = base.clone().requires_grad_(True)
        return pack_padded_sequence(leaf, torch.tensor(lengths), enforce_sorted=enforce_sorted), leaf
    for with_hx in (True, False):
        a, _ = _compare(kind, make, (2 * (2 if bidirectional else 1), N, H), with_hx, num_layers=2,
                        bidirectional=bidirectional)
    y, _ = a(make()[0])
    packed = make()[0]
    assert isinstance(y, torch.nn.utils.rnn.PackedSequence)
    assert torch.equal(y.batch_sizes, packed.batch_sizes)
    for got, want in ((y.sorted_indices, packed.sorted_indices), (y.unsorted_indices, packed.unsorted_indices)):
        assert (got is None and want is None) or torch.equal(got, want)
    padded, lens = pad_packed_sequence(y)
    assert lens.tolist() == lengths


def test_packed_full_length_rows_are_not_copied(monkeypatch):
    """Packed rows of equal length in their own order are the padded input itself."""
    a, _ = _pair("lstm")
    x = torch.randn(T, N, D, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.full((N,), T), enforce_sorted=True)
    seen = {}
    real = models._Recurrent._run

    def spy(self, x, *args, **kw):
        seen["x"] = x
        return real(self, x, *args, **kw)
    monkeypatch.setattr(models._Recurrent, "_run", spy)
    with torch.no_grad():
        y, _ = a(packed)
    assert np.shares_memory(seen["x"], packed.data.numpy())
    with torch.no_grad():
        y_dense, _ = a(x)
    assert torch.equal(y.data, y_dense.reshape(T * N, -1))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_matches_torch_unbatched(kind, bidirectional):
    dirs = 2 if bidirectional else 1
    for batch_first in (False, True):
        for with_hx in (True, False):
            _compare(kind, _dense_input(batch_first, batched=False), (2 * dirs, H), with_hx, num_layers=2,
                     bidirectional=bidirectional, batch_first=batch_first)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_matches_torch_without_bias(kind):
    a, _ = _compare(kind, _dense_input(False), (2, N, H), True, num_layers=2, bias=False)
    assert not any("bias" in n for n, _ in a.named_parameters())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_float32_matches_torch(kind):
    a, b = _pair(kind, dtype=torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(T, N, D)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = a(xa)[0], b(xb)[0]
    assert ya.dtype == torch.float32
    assert torch.allclose(ya, yb, rtol=1e-4, atol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-3, atol=1e-5), n


def test_drop_in_construction_and_state_dict():
    torch.manual_seed(5)
    a = rt.LSTM(D, H, 2, True, True, 0.0, True)             # torch.nn.LSTM's positional arguments
    torch.manual_seed(5)
    b = torch.nn.LSTM(D, H, 2, True, True, 0.0, True)
    assert isinstance(a, torch.nn.LSTM)
    assert list(a.state_dict()) == list(b.state_dict())
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())   # same initialisation
    b2 = torch.nn.LSTM(D, H, 2, batch_first=True, bidirectional=True)
    b2.load_state_dict(a.state_dict())
    a.load_state_dict(torch.nn.LSTM(D, H, 2, batch_first=True, bidirectional=True).state_dict())
    x = torch.randn(N, T, D)
    with torch.no_grad():
        assert not torch.allclose(a(x)[0], b(x)[0], atol=1e-3)
        b.load_state_dict(a.state_dict())
        assert torch.allclose(a(x)[0], b(x)[0], atol=1e-5)
    assert "LSTM(5, 7, num_layers=2" in repr(a)


def test_parameters_map_as_convert_does():
    """The differentiable map of the forward equals _convert's state-dict conversion exactly."""
    for kind in ("lstm", "gru", "rnn_tanh"):
        a, _ = _pair(kind, num_layers=2, bidirectional=True)
        template = a._core_template(torch.float64, False, 0.0)
        views, _ = a._parameter_views()
        _, weights = a._core_weights(template, views)
        got = {n: w for (n, _), w in zip(template._param_shapes(), [w for group in weights for w in group])}
        want = rnncore.from_torch_state_dict(a.state_dict(), template.cell)
        assert set(got) == set(want)
        for n in want:
            np.testing.assert_array_equal(got[n], want[n], err_msg=n)


def test_float32_weights_are_not_copied(monkeypatch):
    a, _ = _pair("lstm", dtype=torch.float32)
    seen = {}
    real = models._Recurrent._run

    def spy(self, x, h0, c0, lengths, train, weights, rng=None):
        seen.update(zip(("W_ih_l0", "W_hh_l0"), weights[0]))
        return real(self, x, h0, c0, lengths, train, weights, rng)
    monkeypatch.setattr(models._Recurrent, "_run", spy)
    a(torch.randn(T, N, D))
    assert np.shares_memory(seen["W_ih_l0"], a.weight_ih_l0.detach().numpy())
    assert np.shares_memory(seen["W_hh_l0"], a.weight_hh_l0.detach().numpy())


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_gru_reset_before_is_rnncores_gru(bidirectional):
    """GRU(reset_after=False): rnncore's own parameters, the notes' GRU, rnncore's gradients."""
    m = rt.GRU(D, H, num_layers=2, bidirectional=bidirectional, reset_after=False, dtype=torch.float64)
    core = rnncore.GRU(D, H, num_layers=2, bidirectional=bidirectional, reset_after=False, dtype=np.float64, seed=3)
    assert set(m.state_dict()) == set(core.parameters())
    m.load_state_dict({k: torch.from_numpy(v) for k, v in core.state_dict().items()})
    assert "reset_after=False" in repr(m)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, N, D))
    h0 = rng.standard_normal((2 * (2 if bidirectional else 1), N, H))
    y, h_n, tape = core.forward(x, h0, train=True)
    dy, dh = rng.standard_normal(y.shape), rng.standard_normal(h_n.shape)
    grads = core.backward(tape, dy, dh)
    xt, ht = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(h0).requires_grad_(True)
    yt, hnt = m(xt, ht)
    ((yt * torch.from_numpy(dy)).sum() + (hnt * torch.from_numpy(dh)).sum()).backward()
    _close(yt, torch.from_numpy(y), "y")
    _close(hnt, torch.from_numpy(h_n), "h_n")
    _close(xt.grad, torch.from_numpy(grads["x"]), "dx")
    _close(ht.grad, torch.from_numpy(grads["h0"]), "dh0")
    for n, p in m.named_parameters():
        _close(p.grad, torch.from_numpy(grads[n]), n)
    with pytest.raises(ValueError, match="reset_after=False"):
        rt.revert(m)
    with pytest.raises(TypeError, match="reset_after"):
        rt.GRU(D, H, reset_after="no")


def test_gru_reset_before_without_bias():
    m = rt.GRU(D, H, bias=False, reset_after=False, dtype=torch.float64)
    assert sorted(n for n, _ in m.named_parameters()) == ["W_hh_l0", "W_ih_l0"]
    core = rnncore.GRU(D, H, reset_after=False, dtype=np.float64)
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    sd["b_l0"] = np.zeros(3 * H)
    core.load_state_dict(sd)
    x = torch.randn(T, N, D, dtype=torch.float64)
    with torch.no_grad():
        _close(m(x)[0], torch.from_numpy(core(x.numpy())[0]), "y")


def test_double_backward_is_refused():
    a, _ = _pair("lstm")
    x = torch.randn(T, N, D, dtype=torch.float64, requires_grad=True)
    y, _ = a(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()
    y, _ = a(x)                               # a first-order backward with create_graph still gives gradients
    (g1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(a(x)[0].sum(), x)
    assert torch.equal(g1.detach(), g2)


def test_parameter_changed_in_place_before_backward_is_refused():
    a, _ = _pair("lstm")
    y, _ = a(torch.randn(T, N, D, dtype=torch.float64))
    with torch.no_grad():
        a.weight_hh_l0.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_bad_input_is_refused_clearly():
    a, _ = _pair("lstm")
    x = torch.randn(T, N, D, dtype=torch.float64)
    with pytest.raises(TypeError, match="input: expected dtype float64"):
        a(x.float())
    with pytest.raises(TypeError, match="input: expected dtype float64"):
        a(x.to(torch.int64))
    with pytest.raises(ValueError, match="CPU only"):
        a(x.to("meta"))
    with pytest.raises(ValueError, match="input_size=5"):
        a(torch.randn(T, N, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="3 dimensions"):
        a(torch.randn(T, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"hx: expected a tuple \(h_0, c_0\)"):
        a(x, torch.zeros(1, N, H, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"hx\[1\]: expected shape \(1, 4, 7\)"):
        a(x, (torch.zeros(1, N, H, dtype=torch.float64), torch.zeros(1, N + 1, H, dtype=torch.float64)))
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        a(x.numpy())
    g, _ = _pair("gru")
    with pytest.raises(TypeError, match="hx: expected a tensor h_0"):
        g(x, (x, x))
    half = copy.deepcopy(a).half()
    with pytest.raises(TypeError, match="float32 or float64"):
        half(x.half())
    meta = copy.deepcopy(a).to("meta")
    with pytest.raises(ValueError, match="CPU only"):
        meta(x.to("meta"))
    with torch.no_grad():                    # nothing was harmed: the module still computes
        assert torch.isfinite(a(x)[0]).all()


def test_dropout_follows_train_and_eval_and_torch_seed():
    torch.manual_seed(0)
    a = rt.LSTM(D, H, num_layers=3, dropout=0.5, dtype=torch.float64)
    x = torch.randn(T, N, D, dtype=torch.float64)
    a.eval()
    y_eval = a(x)[0]
    clean = copy.deepcopy(a)
    clean.dropout = 0.0
    assert torch.equal(y_eval, clean(x)[0])
    a.train()
    torch.manual_seed(11)
    y1 = a(x)[0]
    torch.manual_seed(11)
    y2 = a(x)[0]
    y3 = a(x)[0]
    assert torch.equal(y1, y2)
    assert not torch.allclose(y1, y3)
    assert not torch.allclose(y1, y_eval)
    # the documented seeding: one integer from torch's default generator seeds the NumPy masks
    torch.manual_seed(11)
    seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())
    core = rnncore.from_torch(a)
    core._dropout_rng = np.random.default_rng(seed)
    y_core, _, _ = core.forward(x.numpy(), train=True)
    _close(y1, torch.from_numpy(y_core), "y with dropout")


def test_compile_falls_back_for_these_modules():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = torch.nn.Linear(3, D, dtype=torch.float64)
            self.rnn = rt.GRU(D, H, batch_first=True, dtype=torch.float64)
            self.head = torch.nn.Linear(H, 1, dtype=torch.float64)

        def forward(self, x):
            return self.head(self.rnn(torch.tanh(self.inp(x)))[0]).sum()
    torch.manual_seed(0)
    m = Model()
    x = torch.randn(2, T, 3, dtype=torch.float64)
    want = m(x)
    want.backward()
    want_grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    got = torch.compile(m, backend="aot_eager")(x)
    got.backward()
    _close(got, want, "compiled output")
    for p, g in zip(m.parameters(), want_grads):
        _close(p.grad, g, "compiled gradient")


def _nested(cls_lstm=torch.nn.LSTM, cls_gru=torch.nn.GRU):
    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = cls_gru(2 * H, H, num_layers=2, dtype=torch.float64)
            self.rnn = torch.nn.RNN(H, H, nonlinearity="relu", dtype=torch.float64)

        def forward(self, x):
            return self.rnn(self.gru(x)[0])[0]

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(torch.nn.Linear(D, D, dtype=torch.float64))
            self.lstm = cls_lstm(D, H, bidirectional=True, dtype=torch.float64)
            self.inner = Inner()
            self.head = torch.nn.Linear(H, 1, dtype=torch.float64)

        def forward(self, x):
            return self.head(self.inner(self.lstm(self.blocks(x))[0])).square().mean()
    torch.manual_seed(0)
    return Outer()


def test_convert_and_revert_nested_model():
    model = _nested()
    twin = copy.deepcopy(model)
    x = torch.randn(T, N, D, dtype=torch.float64)
    params_before = list(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1)
    lstm = model.lstm
    assert rt.convert(model) is model
    assert type(model.lstm) is rt.LSTM and model.lstm is lstm
    assert type(model.inner.gru) is rt.GRU and type(model.inner.rnn) is rt.RNN
    assert type(model.head) is torch.nn.Linear
    assert all(p is q for p, q in zip(model.parameters(), params_before))
    loss, loss_twin = model(x), twin(x)
    _close(loss, loss_twin, "loss after convert")
    loss.backward()
    loss_twin.backward()
    opt.step()
    opt_twin.step()
    for (n, p), q, q0 in zip(model.named_parameters(), twin.parameters(), params_before):
        assert p is q0, n
        _close(p, q, f"{n} after a step")
    assert not torch.equal(model.lstm.weight_ih_l0, _nested().lstm.weight_ih_l0)   # the step changed it
    assert rt.revert(model) is model
    assert type(model.lstm) is torch.nn.LSTM and type(model.inner.gru) is torch.nn.GRU
    assert "_rnncore_cache" not in model.lstm.__dict__
    _close(model(x), twin(x), "loss after revert")
    single = rt.convert(torch.nn.LSTM(D, H))
    assert type(single) is rt.LSTM


def test_convert_checks_everything_before_changing_anything():
    model = _nested()
    model.inner.gru.half()
    with pytest.raises(TypeError, match="'inner.gru'.*float32 or float64"):
        rt.convert(model)
    assert type(model.lstm) is torch.nn.LSTM
    with pytest.raises(TypeError, match="torch.nn.Module"):
        rt.convert("model")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layout", ["tm", "bf", "packed", "unbatched"])
def test_matches_torch_proj_size(bidirectional, layout):
    dirs, P = 2 if bidirectional else 1, 3
    a, b = _pair("lstm", num_layers=2, bidirectional=bidirectional, proj_size=P, batch_first=layout == "bf")
    g = torch.Generator().manual_seed(1)
    base = torch.randn(T, N, D, generator=g, dtype=torch.float64)
    if layout == "bf":
        base = base.transpose(0, 1).contiguous()
    if layout == "unbatched":
        base = base[:, 0]

    def make():
        leaf = base.clone().requires_grad_(True)
        if layout == "packed":
            return pack_padded_sequence(leaf, torch.tensor(LENGTHS), enforce_sorted=False), leaf
        return leaf, leaf
    lead = (2 * dirs,) if layout == "unbatched" else (2 * dirs, N)
    for hx in (None, (torch.randn(lead + (P,), generator=g, dtype=torch.float64),
                      torch.randn(lead + (H,), generator=g, dtype=torch.float64))):
        with torch.no_grad():
            shapes = [o.shape for o in _flat(b(make()[0], hx))]
        assert shapes[0][-1] == dirs * P and shapes[1][-1] == P and shapes[2][-1] == H
        weights = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        outs_a, grads_a = _run(a, make, hx, weights)
        outs_b, grads_b = _run(b, make, hx, weights)
        for i, (oa, ob) in enumerate(zip(outs_a, outs_b)):
            _close(oa, ob, f"output {i}")
        assert set(grads_a) == set(grads_b) and "weight_hr_l1" in grads_a
        for name in grads_b:
            _close(grads_a[name], grads_b[name], f"gradient of {name}")
    model = torch.nn.Sequential(torch.nn.LSTM(D, H, proj_size=P, dtype=torch.float64))
    assert type(rt.convert(model)[0]) is rt.LSTM
    with pytest.raises(ValueError, match=r"hx\[0\]: expected shape \(1, 4, 3\)"):
        model[0](torch.randn(T, N, D, dtype=torch.float64),
                 (torch.zeros(1, N, H, dtype=torch.float64), torch.zeros(1, N, H, dtype=torch.float64)))


def test_adam_training_follows_torch_lstm():
    """50 Adam steps in float64: the loss trajectory equals torch.nn.LSTM's step by step."""
    def build(cls):
        torch.manual_seed(0)
        return torch.nn.ModuleDict({"rnn": cls(3, 16, num_layers=2, batch_first=True, dtype=torch.float64),
                                    "head": torch.nn.Linear(16, 1, dtype=torch.float64)})
    g = torch.Generator().manual_seed(7)
    t = torch.linspace(0, 6, 21, dtype=torch.float64)
    phase = torch.rand(8, 1, generator=g, dtype=torch.float64) * 6
    series = torch.sin(t[None, :] + phase)
    x, target = torch.stack([series[:, :-1], series[:, :-1] ** 2, torch.cos(t[None, :-1] + phase)], -1), series[:, 1:]
    traj = []
    for cls in (rt.LSTM, torch.nn.LSTM):
        model = build(cls)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        losses = []
        for _ in range(50):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model["head"](model["rnn"](x)[0]).squeeze(-1), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        traj.append(np.array(losses))
    assert traj[0][-1] < 0.5 * traj[0][0]                    # it trained
    np.testing.assert_allclose(traj[0], traj[1], rtol=1e-9, atol=0)


def test_module_saves_and_copies_after_a_call(tmp_path):
    for kind in ("lstm", "gru"):
        a, _ = _pair(kind, num_layers=2)
        x = torch.randn(T, N, D, dtype=torch.float64)
        with torch.no_grad():
            want = a(x)[0]
        assert "_rnncore_cache" in a.__dict__
        torch.save(a, tmp_path / "m.pt")
        b = torch.load(tmp_path / "m.pt", weights_only=False)
        assert type(b) is type(a) and "_rnncore_cache" not in b.__dict__
        c = copy.deepcopy(a)
        with torch.no_grad():
            assert torch.equal(b(x)[0], want) and torch.equal(c(x)[0], want)
    g = rt.GRU(D, H, reset_after=False, dtype=torch.float64)
    g(torch.randn(T, N, D, dtype=torch.float64))
    torch.save(g, tmp_path / "g.pt")
    g2 = torch.load(tmp_path / "g.pt", weights_only=False)
    assert not g2.reset_after and sorted(g2.state_dict()) == sorted(g.state_dict())


@pytest.mark.parametrize("kind", sorted(KINDS) + ["gru_before"])
def test_gradients_pass_gradcheck(kind):
    """Finite differences of the module (input and initial states), and a retained graph gives the same twice."""
    torch.manual_seed(0)
    if kind == "gru_before":
        m, has_c = rt.GRU(2, 3, num_layers=2, bidirectional=True, reset_after=False, dtype=torch.float64), False
    else:
        ours, _, extra = KINDS[kind]
        m, has_c = ours(2, 3, num_layers=2, bidirectional=True, dtype=torch.float64, **extra), kind == "lstm"
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, h0, c0):
        y, hidden = m(x, (h0, c0) if has_c else h0)
        return (y,) + (hidden if has_c else (hidden,))
    assert torch.autograd.gradcheck(f, (x, h0, c0))
    y, _ = m(x)
    loss = y.square().sum()
    g1 = torch.autograd.grad(loss, [x] + list(m.parameters()), retain_graph=True)
    g2 = torch.autograd.grad(loss, [x] + list(m.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_import_rnncore_does_not_import_torch():
    import subprocess
    import sys
    code = ("import sys, rnncore; assert 'torch' not in sys.modules; "
            "m = rnncore.torch; assert 'torch' in sys.modules and m.LSTM.__module__ == 'rnncore.torch'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_input_without_requires_grad_skips_its_gradient(kind, monkeypatch):
    """Data that needs no gradient (the usual training input): rnncore's backward is asked for no
    dx, and every parameter's and state's gradient still equals torch.nn's."""
    asked = []
    real = models._Recurrent._run_backward

    def spy(self, tape, dy, dh_n, dc_n, input_grad):
        asked.append(input_grad)
        return real(self, tape, dy, dh_n, dc_n, input_grad)
    monkeypatch.setattr(models._Recurrent, "_run_backward", spy)
    a, b = _pair(kind, num_layers=2, bidirectional=True)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(T, N, D, generator=g, dtype=torch.float64)
    h0 = torch.randn(4, N, H, generator=g, dtype=torch.float64)
    hx = (h0, torch.randn(4, N, H, generator=g, dtype=torch.float64)) if kind == "lstm" else h0
    grads = []
    for m in (a, b):
        m.zero_grad()
        hxm = tuple(h.clone().requires_grad_(True) for h in hx) if kind == "lstm" else hx.clone().requires_grad_(True)
        y, _ = m(x, hxm)
        (y * y).sum().backward()
        states = hxm if kind == "lstm" else (hxm,)
        grads.append([h.grad for h in states] + [p.grad for p in m.parameters()])
    assert asked == [False]
    for i, (ga, gb) in enumerate(zip(*grads)):
        _close(ga, gb, f"gradient {i}")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_parameters_changed_between_calls_are_seen(kind):
    """The module reads its parameters through NumPy views it keeps between calls: each way of
    changing a parameter is seen by the next call, as torch.nn sees it: in place (an optimiser),
    new memory (p.data = ...), memory that is not C-contiguous, and another dtype (module.float())."""
    a, b = _pair(kind, num_layers=2)
    x = torch.randn(T, N, D, dtype=torch.float64)

    def same(what, dtype=torch.float64, rtol=RTOL):
        with torch.no_grad():
            for u, v in zip(_flat(a(x.to(dtype))), _flat(b(x.to(dtype)))):
                _close(u, v, what, rtol)
    same("first call")
    with torch.no_grad():
        for m in (a, b):
            m.weight_hh_l0.mul_(0.5)                            # in place
    same("after an in-place change")
    new = torch.randn_like(a.weight_ih_l1)
    a.weight_ih_l1.data = new.clone()
    b.weight_ih_l1.data = new.clone()
    same("after p.data = new memory")
    wt = torch.randn(a.weight_hh_l1.shape[1], a.weight_hh_l1.shape[0], dtype=torch.float64)
    a.weight_hh_l1.data = wt.t()                                 # a transposed view: not C-contiguous
    b.weight_hh_l1.data = wt.t().contiguous()
    same("after a non-contiguous parameter")
    with torch.no_grad():
        wt.mul_(2.0)                                             # seen through the view on the next call
        b.weight_hh_l1.mul_(2.0)
    same("after changing the non-contiguous parameter's memory")
    a.float()
    b.float()
    same("after module.float()", torch.float32, 1e-5)


def test_summed_biases_get_gradients_of_their_own():
    """bias_ih and bias_hh receive the same values as gradients, in separate memory: scaling one
    in place (as gradient clipping does) leaves the other."""
    a, _ = _pair("lstm")
    a(torch.randn(T, N, D, dtype=torch.float64))[0].sum().backward()
    gi, gh = a.bias_ih_l0.grad, a.bias_hh_l0.grad
    assert torch.equal(gi, gh) and gi.data_ptr() != gh.data_ptr()
    before = gh.clone()
    gi.mul_(0.5)
    assert torch.equal(gh, before)


def test_converting_the_module_lets_its_old_parameters_go():
    """The NumPy views the module keeps of its parameters do not keep the old tensors' memory
    alive after module.float() / .double() / .to()."""
    import gc
    import weakref
    a, _ = _pair("lstm")
    a(torch.randn(T, N, D, dtype=torch.float64))
    old = weakref.ref(a.weight_hh_l0.data.untyped_storage())
    a.float()
    gc.collect()
    assert old() is None
    y, _ = a(torch.randn(T, N, D))
    assert y.dtype == torch.float32
