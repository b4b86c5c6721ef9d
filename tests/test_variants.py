"""The LSTM variants: projection (proj_size, LSTMP), peephole and LayerNorm LSTM, and their
combinations. The NumPy reference against central finite differences; the core against the
reference (float64 tight, float32 loose), bit for bit across thread counts; the one-step cells,
streaming, dropout, save/load and state_dict; PyTorch's proj_size LSTM; argument errors."""

import io

import numpy as np
import pytest

import rnncore
from rnncore import _core, reference

VARIANTS = {
    "proj": dict(proj_size=3),
    "peephole": dict(peephole=True),
    "layer_norm": dict(layer_norm=True),
    "proj+peephole": dict(proj_size=3, peephole=True),
    "proj+layer_norm": dict(proj_size=3, layer_norm=True),
}


def perturbed(model, seed=4):
    """The model with its LayerNorm gains and shifts moved off 1 and 0, so that their gradients and
    the normalisations' are exercised with general values."""
    rng = np.random.default_rng(seed)
    sd = model.state_dict()
    for k, v in sd.items():
        if k.startswith("ln_"):
            sd[k] = (v + rng.uniform(-0.5, 0.5, v.shape)).astype(v.dtype)
    model.load_state_dict(sd)
    return model


def pair(kw, D, H, dtype, **more):
    m = perturbed(rnncore.LSTM(D, H, dtype=dtype, seed=1, **kw, **more))
    r = reference.LSTM(D, H, dtype=dtype, seed=1, **kw, **more)
    r.load_state_dict(m.state_dict())
    return m, r


# ---- what a cell is: one description --------------------------------------------------------

def test_cell_info_describes_every_cell_and_the_models_follow_it():
    info = _core.cell_info()
    assert set(info) >= {"rnn_tanh", "rnn_relu", "lstm", "gru", "gru_after", "lstm_peephole", "lstm_ln"}
    assert sorted(i["code"] for i in info.values()) == list(range(len(info)))
    assert set(info) == set(reference.STEPS), "every core cell has a reference step and no other"
    for name, i in info.items():
        assert [p["name"] for p in i["params"][:3]] == ["W_ih", "W_hh", "b"], name
    m = rnncore.LSTM(4, 6, num_layers=2, bidirectional=True, layer_norm=True, proj_size=2)
    names = [n for n, _ in m._param_shapes()]
    per = [p["name"] for p in info["lstm_ln"]["params"]] + ["W_hr"]
    assert names[:len(per)] == [n + "_l0" for n in per]
    assert names[len(per):2 * len(per)] == [n + "_l0_reverse" for n in per]
    assert len(names) == 4 * len(per)


def test_parameters_shapes_and_initial_values():
    H, P, D = 6, 2, 4
    m = rnncore.LSTM(D, H, num_layers=2, proj_size=P, seed=0)
    sd = m.state_dict()
    assert sd["W_ih_l0"].shape == (4 * H, D) and sd["W_hh_l0"].shape == (4 * H, P)
    assert sd["W_hr_l0"].shape == (P, H) and sd["W_ih_l1"].shape == (4 * H, P)
    p = rnncore.LSTM(D, H, peephole=True, seed=0).state_dict()
    assert p["P_l0"].shape == (3, H) and np.abs(p["P_l0"]).max() <= 1 / np.sqrt(H)
    ln = rnncore.LSTM(D, H, layer_norm=True, seed=0).state_dict()
    for k in ("x", "h"):
        assert np.array_equal(ln[f"ln_{k}_gamma_l0"], np.ones(4 * H, np.float32))
        assert np.array_equal(ln[f"ln_{k}_beta_l0"], np.zeros(4 * H, np.float32))
    assert np.array_equal(ln["ln_c_gamma_l0"], np.ones(H, np.float32))
    assert np.array_equal(ln["ln_c_beta_l0"], np.zeros(H, np.float32))
    # the plain LSTM's parameters draw the same values whatever variant adds to them
    plain = rnncore.LSTM(D, H, seed=0).state_dict()
    for k in plain:
        assert np.array_equal(plain[k], p[k]) and np.array_equal(plain[k], ln[k])


# ---- the reference against finite differences ----------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reference_gradients_match_central_differences(variant):
    kw = VARIANTS[variant]
    T, N, D, H = 4, 3, 3, 5
    r = perturbed(reference.LSTM(D, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=2, **kw))
    R = kw.get("proj_size") or H
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, D))
    h0 = rng.standard_normal((4, N, R))
    c0 = rng.standard_normal((4, N, H))
    lengths = np.array([4, 2, 3])
    dy, dh, dc = rng.standard_normal((T, N, 2 * R)), rng.standard_normal((4, N, R)), rng.standard_normal((4, N, H))

    def loss():
        y, (h, c) = r(x, (h0, c0), lengths=lengths)
        return (y * dy).sum() + (h * dh).sum() + (c * dc).sum()

    _, _, tape = r.forward(x, (h0, c0), lengths=lengths, train=True)
    g = r.backward(tape, dy, dh, dc)
    arrays = {"x": x, "h0": h0, "c0": c0, **r.parameters()}
    eps = 1e-6
    pick = np.random.default_rng(7)
    for name, a in arrays.items():  # every array, at 6 entries drawn at random (all of a small one)
        flat = list(np.ndindex(a.shape))
        for k in (pick.choice(len(flat), 6, replace=False) if len(flat) > 6 else range(len(flat))):
            idx = flat[k]
            old = a[idx]
            a[idx] = old + eps
            up = loss()
            a[idx] = old - eps
            down = loss()
            a[idx] = old
            assert abs(g[name][idx] - (up - down) / (2 * eps)) <= 1e-8 + 1e-6 * abs(g[name][idx]), (variant, name, idx)


# ---- the core against the reference ---------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T,N,H,layers,bidir,varlen,dropout", [
    (5, 1, 40, 1, False, False, 0.0),
    (6, 20, 64, 2, True, True, 0.3),
    (1, 3, 8, 2, False, False, 0.0),
    (7, 17, 96, 2, False, True, 0.0),
    (12, 19, 24, 1, True, True, 0.0),   # rows in 4 groups of 64, the last partial (step.h, kPartialRows)
])
def test_core_matches_the_reference(variant, dtype, T, N, H, layers, bidir, varlen, dropout):
    kw = dict(VARIANTS[variant])
    if kw.get("proj_size"):
        kw["proj_size"] = max(1, H // 3)
    D = 5
    m, r = pair(kw, D, H, dtype, num_layers=layers, bidirectional=bidir, dropout=dropout)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, D)).astype(dtype)
    lengths = rng.integers(0, T + 1, N) if varlen else None
    y, st, tape = m.forward(x, lengths=lengths, train=True)
    yr, str_, taper = r.forward(x, lengths=lengths, train=True)
    yi, sti = m(x, lengths=lengths)
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (2e-4, 2e-5)
    np.testing.assert_allclose(y, yr, rtol=rtol, atol=atol)
    for a, b in zip(st, str_):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    if dropout == 0:
        np.testing.assert_allclose(yi, yr, rtol=rtol, atol=atol)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh = rng.standard_normal(st[0].shape).astype(dtype)
    dc = rng.standard_normal(st[1].shape).astype(dtype)
    g, gr = m.backward(tape, dy, dh, dc), r.backward(taper, dy, dh, dc)
    assert set(g) == set(gr)
    for k in gr:
        scale = max(1.0, np.abs(gr[k]).max())
        np.testing.assert_allclose(g[k], gr[k], rtol=rtol, atol=atol * 50 * scale, err_msg=k)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_thread_count_gives_the_same_bits(variant, dtype):
    before = rnncore.get_num_threads()
    try:
        kw = dict(VARIANTS[variant])
        H = 80
        if kw.get("proj_size"):
            kw["proj_size"] = 70
        m = perturbed(rnncore.LSTM(24, H, num_layers=2, bidirectional=True, dtype=dtype, seed=3, **kw))
        rng = np.random.default_rng(11)
        for T, N in ((5, 1), (5, 20), (9, 40)):   # the last: rows in 5 or 6 groups of 64 (step.h, kPartialRows)
            x = rng.standard_normal((T, N, 24)).astype(dtype)
            lengths = rng.integers(0, T + 1, N)
            results = {}
            for n in (1, 2, 3, 4):
                rnncore.set_num_threads(n)
                y, st, tape = m.forward(x, lengths=lengths, train=True)
                g = m.backward(tape, np.ones_like(y))
                yi, _ = m(x, lengths=lengths)
                results[n] = [y, yi, *st] + [g[k] for k in sorted(g)]
            for n in (2, 3, 4):
                for a, b in zip(results[1], results[n]):
                    assert a.tobytes() == b.tobytes(), f"N={N}: {n} threads differ from 1"
    finally:
        rnncore.set_num_threads(before)


# ---- one step, streaming, files ---------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cells_and_streaming_agree_with_the_whole_sequence(variant):
    kw = VARIANTS[variant]
    D, H = 4, 9
    m = perturbed(rnncore.LSTM(D, H, dtype=np.float64, seed=5, **kw))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 2, D))
    y, (h, c) = m(x)
    cell = rnncore.LSTMCell.from_model(m)
    assert set(cell.parameters()) == {e["name"] for e in m._param_list()}
    s = None
    for t in range(6):
        s = cell(x[t], s)
        np.testing.assert_allclose(s[0], y[t], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(s[1], c[0], rtol=1e-12, atol=1e-13)
    stream = m.stream()
    parts = [stream(x[:2]), stream(x[2:3]), stream(x[3:])]
    np.testing.assert_allclose(np.concatenate(parts), y, rtol=1e-12, atol=1e-13)
    # a training step of the cell: gradients of every parameter, against the model's
    _, tape = cell.forward(x[0], train=True)
    dh = rng.standard_normal((2, kw.get("proj_size") or H))
    gc = cell.backward(tape, dh)
    _, _, mt = m.forward(x[:1], train=True)
    gm = m.backward(mt, dh[None])
    for k in cell.parameters():
        np.testing.assert_allclose(gc[k], gm[k + "_l0"], rtol=1e-12, atol=1e-13, err_msg=k)
    fresh = rnncore.LSTMCell(D, H, seed=1, **kw)
    assert set(fresh.parameters()) == set(cell.parameters())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_save_load_and_state_dict_round_trip(variant, tmp_path):
    kw = VARIANTS[variant]
    m = perturbed(rnncore.LSTM(4, 7, num_layers=2, bidirectional=True, seed=6, **kw))
    x = np.random.default_rng(2).standard_normal((3, 2, 4)).astype(np.float32)
    path = tmp_path / "m.npz"
    m.save(path)
    back = rnncore.load(path)
    assert repr(back) == repr(m)
    assert all(getattr(back, k) == v for k, v in kw.items())
    y, _ = m(x)
    np.testing.assert_array_equal(back(x)[0], y)
    other = rnncore.LSTM(4, 7, num_layers=2, bidirectional=True, seed=9, **kw)
    other.load(path)
    np.testing.assert_array_equal(other(x)[0], y)
    other.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(other(x)[0], y)
    plain = rnncore.LSTM(4, 7, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match="differ"):
        plain.load(path)
    buf = io.BytesIO()
    rnncore.LSTM(4, 7).save(buf)
    assert b"proj_size" not in buf.getvalue() and b"peephole" not in buf.getvalue()  # a plain LSTM's file as before


# ---- PyTorch's proj_size LSTM -----------------------------------------------------------------

@pytest.mark.parametrize("bidir,layers,batch_first", [(False, 1, False), (True, 2, True), (False, 3, False)])
def test_torch_proj_size_lstm_is_carried_exactly(bidir, layers, batch_first):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    t = torch.nn.LSTM(5, 12, num_layers=layers, bidirectional=bidir, proj_size=4, batch_first=batch_first).double()
    m = rnncore.LSTM.from_torch(t)
    assert m.proj_size == 4
    dirs = 2 if bidir else 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 5) if batch_first else (7, 3, 5))
    h0, c0 = rng.standard_normal((layers * dirs, 3, 4)), rng.standard_normal((layers * dirs, 3, 12))
    y, (h, c), tape = m.forward(x, (h0, c0), train=True)
    xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    yt, (ht, ct) = t(xt, (h0t, c0t))
    for a, b in ((y, yt), (h, ht), (c, ct)):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy, dh, dc = rng.standard_normal(y.shape), rng.standard_normal(h.shape), rng.standard_normal(c.shape)
    ((yt * torch.tensor(dy)).sum() + (ht * torch.tensor(dh)).sum() + (ct * torch.tensor(dc)).sum()).backward()
    g = m.backward(tape, dy, dh, dc)
    for name, tg in (("x", xt), ("h0", h0t), ("c0", c0t)):
        np.testing.assert_allclose(g[name], tg.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    tgrads = {k: v.grad.numpy() for k, v in t.named_parameters()}
    for sfx in {k[len("weight_ih"):] for k in tgrads if k.startswith("weight_ih")}:
        np.testing.assert_allclose(g["W_ih" + sfx], tgrads["weight_ih" + sfx], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g["W_hh" + sfx], tgrads["weight_hh" + sfx], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g["W_hr" + sfx], tgrads["weight_hr" + sfx], rtol=1e-10, atol=1e-12)
        for b in ("bias_ih", "bias_hh"):  # rnncore's one bias is their sum: its gradient is each one's
            np.testing.assert_allclose(g["b" + sfx], tgrads[b + sfx], rtol=1e-10, atol=1e-12)
    back = m.to_torch()
    assert back.proj_size == 4
    for k, v in t.state_dict().items():
        if k.startswith("weight"):
            np.testing.assert_array_equal(back.state_dict()[k].numpy(), v.numpy())
    from_sd = rnncore.LSTM.from_torch_state_dict(t.state_dict(), batch_first=batch_first)
    assert from_sd.proj_size == 4 and from_sd.hidden_size == 12
    np.testing.assert_allclose(from_sd(x, (h0, c0))[0], y, rtol=1e-12, atol=1e-13)


def test_variants_without_a_torch_counterpart_are_refused_by_to_torch():
    pytest.importorskip("torch")
    for kw in (dict(peephole=True), dict(layer_norm=True)):
        with pytest.raises(ValueError, match="no PyTorch equivalent"):
            rnncore.LSTM(3, 4, **kw).to_torch()


# ---- errors -------------------------------------------------------------------------------------

def test_bad_variant_arguments_are_named():
    with pytest.raises(ValueError, match="proj_size.*hidden_size=4"):
        rnncore.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="proj_size"):
        rnncore.LSTM(3, 4, proj_size=-1)
    with pytest.raises(TypeError, match="proj_size"):
        rnncore.LSTM(3, 4, proj_size=2.0)
    with pytest.raises(TypeError, match="peephole"):
        rnncore.LSTM(3, 4, peephole="yes")
    with pytest.raises(TypeError, match="layer_norm"):
        rnncore.LSTM(3, 4, layer_norm=1)
    with pytest.raises(ValueError, match="not both"):
        rnncore.LSTM(3, 4, peephole=True, layer_norm=True)
    m = rnncore.LSTM(3, 6, proj_size=2)
    x = np.zeros((2, 1, 3), np.float32)
    with pytest.raises(ValueError, match=r"h0: expected shape \(1, 1, 2\).*proj_size"):
        m(x, (np.zeros((1, 1, 6), np.float32), np.zeros((1, 1, 6), np.float32)))
    with pytest.raises(ValueError, match=r"c0: expected shape \(1, 1, 6\).*hidden_size"):
        m(x, (np.zeros((1, 1, 2), np.float32), np.zeros((1, 1, 2), np.float32)))


# ---- the benchmark of the variants (rnncore-bench) -----------------------------------------------

def test_variants_benchmark_checks_its_peers_and_reports_ratios():
    from rnncore.bench import variants
    res = variants.run(threads=1, shapes=[(4, 3, 8, 8)], rounds=1, calls=1)
    assert [r["mode"] for r in res["rows"]] == ["inference", "training"]
    for r in res["rows"]:
        assert set(r["vs_plain"]) == {"proj", "peephole", "layer_norm"}
        assert all(v > 0 for v in r["vs_plain"].values())
        assert r["disagree"] == []  # every peer computed what rnncore computed, or it is not timed
        if res["peers"].startswith("PyTorch"):
            assert set(r["speedup"]) == {"proj vs torch proj", "layer_norm vs torch loop"}
    assert "layer_norm" in variants.to_markdown(res) and "LN" in variants.to_text(res)
    assert variants.shapes_of([(100, 1, 256, 256), (50, 128, 1024, 1024), (10, 2, 3, 4)]) == [(100, 1, 256, 256)]
    assert "no shape" in variants.to_text(variants.run(threads=1, shapes=[]))
