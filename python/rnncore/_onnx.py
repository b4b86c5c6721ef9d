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
    """ONNX W, R, B and P (None unless the LSTM has peepholes) of one layer (all directions)."""
    p, H = model.parameters(), model.hidden_size
    order, sign = _row_map(op, H)
    sign = sign.astype(model.dtype)
    Ws, Rs, Bs, Ps = [], [], [], []
    for d in range(model.dirs):
        if getattr(model, "peephole", False):          # rnncore's rows p_i, p_f, p_o; ONNX's p_i, p_o, p_f
            Ps.append(p[f"P_l{layer}" + ("_reverse" if d else "")][[0, 2, 1]].reshape(-1))
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        Ws.append(p["W_ih" + sfx][order] * sign[:, None])
        Rs.append(p["W_hh" + sfx][order] * sign[:, None])
        wb = p["b" + sfx][order] * sign
        rb = np.zeros_like(wb)
        if "b_hn" + sfx in p:
            rb[2 * H:] = p["b_hn" + sfx]
        Bs.append(np.concatenate([wb, rb]))
    return np.stack(Ws), np.stack(Rs), np.stack(Bs), (np.stack(Ps) if Ps else None)


def _config(model):
    cfg = dict(type=type(model).__name__, input_size=model.input_size, hidden_size=model.hidden_size,
               num_layers=model.num_layers, bidirectional=model.bidirectional, batch_first=model.batch_first,
               dropout=model.dropout, dtype=model.dtype.name)
    if isinstance(model, models.RNN):
        cfg["nonlinearity"] = model.nonlinearity
    if isinstance(model, models.GRU):
        cfg["reset_after"] = model.reset_after
    if getattr(model, "peephole", False):
        cfg["peephole"] = True
    return cfg


def build_onnx(model, x_only=False, shapes="rnncore"):
    """The onnx.ModelProto that ``to_onnx`` writes (see there for ``x_only`` and ``shapes``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    _, op = _base(model)
    if not isinstance(x_only, (bool, np.bool_)):
        raise TypeError(f"x_only: expected a bool, got {type(x_only).__name__}")
    if shapes not in ("rnncore", "onnx"):
        raise ValueError(f"shapes: expected 'rnncore' or 'onnx', got {shapes!r}")
    for name, what in (("proj_size", "projection"), ("layer_norm", "layer normalisation")):
        if getattr(model, name, False):
            raise ValueError(f"to_onnx: LSTM({name}={getattr(model, name)}) has no ONNX equivalent (the ONNX LSTM "
                             f"operator has no {what})")
    model._weights()                        # a parameter of the wrong shape or dtype is named here
    L, dirs, H, D = model.num_layers, model.dirs, model.hidden_size, model.input_size
    elem = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}[model.dtype.type]
    has_c = op == "LSTM"
    bf = model.batch_first
    x_dims = ["N", "T", D] if bf else ["T", "N", D]
    if shapes == "rnncore":
        y_dims = ["N", "T", dirs * H] if bf else ["T", "N", dirs * H]
        out_s_dims = [L * dirs, "N", H]
    else:
        y_dims = ["N", "T", dirs, H] if bf else ["T", dirs, "N", H]
        out_s_dims = ["N", L * dirs, H] if bf else [L * dirs, "N", H]
    s_dims = [L * dirs, "N", H]
    inputs = [helper.make_tensor_value_info("x", elem, x_dims)]
    if not x_only:
        inputs.append(helper.make_tensor_value_info("h0", elem, s_dims))
        if has_c:
            inputs.append(helper.make_tensor_value_info("c0", elem, s_dims))
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["N"]))
    outputs = [helper.make_tensor_value_info("y", elem, y_dims),
               helper.make_tensor_value_info("h_n", elem, out_s_dims)]
    if has_c:
        outputs.append(helper.make_tensor_value_info("c_n", elem, out_s_dims))

    nodes, inits = [], []

    def const(name, value):
        if all(t.name != name for t in inits):
            inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(name, *values):
        return const(name, np.array(values, np.int64))

    if not x_only:
        nodes.append(helper.make_node("Cast", ["lengths"], ["lengths_i32"], to=TensorProto.INT32))
    x = "x"
    if bf:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]))
        x = "x_tm"
    attrs = dict(hidden_size=H, direction="bidirectional" if dirs == 2 else "forward")
    if op == "GRU":
        attrs["linear_before_reset"] = int(model.reset_after)
    if op == "RNN" and model.nonlinearity == "relu":
        attrs["activations"] = ["Relu"] * dirs
    finals = {"h": [], "c": []}
    direct = shapes == "rnncore" and L == 1       # outputs named h_n, c_n by the node itself
    for layer in range(L):
        W, R, B, P = _layer_tensors(model, op, layer)
        states = [] if x_only else ["h0", "c0"][:2 if has_c else 1]
        if L > 1 and states:
            bounds = [ints(f"start_l{layer}", layer * dirs), ints(f"end_l{layer}", (layer + 1) * dirs),
                      ints("axis0", 0)]
            for src in list(states):
                nodes.append(helper.make_node("Slice", [src] + bounds, [f"{src}_l{layer}"]))
            states = [f"{src}_l{layer}" for src in states]
        outs = [f"Y_l{layer}", f"Y_h_l{layer}"] + ([f"Y_c_l{layer}"] if has_c else [])
        if direct:
            outs[1:] = ["h_n", "c_n"][:len(outs) - 1]
        node_inputs = [x, const(f"W_l{layer}", W), const(f"R_l{layer}", R), const(f"B_l{layer}", B)]
        if not x_only:
            node_inputs += ["lengths_i32"] + states
        if P is not None:
            node_inputs += [""] * (7 - len(node_inputs)) + [const(f"P_l{layer}", P)]
        nodes.append(helper.make_node(op, node_inputs, outs, name=f"{op}_l{layer}", **attrs))
        finals["h"].append(outs[1])
        if has_c:
            finals["c"].append(outs[2])
        last = layer == L - 1
        if last and shapes == "onnx":
            if bf:
                nodes.append(helper.make_node("Transpose", [outs[0]], ["y"], perm=[2, 0, 1, 3]))
            else:
                nodes.append(helper.make_node("Identity", [outs[0]], ["y"]))
            break
        y = "y" if last and not bf else f"y_l{layer}"
        if dirs == 1:
            nodes.append(helper.make_node("Squeeze", [outs[0], ints("axis1", 1)], [y]))
        else:
            nodes.append(helper.make_node("Transpose", [outs[0]], [f"Y_tnd_l{layer}"], perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"Y_tnd_l{layer}", ints("merge_dirs", 0, 0, -1)], [y]))
        x = y
    if bf and shapes == "rnncore":
        nodes.append(helper.make_node("Transpose", [x], ["y"], perm=[1, 0, 2]))
    if not direct:
        for key, name in (("h", "h_n"), ("c", "c_n")):
            if key == "c" and not has_c:
                continue
            merged = f"{name}_tm" if bf and shapes == "onnx" else name
            if L > 1:
                nodes.append(helper.make_node("Concat", finals[key], [merged], axis=0))
            else:
                nodes.append(helper.make_node("Identity", finals[key], [merged]))
            if merged != name:
                nodes.append(helper.make_node("Transpose", [merged], [name], perm=[1, 0, 2]))

    graph = helper.make_graph(nodes, f"rnncore_{type(model).__name__}", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rnncore",
                              ir_version=_IR_VERSION)
    from . import __version__
    proto.producer_version = __version__
    helper.set_model_props(proto, {_META_KEY: json.dumps(_config(model))})
    onnx.checker.check_model(proto)
    return proto


def to_onnx(model, path, x_only=False, shapes="rnncore"):
    """Write ``model`` as an ONNX graph (opset 17), one RNN/LSTM/GRU operator per layer; see
    ``Model.to_onnx`` and README.md ("ONNX") for its inputs and outputs. Returns ``path``."""
    import onnx

    proto = build_onnx(model, x_only=x_only, shapes=shapes)
    onnx.save(proto, path)
    return path


# ---- reading --------------------------------------------------------------------------------
#
# A graph is read in three parts. Constants: initializers and Constant nodes, and whatever the
# folder below computes from them with onnx.reference (weights behind Slice/Concat/... chains), or
# knows to be one value everywhere whatever its run-time shape (zero states made by Expand or
# ConstantOfShape). The recurrent nodes: their attributes and weights (_read_node). The glue: the
# data path from the graph input x to the first layer and from layer to layer may only move data
# (checked axis by axis, _Axes), and what the graph outputs and feeds the initial states and
# sequence_lens may only be data movement on the recurrent outputs, graph inputs and constants
# (replayed with onnx.reference by OnnxImport.run).

_RECURRENT = ("RNN", "LSTM", "GRU")
_DEFAULT_ACTS = {"RNN": ["Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}
# ops that only move or reshape data (or read shapes): allowed around the recurrent nodes
_MOVE = {"Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Slice", "Gather",
         "Split", "Cast", "Shape", "Size", "ConstantOfShape", "Expand"}
# ops evaluated (with onnx.reference) when all their inputs are constant
_FOLD = _MOVE | {"Constant", "Add", "Sub", "Mul", "Div", "Neg", "Equal", "Where", "Not", "Min", "Max", "Abs"}
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Neg", "Equal", "Where", "Not", "Min", "Max", "Abs", "Cast",
                "Identity"}
_LAYOUT = {"Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}  # the x and layer-to-layer path
_SUBGRAPH_OPS = ("If", "Loop", "Scan")
MAX_ELEMENTS = 2**28           # one constant tensor read or folded: at most this many elements
_NODE_HINT = ("to take one recurrent node out of a larger graph, list them with rnncore.onnx.find_recurrent(model) "
              "and pass from_onnx(model, node=name)")


def _err(msg):
    return ValueError(f"from_onnx: {msg}")


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def _label(node, index):
    return node.name or f"{node.op_type}#{index}"


def _attrs(node, where):
    from onnx import helper
    try:
        return {_text(a.name): helper.get_attribute_value(a) for a in node.attribute}
    except Exception as e:
        raise _err(f"{where}: unreadable attribute ({type(e).__name__}: {e})") from None


_ATTR_TYPES = {"hidden_size": "int", "direction": "str", "activations": "strs", "activation_alpha": "floats",
               "activation_beta": "floats", "clip": "float", "layout": "int", "input_forget": "int",
               "linear_before_reset": "int"}


def _typed(a, where):
    """The recurrent node's attributes, each of the type ONNX defines for it."""
    ok = {"int": lambda v: isinstance(v, int), "float": lambda v: isinstance(v, (int, float)),
          "str": lambda v: isinstance(v, (str, bytes)),
          "strs": lambda v: isinstance(v, list) and all(isinstance(x, (str, bytes)) for x in v),
          "floats": lambda v: isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)}
    for key, v in a.items():
        if not isinstance(key, str):
            raise _err(f"{where}: an attribute name is not text ({key!r})")
        kind = _ATTR_TYPES.get(key)
        if kind is None:
            raise _err(f"{where}: attribute {key!r} is not one rnncore knows")
        if not ok[kind](v):
            raise _err(f"{where}: attribute {key!r} should be {kind}, got {type(v).__name__}")
    try:
        return {k: ([_text(x) for x in v] if _ATTR_TYPES[k] == "strs" else _text(v)) for k, v in a.items()}
    except UnicodeDecodeError:
        raise _err(f"{where}: an attribute's text is not UTF-8") from None


class _Ctx:
    """What the whole read shares: the folder external data may come from, the opset."""

    def __init__(self, proto, base_dir):
        self.base_dir = base_dir
        self.opset = max([i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")] or [1])

    def external(self, t, where):
        """The bytes of tensor ``t``'s external data, read only from inside base_dir."""
        import os
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        if self.base_dir is None:
            raise _err(f"{where}: tensor {t.name!r} keeps its data in an external file ({location!r}); a model "
                       f"given as bytes or a ModelProto needs base_dir= naming the folder that holds it")
        parts = location.replace("\\", "/").split("/")
        if not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ".." in parts or \
                ":" in location:
            raise _err(f"{where}: tensor {t.name!r}: external data location {location!r} is not a plain relative "
                       f"path inside base_dir")
        base = os.path.realpath(self.base_dir)
        full = os.path.realpath(os.path.join(base, location))
        if os.path.commonpath([base, full]) != base:
            raise _err(f"{where}: tensor {t.name!r}: external data {location!r} resolves outside base_dir")
        if not os.path.isfile(full):
            raise _err(f"{where}: tensor {t.name!r}: external data file {location!r} not found in base_dir")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise _err(f"{where}: tensor {t.name!r}: external data offset/length are not integers") from None
        return full, offset, length


_NP_TYPES = None


def _np_types():
    global _NP_TYPES
    if _NP_TYPES is None:
        from onnx import TensorProto as P
        _NP_TYPES = {P.FLOAT: np.float32, P.DOUBLE: np.float64, P.FLOAT16: np.float16, P.INT8: np.int8,
                     P.UINT8: np.uint8, P.INT16: np.int16, P.UINT16: np.uint16, P.INT32: np.int32,
                     P.INT64: np.int64, P.UINT32: np.uint32, P.UINT64: np.uint64, P.BOOL: np.bool_}
    return _NP_TYPES


def _tensor(t, ctx, where):
    """A TensorProto as an ndarray: dims and data length checked before anything is allocated."""
    import os

    from onnx import TensorProto, numpy_helper
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims):
        raise _err(f"{where}: tensor {t.name!r} has negative dims {dims}")
    n = 1
    for d in dims:
        n *= d
    if n > MAX_ELEMENTS:
        raise _err(f"{where}: tensor {t.name!r} of dims {dims} has {n} elements (at most {MAX_ELEMENTS} are read)")
    dt = _np_types().get(t.data_type)
    if dt is None:
        raise _err(f"{where}: tensor {t.name!r} has ONNX data type {t.data_type}, which rnncore does not read")
    itemsize = np.dtype(dt).itemsize
    if t.data_location == TensorProto.EXTERNAL:
        path, offset, length = ctx.external(t, where)
        want = n * itemsize
        if length is not None and length != want:
            raise _err(f"{where}: tensor {t.name!r}: external data length {length} but dims {dims} need {want} bytes")
        if offset < 0 or offset + want > os.path.getsize(path):
            raise _err(f"{where}: tensor {t.name!r}: external data (offset {offset}, {want} bytes) runs past the "
                       f"end of its file")
        with open(path, "rb") as f:
            f.seek(offset)
            raw = f.read(want)
        return np.frombuffer(raw, np.dtype(dt).newbyteorder("<")).astype(dt).reshape(dims)
    if t.HasField("raw_data"):
        if len(t.raw_data) != n * itemsize:
            raise _err(f"{where}: tensor {t.name!r}: {len(t.raw_data)} bytes of data for dims {dims} "
                       f"({n * itemsize} expected)")
    else:
        field = {np.float32: "float_data", np.float64: "double_data", np.int64: "int64_data",
                 np.uint32: "uint64_data", np.uint64: "uint64_data"}.get(dt, "int32_data")
        count = len(getattr(t, field))
        if count != n:
            raise _err(f"{where}: tensor {t.name!r}: {count} values for dims {dims} ({n} expected)")
    try:
        return np.asarray(numpy_helper.to_array(t))
    except Exception as e:
        raise _err(f"{where}: tensor {t.name!r} cannot be read ({type(e).__name__}: {e})") from None


class _Val:
    """What is known of a tensor before the graph runs: a constant array, one value everywhere
    (``fill``, the shape known only at run time), or nothing (run time)."""

    __slots__ = ("kind", "array", "fill", "dtype")

    def __init__(self, kind, array=None, fill=None, dtype=None):
        self.kind, self.array, self.fill, self.dtype = kind, array, fill, dtype

    @property
    def uniform(self):
        """The one value of a constant or fill, or None."""
        if self.kind == "fill":
            return self.fill
        if self.kind == "const" and self.array.size and np.all(self.array == self.array.flat[0]):
            return self.array.flat[0].item()
        return None


_RUN = _Val("run")


def _count(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


class _Scope:
    """One graph (the main graph or a subgraph) and what is constant in it; names it does not
    define come from the enclosing scope."""

    def __init__(self, graph, ctx, parent=None, path=""):
        self.graph, self.ctx, self.parent, self.path = graph, ctx, parent, path
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {}
        self.index = {}
        for i, node in enumerate(graph.node):
            self.index[id(node)] = i
            for o in node.output:
                if o:
                    self.producer[o] = node
        self.inputs = {v.name for v in graph.input if v.name not in self.inits}
        self.memo = {}

    def where(self, node):
        return f"node {self.qualified(node)!r} ({node.op_type})"

    def qualified(self, node):
        label = _label(node, self.index.get(id(node), 0))
        return f"{self.path}/{label}" if self.path else label

    def defines(self, name):
        return name in self.inits or name in self.producer or name in self.inputs

    def value(self, name, depth=0):
        if not name:
            return None
        if name in self.memo:
            return self.memo[name]
        if depth > 256:
            raise _err(f"constant expression for {name!r} nests deeper than 256 nodes")
        if name in self.inits:
            v = _Val("const", _tensor(self.inits[name], self.ctx, f"initializer {name!r}"))
        elif name in self.inputs:
            v = _RUN
        elif name in self.producer:
            node = self.producer[name]
            for out, val in zip(node.output, self._evaluate(node, depth)):
                if out:
                    self.memo[out] = val
            return self.memo[name]
        elif self.parent is not None:
            v = self.parent.value(name, depth + 1)
        else:
            raise _err(f"tensor {name!r} is used but never defined")
        self.memo[name] = v
        return v

    def _evaluate(self, node, depth):
        """The _Val of each output of ``node``."""
        n_out = len(node.output)
        where = self.where(node)
        if node.domain not in ("", "ai.onnx") or node.op_type not in _FOLD:
            return [_RUN] * n_out
        a = _attrs(node, where)
        if node.op_type == "Constant":
            if "value" in a:
                return [_Val("const", _tensor(a["value"], self.ctx, where))]
            for key, dt in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                            ("value_ints", np.int64)):
                if key in a:
                    return [_Val("const", np.array(a[key], dt))]
            raise _err(f"{where}: a Constant without a tensor value")
        vals = [self.value(i, depth + 1) for i in node.input]
        present = [v for v in vals if v is not None]
        if all(v.kind == "const" for v in present):
            arrays = [None if v is None else v.array for v in vals]
            self._check_size(node, arrays, a, where)
            return [_Val("const", r) for r in self._run(node, arrays, where)]
        op = node.op_type
        data = vals[0] if vals else None
        if op == "ConstantOfShape":
            t = a.get("value")
            fill = _tensor(t, self.ctx, where) if t is not None else np.zeros(1, np.float32)
            return [_Val("fill", fill=fill.flat[0].item(), dtype=fill.dtype)]
        if op == "Expand" and data is not None and data.uniform is not None:
            dt = data.dtype if data.kind == "fill" else data.array.dtype
            return [_Val("fill", fill=data.uniform, dtype=dt)]
        if data is not None and data.kind == "fill" and op in ("Identity", "Reshape", "Transpose", "Squeeze",
                                                              "Unsqueeze", "Flatten", "Slice", "Gather", "Cast"):
            dt = data.dtype
            fill = data.fill
            if op == "Cast":
                dt = np.dtype(_np_types().get(a.get("to"), np.float32))
                fill = np.array(fill).astype(dt).item()
            return [_Val("fill", fill=fill, dtype=dt)] * n_out
        if op == "Concat" and present and all(v.uniform is not None for v in present) and \
                len({v.uniform for v in present}) == 1:
            v0 = present[0]
            return [_Val("fill", fill=v0.uniform, dtype=v0.dtype if v0.kind == "fill" else v0.array.dtype)]
        return [_RUN] * n_out

    @staticmethod
    def _check_size(node, arrays, a, where):
        op = node.op_type
        try:
            if op == "ConstantOfShape":
                n = _count(np.ravel(arrays[0]))
                if any(int(d) < 0 for d in np.ravel(arrays[0])):
                    raise _err(f"{where}: negative shape {np.ravel(arrays[0]).tolist()}")
            elif op == "Expand":
                n = _count(np.broadcast_shapes(arrays[0].shape, tuple(int(d) for d in np.ravel(arrays[1]))))
            elif op in _ELEMENTWISE:
                n = _count(np.broadcast_shapes(*[x.shape for x in arrays if x is not None]))
            elif op == "Gather":
                axis = int(a.get("axis", 0))
                data, idx = arrays[0], arrays[1]
                n = data.size // max(data.shape[axis], 1) * idx.size if data.ndim else idx.size
            else:
                n = sum(x.size for x in arrays if x is not None)
        except ValueError as e:
            if str(e).startswith("from_onnx:"):
                raise
            raise _err(f"{where}: inputs of shapes {[None if x is None else x.shape for x in arrays]} do not "
                       f"fit ({e})") from None
        except (IndexError, TypeError) as e:
            raise _err(f"{where}: cannot evaluate ({type(e).__name__}: {e})") from None
        if n > MAX_ELEMENTS:
            raise _err(f"{where}: would make a constant of {n} elements (at most {MAX_ELEMENTS})")

    def _run(self, node, arrays, where):
        from onnx.reference import ReferenceEvaluator
        feeds = {name: arr for name, arr in zip(node.input, arrays) if name}
        try:
            out = ReferenceEvaluator(node, opsets={"": self.ctx.opset}).run(None, feeds)
        except Exception as e:
            raise _err(f"{where}: cannot evaluate its constant inputs ({type(e).__name__}: {e})") from None
        return [np.asarray(o) for o in out]


# ---- the axes of the data path ----------------------------------------------------------------

class _Axes:
    """The layout of a tensor on the data path: one tuple of named atoms per axis ("T", "N", "d" for the
    directions, "H", "D" or the graph input's "x0".."x2"), sizes known where the graph fixes them."""

    def __init__(self, axes, sizes, trivial):
        self.axes = [tuple(a) for a in axes]
        self.sizes = sizes                  # atom -> int or None
        self.trivial = trivial              # atoms of size 1 (left out when layouts are compared)

    def norm(self):
        return [tuple(a for a in ax if a not in self.trivial) for ax in self.axes]

    def size(self, ax):
        n = 1
        for a in ax:
            if a in self.trivial:
                continue
            s = self.sizes.get(a)
            if s is None:
                return None
            n *= s
        return n

    def like(self, axes):
        return _Axes(axes, self.sizes, self.trivial)


def _through(scope, node, ax, where):
    """The layout after one layout node, or None when it cannot be followed."""
    op = node.op_type
    a = _attrs(node, where)
    rank = len(ax.axes)

    def const_input(i):
        if len(node.input) <= i or not node.input[i]:
            return None
        v = scope.value(node.input[i])
        if v is None or v.kind != "const":
            raise _err(f"{where}: its {['data', 'axes/shape'][min(i, 1)]} input {node.input[i]!r} is not a constant")
        return [int(s) for s in np.ravel(v.array)]

    if op == "Identity":
        return ax
    if op == "Transpose":
        perm = list(a.get("perm", range(rank - 1, -1, -1)))
        if sorted(perm) != list(range(rank)):
            return None
        return ax.like([ax.axes[p] for p in perm])
    if op == "Squeeze":
        axes = a.get("axes") if "axes" in a else const_input(1)
        if axes is None:
            axes = [i for i, g in enumerate(ax.axes) if ax.size(g) == 1]
        axes = sorted({int(i) % rank for i in axes}) if rank else []
        if any(ax.size(ax.axes[i]) != 1 for i in axes):
            return None
        return ax.like([g for i, g in enumerate(ax.axes) if i not in axes])
    if op == "Unsqueeze":
        axes = a.get("axes") if "axes" in a else const_input(1)
        if axes is None:
            return None
        out_rank = rank + len(axes)
        axes = sorted(int(i) % out_rank for i in axes)
        out = list(ax.axes)
        for i in axes:
            out.insert(i, ())
        return ax.like(out)
    if op == "Flatten":
        k = int(a.get("axis", 1)) % (rank + 1)
        return ax.like([sum(ax.axes[:k], ()), sum(ax.axes[k:], ())])
    if op == "Reshape":
        return _reshape(ax, const_input(1), bool(a.get("allowzero", 0)))
    return None


def _reshape(ax, target, allowzero):
    """Reshape as a regrouping of atoms: merges and splits along atom boundaries only."""
    atoms = [(i, t) for i, g in enumerate(ax.axes) for t in g if t not in ax.trivial]
    out = [None] * len(target)
    if target.count(-1) > 1:
        return None
    minus = target.index(-1) if -1 in target else len(target)
    lo, hi = 0, len(atoms)

    def take(i, s, front):
        nonlocal lo, hi
        if s == 0 and not allowzero:
            if i >= len(ax.axes):
                return None
            mine = [k for k, (j, _) in enumerate(atoms) if j == i]
            if front and (mine and mine[0] != lo):
                return None
            if not front and (mine and mine[-1] != hi - 1):
                return None
            if front:
                lo += len(mine)
            else:
                hi -= len(mine)
            return tuple(t for _, t in (atoms[k] for k in mine))
        if s == 1:
            return ()
        got, n = [], 1
        while n < s:
            if lo >= hi:
                return None
            k = lo if front else hi - 1
            size = ax.sizes.get(atoms[k][1])
            if size is None:
                return None
            n *= size
            got.append(atoms[k][1])
            if front:
                lo += 1
            else:
                hi -= 1
        return tuple(got if front else got[::-1]) if n == s else None

    for i in range(minus):
        out[i] = take(i, target[i], True)
        if out[i] is None:
            return None
    for i in range(len(target) - 1, minus, -1):
        out[i] = take(i, target[i], False)
        if out[i] is None:
            return None
    if minus < len(target):
        out[minus] = tuple(t for _, t in atoms[lo:hi])
    elif lo != hi:
        return None
    return ax.like(out)


def _trace(scope, start, stop):
    """Walk back from tensor ``start`` through layout nodes to a tensor in ``stop`` (a set of names):
    (source name, the layout nodes in data order), or (None, why not)."""
    chain, name, seen = [], start, set()
    while name not in stop:
        node = scope.producer.get(name)
        if name in seen:
            return None, f"goes round a cycle of nodes through {name!r}"
        seen.add(name)
        if node is None or node.op_type not in _LAYOUT:
            what = "a graph input or constant" if node is None else f"{scope.where(node)}"
            return None, (f"comes from {what}, not from the graph input x or the previous layer through "
                          f"Transpose/Reshape/Squeeze/Unsqueeze/Flatten/Identity")
        chain.append(node)
        name = node.input[0]
    return name, chain[::-1]


def _apply(scope, chain, ax):
    """The layout after the nodes of ``chain``, or a string saying which node could not be followed."""
    for node in chain:
        ax = _through(scope, node, ax, scope.where(node))
        if ax is None:
            return f"{scope.where(node)} rearranges it in a way rnncore cannot represent"
    return ax


# ---- one recurrent node -----------------------------------------------------------------------

def _peepholes(info, P):
    """The LSTM's P input, (dirs, 3*H) with ONNX's rows p_i, p_o, p_f per direction, as rnncore's
    P_l{k} per direction, (dirs, 3, H) with rows p_i, p_f, p_o; None when absent or all zero (no
    peepholes). This is the one place that reads P."""
    if P is None or P.uniform == 0:
        return None
    if P.kind != "const":
        raise _err(f"{info['where']}: its peepholes (input P) are computed at run time, not constant")
    dirs, H = info["dirs"], info["H"]
    if P.array.shape != (dirs, 3 * H):
        raise _err(f"{info['where']}: peepholes P of shape {P.array.shape} ({(dirs, 3 * H)} expected)")
    if P.array.dtype != info["dtype"]:
        raise _err(f"{info['where']}: P has dtype {P.array.dtype}, W has {info['dtype']} (one dtype expected)")
    return P.array.reshape(dirs, 3, H)[:, [0, 2, 1]]


def _read_node(scope, node):
    """The recurrent node's configuration and weights, checked; one ValueError per feature otherwise."""
    op = node.op_type
    where = scope.where(node)
    a = _typed(_attrs(node, where), where)
    info = dict(node=node, op=op, where=where, name=scope.qualified(node))
    direction = _text(a.get("direction", "forward"))
    if direction == "reverse":
        raise _err(f"{where}: direction='reverse' (rnncore's layers are forward or bidirectional)")
    if direction not in ("forward", "bidirectional"):
        raise _err(f"{where}: direction={direction!r} is not an ONNX direction")
    dirs = 2 if direction == "bidirectional" else 1
    if "clip" in a:
        raise _err(f"{where}: clip={a['clip']!r} (rnncore does not clip cell inputs)")
    for key in ("activation_alpha", "activation_beta"):
        if key in a:
            raise _err(f"{where}: {key}={list(a[key])!r} (rnncore's activations take no parameters)")
    if int(a.get("input_forget", 0)) != 0:
        raise _err(f"{where}: input_forget={a['input_forget']} (coupled input and forget gates)")
    layout = a.get("layout", 0)
    if layout not in (0, 1):
        raise _err(f"{where}: layout={layout!r} (0 or 1 expected)")
    acts = [_text(s) for s in a.get("activations", [])]
    default = _DEFAULT_ACTS[op]
    nonlinearity = "tanh"
    if op == "RNN" and acts in (["Relu"], ["Relu"] * dirs):
        nonlinearity = "relu"
    elif acts and acts not in (default, default * dirs):
        raise _err(f"{where}: activations {acts} (rnncore's are {default}" +
                   (" or ['Relu'] for RNN)" if op == "RNN" else ")"))
    lbr = 0
    if op == "GRU":
        lbr = a.get("linear_before_reset", 0)
        if lbr not in (0, 1):
            raise _err(f"{where}: linear_before_reset={lbr!r} (0 or 1 expected)")
    inputs = list(node.input) + [""] * (8 - len(node.input))
    G = _GATES[op]
    vals = {}
    for i, role in ((1, "W"), (2, "R"), (3, "B")):
        v = scope.value(inputs[i])
        if v is None and role != "B":
            raise _err(f"{where}: no {role} input")
        if v is not None and v.kind != "const":
            raise _err(f"{where}: its weights {role} ({inputs[i]!r}) are computed at run time, not constant")
        vals[role] = None if v is None else v.array
    W, R, B = vals["W"], vals["R"], vals["B"]
    dtype = W.dtype
    for role, arr in (("W", W), ("R", R), ("B", B)):
        if arr is not None and arr.dtype not in (np.float32, np.float64):
            raise _err(f"{where}: {role} has dtype {arr.dtype} (rnncore computes in float32 or float64)")
        if arr is not None and arr.dtype != dtype:
            raise _err(f"{where}: {role} has dtype {arr.dtype}, W has {dtype} (one dtype expected)")
    if R.ndim != 3 or R.shape[0] != dirs or R.shape[1] != G * R.shape[2] or R.shape[2] < 1:
        raise _err(f"{where}: R of shape {R.shape} does not fit direction={direction!r} ({G} gates: "
                   f"(dirs, {G}*H, H) expected)")
    H = R.shape[2]
    if "hidden_size" in a and a["hidden_size"] != H:
        raise _err(f"{where}: hidden_size={a['hidden_size']!r} but R has shape {R.shape}")
    if W.ndim != 3 or W.shape[:2] != (dirs, G * H) or W.shape[2] < 1:
        raise _err(f"{where}: W of shape {W.shape} does not fit R's {R.shape} ((dirs, {G}*H, D) expected)")
    if B is not None and B.shape != (dirs, 2 * G * H):
        raise _err(f"{where}: B of shape {B.shape} ((dirs, {2 * G}*H) = {(dirs, 2 * G * H)} expected)")
    states = {}
    for i, role in ((5, "initial_h"), (6, "initial_c")):
        if role == "initial_c" and op != "LSTM":
            continue
        states[role] = (inputs[i], scope.value(inputs[i]))
    info.update(dirs=dirs, H=H, D=W.shape[2], layout=layout, nonlinearity=nonlinearity, reset_after=bool(lbr),
                W=W, R=R, B=B, dtype=dtype, X=inputs[0], states=states,
                lengths=(inputs[4], scope.value(inputs[4])),
                outs=(list(node.output) + ["", "", ""])[:3])
    info["P"] = _peepholes(info, scope.value(inputs[7])) if op == "LSTM" else None
    return info


def _params(layers, op, H, reset_after, dtype, peephole=False):
    """rnncore's parameter arrays from the layers' ONNX W, R, B (and P)."""
    order, sign = _row_map(op, H)
    inverse = np.argsort(order)
    sign = sign.astype(dtype)
    params = {}
    for k, L in enumerate(layers):
        for d in range(L["dirs"]):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            B = L["B"][d] if L["B"] is not None else np.zeros(2 * len(order), dtype)
            wb, rb = B[:len(order)], B[len(order):]
            params["W_ih" + sfx] = np.ascontiguousarray((L["W"][d] * sign[:, None])[inverse])
            params["W_hh" + sfx] = np.ascontiguousarray((L["R"][d] * sign[:, None])[inverse])
            if reset_after:
                b = wb.copy()
                b[:2 * H] += rb[:2 * H]
                params["b" + sfx] = (b * sign)[inverse]
                params["b_hn" + sfx] = rb[2 * H:].copy()
            else:
                params["b" + sfx] = ((wb + rb) * sign)[inverse]
            if peephole:
                params["P" + sfx] = L["P"][d] if L["P"] is not None else np.zeros((3, H), dtype)
    return params


def _build_model(layers, batch_first, dropout=0.0):
    first = layers[0]
    op, H, dirs, dtype = first["op"], first["H"], first["dirs"], first["dtype"]
    for L in layers[1:]:
        for key, what in (("op", "operator"), ("H", "hidden size"), ("dirs", "direction"), ("dtype", "dtype"),
                          ("nonlinearity", "activation"), ("reset_after", "linear_before_reset")):
            if L[key] != first[key]:
                raise _err(f"{L['where']}: its {what} ({L[key]}) differs from the first layer's ({first[key]}); "
                           f"an rnncore model's layers share it")
    cls = {"RNN": models.RNN, "LSTM": models.LSTM, "GRU": models.GRU}[op]
    config = dict(input_size=int(first["D"]), hidden_size=int(H), num_layers=len(layers), bidirectional=dirs == 2,
                  batch_first=batch_first, dropout=dropout, dtype=dtype)
    if op == "RNN":
        config["nonlinearity"] = first["nonlinearity"]
    if op == "GRU":
        config["reset_after"] = first["reset_after"]
    peephole = any(L["P"] is not None for L in layers)
    if peephole:
        config["peephole"] = True
    model = cls._unparameterised(config)
    params = _params(layers, op, H, first["reset_after"], dtype, peephole)
    model._adopt({k: np.asarray(v, dtype) for k, v in params.items()})
    return model


# ---- loading ----------------------------------------------------------------------------------

def _load(source, base_dir):
    """(ModelProto, base_dir for its external data); external data is never read here."""
    import os

    import onnx
    if base_dir is not None:
        if not isinstance(base_dir, (str, os.PathLike)):
            raise TypeError(f"base_dir: expected a folder path, got {type(base_dir).__name__}")
        if not os.path.isdir(base_dir):
            raise ValueError(f"base_dir: {os.fspath(base_dir)!r} is not a folder")
    if isinstance(source, onnx.ModelProto):
        return source, base_dir
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:            # FileNotFoundError etc. stay what they are
            data = f.read()
        if base_dir is None:
            base_dir = os.path.dirname(os.path.abspath(source))
    else:
        raise TypeError(f"source: expected a path, bytes or an onnx.ModelProto, got {type(source).__name__}")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:
        raise _err(f"not a readable ONNX model ({type(e).__name__}: {e})") from None
    return proto, base_dir


def _check_opset(proto):
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < 7:
            raise _err(f"opset {imp.version} (7 or later needed)")


def _walk(scope, out):
    """Every recurrent node in ``scope`` and its subgraphs: (scope, node)."""
    for i, node in enumerate(scope.graph.node):
        if node.op_type in _RECURRENT and node.domain in ("", "ai.onnx"):
            out.append((scope, node))
        for a in node.attribute:
            graphs = [a.g] if a.HasField("g") else list(a.graphs)
            for k, g in enumerate(graphs):
                tag = a.name if len(graphs) == 1 else f"{a.name}[{k}]"
                _walk(_Scope(g, scope.ctx, scope, f"{scope.qualified(node)}:{tag}"), out)
    return out


class RecurrentNode:
    """One RNN/LSTM/GRU node of a graph, as ``rnncore.onnx.find_recurrent`` lists it.

    name        the node's name (or "LSTM#3", its op and index, when it has none)
    path        where it is: "name" in the main graph, "outer:then_branch/name" inside a subgraph
                (``from_onnx(model, node=path)`` takes either when the name is unique)
    op_type     "RNN", "LSTM" or "GRU"
    attributes  its attributes (strings decoded)
    inputs, outputs   its input and output tensor names ("" for an absent optional one)
    constant_weights  whether W, R (and B) are constants (initializers, Constant nodes or foldable)
    problem     None when ``from_onnx(model, node=path)`` reads it, else the ValueError's message
    """

    def __init__(self, scope, node):
        self.name = _label(node, scope.index[id(node)])
        self.path = scope.qualified(node)
        self.op_type = node.op_type
        self.attributes = {k: ([_text(x) for x in v] if isinstance(v, list) and v and isinstance(v[0], bytes)
                               else _text(v)) for k, v in _attrs(node, self.path).items()}
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        try:
            self.constant_weights = all(scope.value(n).kind == "const" for n in node.input[1:4] if n)
        except ValueError:
            self.constant_weights = False
        try:
            _node_import(scope, node, for_model=True)
            self.problem = None
        except ValueError as e:
            self.problem = str(e)
        except RecursionError:
            self.problem = "from_onnx: the graph nests too deeply to read"

    def __repr__(self):
        return (f"RecurrentNode({self.path!r}, {self.op_type}, hidden_size={self.attributes.get('hidden_size')}, "
                f"direction={self.attributes.get('direction', 'forward')!r}, "
                f"constant_weights={self.constant_weights}, problem={self.problem!r})")


def find_recurrent(source, base_dir=None):
    """Every RNN/LSTM/GRU node of an ONNX model (path, bytes or ModelProto), in the main graph and inside
    If/Loop/Scan subgraphs, as a list of :class:`RecurrentNode`."""
    proto, base_dir = _load(source, base_dir)
    _check_opset(proto)
    ctx = _Ctx(proto, base_dir)
    try:
        return [RecurrentNode(scope, node) for scope, node in _walk(_Scope(proto.graph, ctx), [])]
    except RecursionError:
        raise _err("the graph nests too deeply to read") from None


def _select(proto, ctx, node):
    if not isinstance(node, str):
        raise TypeError(f"node: expected a node name or path (str), got {type(node).__name__}")
    found = _walk(_Scope(proto.graph, ctx), [])
    by_path = [(s, n) for s, n in found if s.qualified(n) == node]
    by_name = [(s, n) for s, n in found if _label(n, s.index[id(n)]) == node]
    hits = by_path or by_name
    if not hits:
        names = [s.qualified(n) for s, n in found]
        raise ValueError(f"node: no RNN, LSTM or GRU node named {node!r}; the graph has "
                         f"{models._listed(names)}")
    if len(hits) > 1:
        raise ValueError(f"node: {len(hits)} recurrent nodes are named {node!r}; pass one of their paths "
                         f"{models._listed([s.qualified(n) for s, n in hits])}")
    return hits[0]


# ---- what a read returns ----------------------------------------------------------------------

def _state_spec(info, role, value, for_model):
    """How the model gets one layer's initial state or the lengths: None (zeros / full), ("const", a),
    ("fill", v) or ("run", name); refused for ``for_model`` when the model's call cannot take it."""
    name, v = value
    if v is None:
        return None
    if role != "sequence_lens" and v.uniform == 0 and v.kind in ("const", "fill"):
        return None
    if v.kind == "run":
        return ("run", name)
    if for_model:
        what = "a constant" if v.kind == "const" else f"the constant value {v.fill} (of run-time shape)"
        raise _err(f"{info['where']}: its {role} ({name!r}) is {what}, which an rnncore model cannot hold: "
                   f"the model takes its initial state and lengths per call. rnncore.onnx.import_graph(...) "
                   f"returns the model with these constants and runs the graph's function")
    if v.kind == "const":
        return ("const", v.array)
    return ("fill", v.fill)


def _onnx_form(y, h_n, c_n, layers, batch_first, lengths):
    """Each layer's Y (last layer only), Y_h, Y_c as ONNX writes them, from the model's outputs."""
    out = {}
    dirs = layers[0]["dirs"]
    H = layers[0]["H"]
    last = layers[-1]
    ytm = y.transpose(1, 0, 2) if batch_first else y
    T, N = ytm.shape[:2]
    y4 = ytm.reshape(T, N, dirs, H)
    if last["outs"][0]:
        out[last["outs"][0]] = np.ascontiguousarray(y4.transpose(1, 0, 2, 3) if last["layout"] else
                                                    y4.transpose(0, 2, 1, 3))
    for k, L in enumerate(layers):
        for s, st in ((1, h_n), (2, c_n)):
            if not L["outs"][s] or st is None:
                continue
            part = np.array(st[k * dirs:(k + 1) * dirs])
            if lengths is not None:
                part[:, lengths == 0] = 0            # ONNX Runtime's final state of a zero-length row
            out[L["outs"][s]] = np.ascontiguousarray(part.transpose(1, 0, 2) if L["layout"] else part)
    return out


def _subgraph_proto(scope, targets, stops, name):
    """A ModelProto computing ``targets`` from the tensors in ``stops`` (and constants), with the nodes
    between them; every node must be data movement."""
    from onnx import helper, numpy_helper
    needed, inputs, inits, seen = [], [], [], set()
    stack = list(targets)
    while stack:
        t = stack.pop()
        if not t or t in seen:
            continue
        seen.add(t)
        if t in stops:
            inputs.append(t)
            continue
        v = scope.value(t)
        if v.kind == "const":
            inits.append(numpy_helper.from_array(np.asarray(v.array), t))
            continue
        node = scope.producer.get(t)
        if node is None:
            raise _err(f"{name}: tensor {t!r} is a run-time value rnncore cannot feed")
        if node.op_type not in _MOVE:
            raise _err(f"{name} is computed by {scope.where(node)}, which is not data movement; {_NODE_HINT}")
        if id(node) not in {id(n) for n in needed}:
            needed.append(node)
            stack.extend(node.input)
    needed.sort(key=lambda n: scope.index[id(n)])
    graph = helper.make_graph(needed, name, [helper.make_tensor_value_info(i, 0, None) for i in inputs],
                              [helper.make_tensor_value_info(t, 0, None) for t in targets], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", scope.ctx.opset)])
    return proto, inputs


def _evaluate_glue(proto, names, feeds, what):
    from onnx.reference import ReferenceEvaluator
    try:
        return ReferenceEvaluator(proto).run(names, feeds)
    except Exception as e:
        raise ValueError(f"run: computing {what} of the graph failed on these feeds "
                         f"({type(e).__name__}: {e})") from None


class OnnxImport:
    """An ONNX graph (or one recurrent node of it) as an rnncore model plus the mapping of the graph's
    tensors to the model's call; ``run`` computes the graph's outputs like
    ``onnxruntime.InferenceSession(...).run``.

    model      the rnncore model (its call computes the recurrent part)
    inputs     the names ``run`` needs in its feeds (the graph's inputs; for ``node=``, the node's
               run-time inputs: X, and initial_h / initial_c / sequence_lens where they are not constants)
    outputs    the names ``run`` can return (the graph's outputs; for ``node=``, the node's outputs)
    x          the name of the tensor that is the model's ``x``
    state, lengths   what the model's call gets: per layer, None (zeros; full lengths), a constant, or the
               name of the tensor it is read from
    """

    def __init__(self, model, layers, x, inputs, outputs, state, lengths, scope=None, head=None, tail=None):
        self.model, self._layers = model, layers
        self.x, self.inputs, self.outputs = x, list(inputs), list(outputs)
        self.state, self.lengths = state, lengths
        self._scope, self._head, self._tail = scope, head, tail

    def __repr__(self):
        return f"OnnxImport({self.model!r}, inputs={self.inputs}, outputs={self.outputs})"

    def run(self, output_names, feeds):
        """The graph's outputs (all of ``outputs`` when ``output_names`` is None) for ``feeds``, a dict
        of input name -> ndarray."""
        if not isinstance(feeds, dict):
            raise TypeError(f"feeds: expected a dict of input name -> ndarray, got {type(feeds).__name__}")
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise ValueError(f"feeds: missing {missing} (this import reads {self.inputs})")
        names = self.outputs if output_names is None else list(output_names)
        unknown = [n for n in names if n not in self.outputs]
        if unknown:
            raise ValueError(f"output_names: {unknown} are not among {self.outputs}")
        values = {}
        if self._head is not None:
            proto, ins = self._head
            got = _evaluate_glue(proto, None, {i: feeds[i] for i in ins}, "the initial states and sequence_lens")
            values = dict(zip([o.name for o in proto.graph.output], got))
        else:
            values = dict(feeds)
        model, layers = self.model, self._layers
        x = feeds[self.x]
        T, N = (x.shape[1], x.shape[0]) if model.batch_first else x.shape[:2]
        dirs, H = model.dirs, model.hidden_size

        def resolve(spec, shape, layout, dtype):
            if spec is None:
                return None
            kind, v = spec
            a = np.full(shape, v, dtype) if kind == "fill" else np.asarray(v if kind == "const" else values[v])
            if layout:
                if a.ndim != 3:
                    raise ValueError(f"run: an initial state has shape {a.shape}; (N, dirs, H) expected")
                a = a.transpose(1, 0, 2)
            return a

        lengths = resolve(self.lengths, (N,), 0, np.int64)
        if lengths is not None:
            lengths = np.asarray(lengths).astype(np.int64)
        parts = {role: [] for role in (("initial_h", "initial_c") if model._has_c else ("initial_h",))}
        for L, st in zip(layers, self.state):
            shape = (N, dirs, H) if L["layout"] else (dirs, N, H)
            for role, got in parts.items():
                a = resolve(st.get(role), shape, L["layout"], model.dtype)
                got.append(np.zeros((dirs, N, H), model.dtype) if a is None else np.asarray(a, model.dtype))
        h0 = np.concatenate(parts["initial_h"])
        state = (h0, np.concatenate(parts["initial_c"])) if model._has_c else h0
        y, st = model(x, state, lengths)
        h_n, c_n = st if model._has_c else (st, None)
        rec = _onnx_form(y, h_n, c_n, layers, model.batch_first, lengths)
        if self._tail is None:
            return [rec[n] for n in names]
        proto, ins = self._tail
        env = {**feeds, **rec}
        got = _evaluate_glue(proto, names, {i: env[i] for i in ins}, "the outputs")
        return [np.asarray(g) for g in got]


def _node_import(scope, node, for_model=False):
    """One recurrent node as an OnnxImport whose feeds are the node's own run-time inputs."""
    info = _read_node(scope, node)
    batch_first = info["layout"] == 1
    st = {}
    for role, value in info["states"].items():
        spec = _state_spec(info, role, value, for_model)
        if spec is not None:
            st[role] = spec
    lengths = _state_spec(info, "sequence_lens", info["lengths"], for_model)
    model = _build_model([info], batch_first)
    inputs = [info["X"]] + [s[1] for s in list(st.values()) + [lengths] if s is not None and s[0] == "run"]
    outputs = [o for o in info["outs"] if o]
    return OnnxImport(model, [info], info["X"], inputs, outputs, [st], lengths)


def _graph_import(proto, ctx, for_model):
    """The whole graph: recurrent nodes chained layer to layer, joined by data movement."""
    g = proto.graph
    scope = _Scope(g, ctx)
    rec = [n for n in g.node if n.op_type in _RECURRENT and n.domain in ("", "ai.onnx")]
    if not rec:
        inner = _walk(scope, [])
        if inner:
            raise _err(f"the graph's recurrent nodes are inside subgraphs "
                       f"{models._listed([s.qualified(n) for s, n in inner])}; {_NODE_HINT}")
        raise _err("unsupported graph: no RNN, LSTM or GRU operator (a graph whose exporter unrolled the "
                   "recurrence into per-step MatMul/Tanh nodes, as torch's dynamo exporter does for torch.nn.RNN, "
                   "has no recurrent node to read)")
    for node in g.node:
        if node.op_type in _RECURRENT or node.op_type in _MOVE or node.op_type == "Constant":
            continue
        if node.domain not in ("", "ai.onnx"):
            raise _err(f"unsupported graph: {scope.where(node)} of domain {node.domain!r}; {_NODE_HINT}")
        if any(o and scope.value(o).kind == "run" for o in node.output):
            raise _err(f"unsupported graph: {scope.where(node)} computes at run time and is not data movement; "
                       f"{_NODE_HINT}")
    layers = [_read_node(scope, n) for n in rec]
    by_y = {L["outs"][0]: L for L in layers if L["outs"][0]}
    graph_inputs = [v.name for v in g.input if v.name not in scope.inits]
    static = {}
    for v in g.input:
        dims = v.type.tensor_type.shape.dim if v.type.HasField("tensor_type") else []
        static[v.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    # the chain: the first layer reads a graph input, each next layer the previous one's Y
    sources, paths = {}, {}
    for L in layers:
        src, path = _trace(scope, L["X"], set(graph_inputs) | set(by_y))
        if src is None:
            raise _err(f"{L['where']}: its input X {path}")
        sources[id(L)], paths[id(L)] = src, path
    firsts = [L for L in layers if sources[id(L)] in graph_inputs]
    if len(firsts) != 1:
        raise _err(f"unsupported graph: {len(firsts)} recurrent nodes read a graph input; rnncore reads one chain "
                   f"of layers. {_NODE_HINT}")
    chain = [firsts[0]]
    while True:
        nxt = [L for L in layers if sources[id(L)] == chain[-1]["outs"][0] and chain[-1]["outs"][0]]
        if len(nxt) > 1:
            raise _err(f"{chain[-1]['where']}: its Y feeds {len(nxt)} recurrent nodes; rnncore reads one chain")
        if not nxt:
            break
        chain.append(nxt[0])
    if len(chain) != len(layers):
        stray = [L for L in layers if all(L is not C for C in chain)][0]
        raise _err(f"{stray['where']}: its input X is not the previous layer's output (not one chain of layers)")
    # the data path, axis by axis
    x_name = sources[id(chain[0])]
    xdims = static.get(x_name, [])
    if len(xdims) not in (0, 3):
        raise _err(f"graph input {x_name!r} has {len(xdims)} dimensions (3 expected)")
    xdims = xdims or [None] * 3
    sizes = {"x0": xdims[0], "x1": xdims[1], "x2": xdims[2]}
    first = chain[0]
    ax = _apply(scope, paths[id(first)], _Axes([("x0",), ("x1",), ("x2",)], sizes, set()))
    if isinstance(ax, str):
        raise _err(f"{first['where']}: its input X: {ax}")
    got = ax.norm()
    want = [("x0",), ("x1",), ("x2",)]
    swapped = [("x1",), ("x0",), ("x2",)]
    if got not in (want, swapped):
        raise _err(f"{first['where']}: its input X is graph input {x_name!r} rearranged as {got}; rnncore reads "
                   f"x as (T, N, D) or (N, T, D)")
    time_major_x = (got == want) != bool(first["layout"])
    batch_first = not time_major_x
    t_atom, n_atom = ("x0", "x1") if time_major_x else ("x1", "x0")
    dirs, H = first["dirs"], first["H"]
    sizes = {"T": sizes[t_atom], "N": sizes[n_atom], "d": dirs, "H": H}
    trivial = {"d"} if dirs == 1 else set()
    for prev, L in zip(chain, chain[1:]):
        y_axes = [("N",), ("T",), ("d",), ("H",)] if prev["layout"] else [("T",), ("d",), ("N",), ("H",)]
        ax = _apply(scope, paths[id(L)], _Axes(y_axes, sizes, trivial))
        if isinstance(ax, str):
            raise _err(f"{L['where']}: its input X is not the previous layer's output: {ax}")
        want = [("N",), ("T",), ("d", "H")] if L["layout"] else [("T",), ("N",), ("d", "H")]
        if ax.norm() != _Axes(want, sizes, trivial).norm():
            raise _err(f"{L['where']}: its input X is not the previous layer's output as (T, N, dirs * H) "
                       f"(forward half first): the glue gives {ax.norm()}")
    # one lengths for all layers; states per layer
    lengths = [_state_spec(L, "sequence_lens", L["lengths"], for_model) for L in chain]
    def same(a, b):
        if a is None or b is None:
            return a is b
        return a[0] == b[0] and (np.array_equal(a[1], b[1]) if a[0] == "const" else a[1] == b[1])

    if not all(same(s, lengths[0]) for s in lengths[1:]):
        raise _err(f"{chain[-1]['where']}: its sequence_lens differs from the first layer's; rnncore applies one "
                   f"lengths to every layer")
    state = []
    for L in chain:
        st = {}
        for role, value in L["states"].items():
            spec = _state_spec(L, role, value, for_model)
            if spec is not None:
                st[role] = spec
        state.append(st)
    # run-time states and lengths: data movement from graph inputs
    runtime = [s[1] for st in state for s in st.values() if s[0] == "run"]
    if lengths[0] is not None and lengths[0][0] == "run":
        runtime.append(lengths[0][1])
    rec_outs = {o for L in chain for o in L["outs"] if o}
    head = None
    if runtime:
        head_ins = set(graph_inputs)
        for t in runtime:
            if t in rec_outs:
                raise _err(f"tensor {t!r}, an initial state or sequence_lens, is a recurrent node's output; "
                           f"rnncore's layers start from the states the caller gives")
        head = _subgraph_proto(scope, sorted(set(runtime)), head_ins, "the initial states and sequence_lens")
    # the outputs: data movement from the recurrent outputs (the last layer's Y, any layer's Y_h / Y_c)
    inner_y = {L["outs"][0] for L in chain[:-1] if L["outs"][0]}
    outputs = [o.name for o in g.output]
    if not outputs:
        raise _err("unsupported graph: no graph output")
    tail = _subgraph_proto(scope, outputs, rec_outs | set(graph_inputs), "the graph's outputs")
    used_inner = sorted(set(tail[1]) & inner_y)
    if used_inner:
        raise _err(f"a graph output uses {used_inner}, the Y of an inner layer; rnncore gives the last layer's only")
    meta = {p.key: p.value for p in proto.metadata_props}
    dropout = 0.0
    if _META_KEY in meta:
        try:
            dropout = float(json.loads(meta[_META_KEY]).get("dropout", 0.0))
            if not 0.0 <= dropout < 1.0:
                dropout = 0.0
        except (ValueError, TypeError, AttributeError):
            dropout = 0.0
    model = _build_model(chain, batch_first, dropout)
    inputs = [x_name] + [i for i in head[1] if i != x_name] if head else [x_name]
    inputs += [i for i in tail[1] if i in graph_inputs and i not in inputs]
    return OnnxImport(model, chain, x_name, inputs, outputs, state, lengths[0], scope, head, tail)


def import_graph(source, node=None, base_dir=None):
    """Read an ONNX model (path, bytes or ModelProto) as an :class:`OnnxImport`; see ``from_onnx``.
    Unlike ``from_onnx`` it honours constant initial states and sequence_lens: ``run`` passes them."""
    return _import(source, node, base_dir, for_model=False)


def _import(source, node, base_dir, for_model):
    """The OnnxImport of ``source`` (or of its node ``node``); for_model: as ``from_onnx`` reads it."""
    proto, base_dir = _load(source, base_dir)
    _check_opset(proto)
    ctx = _Ctx(proto, base_dir)
    try:
        if node is not None:
            scope, n = _select(proto, ctx, node)
            return _node_import(scope, n, for_model=for_model)
        return _graph_import(proto, ctx, for_model=for_model)
    except RecursionError:
        raise _err("the graph nests too deeply to read") from None


def from_onnx(source, node=None, base_dir=None):
    """An rnncore model from an ONNX model: a path, bytes or an onnx.ModelProto (README.md, "ONNX").

    Without ``node``: the graph must be a chain of RNN/LSTM/GRU nodes, one per layer, joined by data
    movement (Transpose, Reshape, Squeeze, ...), layout 0 or 1, forward or bidirectional, its outputs
    any of the layers' Y, Y_h and Y_c through such glue. With ``node`` (a name or a path from
    ``rnncore.onnx.find_recurrent``): that one node, wherever it is (If/Loop/Scan subgraphs too), as a
    one-layer model (batch_first when its layout is 1). Weights may be constants or constant
    expressions. Run-time initial states and sequence_lens are the model call's ``state`` and
    ``lengths``; constant ones (other than zeros) are refused here and honoured by
    ``rnncore.onnx.import_graph``. External data is read only from inside ``base_dir`` (by default
    the model file's folder; required for bytes and ModelProto sources). Raises ValueError naming
    the node and the feature rnncore cannot represent.
    """
    return _import(source, node, base_dir, for_model=True).model
