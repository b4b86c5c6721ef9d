"""model.to_onnx(path, x_only=..., shapes=...): the graph users of ONNX Runtime get, and what
rnncore reads back; the final state of a zero-length row (README.md, "ONNX")."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import rnncore  # noqa: E402
import rnncore.onnx as rox  # noqa: E402

T, N, D, H = 6, 3, 4, 5
TOL = dict(rtol=1e-5, atol=1e-6)
VARIANTS = ("rnn_relu", "lstm", "gru", "gru_after")


def make(variant, L, bi, bf):
    kw = dict(num_layers=L, bidirectional=bi, batch_first=bf, seed=0)
    if variant.startswith("rnn"):
        return rnncore.RNN(D, H, nonlinearity=variant[4:], **kw)
    if variant == "lstm":
        return rnncore.LSTM(D, H, **kw)
    return rnncore.GRU(D, H, reset_after=variant == "gru_after", **kw)


def session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


CONFIGS = [(v, L, bi, bf) for v in VARIANTS for L, bi, bf in ((1, False, False), (2, True, True))]
IDS = [f"{v}-L{L}-{'bi' if bi else 'uni'}-{'bf' if bf else 'tm'}" for v, L, bi, bf in CONFIGS]


@pytest.mark.parametrize("variant,L,bi,bf", CONFIGS, ids=IDS)
@pytest.mark.parametrize("shapes", ["rnncore", "onnx"])
def test_x_only_and_output_shapes(variant, L, bi, bf, shapes, tmp_path):
    m = make(variant, L, bi, bf)
    path = str(tmp_path / "m.onnx")
    m.to_onnx(path, x_only=True, shapes=shapes)
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["x"]
    x = np.random.default_rng(1).standard_normal((N, T, D) if bf else (T, N, D)).astype(np.float32)
    got = sess.run(None, {"x": x})
    y, st = m(x)
    states = list(st) if variant == "lstm" else [st]
    dirs = m.dirs
    if shapes == "rnncore":
        want = [y] + states
    else:                         # ONNX's own shapes: the direction axis kept
        ytm = y.transpose(1, 0, 2) if bf else y
        y4 = ytm.reshape(T, N, dirs, H)
        want = [y4.transpose(1, 0, 2, 3) if bf else y4.transpose(0, 2, 1, 3)]
        want += [s.transpose(1, 0, 2) if bf else s for s in states]
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **TOL)
    back = rnncore.from_onnx(path)
    assert repr(back) == repr(m)
    for k, v in m.parameters().items():
        np.testing.assert_array_equal(back.parameters()[k], v)
    for g, w in zip(rox.import_graph(path).run(None, {"x": x}), got):
        np.testing.assert_allclose(g, w, **TOL)


def test_bad_options(tmp_path):
    m = make("gru", 1, False, False)
    with pytest.raises(ValueError, match="shapes: expected 'rnncore' or 'onnx', got 'torch'"):
        m.to_onnx(str(tmp_path / "m.onnx"), shapes="torch")
    with pytest.raises(TypeError, match="x_only: expected a bool"):
        m.to_onnx(str(tmp_path / "m.onnx"), x_only="yes")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_length_row_final_state(variant, tmp_path):
    """The documented difference: rnncore passes h0 (and c0) through a row of length 0, ONNX Runtime
    gives zeros; everything else agrees, and import_graph reproduces ONNX Runtime's function."""
    m = make(variant, 2, True, False)
    path = str(tmp_path / "m.onnx")
    m.to_onnx(path)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    h0 = rng.standard_normal((4, N, H)).astype(np.float32)
    c0 = rng.standard_normal((4, N, H)).astype(np.float32)
    lengths = np.array([T, 0, 2])
    feeds = {"x": x, "h0": h0, "lengths": lengths}
    if variant == "lstm":
        feeds["c0"] = c0
    got = session(path).run(None, feeds)
    y, st = m(x, (h0, c0) if variant == "lstm" else h0, lengths)
    states = list(st) if variant == "lstm" else [st]
    np.testing.assert_allclose(got[0], y, **TOL)
    for g, s, s0 in zip(got[1:], states, (h0, c0)):
        np.testing.assert_array_equal(s[:, 1], s0[:, 1])           # rnncore: the initial state
        assert not g[:, 1].any()                                   # ONNX Runtime: zeros
        keep = [0, 2]
        np.testing.assert_allclose(g[:, keep], s[:, keep], **TOL)
    for g, w in zip(rox.import_graph(path).run(None, feeds), got):
        np.testing.assert_allclose(g, w, **TOL)


@pytest.mark.parametrize("L,bi,bf", [(1, False, False), (2, True, True)])
def test_peephole_lstm_exported_with_onnx_p(L, bi, bf, tmp_path):
    m = rnncore.LSTM(D, H, num_layers=L, bidirectional=bi, batch_first=bf, peephole=True, seed=0)
    for k, v in m.parameters().items():
        if k.startswith("P_"):
            v[...] = np.random.default_rng(len(k)).uniform(-1, 1, v.shape)
    path = str(tmp_path / "p.onnx")
    m.to_onnx(path)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, T, D) if bf else (T, N, D)).astype(np.float32)
    h0, c0 = (rng.standard_normal((L * m.dirs, N, H)).astype(np.float32) for _ in range(2))
    lengths = np.array([T, 2, 1])
    got = session(path).run(None, {"x": x, "h0": h0, "c0": c0, "lengths": lengths})
    y, (h_n, c_n) = m(x, (h0, c0), lengths)
    for g, w in zip(got, (y, h_n, c_n)):
        np.testing.assert_allclose(g, w, **TOL)
    back = rnncore.from_onnx(path)
    assert repr(back) == repr(m)
    for k, v in m.parameters().items():
        np.testing.assert_array_equal(back.parameters()[k], v)


@pytest.mark.parametrize("kw", [dict(proj_size=2), dict(layer_norm=True)])
def test_lstm_variants_without_onnx_or_keras_equivalent_refused(kw, tmp_path):
    m = rnncore.LSTM(D, H, seed=0, **kw)
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"to_onnx: LSTM\\({name}=.*no ONNX equivalent"):
        m.to_onnx(str(tmp_path / "m.onnx"))
    assert not list(tmp_path.iterdir())
    for variant in (m, rnncore.LSTM(D, H, peephole=True)):
        with pytest.raises(ValueError, match="to_keras: LSTM\\(.*no Keras equivalent"):
            variant.to_keras()
