"""One step at a time: RNNCell, LSTMCell, GRUCell, and streaming a sequence in chunks.

A cell is a one-layer, one-direction model seen one step at a time; it computes on the same core.
Shapes: x (N, input_size); h, c (N, hidden_size). Parameters: W_ih (G*H, D), W_hh (G*H, H),
b (G*H,), b_hn (H,) for the reset_after GRU — the same arrays as the model's W_ih_l0, ...
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Type, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _core, models
from .models import Gradients, Seed, State, StateArg, Tape

# A cell's state in a call: h (N, hidden_size), or (h, c) for LSTMCell; None means zeros.
CellStateArg = Union[None, np.ndarray, Tuple[np.ndarray, np.ndarray]]


_CELL_ARGS = """
    Parameters
    ----------
    input_size, hidden_size : int
        Features of the input ``x`` ``(N, input_size)`` and of the state ``(N, hidden_size)``.{extra}
    dtype : numpy.float32 or numpy.float64, default float32
        dtype of the parameters and of every array passed in (nothing is cast).
    seed : int or None, default None
        Seeds the initial parameters, drawn as a one-layer model's (``rnncore.{model}``);
        None draws fresh ones.
"""


class _Cell:
    _model_class: Type[models._Recurrent]  # set by each cell
    _model: models._Recurrent

    def __init__(self, input_size: int, hidden_size: int, dtype: Optional[DTypeLike] = None, seed: Seed = None,
                 **kw: Any) -> None:
        self._model = self._model_class(input_size, hidden_size, dtype=dtype, seed=seed, **kw)

    # ---- sharing parameters with a one-layer model ---------------------------------------

    @classmethod
    def from_model(cls, model: models._Recurrent) -> Any:
        """The cell of a one-layer, unidirectional model; both share their parameter arrays."""
        if not isinstance(model, cls._model_class):
            raise TypeError(f"model: expected a {cls._model_class.__name__}, got {type(model).__name__}")
        if model.num_layers != 1 or model.bidirectional:
            raise ValueError(f"model: expected one layer and one direction, got num_layers={model.num_layers}, "
                             f"bidirectional={model.bidirectional}")
        cell = cls.__new__(cls)
        cell._model = model
        return cell

    def to_model(self) -> models._Recurrent:
        """The one-layer model this cell steps (parameters shared, not copied)."""
        return self._model

    def _short_names(self) -> List[str]:
        """The parameters' names without the layer's suffix: W_ih, W_hh, b, then the cell's own."""
        return [e["name"] for e in self._model._param_list()]

    def parameters(self) -> Dict[str, np.ndarray]:
        """name -> live ndarray (W_ih, W_hh, b, then the cell's own: b_hn, P, W_hr, ...)."""
        p = self._model.parameters()
        return {k: p[k + "_l0"] for k in self._short_names() if k + "_l0" in p}

    def state_dict(self) -> Dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.parameters().items()}

    def load_state_dict(self, state_dict: Any) -> None:
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict: expected a mapping of name -> array, got {type(state_dict).__name__}")
        self._model.load_state_dict({k + "_l0": v for k, v in state_dict.items()})

    @property
    def input_size(self) -> int:
        return self._model.input_size

    @property
    def hidden_size(self) -> int:
        return self._model.hidden_size

    @property
    def dtype(self) -> "np.dtype[Any]":
        return self._model.dtype

    @property
    def cell(self) -> str:
        return self._model.cell

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}, dtype={self.dtype.name}" \
               f"{self._model._extra_repr()})"

    # ---- one step --------------------------------------------------------------------------

    def _x(self, x: object) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise models._not_an_array("x", x, self.dtype)
        if x.ndim != 2:
            raise ValueError(f"x: expected 2 dimensions (N, input_size), got shape {x.shape}")
        return x[None]

    def _state(self, state: object, N: int) -> Any:
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

    def _one(self, a: object, name: str) -> np.ndarray:
        if not isinstance(a, np.ndarray):
            raise models._not_an_array(name, a, self.dtype)
        if a.ndim != 2:
            size = "proj_size" if self._model.proj_size and name in ("h", "dh") else "hidden_size"
            raise ValueError(f"{name}: expected 2 dimensions (N, {size}), got shape {a.shape}")
        return a[None]

    def __call__(self, x: np.ndarray, state: CellStateArg = None) -> State:
        """One inference step: returns h, or (h, c) for LSTMCell."""
        fast = self._fast_step(x, state)
        return fast if fast is not None else self.forward(x, state)[0]

    def _fast_step(self, x: object, state: object) -> Optional[State]:
        """The latency path: arguments that need no conversion go straight to the core; anything
        else returns None and takes the checked path, which gives the usual errors."""
        m = self._model
        if not (type(x) is np.ndarray and x.dtype == m.dtype and x.ndim == 2 and x.shape[1] == m.input_size
                and x.flags.c_contiguous and x.flags.aligned):
            return None
        shape, cshape = (x.shape[0], m._out_size), (x.shape[0], m.hidden_size)
        h: Any
        c: Any
        parts: Tuple[Any, ...]
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
        return (h_n[0], c_n[0]) if c_n is not None else h_n[0]

    def forward(self, x: np.ndarray, state: CellStateArg = None, train: bool = False) -> Tuple[State, Optional[Tape]]:
        """One step: x ``(N, input_size)`` and state ``h`` (or ``(h, c)``) ``(N, hidden_size)``, None
        for zeros, all of the cell's dtype. Returns (new state, tape); the tape is None unless ``train``."""
        x3 = self._x(x)
        _, st, tape = self._model.forward(x3, self._state(state, x.shape[0]), train=train)
        if self._model._has_c:
            return (st[0][0], st[1][0]), tape
        return st[0], tape

    def backward(self, tape: Tape, dh: Optional[np.ndarray] = None, dc: Optional[np.ndarray] = None) -> Gradients:
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
        return Gradients(inputs, {k: g[k + "_l0"] for k in self._short_names() if k + "_l0" in g})


class RNNCell(_Cell):
    __doc__ = """One step of the simple RNN: ``h = f(x W_ih^T + h W_hh^T + b)``, ``f`` = tanh or relu.
""" + _CELL_ARGS.format(model="RNN", extra="""
    nonlinearity : {"tanh", "relu"}, default "tanh"
        The activation ``f``.""")

    _model_class = models.RNN

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh",
                 dtype: Optional[DTypeLike] = None, seed: Seed = None) -> None:
        super().__init__(input_size, hidden_size, dtype=dtype, seed=seed, nonlinearity=nonlinearity)


class LSTMCell(_Cell):
    __doc__ = """One LSTM step, of any variant of ``rnncore.LSTM``; the state is ``(h, c)``.
""" + _CELL_ARGS.format(model="LSTM", extra="""
    proj_size : int, default 0
        LSTMP: h has this many columns (0: hidden_size, no projection).
    peephole, layer_norm : bool, default False
        The peephole or the LayerNorm LSTM.""")

    _model_class = models.LSTM

    def __init__(self, input_size: int, hidden_size: int, dtype: Optional[DTypeLike] = None, seed: Seed = None,
                 proj_size: int = 0, peephole: bool = False, layer_norm: bool = False) -> None:
        super().__init__(input_size, hidden_size, dtype=dtype, seed=seed, proj_size=proj_size, peephole=peephole,
                         layer_norm=layer_norm)


class GRUCell(_Cell):
    __doc__ = """One GRU step, either form; ``h = (1 - z) * h + z * n``.
""" + _CELL_ARGS.format(model="GRU", extra="""
    reset_after : bool, default False
        Where the reset gate applies (``rnncore.GRU`` explains both forms).""")

    _model_class = models.GRU

    def __init__(self, input_size: int, hidden_size: int, reset_after: bool = False,
                 dtype: Optional[DTypeLike] = None, seed: Seed = None) -> None:
        super().__init__(input_size, hidden_size, dtype=dtype, seed=seed, reset_after=reset_after)


class Stream:
    """A unidirectional model fed one chunk of a sequence at a time.

    Consecutive chunks give exactly the outputs and final state of one call on the whole
    sequence. ``lengths`` are the whole sequences' lengths; each chunk sees the part that falls
    in it (rows that have ended keep their state and output zeros). Training on a chunk treats
    the carried-in state as a constant (truncated backpropagation through time): ``backward``
    returns its gradient as "h0" (and "c0").
    """

    def __init__(self, model: models._Recurrent, state: StateArg = None, lengths: Optional[ArrayLike] = None) -> None:
        if model.bidirectional:
            raise ValueError("model: a bidirectional model cannot stream: its reverse direction starts from "
                             "the end of each sequence, which a chunk does not have")
        self.model = model
        self.state: StateArg = state
        self.lengths = None if lengths is None else _whole_lengths(lengths)
        self.t = 0  # steps consumed so far

    def forward(self, x: np.ndarray, train: bool = False) -> Tuple[np.ndarray, Optional[Tape]]:
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

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)[0]

    def backward(self, tape: Tape, dy: Optional[np.ndarray] = None, dh_n: Optional[np.ndarray] = None,
                 dc_n: Optional[np.ndarray] = None) -> Gradients:
        """Gradients of a training chunk; "h0" (and "c0") are w.r.t. the state it started from."""
        return self.model.backward(tape, dy, dh_n, dc_n)


def _whole_lengths(lengths: ArrayLike) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"lengths: expected one dimension (N,), got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"lengths: expected values >= 0, got min {arr.min()}")
    return arr.astype(np.int64)
