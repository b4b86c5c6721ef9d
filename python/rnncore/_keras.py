"""rnncore models to and from Keras 3 layers (keras is imported on use).

Mapping, per layer and direction (Keras kernels are (D, G*H), ours (G*H, D)):

    keras.layers.SimpleRNN(activation="tanh"|"relu")  <->  rnncore.RNN(nonlinearity=...)
    keras.layers.LSTM   gates i, f, c, o              <->  rnncore.LSTM, gates i, f, g, o
    keras.layers.GRU(reset_after=False) gates z, r, h <->  rnncore.GRU(reset_after=False)
    keras.layers.GRU(reset_after=True), bias (2, 3H)  <->  rnncore.GRU(reset_after=True)

Keras writes the GRU update as h = z' * h_prev + (1 - z') * h~, so z' = 1 - z: the z columns
change sign. With reset_after=True Keras keeps an input and a recurrent bias per gate; they
add up except on the candidate, whose recurrent bias is rnncore's b_hn.

A stack is a list of layers or a keras.Sequential: recurrent layers (each may be wrapped in
Bidirectional with merge_mode="concat"), optionally an InputLayer first and Dropout layers of
one rate between recurrent layers (rnncore's dropout). Keras' own dropout/recurrent_dropout
arguments act on inputs and states, unlike rnncore's, and are not carried over.

The layers' call flags (README.md, "Keras 3"): return_state and unroll change nothing rnncore
computes (the model always returns its final states); return_sequences=False is refused unless
the caller asks for the full sequence (full_sequence=True); stateful, go_backwards outside
Bidirectional and Masking layers are refused by name.
"""

import numpy as np

from . import models

_KINDS = ("SimpleRNN", "LSTM", "GRU")


def _gru_maps(H):
    """Row order of rnncore's (r, z, n) in Keras' (z, r, h) layout, and rnncore's sign per row."""
    order = np.concatenate([np.arange(H, 2 * H), np.arange(0, H), np.arange(2 * H, 3 * H)])
    sign = np.ones(3 * H)
    sign[H:2 * H] = -1
    return order, sign


def _kind_of(keras, layer):
    for kind in _KINDS:
        if type(layer) is getattr(keras.layers, kind):
            return kind
    return None


def _direction_weights(kind, layer, H):
    """rnncore's (W_ih, W_hh, b[, b_hn]) from one Keras recurrent layer's weights."""
    w = layer.get_weights()
    kernel, recurrent = w[0], w[1]
    dt = kernel.dtype
    G = kernel.shape[1]
    bias = w[2] if layer.use_bias else np.zeros((2, G) if kind == "GRU" and layer.reset_after else (G,), dt)
    if kind != "GRU":
        return {"W_ih": kernel.T.copy(), "W_hh": recurrent.T.copy(), "b": bias.copy()}
    order, sign = _gru_maps(H)
    sign = sign.astype(dt)
    out = {"W_ih": kernel.T[order] * sign[:, None], "W_hh": recurrent.T[order] * sign[:, None]}
    if layer.reset_after:
        b = bias[0].copy()
        b[:2 * H] += bias[1][:2 * H]
        out["b"] = b[order] * sign
        out["b_hn"] = bias[1][2 * H:].copy()
    else:
        out["b"] = bias[order] * sign
    return out


def _keras_weights(kind, params, sfx, H, reset_after):
    """The inverse: one Keras layer's weight list from rnncore's parameters."""
    W_ih, W_hh, b = params["W_ih" + sfx], params["W_hh" + sfx], params["b" + sfx]
    if kind != "GRU":
        return [W_ih.T.copy(), W_hh.T.copy(), b.copy()]
    order, sign = _gru_maps(H)
    inverse = np.argsort(order)
    sign = sign.astype(W_ih.dtype)
    kernel = (W_ih * sign[:, None])[inverse].T.copy()
    recurrent = (W_hh * sign[:, None])[inverse].T.copy()
    b_in = (b * sign)[inverse]
    if not reset_after:
        return [kernel, recurrent, b_in]
    b_rec = np.zeros_like(b_in)
    b_rec[2 * H:] = params["b_hn" + sfx]
    return [kernel, recurrent, np.stack([b_in, b_rec])]


def _flatten(keras, obj):
    if isinstance(obj, keras.Sequential):
        return list(obj.layers)
    if isinstance(obj, keras.layers.Layer):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return list(obj)
    raise TypeError(f"from_keras: expected a Keras layer, a list of layers or a keras.Sequential, "
                    f"got {type(obj).__name__}")


def _check_recurrent(keras, layer, where, go_backwards=False):
    kind = _kind_of(keras, layer)
    if kind is None:
        raise ValueError(f"from_keras: {where}: {type(layer).__name__} is not keras.layers.SimpleRNN, LSTM or GRU")
    if not layer.built:
        raise ValueError(f"from_keras: {where}: layer {layer.name!r} is not built (call it once or build it)")
    cfg = layer.get_config()
    acts = {"SimpleRNN": ("tanh", "relu")}.get(kind, ("tanh",))
    if cfg["activation"] not in acts:
        raise ValueError(f"from_keras: {where}: activation {cfg['activation']!r} is not supported (expected "
                         f"{' or '.join(map(repr, acts))})")
    if kind != "SimpleRNN" and cfg["recurrent_activation"] != "sigmoid":
        raise ValueError(f"from_keras: {where}: recurrent_activation {cfg['recurrent_activation']!r} is not "
                         f"supported (expected 'sigmoid')")
    if getattr(layer, "stateful", False):
        raise ValueError(f"from_keras: {where}: stateful=True (Keras carries each call's final state into the next "
                         f"call; an rnncore model starts every call from the state it is given: pass state=, or "
                         f"use model.stream())")
    if bool(layer.go_backwards) != go_backwards:
        raise ValueError(f"from_keras: {where}: go_backwards={layer.go_backwards} outside a Bidirectional "
                         f"wrapper has no rnncore equivalent" if not go_backwards else
                         f"from_keras: {where}: the backward layer of a Bidirectional must read backwards")
    compute, variable = layer.compute_dtype, layer.variable_dtype
    if compute != variable or variable not in ("float32", "float64"):
        raise TypeError(f"from_keras: {where}: dtype policy with variables {variable} and compute {compute}; "
                        f"expected float32 or float64 throughout")
    return kind, cfg


def _read_stack(keras, layers):
    """[(kind, config, [one layer per direction], where), ...] and the dropout rate between them."""
    stack, pending_dropout, rates = [], None, set()
    for i, layer in enumerate(layers):
        where = f"layer {i} ({layer.name!r})" if hasattr(layer, "name") else f"layer {i}"
        if isinstance(layer, keras.layers.InputLayer) and i == 0:
            continue
        if isinstance(layer, keras.layers.Masking):
            raise ValueError(f"from_keras: {where}: Masking (Keras skips masked steps anywhere in a sequence; "
                             f"rnncore's equivalent is lengths= for trailing padding: leave the Masking layer out "
                             f"and pass each row's length to the model's call)")
        if isinstance(layer, keras.layers.Dropout):
            if not stack or pending_dropout is not None:
                raise ValueError(f"from_keras: {where}: Dropout is only supported between recurrent layers "
                                 f"(rnncore's dropout acts on the outputs of every layer but the last)")
            pending_dropout = float(layer.rate)
            continue
        if isinstance(layer, keras.layers.Bidirectional):
            if layer.merge_mode != "concat":
                raise ValueError(f"from_keras: {where}: Bidirectional merge_mode={layer.merge_mode!r}; "
                                 f"rnncore concatenates the two directions (merge_mode='concat')")
            fwd, bwd = layer.forward_layer, layer.backward_layer
            kind, cfg = _check_recurrent(keras, fwd, where + " forward")
            kind_b, cfg_b = _check_recurrent(keras, bwd, where + " backward", go_backwards=True)
            for key in ("units", "activation", "use_bias", "reset_after"):
                if kind_b != kind or cfg.get(key) != cfg_b.get(key):
                    raise ValueError(f"from_keras: {where}: the forward and backward layers differ ({key})")
            directions = [fwd, bwd]
        elif isinstance(layer, keras.layers.Layer):
            kind, cfg = _check_recurrent(keras, layer, where)
            directions = [layer]
        else:
            raise TypeError(f"from_keras: {where}: expected a Keras layer, got {type(layer).__name__}")
        if stack:
            rates.add(pending_dropout or 0.0)
        pending_dropout = None
        stack.append((kind, cfg, directions, where))
    if not stack:
        raise ValueError("from_keras: no recurrent layer found")
    if pending_dropout is not None:
        raise ValueError("from_keras: a trailing Dropout has no rnncore equivalent (rnncore's dropout acts on the "
                         "outputs of every layer but the last)")
    if len(rates) > 1:
        raise ValueError(f"from_keras: Dropout rates between layers differ ({sorted(rates)}); rnncore has one rate")
    return stack, (rates.pop() if rates else 0.0)


def from_keras(layers, batch_first=True, full_sequence=False):
    """An rnncore model from Keras 3 recurrent layers: one layer, a list of layers or a keras.Sequential.

    Keras layers read (N, T, D), so the model is batch_first unless asked otherwise. All layers
    must be of one kind (SimpleRNN, LSTM or GRU), of one hidden size, one dtype and either all
    or none wrapped in Bidirectional; their weights must exist (built layers).

    The model returns every step's output and the final states, whatever the Keras flags say.
    A last layer with return_sequences=False (Keras' default), whose output is one step, is
    refused unless ``full_sequence=True``; Keras' output is then ``y[:, -1]`` (batch_first), and
    for Bidirectional the concatenation of ``y[:, -1, :H]`` and ``y[:, 0, H:]``. return_state
    and unroll are honoured as they are (the states are ``model(x)[1]``); stateful, go_backwards
    outside Bidirectional and Masking layers are refused.
    """
    import keras

    stack, dropout = _read_stack(keras, _flatten(keras, layers))
    kind, cfg, directions, _ = stack[0]
    H = cfg["units"]
    dirs = len(directions)
    dtype = np.dtype(directions[0].variable_dtype)
    for k, (kind_k, cfg_k, dirs_k, where) in enumerate(stack):
        if kind_k != kind:
            raise ValueError(f"from_keras: {where}: {kind_k} after {kind}; a model has one kind of cell")
        for key in ("units", "activation", "reset_after"):
            if cfg_k.get(key) != cfg.get(key):
                raise ValueError(f"from_keras: {where}: {key}={cfg_k.get(key)!r} differs from layer 0's "
                                 f"{cfg.get(key)!r}; rnncore's layers share it")
        if len(dirs_k) != dirs:
            raise ValueError(f"from_keras: {where}: mixes Bidirectional and unidirectional layers")
        if np.dtype(dirs_k[0].variable_dtype) != dtype:
            raise TypeError(f"from_keras: {where}: dtype {dirs_k[0].variable_dtype} differs from layer 0's {dtype}")
    if not isinstance(full_sequence, (bool, np.bool_)):
        raise TypeError(f"full_sequence: expected a bool, got {type(full_sequence).__name__}")
    for k, (_, cfg_k, _, where) in enumerate(stack):
        if cfg_k.get("return_sequences", True):
            continue
        if k < len(stack) - 1:
            raise ValueError(f"from_keras: {where}: return_sequences=False on a layer that feeds another recurrent "
                             f"layer (the next layer would read a single step)")
        if not full_sequence:
            last = "y[:, -1]" if dirs == 1 else f"y[:, -1, :{H}] and y[:, 0, {H}:] concatenated"
            raise ValueError(f"from_keras: {where}: return_sequences=False: the Keras layer returns only its last "
                             f"step, an rnncore model returns every step; pass full_sequence=True to take it "
                             f"anyway (Keras' output is then {last} of the model's batch-first y)")
    input_size = int(directions[0].get_weights()[0].shape[0])
    kw = dict(num_layers=len(stack), bidirectional=dirs == 2, batch_first=batch_first, dropout=dropout, dtype=dtype)
    cls = {"SimpleRNN": models.RNN, "LSTM": models.LSTM, "GRU": models.GRU}[kind]
    if kind == "SimpleRNN":
        kw["nonlinearity"] = cfg["activation"]
    if kind == "GRU":
        kw["reset_after"] = bool(cfg["reset_after"])
    model = cls(input_size, H, **kw)
    params = {}
    for k, (_, _, dirs_k, _) in enumerate(stack):
        for d, layer in enumerate(dirs_k):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            for name, a in _direction_weights(kind, layer, H).items():
                params[name + sfx] = a
    model.load_state_dict(params)
    return model


def to_keras(model):
    """A keras.Sequential computing ``model``: Input((None, input_size)), then per layer a keras
    SimpleRNN/LSTM/GRU (return_sequences=True), wrapped in Bidirectional when bidirectional,
    with Dropout(model.dropout) between layers when dropout > 0. It reads (N, T, D) whatever
    ``model.batch_first`` says and returns the full output sequence, like ``model(x)[0]``.
    """
    for name in ("proj_size", "peephole", "layer_norm"):
        if getattr(model, name, False):
            raise ValueError(f"to_keras: LSTM({name}={getattr(model, name)}) has no Keras equivalent "
                             f"(keras.layers.LSTM has no {name.replace('_', ' ')})")
    import keras

    base = next(c for c in (models.RNN, models.LSTM, models.GRU) if isinstance(model, c))
    model._weights()                        # a parameter of the wrong shape or dtype is named here
    kind = {models.RNN: "SimpleRNN", models.LSTM: "LSTM", models.GRU: "GRU"}[base]
    H, dtype = model.hidden_size, model.dtype.name
    kw = dict(units=H, return_sequences=True, dtype=dtype)
    if kind == "SimpleRNN":
        kw["activation"] = model.nonlinearity
    reset_after = kind == "GRU" and model.reset_after
    if kind == "GRU":
        kw["reset_after"] = reset_after
    params = model.state_dict()
    seq = keras.Sequential([keras.Input((None, model.input_size), dtype=dtype)])
    recurrent = []
    for k in range(model.num_layers):
        if k and model.dropout > 0:
            seq.add(keras.layers.Dropout(model.dropout, dtype=dtype))
        layer = getattr(keras.layers, kind)(**kw)
        if model.bidirectional:
            layer = keras.layers.Bidirectional(layer, merge_mode="concat", dtype=dtype)
        seq.add(layer)
        recurrent.append(layer)
    for k, layer in enumerate(recurrent):
        weights = []
        for d in range(model.dirs):
            weights += _keras_weights(kind, params, f"_l{k}" + ("_reverse" if d else ""), H, reset_after)
        layer.set_weights(weights)
    return seq
