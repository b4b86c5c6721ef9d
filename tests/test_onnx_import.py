"""rnncore.from_onnx / rnncore.onnx.import_graph / find_recurrent on graphs built with onnx.helper
in the shapes other exporters write: single nodes with ONNX-shaped outputs, layout 1, glue of every
kind, constant and run-time initial states and sequence_lens, weights behind constant subgraphs,
recurrent nodes inside If/Loop/Scan, refusals, external data and bounds.

Oracles: ONNX Runtime (float32; it runs layout 0 only) and onnx.reference (float64, and layout 1;
it ignores sequence_lens, so those cases use ONNX Runtime).
"""

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import rnncore  # noqa: E402
import rnncore.onnx as rox  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

T, N, D, H = 5, 3, 4, 3
G = {"RNN": 1, "LSTM": 4, "GRU": 3}
ELEM = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-11, atol=1e-12)}


def vi(name, dtype=np.float32, shape=None):
    elem = ELEM[dtype] if dtype in ELEM else dtype
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def model_of(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def weights(op, dirs, D_in, dtype, seed, prefix="", bias=True):
    rng = np.random.default_rng(seed)
    g = G[op] * H
    out = [init(prefix + "W", rng.uniform(-.6, .6, (dirs, g, D_in)).astype(dtype)),
           init(prefix + "R", rng.uniform(-.6, .6, (dirs, g, H)).astype(dtype))]
    if bias:
        out.append(init(prefix + "B", rng.uniform(-.4, .4, (dirs, 2 * g)).astype(dtype)))
    return out


def run_ort(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_ref(proto, feeds):
    return ReferenceEvaluator(proto).run(None, feeds)


def check(got, want, dtype, what=""):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, (what, i, g.shape, w.shape)
        np.testing.assert_allclose(g, w, err_msg=f"{what} output {i}", **TOL[dtype])


def x_of(shape, dtype=np.float32, seed=7):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---- single nodes, ONNX-shaped outputs, any subset and order ---------------------------------------

SUBSETS = {"RNN": [["Y"], ["Y_h"], ["Y_h", "Y"]], "GRU": [["Y"], ["Y_h"], ["Y_h", "Y"]],
           "LSTM": [["Y"], ["Y_h"], ["Y_c"], ["Y_c", "Y"], ["Y_h", "Y", "Y_c"]]}
CASES = [(op, dirs, outs) for op in G for dirs in (1, 2) for outs in SUBSETS[op]]


def single(op, dirs, outs, dtype=np.float32, layout=0, bias=True, **attrs):
    names = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    node_outs = [n if n in outs else "" for n in names]
    while node_outs and not node_outs[-1]:
        node_outs.pop()
    ins = ["X", "W", "R"] + (["B"] if bias else [])
    direction = "bidirectional" if dirs == 2 else "forward"
    node = helper.make_node(op, ins, node_outs, name=f"my_{op.lower()}", hidden_size=H, direction=direction,
                            **({"layout": layout} if layout else {}), **attrs)
    return model_of([node], [vi("X", dtype)], [vi(n, dtype) for n in outs],
                    weights(op, dirs, D, dtype, seed=dirs, bias=bias), opset=14 if layout else 17)


@pytest.mark.parametrize("op,dirs,outs", CASES, ids=[f"{o}-{d}-{'+'.join(s)}" for o, d, s in CASES])
def test_single_node_any_outputs_onnxruntime(op, dirs, outs):
    proto = single(op, dirs, outs)
    x = x_of((T, N, D))
    want = run_ort(proto, {"X": x})
    imp = rox.import_graph(proto)
    assert imp.inputs == ["X"] and imp.outputs == outs
    check(imp.run(None, {"X": x}), want, np.float32, op)
    m = rnncore.from_onnx(proto)
    assert (type(m).__name__, m.num_layers, m.dirs, m.batch_first) == (op, 1, dirs, False)
    y, st = m(x)
    h = st[0] if op == "LSTM" else st
    for name, w in zip(outs, want):            # the documented mapping, by hand
        if name == "Y":
            np.testing.assert_allclose(y, w.transpose(0, 2, 1, 3).reshape(T, N, dirs * H), **TOL[np.float32])
        elif name == "Y_h":
            np.testing.assert_allclose(h, w, **TOL[np.float32])


@pytest.mark.parametrize("op", list(G))
@pytest.mark.parametrize("dirs", [1, 2])
def test_single_node_float64_reference(op, dirs):
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    proto = single(op, dirs, outs, dtype=np.float64, bias=False,
                   **({"linear_before_reset": 1} if op == "GRU" else {}))
    x = x_of((T, N, D), np.float64)
    got = rox.import_graph(proto).run(None, {"X": x})
    check(got, run_ref(proto, {"X": x}), np.float64, op)
    assert rnncore.from_onnx(proto).dtype == np.float64


@pytest.mark.parametrize("op", list(G))
@pytest.mark.parametrize("dirs", [1, 2])
def test_layout_1_node_reference(op, dirs):
    """Batch-major nodes (opset 14+): ONNX Runtime refuses layout=1, the reference evaluator runs it."""
    outs = ["Y_h", "Y"] + (["Y_c"] if op == "LSTM" else [])
    proto = single(op, dirs, outs, dtype=np.float64, layout=1)
    x = x_of((N, T, D), np.float64)
    m = rnncore.from_onnx(proto)
    assert m.batch_first
    check(rox.import_graph(proto).run(None, {"X": x}), run_ref(proto, {"X": x}), np.float64, op)


def test_relu_rnn_and_default_activations_spelled_out():
    x = x_of((T, N, D))
    for acts, nl in ((["Relu", "Relu"], "relu"), (["Tanh", "Tanh"], "tanh")):
        proto = single("RNN", 2, ["Y"], activations=acts)
        m = rnncore.from_onnx(proto)
        assert m.nonlinearity == nl
        check(rox.import_graph(proto).run(None, {"X": x}), run_ort(proto, {"X": x}), np.float32, nl)
    proto = single("LSTM", 1, ["Y"], activations=["Sigmoid", "Tanh", "Tanh"])
    check(rox.import_graph(proto).run(None, {"X": x}), run_ort(proto, {"X": x}), np.float32, "lstm")


# ---- chains of layers and their glue ---------------------------------------------------------------

def chain(op, dirs, layers, glue, batch_first=False, outputs=("y", "h_n"), dtype=np.float32, layout=0,
          static=False, opset=17):
    """A stack the way exporters write one: x (maybe batch-first, through a Transpose), per layer one
    node, Y turned into (T, N, dirs*H) by ``glue`` ("squeeze", "squeeze_attr", "merge", "merge_static",
    "flatten_like"), final states concatenated."""
    direction = "bidirectional" if dirs == 2 else "forward"
    nodes, inits = [], []
    xdims = [N, T, D] if (batch_first != bool(layout)) else [T, N, D]
    x = "x"
    if batch_first != bool(layout):
        nodes.append(helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0, 2]))
        x = "x_t"
    hs, cs = [], []
    for k in range(layers):
        D_in = D if k == 0 else dirs * H
        ws = weights(op, dirs, D_in, dtype, seed=10 + k, prefix=f"l{k}_")
        inits += ws
        outs = [f"Y{k}", f"Yh{k}"] + ([f"Yc{k}"] if op == "LSTM" else [])
        nodes.append(helper.make_node(op, [x] + [w.name for w in ws], outs, name=f"{op}_{k}", hidden_size=H,
                                      direction=direction, **({"layout": 1} if layout else {})))
        hs.append(outs[1])
        if op == "LSTM":
            cs.append(outs[2])
        y = f"y{k}"
        if layout:                                              # (N, T, dirs, H) -> (N, T, dirs*H)
            inits.append(init(f"shape{k}", np.array([0, 0, -1], np.int64)))
            nodes.append(helper.make_node("Reshape", [outs[0], f"shape{k}"], [y]))
        elif glue == "squeeze" and dirs == 1:
            inits.append(init(f"ax{k}", np.array([1], np.int64)))
            nodes.append(helper.make_node("Squeeze", [outs[0], f"ax{k}"], [y]))
        elif glue == "squeeze_attr" and dirs == 1:             # opset 11 form
            nodes.append(helper.make_node("Squeeze", [outs[0]], [y], axes=[1]))
        else:
            nodes.append(helper.make_node("Transpose", [outs[0]], [f"t{k}"], perm=[0, 2, 1, 3]))
            shape = [T, N, dirs * H] if static else [0, 0, -1]
            if glue == "flatten_like":
                shape = [0, 0, dirs, H]
            inits.append(init(f"shape{k}", np.array(shape, np.int64)))
            nodes.append(helper.make_node("Reshape", [f"t{k}", f"shape{k}"], [y if glue != "flatten_like"
                                                                               else f"u{k}"]))
            if glue == "flatten_like":
                inits.append(init(f"shape2_{k}", np.array([0, 0, -1], np.int64)))
                nodes.append(helper.make_node("Reshape", [f"u{k}", f"shape2_{k}"], [y]))
        x = y
    if batch_first and not layout:
        nodes.append(helper.make_node("Transpose", [x], ["y"], perm=[1, 0, 2]))
    elif batch_first and layout:
        nodes.append(helper.make_node("Identity", [x], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", [x], ["y"]))
    nodes.append(helper.make_node("Concat", hs, ["h_n"], axis=0 if not layout else 1))
    if op == "LSTM":
        nodes.append(helper.make_node("Concat", cs, ["c_n"], axis=0 if not layout else 1))
    return model_of(nodes, [vi("x", dtype, xdims if static else None)], [vi(o, dtype) for o in outputs], inits,
                    opset=14 if layout else 11 if glue == "squeeze_attr" else opset)


CHAINS = [(op, dirs, layers, glue, bf) for op in G for dirs, glue in ((1, "squeeze"), (1, "squeeze_attr"),
                                                                       (2, "merge"), (2, "flatten_like"))
          for layers, bf in ((2, False), (3, True))]


@pytest.mark.parametrize("op,dirs,layers,glue,bf", CHAINS,
                         ids=[f"{c[0]}-d{c[1]}-L{c[2]}-{c[3]}-{'bf' if c[4] else 'tm'}" for c in CHAINS])
def test_chains_with_glue_onnxruntime(op, dirs, layers, glue, bf):
    outs = ("y", "h_n") + (("c_n",) if op == "LSTM" else ())
    proto = chain(op, dirs, layers, glue, batch_first=bf, outputs=outs[::-1])     # outputs in another order
    x = x_of((N, T, D) if bf else (T, N, D))
    want = run_ort(proto, {"x": x})
    m = rnncore.from_onnx(proto)
    assert (m.num_layers, m.dirs, m.batch_first) == (layers, dirs, bf)
    np.testing.assert_allclose(m(x)[0], want[-1], **TOL[np.float32])
    check(rox.import_graph(proto).run(None, {"x": x}), want, np.float32)


def test_static_reshape_glue_like_the_dynamo_exporter():
    """torch's dynamo exporter writes Reshape(..., [T, N, dirs*H]) with the export's sizes."""
    proto = chain("LSTM", 2, 2, "merge", static=True, outputs=("y", "h_n", "c_n"))
    x = x_of((T, N, D))
    check(rox.import_graph(proto).run(None, {"x": x}), run_ort(proto, {"x": x}), np.float32)


@pytest.mark.parametrize("op", list(G))
@pytest.mark.parametrize("bf", [False, True])
def test_layout_1_chain_reference(op, bf):
    proto = chain(op, 2, 2, "merge", batch_first=bf, layout=1, dtype=np.float64)
    x = x_of((N, T, D) if bf else (T, N, D), np.float64)
    m = rnncore.from_onnx(proto)
    assert m.batch_first == bf
    check(rox.import_graph(proto).run(None, {"x": x}), run_ref(proto, {"x": x}), np.float64, op)


def test_glue_that_mixes_axes_is_refused():
    proto = chain("GRU", 2, 2, "merge")
    for n in proto.graph.node:                       # (T, dirs, N, H) merged without the transpose
        if n.op_type == "Transpose" and n.output[0] == "t0":
            n.attribute[0].ints[:] = [0, 1, 2, 3]
    with pytest.raises(ValueError, match="GRU_1.*not the previous layer's output"):
        rnncore.from_onnx(proto)
    proto = chain("RNN", 1, 2, "squeeze")
    proto.graph.node.append(helper.make_node("Relu", ["y"], ["y_relu"]))
    proto.graph.output.append(vi("y_relu"))
    with pytest.raises(ValueError, match="Relu.*not data movement.*node="):
        rnncore.from_onnx(proto)


def test_inner_layer_output_is_refused():
    proto = chain("GRU", 1, 2, "squeeze", outputs=("y",))
    proto.graph.output.append(vi("Y0"))
    with pytest.raises(ValueError, match="inner layer"):
        rnncore.from_onnx(proto)


# ---- initial states and sequence_lens ---------------------------------------------------------------

def stateful(op, dirs, h="input", lengths="input", dtype=np.float32, zero_len=True):
    """One node with initial states and sequence_lens as graph inputs ("input"), initializers ("const")
    or absent (None)."""
    rng = np.random.default_rng(3)
    inputs, inits = [vi("X", dtype)], weights(op, dirs, D, dtype, seed=4)
    feeds = {"X": x_of((T, N, D), dtype)}
    lens = np.array([T, 0 if zero_len else 1, 2], np.int32)
    h0 = rng.standard_normal((dirs, N, H)).astype(dtype)
    c0 = rng.standard_normal((dirs, N, H)).astype(dtype)
    node_in = ["X", "W", "R", "B"]
    for name, value, how in (("seq", lens, lengths), ("h0", h0, h), ("c0", c0, h)):
        if name == "c0" and op != "LSTM":
            continue
        if how == "input":
            inputs.append(vi(name, TensorProto.INT32 if name == "seq" else dtype))
            feeds[name] = value
        elif how == "const":
            inits.append(init(name, value))
        node_in.append(name if how else "")
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, node_in, outs, name="rec", hidden_size=H,
                            direction="bidirectional" if dirs == 2 else "forward")
    return model_of([node], inputs, [vi(o, dtype) for o in outs], inits), feeds


@pytest.mark.parametrize("op", list(G))
@pytest.mark.parametrize("dirs", [1, 2])
def test_runtime_states_and_lengths(op, dirs):
    proto, feeds = stateful(op, dirs)
    imp = rox.import_graph(proto)
    assert set(imp.inputs) == set(feeds)
    want = run_ort(proto, feeds)
    check(imp.run(None, feeds), want, np.float32, op)
    m = rnncore.from_onnx(proto)                     # the model's call takes them
    st = (feeds["h0"], feeds["c0"]) if op == "LSTM" else feeds["h0"]
    y, _ = m(feeds["X"], st, feeds["seq"])
    np.testing.assert_allclose(y, want[0].transpose(0, 2, 1, 3).reshape(T, N, -1), **TOL[np.float32])


@pytest.mark.parametrize("op", list(G))
@pytest.mark.parametrize("what", ["h", "lengths", "both"])
def test_constant_states_and_lengths_honoured_or_refused(op, what):
    proto, feeds = stateful(op, 2, h="const" if what in ("h", "both") else None,
                            lengths="const" if what in ("lengths", "both") else None)
    want = run_ort(proto, feeds)
    check(rox.import_graph(proto).run(None, feeds), want, np.float32, f"{op} {what}")
    role = {"h": "initial_h", "lengths": "sequence_lens", "both": "(initial_h|sequence_lens)"}[what]
    with pytest.raises(ValueError, match=f"node 'rec' \\({op}\\): its {role} .* is a constant.*import_graph"):
        rnncore.from_onnx(proto)


def test_zero_constant_state_is_zero_state():
    proto, feeds = stateful("LSTM", 1, h="const", lengths=None)
    for t in proto.graph.initializer:
        if t.name in ("h0", "c0"):
            t.CopyFrom(init(t.name, np.zeros((1, N, H), np.float32)))
    m = rnncore.from_onnx(proto)
    want = run_ort(proto, feeds)
    np.testing.assert_allclose(m(feeds["X"])[1][0], want[1], **TOL[np.float32])


def test_states_sliced_per_layer_from_one_input():
    """What to_onnx writes: h0 (L*dirs, N, H) sliced per layer, lengths cast to int32."""
    m = rnncore.GRU(D, H, num_layers=2, bidirectional=True, seed=1)
    proto = rnncore._onnx.build_onnx(m)
    imp = rox.import_graph(proto)
    assert imp.inputs[0] == "x" and set(imp.inputs) == {"x", "h0", "lengths"}
    feeds = {"x": x_of((T, N, D)), "h0": x_of((4, N, H), seed=2), "lengths": np.array([T, 0, 2])}
    check(imp.run(None, feeds), run_ort(proto, feeds), np.float32)


# ---- weights behind constant subgraphs, nodes inside If / Loop / Scan ------------------------------------

def folded_lstm(prefix, x, outs, dirs=1, seed=20):
    """An LSTM whose W and R come the way exporters write them: one Constant holding torch's gate
    order (i, f, g, o), sliced per gate and concatenated in ONNX's (i, o, f, c), then Unsqueezed; B
    from Gather + Concat of two constants."""
    rng = np.random.default_rng(seed)
    nodes = []
    mats = {}
    for role, cols in (("W", D), ("R", H)):
        full = rng.uniform(-.5, .5, (4 * H, cols)).astype(np.float32)
        mats[role] = full
        nodes.append(helper.make_node("Constant", [], [f"{prefix}{role}_all"], value=init("v", full)))
        parts = []
        for gate in (0, 3, 1, 2):                              # i, o, f, g(=c)
            for tag, val in (("s", gate * H), ("e", (gate + 1) * H)):
                nodes.append(helper.make_node("Constant", [], [f"{prefix}{role}{gate}{tag}"],
                                              value=init("v", np.array([val], np.int64))))
            nodes.append(helper.make_node("Slice", [f"{prefix}{role}_all", f"{prefix}{role}{gate}s",
                                                    f"{prefix}{role}{gate}e"], [f"{prefix}{role}{gate}"]))
            parts.append(f"{prefix}{role}{gate}")
        nodes.append(helper.make_node("Concat", parts, [f"{prefix}{role}_cat"], axis=0))
        nodes.append(helper.make_node("Constant", [], [f"{prefix}{role}_ax"], value=init("v", np.array([0]))))
        nodes.append(helper.make_node("Unsqueeze", [f"{prefix}{role}_cat", f"{prefix}{role}_ax"], [f"{prefix}{role}"]))
    b = rng.uniform(-.3, .3, (2, 4 * H)).astype(np.float32)
    nodes.append(helper.make_node("Constant", [], [f"{prefix}b2"], value=init("v", b)))
    nodes.append(helper.make_node("Constant", [], [f"{prefix}i0"], value=init("v", np.array([0], np.int64))))
    nodes.append(helper.make_node("Constant", [], [f"{prefix}i1"], value=init("v", np.array([1], np.int64))))
    nodes.append(helper.make_node("Gather", [f"{prefix}b2", f"{prefix}i0"], [f"{prefix}bw"], axis=0))
    nodes.append(helper.make_node("Gather", [f"{prefix}b2", f"{prefix}i1"], [f"{prefix}br"], axis=0))
    nodes.append(helper.make_node("Concat", [f"{prefix}bw", f"{prefix}br"], [f"{prefix}B"], axis=1))
    nodes.append(helper.make_node("LSTM", [x, f"{prefix}W", f"{prefix}R", f"{prefix}B"], outs,
                                  name=f"{prefix}lstm", hidden_size=H))
    return nodes


def if_graph():
    """out = flag ? Squeeze(LSTM_a(x).Y) : Squeeze(LSTM_b(x).Y); x and the weights from the outer scope."""
    ax = init("ax1", np.array([1], np.int64))
    then_nodes = folded_lstm("a_", "x", ["Ya"], seed=21) + [helper.make_node("Squeeze", ["Ya", "ax1"], ["ya"])]
    else_nodes = folded_lstm("b_", "x", ["Yb"], seed=22) + [helper.make_node("Squeeze", ["Yb", "ax1"], ["yb"])]
    then_g = helper.make_graph(then_nodes, "then", [], [vi("ya")])
    else_g = helper.make_graph(else_nodes, "else", [], [vi("yb")])
    node = helper.make_node("If", ["flag"], ["out"], name="branch", then_branch=then_g, else_branch=else_g)
    return model_of([node], [vi("x", np.float32, [T, N, D]), vi("flag", TensorProto.BOOL, [])], [vi("out")], [ax])


def test_find_recurrent_and_node_inside_if():
    proto = if_graph()
    found = rox.find_recurrent(proto)
    assert sorted(f.path for f in found) == ["branch:else_branch/b_lstm", "branch:then_branch/a_lstm"]
    assert all(f.op_type == "LSTM" and f.constant_weights and f.problem is None for f in found)
    assert found[0].attributes["hidden_size"] == H and found[0].inputs[0] == "x"
    x = x_of((T, N, D))
    for flag, name in ((True, "a_lstm"), (False, "branch:else_branch/b_lstm")):
        want = run_ort(proto, {"x": x, "flag": np.array(flag)})[0]
        m = rnncore.from_onnx(proto, node=name)
        assert isinstance(m, rnncore.LSTM) and m.num_layers == 1
        np.testing.assert_allclose(m(x)[0], want, **TOL[np.float32])
        imp = rox.import_graph(proto, node=name)
        assert imp.inputs == ["x"]
        np.testing.assert_allclose(imp.run(None, {"x": x})[0][:, 0], want, **TOL[np.float32])
    with pytest.raises(ValueError, match="inside subgraphs.*find_recurrent.*node="):
        rnncore.from_onnx(proto)
    with pytest.raises(ValueError, match="node: no RNN, LSTM or GRU node named 'nope'"):
        rnncore.from_onnx(proto, node="nope")


def test_nodes_inside_loop_and_scan():
    """A Loop (one trip) and a Scan whose bodies hold a GRU on an outer-scope x."""
    ws = weights("GRU", 1, D, np.float32, seed=30, prefix="g_")
    body = helper.make_graph([helper.make_node("GRU", ["x", "g_W", "g_R", "g_B"], ["Yg"], name="inner_gru",
                                               hidden_size=H, linear_before_reset=1),
                              helper.make_node("Identity", ["cond"], ["cond_out"])],
                             "body", [vi("i", TensorProto.INT64, []), vi("cond", TensorProto.BOOL, [])],
                             [vi("cond_out", TensorProto.BOOL, []), vi("Yg")])
    loop = helper.make_node("Loop", ["trips", ""], ["scanned"], name="loop", body=body)
    sbody = helper.make_graph([helper.make_node("RNN", ["x", "r_W", "r_R"], ["Yr"], name="inner_rnn",
                                                hidden_size=H),
                               helper.make_node("Identity", ["s"], ["s_out"])],
                              "sbody", [vi("s", np.float32, [1])], [vi("Yr")])
    sbody.output.insert(0, vi("s_out"))
    del sbody.output[1:]
    sbody.output.append(vi("Yr"))
    scan = helper.make_node("Scan", ["s0"], ["s_fin", "scan_y"], name="scan", body=sbody, num_scan_inputs=0)
    inits = ws + weights("RNN", 1, D, np.float32, seed=31, prefix="r_") + \
        [init("trips", np.array(1, np.int64)), init("s0", np.zeros(1, np.float32))]
    proto = model_of([loop], [vi("x", np.float32, [T, N, D])], [vi("scanned")], inits)
    found = rox.find_recurrent(proto)
    assert [(f.path, f.op_type) for f in found] == [("loop:body/inner_gru", "GRU")]
    x = x_of((T, N, D))
    want = run_ort(proto, {"x": x})[0]                          # (1, T, 1, N, H)
    m = rnncore.from_onnx(proto, node="inner_gru")
    assert isinstance(m, rnncore.GRU) and m.reset_after
    np.testing.assert_allclose(m(x)[0], want[0, :, 0], **TOL[np.float32])
    proto2 = model_of([scan], [vi("x", np.float32, [T, N, D])], [vi("s_fin"), vi("scan_y")], inits)
    assert [f.path for f in rox.find_recurrent(proto2)] == ["scan:body/inner_rnn"]
    assert isinstance(rnncore.from_onnx(proto2, node="inner_rnn"), rnncore.RNN)


def test_node_with_runtime_weights_is_listed_not_read():
    proto = single("GRU", 1, ["Y"])
    proto.graph.initializer.pop()                              # B becomes a graph input
    proto.graph.input.append(vi("B"))
    f = rox.find_recurrent(proto)[0]
    assert f.constant_weights is False and "B" in f.problem and "run time" in f.problem
    with pytest.raises(ValueError, match="my_gru.*weights B .* run time"):
        rnncore.from_onnx(proto, node="my_gru")


# ---- refusals: one feature per message --------------------------------------------------------------

REFUSALS = [
    ("LSTM", dict(clip=2.0), "clip"),
    ("GRU", dict(activations=["Sigmoid", "Relu"]), "activations \\['Sigmoid', 'Relu'\\]"),
    ("RNN", dict(activations=["Tanh"], activation_alpha=[0.5]), "activation_alpha"),
    ("RNN", dict(activation_beta=[0.5]), "activation_beta"),
    ("LSTM", dict(input_forget=1), "input_forget=1"),
    ("GRU", dict(direction="reverse"), "direction='reverse'"),
    ("GRU", dict(linear_before_reset=2), "linear_before_reset=2"),
    ("LSTM", dict(layout=2), "layout=2"),
    ("RNN", dict(hidden_size=H + 1), "hidden_size=4 but R has shape"),
]


@pytest.mark.parametrize("op,attrs,msg", REFUSALS, ids=[r[2][:20] for r in REFUSALS])
def test_each_refusal_names_node_and_feature(op, attrs, msg):
    attrs = dict(attrs)
    direction = attrs.pop("direction", "forward")
    hidden = attrs.pop("hidden_size", H)
    node = helper.make_node(op, ["X", "W", "R"], ["Y"], name="the_node", hidden_size=hidden, direction=direction,
                            **attrs)
    proto = model_of([node], [vi("X")], [vi("Y")], weights(op, 1, D, np.float32, 0, bias=False))
    with pytest.raises(ValueError, match=f"^from_onnx: node 'the_node' \\({op}\\): {msg}") as e:
        rnncore.from_onnx(proto)
    assert str(e.value).count(";") <= 1                        # one reason, not a list


def test_peepholes_read_as_the_peephole_lstm_and_dtypes_refused():
    x = x_of((T, N, D))
    ws = weights("LSTM", 2, D, np.float32, 0)
    rng = np.random.default_rng(6)
    for P, peephole in ((np.zeros((2, 3 * H), np.float32), False),
                        (rng.uniform(-1, 1, (2, 3 * H)).astype(np.float32), True)):
        node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "", "", "P"], ["Y", "Y_h", "Y_c"], name="peep",
                                hidden_size=H, direction="bidirectional")
        proto = model_of([node], [vi("X")], [vi("Y"), vi("Y_h"), vi("Y_c")], ws + [init("P", P)])
        m = rnncore.from_onnx(proto)
        assert m.peephole == peephole
        if peephole:                         # ONNX rows p_i, p_o, p_f; rnncore's p_i, p_f, p_o
            np.testing.assert_array_equal(m.parameters()["P_l0_reverse"], P[1].reshape(3, H)[[0, 2, 1]])
        check(rox.import_graph(proto).run(None, {"X": x}), run_ort(proto, {"X": x}), np.float32)
    bad = model_of([node], [vi("X")], [vi("Y")], ws + [init("P", np.ones((2, 2 * H), np.float32))])
    with pytest.raises(ValueError, match="node 'peep' \\(LSTM\\): peepholes P of shape \\(2, 6\\)"):
        rnncore.from_onnx(bad)
    half = [init(t.name, numpy_helper.to_array(t).astype(np.float16)) for t in ws]
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], name="half", hidden_size=H,
                            direction="bidirectional")
    with pytest.raises(ValueError, match="node 'half' \\(LSTM\\): W has dtype float16"):
        rnncore.from_onnx(model_of([node], [vi("X", TensorProto.FLOAT16)], [vi("Y", TensorProto.FLOAT16)], half))


# ---- security and bounds ----------------------------------------------------------------------------

def external_proto(location, W_bytes_at=0):
    proto = single("RNN", 1, ["Y"])
    W = next(t for t in proto.graph.initializer if t.name == "W")
    n = W.raw_data
    W.ClearField("raw_data")
    W.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(W_bytes_at)), ("length", str(len(n)))):
        e = W.external_data.add()
        e.key, e.value = k, v
    return proto, n


def test_external_data_needs_base_dir_and_stays_inside(tmp_path, monkeypatch):
    proto, raw = external_proto("w.bin")
    (tmp_path / "w.bin").write_bytes(raw)
    ref = single("RNN", 1, ["Y"])
    monkeypatch.chdir(tmp_path)                                 # the file is in the current directory
    with pytest.raises(ValueError, match="external file .*'w.bin'.*base_dir="):
        rnncore.from_onnx(proto.SerializeToString())
    with pytest.raises(ValueError, match="base_dir="):
        rnncore.from_onnx(proto)
    got = rnncore.from_onnx(proto, base_dir=str(tmp_path))
    want = rnncore.from_onnx(ref)
    np.testing.assert_array_equal(got.parameters()["W_ih_l0"], want.parameters()["W_ih_l0"])
    # a path: its own folder is base_dir
    sub = tmp_path / "model"
    sub.mkdir()
    (sub / "w.bin").write_bytes(raw)
    onnx.save(proto, str(sub / "m.onnx"), save_as_external_data=False)
    assert rnncore.from_onnx(str(sub / "m.onnx")).parameters()["W_ih_l0"].shape == (H, D)
    # never outside it
    (tmp_path / "secrets.env").write_bytes(raw)
    for location in ("../secrets.env", str(tmp_path / "secrets.env"), "sub/../../secrets.env"):
        bad, _ = external_proto(location)
        onnx.save(bad, str(sub / "bad.onnx"))
        with pytest.raises(ValueError, match="not a plain relative path"):
            rnncore.from_onnx(str(sub / "bad.onnx"))
    os.symlink(tmp_path / "secrets.env", sub / "link.bin")
    bad, _ = external_proto("link.bin")
    with pytest.raises(ValueError, match="outside base_dir"):
        rnncore.from_onnx(bad, base_dir=str(sub))
    short, _ = external_proto("w.bin", W_bytes_at=8)
    with pytest.raises(ValueError, match="runs past the end"):
        rnncore.from_onnx(short, base_dir=str(tmp_path))
    with pytest.raises(ValueError, match="base_dir: .* is not a folder"):
        rnncore.from_onnx(proto, base_dir=str(tmp_path / "nowhere"))


def test_dims_checked_before_allocation():
    proto = single("GRU", 1, ["Y"])
    W = next(t for t in proto.graph.initializer if t.name == "W")
    W.dims[:] = [1, 2**40, D]                                   # 12 bytes of data for 2**42 values
    with pytest.raises(ValueError, match="'W' of dims \\[1, 1099511627776, 4\\] has .* elements"):
        rnncore.from_onnx(proto)
    W.dims[:] = [1, 3 * H, D + 1]
    with pytest.raises(ValueError, match="tensor 'W': .* bytes of data for dims \\[1, 9, 5\\]"):
        rnncore.from_onnx(proto)
    big = model_of([helper.make_node("ConstantOfShape", ["s"], ["W"]),
                    helper.make_node("GRU", ["X", "W", "R"], ["Y"], hidden_size=H)], [vi("X")], [vi("Y")],
                   [init("s", np.array([2**20, 2**20], np.int64)), init("R", np.zeros((1, 3 * H, H), np.float32))])
    with pytest.raises(ValueError, match="ConstantOfShape.*1099511627776 elements"):
        rnncore.from_onnx(big)


def test_onnx_errors_are_value_errors():
    with pytest.raises(ValueError, match="^from_onnx: not a readable ONNX model"):
        rnncore.from_onnx(b"\x08\x07 not protobuf \xff\xff\xff")
    proto = single("LSTM", 1, ["Y"])
    proto.graph.node[0].input[1] = "missing"
    with pytest.raises(ValueError, match="^from_onnx: tensor 'missing' is used but never defined"):
        rnncore.from_onnx(proto)
    bad = model_of([helper.make_node("Reshape", ["w0", "s"], ["W"]),
                    helper.make_node("RNN", ["X", "W", "R"], ["Y"], hidden_size=H)], [vi("X")], [vi("Y")],
                   [init("w0", np.zeros(7, np.float32)), init("s", np.array([1, H, D], np.int64)),
                    init("R", np.zeros((1, H, H), np.float32))])
    with pytest.raises(ValueError, match="^from_onnx: node 'Reshape#0' \\(Reshape\\): cannot evaluate"):
        rnncore.from_onnx(bad)
    with pytest.raises(TypeError, match="source: expected a path, bytes or an onnx.ModelProto"):
        rnncore.from_onnx(3.5)
    with pytest.raises(TypeError, match="node: expected a node name"):
        rnncore.from_onnx(proto, node=3)


def test_cycles_and_deep_chains_are_refused_not_hung():
    proto = chain("RNN", 1, 2, "squeeze")
    for n in proto.graph.node:                                # layer 1 reads a loop of Identity nodes
        if n.op_type == "RNN" and n.name == "RNN_1":
            n.input[0] = "loop_a"
    proto.graph.node.extend([helper.make_node("Identity", ["loop_b"], ["loop_a"]),
                             helper.make_node("Identity", ["loop_a"], ["loop_b"])])
    with pytest.raises(ValueError, match="cycle"):
        rnncore.from_onnx(proto)
    nodes = [helper.make_node("Identity", [f"w{i}"], [f"w{i + 1}"]) for i in range(400)]
    nodes.append(helper.make_node("RNN", ["X", "w400", "R"], ["Y"], name="deep", hidden_size=H))
    ws = weights("RNN", 1, D, np.float32, 0, bias=False)
    ws[0].name = "w0"
    deep = model_of(nodes, [vi("X")], [vi("Y")], ws)
    with pytest.raises(ValueError, match="nests deeper than 256"):
        rnncore.from_onnx(deep)
    assert "nests deeper" in rox.find_recurrent(deep)[0].problem


def test_problem_is_what_from_onnx_node_says():
    proto, _ = stateful("GRU", 1, h="const", lengths=None)
    f = rox.find_recurrent(proto)[0]
    with pytest.raises(ValueError) as e:
        rnncore.from_onnx(proto, node=f.path)
    assert f.problem == str(e.value) and "initial_h" in f.problem
    assert rox.import_graph(proto, node="rec").state == [{"initial_h": ("const", pytest.approx(
        numpy_helper.to_array(proto.graph.initializer[-1])))}]


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_layout_1_runtime_states_reference(op):
    """Batch-major initial states (N, dirs, H) as graph inputs, float64, against onnx.reference."""
    dirs = 2
    names = ["X", "W", "R", "B", "", "h0"] + (["c0"] if op == "LSTM" else [])
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outs, name="bm", hidden_size=H, direction="bidirectional", layout=1)
    inputs = [vi("X", np.float64), vi("h0", np.float64)] + ([vi("c0", np.float64)] if op == "LSTM" else [])
    proto = model_of([node], inputs, [vi(o, np.float64) for o in outs], weights(op, dirs, D, np.float64, 5),
                     opset=14)
    feeds = {"X": x_of((N, T, D), np.float64), "h0": x_of((N, dirs, H), np.float64, seed=8)}
    if op == "LSTM":
        feeds["c0"] = x_of((N, dirs, H), np.float64, seed=9)
    check(rox.import_graph(proto).run(None, feeds), run_ref(proto, feeds), np.float64, op)


def test_corrupted_bytes_give_value_errors_only():
    """Bytes flipped at random in rnncore's own export: a model, or a ValueError, nothing else."""
    m = rnncore.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, seed=0)
    base = rnncore._onnx.build_onnx(m).SerializeToString()
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(200):
        b = bytearray(base)
        for _ in range(rng.integers(1, 4)):
            b[rng.integers(len(b))] = rng.integers(256)
        for read in (rnncore.from_onnx, rox.find_recurrent):
            try:
                read(bytes(b))
                outcomes.add("read")
            except ValueError as e:
                assert str(e).startswith(("from_onnx:", "node:", "base_dir:")), str(e)
                outcomes.add("refused")
    assert outcomes == {"read", "refused"}


def test_one_sequence_lens_for_all_layers():
    proto = chain("GRU", 1, 2, "squeeze")
    proto.graph.input.append(vi("seq", TensorProto.INT32))
    rec = [n for n in proto.graph.node if n.op_type == "GRU"]
    rec[0].input.extend(["seq"])                               # layer 0 only
    with pytest.raises(ValueError, match="GRU_1.*sequence_lens differs from the first layer's"):
        rnncore.from_onnx(proto)
    rec[1].input.extend(["seq"])                               # both: the model's lengths
    feeds = {"x": x_of((T, N, D)), "seq": np.array([T, 2, 1], np.int32)}
    imp = rox.import_graph(proto)
    assert imp.lengths == ("run", "seq")
    check(imp.run(None, feeds), run_ort(proto, feeds), np.float32)
