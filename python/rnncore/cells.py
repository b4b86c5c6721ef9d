"""One step at a time: RNNCell, LSTMCell, GRUCell, and streaming a sequence in chunks.

A cell is a one-layer, one-direction model seen one step at a time; it computes on the same core.
Shapes: x (N, input_size); h, c (N, hidden_size). Parameters: W_ih (G*H, D), W_hh (G*H, H),
b (G*H,), b_hn (H,) for the reset_after GRU — the same arrays as the model's W_ih_l0, ...
"""

import numpy as np

from . import _core, models



class _Cell:
    _model_class = None  # set by each cell

    def __init__(self, input_size, hidden_size, dtype=None, seed=None, **kw):
        self._model = self._model_class(input_size, hidden_size, dtype=dtype, seed=seed, **kw)

    # ---- sharing parameters with a one-layer model ---------------------------------------

    @classmethod
    def from_model(cls, model):
        """The cell of a one-layer, unidirectional model; both share their parameter arrays."""
        if not isinstance(model, cls._model_class):
            raise TypeError(f"model: expected a {cls._model_class.__name__}, got {type(model).__name__}")
        if model.num_layers != 1 or model.bidirectional:
            raise ValueError(f"model: expected one layer and one direction, got num_layers={model.num_layers}, "
                             f"bidirectional={model.bidirectional}")
        cell = cls.__new__(cls)
        cell._model = model
        return cell

    def to_model(self):
        """The one-layer model this cell steps (parameters shared, not copied)."""
        return self._model

    def _short_names(self):
        """The parameters' names without the layer's suffix: W_ih, W_hh, b, then the cell's own."""
        return [e["name"] for e in self._model._param_list()]

    def parameters(self):
        """name -> live ndarray (W_ih, W_hh, b, then the cell's own: b_hn, P, W_hr, ...)."""
        p = self._model.parameters()
        return {k: p[k + "_l0"] for k in self._short_names() if k + "_l0" in p}

    def state_dict(self):
        return {k: v.copy() for k, v in self.parameters().items()}

    def load_state_dict(self, state_dict):
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict: expected a mapping of name -> array, got {type(state_dict).__name__}")
        self._model.load_state_dict({k + "_l0": v for k, v in state_dict.items()})

    @property
    def input_size(self):
        return self._model.input_size

    @property
    def hidden_size(self):
        return self._model.hidden_size

    @property
    def dtype(self):
        return self._model.dtype

    @property
    def cell(self):
        return self._model.cell

    def __repr__(self):
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}, dtype={self.dtype.name}" \
               f"{self._model._extra_repr()})"

    # ---- one step --------------------------------------------------------------------------

    def _x(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x: expected a numpy.ndarray of dtype {self.dtype}, got {type(x).__name__}")
        if x.ndim != 2:
            raise ValueError(f"x: expected 2 dimensions (N, input_size), got shape {x.shape}")
        return x[None]

    def _state(self, state, N):
        """User's (N, H) state(s) -> the model's (1, N, H) state(s), checked there."""
        m = self._model
        if m._has_c:
            if state is None:
                return None
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"state: expected a tuple (h, c) for {type(self).__name__}, "
                                f"got {type(state).__name__}")
            return tuple(None if s is None else self._one(s, n) for s, n in zip(state, ("h", "c")))
        if isinstance(state, (tuple, list)):
            raise TypeError(f"state: expected the array h for {type(self).__name__}, got a {type(state).__name__}")
        return None if state is None else self._one(state, "h")

    def _one(self, a, name):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray of dtype {self.dtype}, got {type(a).__name__}")
        if a.ndim != 2:
            size = "proj_size" if self._model.proj_size and name in ("h", "dh") else "hidden_size"
            raise ValueError(f"{name}: expected 2 dimensions (N, {size}), got shape {a.shape}")
        return a[None]

    def __call__(self, x, state=None):
        """One inference step: returns h, or (h, c) for LSTMCell."""
        fast = self._fast_step(x, state)
        return fast if fast is not None else self.forward(x, state)[0]

    def _fast_step(self, x, state):
        """The latency path: arguments that need no conversion go straight to the core; anything
        else returns None and takes the checked path, which gives the usual errors."""
        m = self._model
        if not (type(x) is np.ndarray and x.dtype == m.dtype and x.ndim == 2 and x.shape[1] == m.input_size
                and x.flags.c_contiguous and x.flags.aligned):
            return None
        shape, cshape = (x.shape[0], m._out_size), (x.shape[0], m.hidden_size)
        if m._has_c:
            if state is None:
                h, c = np.zeros(shape, m.dtype), np.zeros(cshape, m.dtype)
            elif type(state) is tuple and len(state) == 2:
                h, c = state
            else:
                return None
            parts = ((h, shape), (c, cshape))
        else:
            h = np.zeros(shape, m.dtype) if state is None else state
            c = None
            parts = ((h, shape),)
        for a, want in parts:
            if not (type(a) is np.ndarray and a.dtype == m.dtype and a.shape == want and a.flags.c_contiguous
                    and a.flags.aligned):
                return None
        _, h_n, c_n, _ = _core.forward(models.CELL_INFO[m.cell]["code"], 1, 1, m._weights(), x[None], h[None],
                                       None if c is None else c[None], None, None, False, m.hidden_size)
        return (h_n[0], c_n[0]) if m._has_c else h_n[0]

    def forward(self, x, state=None, train=False):
        """One step: returns (new state, tape); the tape is None unless ``train``."""
        x3 = self._x(x)
        _, st, tape = self._model.forward(x3, self._state(state, x.shape[0]), train=train)
        if self._model._has_c:
            return (st[0][0], st[1][0]), tape
        return st[0], tape

    def backward(self, tape, dh=None, dc=None):
        """Gradients of one training step, given dh (and dc) of the new state (None = zero).

        Returns a :class:`rnncore.Gradients` dict: "x" (N, D), "h" (and "c"), the gradient w.r.t. the
        incoming state, and one entry per parameter name (``parameters()``: those alone).
        """
        m = self._model
        dh = None if dh is None else self._one(dh, "dh")
        if m._has_c:
            dc = None if dc is None else self._one(dc, "dc")
        elif dc is not None:
            raise ValueError(f"dc: {type(self).__name__} has no cell state; pass None")
        g = m.backward(tape, None, dh, dc)
        inputs = {"x": g["x"][0], "h": g["h0"][0]}
        if m._has_c:
            inputs["c"] = g["c0"][0]
        return models.Gradients(inputs, {k: g[k + "_l0"] for k in self._short_names() if k + "_l0" in g})


class RNNCell(_Cell):
    """One step of the simple RNN: h = f(x W_ih^T + h W_hh^T + b), f = tanh or relu."""

    _model_class = models.RNN

    def __init__(self, input_size, hidden_size, nonlinearity="tanh", dtype=None, seed=None):
        super().__init__(input_size, hidden_size, dtype=dtype, seed=seed, nonlinearity=nonlinearity)


class LSTMCell(_Cell):
    """One LSTM step; state (h, c). ``proj_size``, ``peephole`` and ``layer_norm`` choose the variant
    (see ``rnncore.LSTM``); with a projection h has proj_size columns."""

    _model_class = models.LSTM

    def __init__(self, input_size, hidden_size, dtype=None, seed=None, proj_size=0, peephole=False,
                 layer_norm=False):
        super().__init__(input_size, hidden_size, dtype=dtype, seed=seed, proj_size=proj_size, peephole=peephole,
                         layer_norm=layer_norm)


class GRUCell(_Cell):
    """One GRU step, either form (``reset_after``); h = (1 - z) * h + z * n."""

    _model_class = models.GRU

    def __init__(self, input_size, hidden_size, reset_after=False, dtype=None, seed=None):
        super().__init__(input_size, hidden_size, dtype=dtype, seed=seed, reset_after=reset_after)


class Stream:
    """A unidirectional model fed one chunk of a sequence at a time.

    Consecutive chunks give exactly the outputs and final state of one call on the whole
    sequence. ``lengths`` are the whole sequences' lengths; each chunk sees the part that falls
    in it (rows that have ended keep their state and output zeros). Training on a chunk treats
    the carried-in state as a constant (truncated backpropagation through time): ``backward``
    returns its gradient as "h0" (and "c0").
    """

    def __init__(self, model, state=None, lengths=None):
        if model.bidirectional:
            raise ValueError("model: a bidirectional model cannot stream: its reverse direction starts from "
                             "the end of each sequence, which a chunk does not have")
        self.model = model
        self.state = state
        self.lengths = None if lengths is None else _whole_lengths(lengths)
        self.t = 0  # steps consumed so far

    def forward(self, x, train=False):
        """The next chunk (T_chunk, N, D) (batch_first: (N, T_chunk, D)) -> (y, tape)."""
        m = self.model
        if not isinstance(x, np.ndarray) or x.ndim != 3:
            m._check_array(x, "x", 3)  # raises the model's usual error
        Tc = x.shape[1] if m.batch_first else x.shape[0]
        lens = None
        if self.lengths is not None:
            lens = np.clip(self.lengths - self.t, 0, Tc)
        y, self.state, tape = m.forward(x, self.state, lengths=lens, train=train)
        self.t += Tc
        return y, tape

    def __call__(self, x):
        return self.forward(x)[0]

    def backward(self, tape, dy=None, dh_n=None, dc_n=None):
        """Gradients of a training chunk; "h0" (and "c0") are w.r.t. the state it started from."""
        return self.model.backward(tape, dy, dh_n, dc_n)


def _whole_lengths(lengths):
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"lengths: expected one dimension (N,), got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"lengths: expected values >= 0, got min {arr.min()}")
    return arr.astype(np.int64)
