"""rnncore models to and from ONNX graphs of the standard RNN / LSTM / GRU operators (onnx is imported on use).

Per layer and direction, ONNX keeps W (dirs, G*H, D), R (dirs, G*H, H) and B (dirs, 2*G*H) = [Wb, Rb],
gates in the order LSTM i, o, f, c and GRU z, r, h. ONNX's GRU writes h = (1 - z') * h~ + z' * h_prev,
so z' = 1 - z: the z rows change sign. linear_before_reset=1 is rnncore's reset_after=True (then the
candidate's Rb is b_hn); linear_before_reset=0 is rnncore's default GRU (the candidate's Rb adds to Wb).
"""

import json

import numpy as np

from . import models

OPSET = 17
_IR_VERSION = 8                    # what opset 17 was released with; readable by older runtimes
_OPS = {models.RNN: "RNN", models.LSTM: "LSTM", models.GRU: "GRU"}
_GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
_GLUE = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Slice", "Concat", "Cast", "Constant",
         "Shape", "Gather", "Expand", "ConstantOfShape"}          # the data path itself is checked op by op
_META_KEY = "rnncore"


def _row_map(op, H):
    """Rows of rnncore's gate layout in ONNX's order, and rnncore's sign per (ONNX) row."""
    blocks = {"RNN": [0], "LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2]}[op]
    order = np.concatenate([np.arange(b * H, (b + 1) * H) for b in blocks])
    sign = np.ones(len(order))
    if op == "GRU":
        sign[:H] = -1
    return order, sign


def _base(model):
    for cls, op in _OPS.items():
        if isinstance(model, cls):
            return cls, op
    raise TypeError(f"expected an rnncore RNN, LSTM or GRU, got {type(model).__name__}")


def _layer_tensors(model, op, layer):
    """ONNX W, R, B of one layer (all directions)."""
    p, H = model.parameters(), model.hidden_size
    order, sign = _row_map(op, H)
    sign = sign.astype(model.dtype)
    Ws, Rs, Bs = [], [], []
    for d in range(model.dirs):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        Ws.append(p["W_ih" + sfx][order] * sign[:, None])
        Rs.append(p["W_hh" + sfx][order] * sign[:, None])
        wb = p["b" + sfx][order] * sign
        rb = np.zeros_like(wb)
        if "b_hn" + sfx in p:
            rb[2 * H:] = p["b_hn" + sfx]
        Bs.append(np.concatenate([wb, rb]))
    return np.stack(Ws), np.stack(Rs), np.stack(Bs)


def _config(model):
    cfg = dict(type=type(model).__name__, input_size=model.input_size, hidden_size=model.hidden_size,
               num_layers=model.num_layers, bidirectional=model.bidirectional, batch_first=model.batch_first,
               dropout=model.dropout, dtype=model.dtype.name)
    if isinstance(model, models.RNN):
        cfg["nonlinearity"] = model.nonlinearity
    if isinstance(model, models.GRU):
        cfg["reset_after"] = model.reset_after
    return cfg


def build_onnx(model):
    """The onnx.ModelProto that ``to_onnx`` writes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    _, op = _base(model)
    model._weights()                        # a parameter of the wrong shape or dtype is named here
    L, dirs, H, D = model.num_layers, model.dirs, model.hidden_size, model.input_size
    elem = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}[model.dtype.type]
    has_c = op == "LSTM"
    x_dims = ["N", "T", D] if model.batch_first else ["T", "N", D]
    y_dims = ["N", "T", dirs * H] if model.batch_first else ["T", "N", dirs * H]
    s_dims = [L * dirs, "N", H]
    inputs = [helper.make_tensor_value_info("x", elem, x_dims), helper.make_tensor_value_info("h0", elem, s_dims)]
    if has_c:
        inputs.append(helper.make_tensor_value_info("c0", elem, s_dims))
    inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["N"]))
    outputs = [helper.make_tensor_value_info("y", elem, y_dims), helper.make_tensor_value_info("h_n", elem, s_dims)]
    if has_c:
        outputs.append(helper.make_tensor_value_info("c_n", elem, s_dims))

    nodes, inits = [], []

    def const(name, value):
        if all(t.name != name for t in inits):
            inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(name, *values):
        return const(name, np.array(values, np.int64))

    nodes.append(helper.make_node("Cast", ["lengths"], ["lengths_i32"], to=TensorProto.INT32))
    x = "x"
    if model.batch_first:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]))
        x = "x_tm"
    attrs = dict(hidden_size=H, direction="bidirectional" if dirs == 2 else "forward")
    if op == "GRU":
        attrs["linear_before_reset"] = int(model.reset_after)
    if op == "RNN" and model.nonlinearity == "relu":
        attrs["activations"] = ["Relu"] * dirs
    finals = {"h": [], "c": []}
    for layer in range(L):
        W, R, B = _layer_tensors(model, op, layer)
        states = ["h0", "c0"][:2 if has_c else 1]
        if L > 1:
            bounds = [ints(f"start_l{layer}", layer * dirs), ints(f"end_l{layer}", (layer + 1) * dirs),
                      ints("axis0", 0)]
            for src in list(states):
                nodes.append(helper.make_node("Slice", [src] + bounds, [f"{src}_l{layer}"]))
            states = [f"{src}_l{layer}" for src in states]
        outs = [f"Y_l{layer}", f"Y_h_l{layer}"] + ([f"Y_c_l{layer}"] if has_c else [])
        if L == 1:
            outs[1:] = ["h_n", "c_n"][:len(outs) - 1]
        node_inputs = [x, const(f"W_l{layer}", W), const(f"R_l{layer}", R), const(f"B_l{layer}", B),
                       "lengths_i32"] + states
        nodes.append(helper.make_node(op, node_inputs, outs, name=f"{op}_l{layer}", **attrs))
        finals["h"].append(outs[1])
        if has_c:
            finals["c"].append(outs[2])
        last = layer == L - 1
        y = "y" if last and not model.batch_first else f"y_l{layer}"
        if dirs == 1:
            nodes.append(helper.make_node("Squeeze", [outs[0], ints("axis1", 1)], [y]))
        else:
            nodes.append(helper.make_node("Transpose", [outs[0]], [f"Y_tnd_l{layer}"], perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"Y_tnd_l{layer}", ints("merge_dirs", 0, 0, -1)], [y]))
        x = y
    if model.batch_first:
        nodes.append(helper.make_node("Transpose", [x], ["y"], perm=[1, 0, 2]))
    if L > 1:
        nodes.append(helper.make_node("Concat", finals["h"], ["h_n"], axis=0))
        if has_c:
            nodes.append(helper.make_node("Concat", finals["c"], ["c_n"], axis=0))

    graph = helper.make_graph(nodes, f"rnncore_{type(model).__name__}", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rnncore",
                              ir_version=_IR_VERSION)
    from . import __version__
    proto.producer_version = __version__
    helper.set_model_props(proto, {_META_KEY: json.dumps(_config(model))})
    onnx.checker.check_model(proto)
    return proto


def to_onnx(model, path):
    """Write ``model`` as an ONNX graph (opset 17), one RNN/LSTM/GRU operator per layer.

    Graph inputs (all required; T and N are dynamic):
        x        (T, N, input_size), or (N, T, input_size) when batch_first, the model's dtype
        h0       (num_layers * dirs, N, hidden_size), zeros for rnncore's default
        c0       like h0, LSTM only
        lengths  (N,) int64 in [1, T]; pass T for every row when all sequences are full
    Graph outputs: y (like rnncore's y), h_n, and c_n (LSTM), as ``model(x, state, lengths)``.
    Inference only: dropout is not exported. Returns ``path``.
    """
    import onnx

    proto = build_onnx(model)
    onnx.save(proto, path)
    return path


# ---- reading ---------------------------------------------------------------------------------

def _unsupported(why):
    return ValueError(f"from_onnx: unsupported graph: {why}. rnncore reads graphs of ONNX RNN, LSTM or GRU "
                      f"operators chained layer to layer (what Model.to_onnx writes)")


def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def from_onnx(source):
    """An rnncore model from an ONNX file (path or bytes-like) or onnx.ModelProto written by ``to_onnx``.

    Reads any graph whose only computation is a chain of ONNX RNN, LSTM or GRU operators, one per layer,
    of one kind and hidden size, forward or bidirectional, with default activations (RNN: Tanh or Relu),
    constant W, R, B, no clip, peepholes or input_forget, joined by the Transpose/Reshape/Squeeze glue
    that to_onnx writes (x may be batch-first through a Transpose). Raises ValueError otherwise.
    """
    import onnx
    from onnx import numpy_helper

    if isinstance(source, onnx.ModelProto):
        proto = source
    else:
        try:
            proto = onnx.load_from_string(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) \
                else onnx.load(source)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except Exception as e:
            raise ValueError(f"from_onnx: not a readable ONNX model ({type(e).__name__}: {e})") from e
    g = proto.graph
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < 7:
            raise _unsupported(f"opset {imp.version} (7 or later needed)")
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {}
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            raise _unsupported(f"operator {node.domain}.{node.op_type}")
        if node.op_type == "Constant":
            a = _attrs(node)
            if "value" not in a:
                raise _unsupported("a Constant without a tensor value")
            consts[node.output[0]] = numpy_helper.to_array(a["value"])
        for out in node.output:
            producer[out] = node
    rec = [n for n in g.node if n.op_type in _GATES]
    others = sorted({n.op_type for n in g.node if n.op_type not in _GATES and n.op_type not in _GLUE})
    if others:
        raise _unsupported(f"operators {others}")
    if not rec:
        raise _unsupported("no RNN, LSTM or GRU operator")
    op = rec[0].op_type
    if any(n.op_type != op for n in rec):
        raise _unsupported(f"mixed operators {sorted({n.op_type for n in rec})}")

    def trace(name):
        """The Transpose/Reshape/Squeeze/Identity nodes leading to ``name`` (in data order) and their source."""
        path = []
        while name in producer and producer[name].op_type in ("Transpose", "Reshape", "Squeeze", "Identity"):
            node = producer[name]
            path.append(node)
            name = node.input[0]
        return path[::-1], name

    def const_of(node, i):
        if len(node.input) <= i or not node.input[i]:
            return None
        if node.input[i] not in consts:
            raise _unsupported(f"{node.op_type} input {node.input[i]!r} is not a constant")
        return consts[node.input[i]]

    def glue_kind(path, width):
        """'' (none), 'bf' (batch-first transpose), 'squeeze' or 'merge' (ONNX Y to (T, N, width)), or '?'."""
        ops = [n.op_type for n in path if n.op_type != "Identity"]
        perms = [list(_attrs(n).get("perm", [])) for n in path if n.op_type == "Transpose"]
        if not ops:
            return ""
        if ops == ["Transpose"] and perms == [[1, 0, 2]]:
            return "bf"
        if ops == ["Squeeze"]:
            n = next(n for n in path if n.op_type == "Squeeze")
            axes = _attrs(n).get("axes")
            axes = list(axes) if axes is not None else const_of(n, 1)
            if axes is not None and [int(a) for a in np.ravel(axes)] == [1]:
                return "squeeze"
        if ops == ["Transpose", "Reshape"] and perms == [[0, 2, 1, 3]]:
            shape = const_of(next(n for n in path if n.op_type == "Reshape"), 1)
            if shape is not None and len(shape) == 3 and list(shape[:2]) == [0, 0] and \
                    int(shape[2]) in (-1, width):
                return "merge"
        return "?"

    graph_inputs = [i.name for i in g.input if i.name not in consts]
    H = None
    layers = []
    for k, node in enumerate(rec):
        a = _attrs(node)
        where = f"{op} node {k} ({node.name or 'unnamed'})"
        direction = _text(a.get("direction", b"forward"))
        if direction not in ("forward", "bidirectional"):
            raise _unsupported(f"{where}: direction {direction!r}")
        for bad in ("clip", "activation_alpha", "activation_beta"):
            if bad in a:
                raise _unsupported(f"{where}: attribute {bad}")
        if a.get("input_forget", 0) or a.get("layout", 0):
            raise _unsupported(f"{where}: input_forget or layout=1")
        dirs = 2 if direction == "bidirectional" else 1
        acts = [_text(s) for s in a.get("activations", [])]
        default = {"RNN": ["Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}[op]
        nonlinearity = "tanh"
        if op == "RNN" and acts in (["Relu"], ["Relu"] * dirs):
            nonlinearity = "relu"
        elif acts and acts not in (default, default * dirs):
            raise _unsupported(f"{where}: activations {acts}")
        W, R, B = const_of(node, 1), const_of(node, 2), const_of(node, 3)
        if W is None or R is None:
            raise _unsupported(f"{where}: no W or R")
        if op == "LSTM" and const_of(node, 7) is not None and np.any(const_of(node, 7)):
            raise _unsupported(f"{where}: peephole weights P")
        h = int(a.get("hidden_size", R.shape[-1]))
        G = _GATES[op]
        if W.ndim != 3 or R.shape != (dirs, G * h, h) or W.shape[:2] != (dirs, G * h) or \
                (B is not None and B.shape != (dirs, 2 * G * h)):
            raise _unsupported(f"{where}: W {W.shape}, R {R.shape}, B {None if B is None else B.shape} do not fit "
                               f"hidden_size={h} and direction={direction!r}")
        if H is not None and (h != H or dirs != layers[0]["dirs"]):
            raise _unsupported(f"{where}: hidden size or direction differs from the first layer's")
        H = h
        path, src = trace(node.input[0])
        kind = glue_kind(path, dirs * h)
        if k == 0:
            if src not in graph_inputs or kind not in ("", "bf"):
                raise _unsupported(f"{where}: X does not come from a graph input")
        elif src != rec[k - 1].output[0] or kind not in (("squeeze", "merge") if dirs == 1 else ("merge",)):
            raise _unsupported(f"{where}: X is not the previous layer's output")
        elif W.shape[2] != dirs * h:
            raise _unsupported(f"{where}: input size {W.shape[2]}; the layer below gives {dirs * h}")
        layers.append(dict(node=node, attrs=a, dirs=dirs, W=W, R=R, B=B, nonlinearity=nonlinearity, kind=kind))

    if len({L["nonlinearity"] for L in layers}) > 1:
        raise _unsupported("layers with different activations")
    reset_after = None
    if op == "GRU":
        lbr = {int(L["attrs"].get("linear_before_reset", 0)) for L in layers}
        if len(lbr) > 1:
            raise _unsupported("GRU layers with different linear_before_reset")
        reset_after = bool(lbr.pop())
    dtypes = {np.dtype(t.dtype) for L in layers for t in (L["W"], L["R"], L["B"]) if t is not None}
    if len(dtypes) != 1 or dtypes.copy().pop() not in (np.float32, np.float64):
        raise _unsupported(f"weights of dtypes {sorted(map(str, dtypes))} (float32 or float64 needed)")
    dtype = dtypes.pop()
    if not g.output:
        raise _unsupported("no graph output")
    path, src = trace(g.output[0].name)
    dirs = layers[0]["dirs"]
    if src != rec[-1].output[0]:
        raise _unsupported("the first graph output is not the last layer's output")
    batch_first = layers[0]["kind"] == "bf"
    if batch_first:
        path = [n for n in path if n.op_type != "Identity"]
        if not path or glue_kind(path[-1:], dirs * H) != "bf":
            raise _unsupported("x is batch-first but the output y is not transposed back")
        path = path[:-1]
    if glue_kind(path, dirs * H) not in (("squeeze", "merge") if dirs == 1 else ("merge",)):
        raise _unsupported(f"the output y is not the last layer's output as (T, N, dirs * hidden_size): "
                           f"{[n.op_type for n in path]}")

    meta = {p.key: p.value for p in proto.metadata_props}
    dropout = 0.0
    if _META_KEY in meta:
        try:
            dropout = float(json.loads(meta[_META_KEY]).get("dropout", 0.0))
        except (ValueError, TypeError, AttributeError):
            dropout = 0.0
    cls = {"RNN": models.RNN, "LSTM": models.LSTM, "GRU": models.GRU}[op]
    kw = dict(num_layers=len(layers), bidirectional=dirs == 2, batch_first=batch_first, dropout=dropout, dtype=dtype)
    if op == "RNN":
        kw["nonlinearity"] = layers[0]["nonlinearity"]
    if op == "GRU":
        kw["reset_after"] = reset_after
    model = cls(int(layers[0]["W"].shape[2]), H, **kw)
    order, sign = _row_map(op, H)
    inverse = np.argsort(order)
    sign = sign.astype(dtype)
    params = {}
    for k, L in enumerate(layers):
        for d in range(dirs):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            B = L["B"][d] if L["B"] is not None else np.zeros(2 * len(order), dtype)
            wb, rb = B[:len(order)], B[len(order):]
            params["W_ih" + sfx] = (L["W"][d] * sign[:, None])[inverse]
            params["W_hh" + sfx] = (L["R"][d] * sign[:, None])[inverse]
            if reset_after:
                b = wb.copy()
                b[:2 * H] += rb[:2 * H]
                params["b" + sfx] = (b * sign)[inverse]
                params["b_hn" + sfx] = rb[2 * H:].copy()
            else:
                params["b" + sfx] = ((wb + rb) * sign)[inverse]
    model.load_state_dict(params)
    return model
