"""ONNX interop: model.to_onnx, rnncore.from_onnx, checked with ONNX Runtime.

ONNX Runtime's sequence_lens semantics are rnncore's: outputs at padding are zero, the reverse
direction starts from each row's own last valid step, the final state is the last valid step's.
ONNX Runtime (1.32) implements RNN/LSTM/GRU for float32 only; float64 graphs are run with the onnx
package's reference evaluator, which ignores sequence_lens (so: full lengths) and knows no Relu.
"""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import rnncore  # noqa: E402
from onnx import helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

T, N, D, H = 6, 4, 3, 5
LENGTHS = np.array([3, 6, 1, 5])
VARIANTS = ("rnn_tanh", "rnn_relu", "lstm", "gru", "gru_after")
OP = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU", "gru_after": "GRU"}
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
MAX_ERR = {np.float32: 0.0, np.float64: 0.0}
CONFIGS = [(L, bd) for L in (1, 2) for bd in (False, True)]
CONFIG_IDS = [f"L{L}-{'bi' if bd else 'uni'}" for L, bd in CONFIGS]


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\nmax |rnncore - ONNX|: f32 (onnxruntime) {MAX_ERR[np.float32]:.3g}, "
          f"f64 (onnx reference) {MAX_ERR[np.float64]:.3g}")


def close(actual, expected, dtype, what):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == np.dtype(dtype), what
    MAX_ERR[dtype] = max(MAX_ERR[dtype], float(np.abs(actual.astype(np.float64) - expected).max()))
    np.testing.assert_allclose(actual, expected, err_msg=what, **TOL[dtype])


def model(variant, num_layers, bidirectional, batch_first=False, dtype=np.float32, **kw):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, dtype=dtype, seed=0, **kw)
    if variant.startswith("rnn_"):
        return rnncore.RNN(D, H, nonlinearity=variant[4:], **kw)
    if variant == "lstm":
        return rnncore.LSTM(D, H, **kw)
    return rnncore.GRU(D, H, reset_after=variant == "gru_after", **kw)


def inputs(m, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, T, D) if m.batch_first else (T, N, D)).astype(m.dtype)
    h0 = rng.standard_normal((m.num_layers * m.dirs, N, H)).astype(m.dtype)
    c0 = rng.standard_normal(h0.shape).astype(m.dtype) if m.cell == "lstm" else None
    return x, h0, c0


def feeds(x, h0, c0, lengths):
    f = {"x": x, "h0": h0, "lengths": np.asarray(lengths, np.int64)}
    if c0 is not None:
        f["c0"] = c0
    return f


def expected(m, x, h0, c0, lengths):
    y, st = m(x, h0 if c0 is None else (h0, c0), lengths=lengths)
    return [y] + (list(st) if c0 is not None else [st])


def check_parameters_equal(a, b):
    assert repr(a) == repr(b)
    for k, v in a.parameters().items():
        assert b.parameters()[k].dtype == v.dtype, k
        np.testing.assert_array_equal(b.parameters()[k], v, err_msg=k)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("num_layers,bidirectional", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_onnxruntime_computes_what_rnncore_does(variant, num_layers, bidirectional, with_lengths, tmp_path):
    m = model(variant, num_layers, bidirectional, batch_first=with_lengths)
    path = tmp_path / "m.onnx"
    assert m.to_onnx(str(path)) == str(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ["x", "h0"] + (["c0"] if variant == "lstm" else []) + ["lengths"]
    assert [i.name for i in sess.get_inputs()] == names
    assert [o.name for o in sess.get_outputs()] == ["y", "h_n"] + (["c_n"] if variant == "lstm" else [])
    x, h0, c0 = inputs(m)
    lengths = LENGTHS if with_lengths else np.full(N, T)
    got = sess.run(None, feeds(x, h0, c0, lengths))
    want = expected(m, x, h0, c0, lengths if with_lengths else None)
    for g, w, what in zip(got, want, ("y", "h_n", "c_n")):
        close(g, w, np.float32, what)
    if with_lengths:
        pad = np.arange(T)[None, :] >= LENGTHS[:, None]
        assert pad.any() and not got[0][pad].any()          # padded outputs are zero in both

    back = rnncore.from_onnx(str(path))
    check_parameters_equal(m, back)


@pytest.mark.parametrize("num_layers,bidirectional", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_float64_graph_round_trip_and_reference_evaluator(variant, num_layers, bidirectional, tmp_path):
    m = model(variant, num_layers, bidirectional, batch_first=bidirectional, dtype=np.float64)
    path = str(tmp_path / "m.onnx")
    m.to_onnx(path)
    check_parameters_equal(m, rnncore.from_onnx(path))
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    if variant == "rnn_relu":
        return                     # the reference evaluator has no Relu activation
    x, h0, c0 = inputs(m, seed=2)
    got = ReferenceEvaluator(proto).run(None, feeds(x, h0, c0, np.full(N, T)))
    for g, w, what in zip(got, expected(m, x, h0, c0, None), ("y", "h_n", "c_n")):
        close(g, w, np.float64, what)


@pytest.mark.parametrize("variant", VARIANTS)
def test_graph_is_one_standard_operator_per_layer(variant, tmp_path):
    m = model(variant, 3, True, dropout=0.2)
    path = str(tmp_path / "m.onnx")
    m.to_onnx(path)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    rec = [n for n in proto.graph.node if n.op_type in ("RNN", "LSTM", "GRU")]
    assert [n.op_type for n in rec] == [OP[variant]] * 3
    for n in rec:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["direction"] == b"bidirectional" and attrs["hidden_size"] == H
        assert n.input[4] == "lengths_i32"
        if variant == "gru":
            assert attrs["linear_before_reset"] == 0
        if variant == "gru_after":
            assert attrs["linear_before_reset"] == 1
        if variant == "rnn_relu":
            assert attrs["activations"] == [b"Relu", b"Relu"]
        else:
            assert "activations" not in attrs
    assert {t.name for t in proto.graph.initializer} >= {"W_l0", "R_l2", "B_l1"}
    assert rnncore.from_onnx(proto).dropout == 0.2          # kept in the model's metadata


def test_onnx_layout_of_the_weights():
    """ONNX W/R/B rows: LSTM i, o, f, c; GRU z, r, h with z negated; B = [Wb, Rb]."""
    from rnncore import _onnx
    lstm = model("lstm", 1, False)
    W, R, B, _ = _onnx._layer_tensors(lstm, "LSTM", 0)
    p = lstm.parameters()
    i, f, g, o = np.split(p["W_ih_l0"], 4)
    np.testing.assert_array_equal(W[0], np.concatenate([i, o, f, g]))
    assert B.shape == (1, 8 * H) and not B[0, 4 * H:].any()
    gru = model("gru_after", 1, False)
    W, R, B, _ = _onnx._layer_tensors(gru, "GRU", 0)
    p = gru.parameters()
    r, z, n = np.split(p["W_hh_l0"], 3)
    np.testing.assert_array_equal(R[0], np.concatenate([-z, r, n]))
    np.testing.assert_array_equal(B[0, 5 * H:], p["b_hn_l0"])


def add_node(proto, node):
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    proto.graph.node.append(node)
    return proto


def recurrent_node(proto):
    return next(n for n in proto.graph.node if n.op_type in ("RNN", "LSTM", "GRU"))


def test_from_onnx_rejects_graphs_it_cannot_represent(tmp_path):
    from rnncore import _onnx
    base = _onnx.build_onnx(model("lstm", 2, True))

    extra = add_node(base, helper.make_node("Relu", ["y"], ["y_relu"]))
    with pytest.raises(ValueError, match="node .Relu#13. \\(Relu\\) computes at run time"):
        rnncore.from_onnx(extra)

    rev = onnx.ModelProto.FromString(base.SerializeToString())
    for a in recurrent_node(rev).attribute:
        if a.name == "direction":
            a.s = b"reverse"
    with pytest.raises(ValueError, match="LSTM_l0.*direction='reverse'"):
        rnncore.from_onnx(rev)

    clipped = onnx.ModelProto.FromString(base.SerializeToString())
    recurrent_node(clipped).attribute.append(helper.make_attribute("clip", 3.0))
    with pytest.raises(ValueError, match="clip"):
        rnncore.from_onnx(clipped)

    # layer 1 fed by something other than layer 0's output
    rewired = onnx.ModelProto.FromString(base.SerializeToString())
    [n for n in rewired.graph.node if n.op_type == "LSTM"][1].input[0] = "x"
    with pytest.raises(ValueError, match="2 recurrent nodes read a graph input"):
        rnncore.from_onnx(rewired)

    # ONNX's (T, dirs, N, H) reshaped without the transpose would interleave batch rows and directions
    interleaved = onnx.ModelProto.FromString(base.SerializeToString())
    for n in interleaved.graph.node:
        if n.op_type == "Transpose" and n.output[0] == "Y_tnd_l0":
            n.attribute[0].ints[:] = [0, 1, 2, 3]
    with pytest.raises(ValueError, match="not the previous layer's output"):
        rnncore.from_onnx(interleaved)

    with pytest.raises(ValueError, match="no RNN, LSTM or GRU"):
        rnncore.from_onnx(helper.make_model(helper.make_graph(
            [helper.make_node("Identity", ["a"], ["b"])], "g",
            [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1])])))

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 this is not protobuf \xff\xff\xff")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        rnncore.from_onnx(str(bad))
    with pytest.raises(FileNotFoundError):
        rnncore.from_onnx(str(tmp_path / "missing.onnx"))


def test_from_onnx_reads_a_foreign_lstm_with_and_without_peepholes():
    """A hand-written single ONNX LSTM (no rnncore metadata, no B) reads; with peepholes P it is
    rnncore's peephole LSTM."""
    rng = np.random.default_rng(3)
    W = rng.standard_normal((1, 4 * H, D)).astype(np.float32)
    R = rng.standard_normal((1, 4 * H, H)).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(W, "W"), onnx.numpy_helper.from_array(R, "R")]
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=H)
    squeeze = helper.make_node("Squeeze", ["Y", "ax"], ["out"])
    inits.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "ax"))
    graph = helper.make_graph([node, squeeze], "g", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT,
                                                                                 ["T", "N", D])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m = rnncore.from_onnx(proto)
    assert isinstance(m, rnncore.LSTM) and m.num_layers == 1 and not m.bidirectional
    assert not m.parameters()["b_l0"].any()
    x = np.random.default_rng(4).standard_normal((T, N, D)).astype(np.float32)
    y = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    close(m(x)[0], y, np.float32, "y")

    P = onnx.numpy_helper.from_array(np.ones((1, 3 * H), np.float32), "P")
    peep = helper.make_graph([helper.make_node("LSTM", ["X", "W", "R", "", "", "", "", "P"], ["Y"], hidden_size=H),
                              squeeze], "g", list(graph.input), list(graph.output), inits + [P])
    peep = helper.make_model(peep, opset_imports=[helper.make_opsetid("", 17)])
    mp = rnncore.from_onnx(peep)
    assert mp.peephole and np.all(mp.parameters()["P_l0"] == 1)
    yp = ort.InferenceSession(peep.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    close(mp(x)[0], yp, np.float32, "y with peepholes")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind,bidirectional,batch_first", [("LSTM", True, True), ("GRU", False, False),
                                                            ("RNN", True, False)])
def test_from_onnx_reads_torch_exports(kind, bidirectional, batch_first, tmp_path):
    """Graphs from torch.onnx.export (TorchScript exporter): zero states built with Shape/Gather/Expand."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    kw = {"nonlinearity": "relu"} if kind == "RNN" else {}
    tm = getattr(torch.nn, kind)(D, H, num_layers=2, bidirectional=bidirectional, batch_first=batch_first, **kw)
    x = torch.randn((N, T, D) if batch_first else (T, N, D))
    path = str(tmp_path / "t.onnx")
    try:
        torch.onnx.export(tm, (x,), path, dynamo=False, input_names=["x"])
    except Exception as e:           # the exporter is optional in torch; nothing of rnncore's to test then
        pytest.skip(f"torch.onnx.export unavailable: {type(e).__name__}: {e}")
    m = rnncore.from_onnx(path)
    assert (type(m).__name__, m.num_layers, m.bidirectional, m.batch_first) == (kind, 2, bidirectional, batch_first)
    if kind == "RNN":
        assert m.nonlinearity == "relu"
    if kind == "GRU":
        assert m.reset_after
    with torch.no_grad():
        close(m(x.numpy())[0], tm(x)[0].numpy(), np.float32, "y")
    assert repr(m) == repr(getattr(rnncore, kind).from_torch(tm))


def test_plain_call_for_every_cell_and_zero_state_feeds(tmp_path):
    """What the benchmark suite does: to_onnx(path), then feed x, zero states and full lengths."""
    for variant in VARIANTS:
        m = model(variant, 1, False)
        path = str(tmp_path / f"{variant}.onnx")
        m.to_onnx(path)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        x, h0, c0 = inputs(m, seed=5)
        got = sess.run(None, feeds(x, 0 * h0, None if c0 is None else 0 * c0, np.full(N, T)))
        close(got[0], m(x)[0], np.float32, f"{variant} y")


def test_broken_parameter_is_named_not_exported(tmp_path):
    m = model("gru", 1, False)
    m.parameters()["b_l0"] = m.parameters()["b_l0"].astype(np.float64)
    with pytest.raises(TypeError, match="b_l0"):
        m.to_onnx(str(tmp_path / "m.onnx"))
    assert not list(tmp_path.iterdir())
