"""The recurrent models users call: RNN, LSTM and GRU over the C++ core.

Shapes (time-major; with ``batch_first=True`` the first two axes of x and y swap)::

    x      (T, N, input_size)
    y      (T, N, dirs * hidden_size)       dirs = 2 if bidirectional else 1
    h0/h_n (num_layers * dirs, N, hidden_size), layer-major, direction-minor; c0/c_n likewise
    lengths (N,) integers in [0, T]: steps at or past a row's length are padding; a row of length 0
            passes its state through unchanged (what streaming an ended row needs)

Parameters per layer k and direction ("" or "_reverse"), G gates (1 RNN, 4 LSTM, 3 GRU)::

    W_ih_l{k}  (G*H, D_k)    W_hh_l{k}  (G*H, H)    b_l{k}  (G*H,)    b_hn_l{k}  (H,) GRU reset_after

with D_0 = input_size and D_k = dirs * H above. Gate order: LSTM i, f, g, o; GRU r, z, n.
"""

from __future__ import annotations

import functools
import numbers
from typing import TYPE_CHECKING
from typing import Any, Dict, Iterable, Iterator, List, Mapping, NoReturn, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _core

if TYPE_CHECKING:
    from .cells import Stream

# What each cell is (gates, states, parameter list, counterparts), as its kernel struct in
# csrc/cells/ says: the one description of a cell, which everything in Python reads.
CELL_INFO: Dict[str, Dict[str, Any]] = _core.cell_info()

# A model's state: h (RNN, GRU) or (h, c) (LSTM); None in a call means zeros.
State = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]
StateArg = Union[None, np.ndarray, Tuple[Optional[np.ndarray], Optional[np.ndarray]]]
# Anything numpy.random.default_rng takes: None draws fresh entropy.
Seed = Union[None, int, Sequence[int], np.random.SeedSequence, np.random.BitGenerator, np.random.Generator]
# Per layer and direction, the parameters in the cell's order (CELL_INFO[cell]["params"], then W_hr).
_Weights = List[Tuple[np.ndarray, ...]]
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_BLAS_LIMIT = 2**31  # the core's BLAS takes 32-bit counts: every matrix dimension stays below this


class _CoreEngine:
    """The C++ driver (GIL released inside)."""

    @staticmethod
    def forward(cell: str, num_layers: int, bidirectional: bool, weights: _Weights, x: np.ndarray, h0: np.ndarray,
                c0: Optional[np.ndarray], lengths: Optional[np.ndarray], masks: Optional[np.ndarray],
                train: bool, hidden_size: Optional[int] = None
                ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[_core.Tape]]:
        return _core.forward(CELL_INFO[cell]["code"], num_layers, 2 if bidirectional else 1, weights, x, h0, c0,
                             lengths, masks, train, hidden_size or 0)

    @staticmethod
    def backward(tape: _core.Tape, weights: _Weights, masks: Optional[np.ndarray], dy: Optional[np.ndarray],
                 dh_n: Optional[np.ndarray], dc_n: Optional[np.ndarray], need_dx: bool = True) -> Tuple[
                     Optional[np.ndarray], np.ndarray, Optional[np.ndarray], List[Tuple[np.ndarray, ...]]]:
        return _core.backward(tape, weights, masks, dy, dh_n, dc_n, need_dx)


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"array of shape {a.shape} and dtype {a.dtype}"
    return f"{type(a).__name__}"


def _is_torch_tensor(a: object) -> bool:
    t = type(a)
    return t.__module__.split(".")[0] == "torch" and hasattr(a, "detach")


def _not_an_array(name: str, a: object, dtype: "np.dtype[Any]") -> TypeError:
    """The TypeError for an argument that should be an ndarray, saying how to get one."""
    got = f"{name}: expected a numpy.ndarray of dtype {dtype}, got {_describe(a)}"
    if _is_torch_tensor(a):
        return TypeError(f"{got} ({type(a).__module__}.{type(a).__name__}); pass {name}.detach().cpu().numpy(), "
                         f"or use the rnncore.torch modules, which take tensors")
    if isinstance(a, (list, tuple)):
        return TypeError(f"{got}: lists and tuples are not accepted (nothing is converted implicitly); pass "
                         f"np.asarray({name}, dtype=np.{dtype})")
    return TypeError(got)


def _wrong_dtype(name: str, a: np.ndarray, dtype: "np.dtype[Any]", owner: str = "model") -> TypeError:
    """The TypeError for an array of another dtype than the model's, saying how to fix the call."""
    if a.dtype.newbyteorder("=") == dtype:
        return TypeError(f"{name}: expected dtype {dtype} (the {owner}'s dtype), got {a.dtype} (non-native byte "
                         f"order); pass {name}.astype(np.{dtype})")
    fix = f"convert it with {name}.astype(np.{dtype})"
    if a.dtype in _DTYPES:
        fix += f", or build the {owner} with dtype=np.{a.dtype} to compute in {a.dtype}"
    return TypeError(f"{name}: expected dtype {dtype} (the {owner}'s dtype), got {a.dtype}; {fix}")


class Tape:
    """What ``forward(..., train=True)`` keeps for ``backward``. Opaque; ``nbytes`` is its size."""

    __slots__ = ("model", "engine_tape", "weights", "masks", "T", "N", "has_lengths")

    def __init__(self, model: "_Recurrent", engine_tape: Optional[_core.Tape], weights: _Weights,
                 masks: Optional[np.ndarray], T: int, N: int, has_lengths: bool) -> None:
        self.model = model
        self.engine_tape = engine_tape
        self.weights = weights
        self.masks = masks
        self.T, self.N, self.has_lengths = T, N, has_lengths

    @property
    def nbytes(self) -> int:
        """Bytes the tape holds: the engine's buffers and the dropout masks (the weights are the model's)."""
        own = getattr(self.engine_tape, "nbytes", None)
        return (own or 0) + (self.masks.nbytes if self.masks is not None else 0)

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("tape: a Tape cannot be pickled or copied: it holds the core's buffers of one forward "
                        "call and belongs to the model that made it; call backward in the same process")


class Gradients(Dict[str, np.ndarray]):
    """What ``backward`` returns: a dict of every gradient, so ``grads["x"]`` and ``grads["W_ih_l0"]``
    read as before, which keeps the parameter gradients apart from the others by construction:
    ``parameters()`` is the dict of the parameter gradients alone (the model's parameter names),
    ``inputs()`` the gradients with respect to the input and the initial states ("x", "h0", "c0";
    a cell's "x", "h", "c"). ``rnncore.train``'s ``clip_grad_norm`` and ``Adam`` read only the
    parameter gradients of a Gradients."""

    __slots__ = ("_inputs",)

    def __init__(self, inputs: Mapping[str, np.ndarray],
                 parameters: Union[Mapping[str, np.ndarray], Iterable[Tuple[str, np.ndarray]]]) -> None:
        super().__init__(inputs)
        self._inputs = tuple(inputs)
        self.update(parameters)

    def parameters(self) -> Dict[str, np.ndarray]:
        """name -> gradient of each parameter (a new dict of the same arrays)."""
        return {k: v for k, v in self.items() if k not in self._inputs}

    def inputs(self) -> Dict[str, np.ndarray]:
        """The gradients with respect to the input and the initial states (a new dict of the same arrays)."""
        return {k: self[k] for k in self._inputs if k in self}

    def __reduce__(self) -> Tuple[Any, ...]:
        return (Gradients, (self.inputs(), self.parameters()))


def _param_entries(cell: str, proj_size: int) -> List[Dict[str, Any]]:
    """The cell's parameter entries (CELL_INFO), then W_hr's when the layers project."""
    info = CELL_INFO[cell]
    return list(info["params"]) + ([info["projection"]] if proj_size else [])


@functools.lru_cache(maxsize=256)
def _shapes_of(cell: str, D: int, H: int, P: int, layers: int, dirs: int, with_init: bool) -> Tuple[Any, ...]:
    """Model._param_shapes of a configuration, made once (a call reads it several times)."""
    entries = _param_entries(cell, P)
    R = P or H
    out = []
    for layer in range(layers):
        size = {"1": 1, "D": D if layer == 0 else dirs * R, "H": H, "R": R}
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            for e in entries:
                shape = tuple(mult * size[var] for mult, var in e["shape"])
                out.append((e["name"] + sfx, shape, e["init"]) if with_init else (e["name"] + sfx, shape))
    return tuple(out)


class _Parameters(Dict[str, np.ndarray]):
    """A model's live parameters, name -> ndarray: a dict that takes only the model's own names.

    An entry may be replaced (by an array of any shape or dtype, which the next call then names)
    or removed (``load_state_dict`` restores it), but a name the model does not have is refused
    where it would enter: the model could not save or load it. Masked arrays are refused too
    (the core would ignore their mask).
    """

    __slots__ = ("_names", "_owner")

    def __init__(self, names: Iterable[str], owner: str, items: Any = ()) -> None:
        super().__init__()
        self._names = frozenset(names)
        self._owner = owner
        self.update(items)

    def _check(self, name: object, value: object) -> None:
        if name not in self._names:
            raise ValueError(f"parameters: {_short_repr(name)} is not a parameter of this {self._owner} (its names: "
                             f"{_listed(self._names)}); keep other parameters, a readout's say, in a dict of your "
                             f"own: {{**model.parameters(), **other}}")
        if isinstance(value, np.ma.MaskedArray):
            raise TypeError(f"parameters[{name!r}]: masked arrays are not supported (the mask would be ignored); "
                            f"pass a plain ndarray")

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self._check(name, value)
        super().__setitem__(name, value)

    def update(self, *args: Any, **kw: Any) -> None:
        items = dict(*args, **kw)
        for name, value in items.items():
            self._check(name, value)
        for name, value in items.items():
            super().__setitem__(name, value)

    def setdefault(self, name: str, default: Any = None) -> np.ndarray:
        if name not in self:
            self[name] = default
        return self[name]

    def __ior__(self, other: Any) -> "_Parameters":  # type: ignore[override,misc]
        self.update(other)
        return self

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_Parameters, (sorted(self._names), self._owner, dict(self)))


_ARGS_DOC = """
    Parameters
    ----------
    input_size : int
        Features of each input step, ``D``.
    hidden_size : int
        Features of the hidden state, ``H``.
    num_layers : int, default 1
        Stacked layers; layer ``k > 0`` reads the outputs of layer ``k - 1``.{extra}
    bidirectional : bool, default False
        Also run every layer backwards in time; outputs and states then hold both directions
        (``dirs = 2``), the forward one first.
    batch_first : bool, default False
        ``x``, ``y``, ``dy`` and ``grads["x"]`` are ``(N, T, features)`` instead of ``(T, N, features)``;
        states keep their shape.
    dropout : float, default 0.0
        Probability in ``[0, 1)``. In training only (``forward(..., train=True)``), the outputs of
        every layer but the last are multiplied by a mask of zeros and ``1 / (1 - dropout)``,
        drawn from the model's own generator.
    dtype : numpy.float32 or numpy.float64, default float32
        The dtype of the parameters and of every array the model takes: nothing is cast, an array
        of another dtype is refused with a message saying how to convert it.
    seed : int or None, default None
        Seeds ``numpy.random.default_rng``, which draws the initial parameters and then the dropout
        masks. ``None`` draws fresh entropy from the operating system: two models built with
        ``seed=None`` have different weights. Pass an int for weights that are the same on every run.

    Notes
    -----
    Initialisation: every parameter, in the order of ``parameters()``, is drawn uniformly from
    ``[-1/sqrt(hidden_size), 1/sqrt(hidden_size)]``, biases included (the rule PyTorch uses).

    Parameters, per layer ``k`` and direction (suffix ``_reverse`` for the reverse one), with
    ``G`` gates ({gates}), ``D_0 = input_size`` and ``D_k = dirs * H`` above:
    ``W_ih_l{{k}}`` ``(G*H, D_k)``, ``W_hh_l{{k}}`` ``(G*H, H)``, ``b_l{{k}}`` ``(G*H,)``{b_hn}.
    One bias per gate: PyTorch's two (``b_ih`` and ``b_hh``) add up to it (``num_parameters``).
"""


class _Recurrent:
    """Shared by RNN, LSTM and GRU: configuration, parameters, argument checking, calls.

    A subclass sets ``cell``, the engines' name of its cell ("rnn_tanh", "lstm", "gru_after", ...).
    """

    _engine: Any = _CoreEngine
    _default_dtype: DTypeLike = np.float32
    proj_size: int = 0  # the size of h when the layers project (LSTM's proj_size); 0: none, h is hidden_size
    cell: str
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    batch_first: bool
    dropout: float
    dtype: "np.dtype[Any]"
    seed: Seed
    _dropout_rng: np.random.Generator
    _params: _Parameters
    _layout_cache: Optional[List[Tuple[Tuple[str, Tuple[int, ...]], ...]]]

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 batch_first: bool = False, dropout: float = 0.0, dtype: Optional[DTypeLike] = None, seed: Seed = None) -> None:
        rng = self._configure(input_size, hidden_size, num_layers, bidirectional, batch_first, dropout, dtype, seed)
        total = self._check_model_sizes()
        np.empty(total, self.dtype)  # untouched: a model that cannot fit fails here at once, with MemoryError
        k = 1.0 / np.sqrt(self.hidden_size)
        self._params = self._new_parameters()
        for name, shape, init in self._param_shapes(with_init=True):
            if init == "uniform":
                self._params[name] = rng.uniform(-k, k, size=shape).astype(self.dtype)
            else:
                self._params[name] = (np.ones if init == "ones" else np.zeros)(shape, self.dtype)

    def _configure_extra(self, **extra: Any) -> None:
        """The subclass's own constructor arguments (RNN: nonlinearity, GRU: reset_after), checked and set."""
        if extra:
            raise TypeError(f"{type(self).__name__}: unexpected arguments {sorted(extra)}")

    @classmethod
    def _unparameterised(cls, config: Mapping[str, Any]) -> Any:
        """A model of this configuration (constructor arguments but seed, all checked) without parameters:
        nothing is allocated. ``_adopt`` gives it its parameters."""
        config = dict(config)
        base = {k: config.pop(k) for k in ("input_size", "hidden_size", "num_layers", "bidirectional",
                                           "batch_first", "dropout", "dtype") if k in config}
        model = cls.__new__(cls)
        model._configure_extra(**config)
        model._configure(**base)
        model._check_model_sizes()
        model._params = model._new_parameters()
        return model

    def _adopt(self, arrays: Mapping[str, np.ndarray]) -> Any:
        """Take ``arrays`` (name -> ndarray of exactly this model's names, shapes and dtype) as the
        parameters, without copying those that are C-contiguous, aligned and writeable."""
        expected = dict(self._param_shapes())
        if set(arrays) != set(expected):
            raise ValueError("arrays: names do not match the model")
        params = {}
        for name, shape in expected.items():
            a = arrays[name]
            if type(a) is not np.ndarray or a.dtype != self.dtype or a.shape != shape:
                raise ValueError(f"arrays[{name!r}]: expected an ndarray of dtype {self.dtype} and shape {shape}")
            flags = a.flags
            params[name] = a if flags.c_contiguous and flags.aligned and flags.writeable else np.array(a, order="C")
        self._params = self._new_parameters(params)
        return self

    def _new_parameters(self, items: Any = ()) -> _Parameters:
        return _Parameters((name for name, _ in self._param_shapes()), type(self).__name__, items)

    def _configure(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                   batch_first: bool = False, dropout: float = 0.0, dtype: Optional[DTypeLike] = None,
                   seed: Seed = None) -> np.random.Generator:
        """Check and set the configuration; returns the generator that initialises parameters."""
        self.input_size = _positive_int(input_size, "input_size")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        self.num_layers = _positive_int(num_layers, "num_layers")
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise TypeError(f"bidirectional: expected a bool, got {_describe(bidirectional)}")
        if not isinstance(batch_first, (bool, np.bool_)):
            raise TypeError(f"batch_first: expected a bool, got {_describe(batch_first)}")
        self.bidirectional = bool(bidirectional)
        self.batch_first = bool(batch_first)
        if not isinstance(dropout, numbers.Real) or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {_short_repr(dropout)}")
        self.dropout = float(dropout)
        try:
            dt = np.dtype(self._default_dtype if dtype is None else dtype)
        except TypeError:
            raise TypeError(f"dtype: expected float32 or float64, got {_short_repr(dtype)}") from None
        if dt not in _DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, got {dt}")
        self.dtype = dt
        self.seed = seed
        rng = np.random.default_rng(seed)
        self._dropout_rng = np.random.default_rng(rng.integers(2**63))
        return rng

    # ---- configuration -------------------------------------------------------------------

    @property
    def dirs(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _info(self) -> Dict[str, Any]:
        """What this model's cell is (CELL_INFO)."""
        return CELL_INFO[self.cell]

    @property
    def _gates(self) -> int:
        return int(self._info["gates"])

    @property
    def _has_c(self) -> bool:
        return "c" in self._info["states"]

    @property
    def _out_size(self) -> int:
        """The size of h: proj_size when the layers project, else hidden_size."""
        return self.proj_size or self.hidden_size

    def _param_list(self) -> List[Dict[str, Any]]:
        """The cell's parameter entries (CELL_INFO), then W_hr's when the layers project."""
        return _param_entries(self.cell, self.proj_size or 0)

    def _param_shapes(self, with_init: bool = False) -> Iterator[Any]:
        """(name, shape) of every parameter, layer by layer, forward then reverse, in the cell's order
        ((name, shape, init) with ``with_init``)."""
        return iter(_shapes_of(self.cell, self.input_size, self.hidden_size, self.proj_size or 0, self.num_layers,
                               self.dirs, with_init))

    def _check_model_sizes(self) -> int:
        """The number of parameter values; ValueError when a dimension or the total overflows the core's counts."""
        D, H, G = self.input_size, self.hidden_size, self._gates
        widest = max((G + 1) * H, self.dirs * H)
        if D >= _BLAS_LIMIT or widest >= _BLAS_LIMIT:
            name, what = ("input_size", f"input_size={D}") if D >= _BLAS_LIMIT else \
                ("hidden_size", f"hidden_size={H} gives matrices {widest} wide")
            raise ValueError(f"{name}: sizes too large: {what}; the core's BLAS counts are 32-bit "
                             f"(below {_BLAS_LIMIT})")
        R, entries = self._out_size, self._param_list()

        def per_dir(D_l: int) -> int:  # parameter values of one layer and direction
            size = {"1": 1, "D": D_l, "H": H, "R": R}
            return sum(int(np.prod([mult * size[var] for mult, var in e["shape"]], dtype=object)) for e in entries)

        total = self.dirs * (per_dir(D) + (self.num_layers - 1) * per_dir(self.dirs * R))
        if total * self.dtype.itemsize >= 2**63:
            raise ValueError(f"num_layers: sizes too large: input_size={D}, hidden_size={H}, "
                             f"num_layers={self.num_layers} give {total} parameters, more bytes than 64 bits count")
        return total

    def _extra_repr(self) -> str:
        return ""

    def _extra_config(self) -> Dict[str, Any]:
        """The subclass's own constructor arguments, name -> value, as save() writes them."""
        return {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, batch_first={self.batch_first}, dropout={self.dropout}, "
                f"dtype={self.dtype.name}{self._extra_repr()})")

    # ---- parameters ----------------------------------------------------------------------

    def parameters(self) -> Dict[str, np.ndarray]:
        """The live parameters, name -> ndarray; editing an array in place changes the model."""
        return self._params

    def num_parameters(self) -> int:
        """The number of parameter values (sum of the sizes of ``parameters()``).

        rnncore keeps one bias vector per layer and direction where PyTorch keeps two (``b_ih`` and
        ``b_hh``, which only ever appear summed), so PyTorch counts ``G * hidden_size`` more per layer
        and direction (``G`` = 1 RNN, 4 LSTM, 3 GRU): ``LSTM(16, 32, num_layers=2)`` has 14,592
        parameters here and 14,848 in ``torch.nn.LSTM(16, 32, num_layers=2)``, computing the same
        function. A reset_after GRU keeps ``b_hn`` (the hidden side's ``n`` bias, which ``r`` multiplies)
        apart, so there PyTorch counts ``2 * hidden_size`` more.
        """
        return self._check_model_sizes()

    def state_dict(self) -> Dict[str, np.ndarray]:
        """A copy of every parameter, name -> ndarray: what ``load_state_dict`` takes back. A parameter
        removed or replaced by one of another shape through ``parameters()`` is named (TypeError, ValueError)."""
        out = {}
        for name, shape in self._param_shapes():
            a = self._params.get(name)
            if not isinstance(a, np.ndarray) or a.shape != shape or isinstance(a, np.ma.MaskedArray):
                self._bad_parameter(name, a, shape)
            out[name] = a.copy()
        return out

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike]) -> None:
        """Copy parameters in (cast to this model's dtype). Checks everything before changing anything."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict: expected a mapping of name -> array, got {_describe(state_dict)}")
        expected = dict(self._param_shapes())
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        if missing or unexpected:
            raise ValueError(f"state_dict: names do not match this {type(self).__name__}: "
                             f"missing {_listed(missing)}, unexpected {_listed(unexpected)}")
        staged = {}
        for name, shape in expected.items():
            a = state_dict[name]
            if isinstance(a, np.ma.MaskedArray):
                raise TypeError(f"state_dict[{name!r}]: masked arrays are not supported (the mask would be ignored); "
                                f"pass a plain ndarray")
            a = np.asarray(a)
            if a.dtype.kind != "f":
                raise TypeError(f"state_dict[{name!r}]: expected floating point values, got dtype {a.dtype}")
            if a.shape != shape:
                raise ValueError(f"state_dict[{name!r}]: expected shape {shape}, got {a.shape}")
            staged[name] = a
        for name, a in staged.items():
            live = self._params.get(name)
            if (isinstance(live, np.ndarray) and live.shape == expected[name] and live.dtype == self.dtype
                    and live.flags.writeable):
                np.copyto(live, a, casting="unsafe")  # in place: arrays handed out by parameters() follow
            else:  # the live entry was replaced or removed through parameters(): a fresh array
                self._params[name] = np.array(a, dtype=self.dtype)

    def _layout(self) -> List[Tuple[Tuple[str, Tuple[int, ...]], ...]]:
        """Per layer and direction, the (name, shape) of W_ih, W_hh, b (and b_hn); computed once."""
        if getattr(self, "_layout_cache", None) is None:
            names = list(self._param_shapes())
            per = len(self._param_list())
            self._layout_cache = [tuple(names[i:i + per]) for i in range(0, len(names), per)]
        return self._layout_cache  # type: ignore[return-value]  # set just above

    def _weights(self) -> _Weights:
        """Per layer and direction, the tuple of its parameters in the cell's order, checked and C-contiguous."""
        out = []
        params, dtype = self._params, self.dtype
        for group in self._layout():
            arrays = []
            for name, shape in group:
                a = params.get(name)
                if type(a) is not np.ndarray or a.dtype != dtype or a.shape != shape:
                    # the exact type is the fast path; an ndarray subclass other than a masked array passes too
                    if (not isinstance(a, np.ndarray) or isinstance(a, np.ma.MaskedArray) or a.dtype != dtype
                            or a.shape != shape):
                        self._bad_parameter(name, a, shape)
                arrays.append(_c_aligned(a))
            out.append(tuple(arrays))
        return out

    def _bad_parameter(self, name: str, a: object, shape: Tuple[int, ...]) -> NoReturn:
        if isinstance(a, np.ma.MaskedArray):
            raise TypeError(f"parameter {name!r}: masked arrays are not supported (the mask would be ignored); "
                            f"assign a plain ndarray")
        if not isinstance(a, np.ndarray):
            raise TypeError(f"parameter {name!r}: expected an ndarray, got {_describe(a)}")
        if a.dtype != self.dtype:
            raise TypeError(f"parameter {name!r}: expected dtype {self.dtype}, got {a.dtype}")
        raise ValueError(f"parameter {name!r}: expected shape {shape}, got {a.shape}")

    # ---- calls ---------------------------------------------------------------------------

    def __call__(self, x: np.ndarray, state: StateArg = None,
                 lengths: Optional[ArrayLike] = None) -> Tuple[np.ndarray, State]:
        """Inference over whole sequences: ``forward(x, state, lengths)`` without the tape.

        Parameters
        ----------
        x : numpy.ndarray
            ``(T, N, input_size)`` (``(N, T, input_size)`` with ``batch_first``), of the model's dtype.
        state : numpy.ndarray, tuple of two, or None
            ``h0`` of shape ``(num_layers * dirs, N, hidden_size)``; for LSTM the tuple ``(h0, c0)``
            (either may be None). None: zeros.
        lengths : array of N integers, or None
            Each row's length in ``[0, T]``; steps past it are padding (see ``forward``).

        Returns
        -------
        y : numpy.ndarray
            ``(T, N, dirs * hidden_size)`` (``batch_first``: ``(N, T, ...)``), the last layer's outputs,
            the forward direction's half first; zeros at padding.
        state : numpy.ndarray or tuple
            ``h_n``, or ``(h_n, c_n)`` for LSTM, each ``(num_layers * dirs, N, hidden_size)``:
            each row's state after its last valid step. Same dtype as the model.
        """
        y, state, _ = self.forward(x, state, lengths=lengths, train=False)
        return y, state

    def stream(self, state: StateArg = None, lengths: Optional[ArrayLike] = None) -> "Stream":
        """A :class:`rnncore.Stream` feeding this model a sequence chunk by chunk (unidirectional only)."""
        from .cells import Stream

        return Stream(self, state, lengths)

    def forward(self, x: np.ndarray, state: StateArg = None, lengths: Optional[ArrayLike] = None,
                train: bool = False) -> Tuple[np.ndarray, State, Optional[Tape]]:
        """The network over whole sequences; with ``train=True`` also the tape for ``backward``.

        Parameters
        ----------
        x : numpy.ndarray
            ``(T, N, input_size)``, or ``(N, T, input_size)`` with ``batch_first``; the model's dtype
            (float32 by default). Any strides; non-contiguous arrays are copied.
        state : numpy.ndarray, tuple of two, or None
            ``h0`` ``(num_layers * dirs, N, hidden_size)``, layer-major, direction-minor; for LSTM
            the tuple ``(h0, c0)``, either of which may be None. None: zeros.
        lengths : array of N integers, or None
            Each row's length in ``[0, T]``, any order. Steps at or past a row's length are
            padding: they influence nothing and their outputs are zero; the reverse direction reads
            each row backwards from its own last valid step. A row of length 0 keeps its state.
        train : bool, default False
            Keep what ``backward`` needs and apply dropout.

        Returns
        -------
        y : numpy.ndarray
            ``(T, N, dirs * hidden_size)`` (``batch_first``: ``(N, T, dirs * hidden_size)``).
        state : numpy.ndarray or tuple
            ``h_n`` (RNN, GRU) or ``(h_n, c_n)`` (LSTM), each ``(num_layers * dirs, N, hidden_size)``.
        tape : Tape or None
            None unless ``train``. Pass it to this model's ``backward`` once.

        All arrays returned have the model's dtype. Bad arguments raise ValueError or TypeError
        naming the argument; nothing is cast.
        """
        if not isinstance(train, (bool, np.bool_)):
            raise TypeError(f"train: expected a bool, got {_describe(train)}")
        x = self._check_array(x, "x", 3)
        T, N, D = x.shape[1::-1] + x.shape[2:] if self.batch_first else x.shape
        if T < 1:
            raise ValueError(f"x: expected at least one time step, got shape {x.shape}")
        if D != self.input_size:
            raise ValueError(f"x: expected last dimension input_size={self.input_size}, got shape {x.shape}")
        self._check_call_sizes(T, N)
        h0, c0 = self._check_state(state, N)
        lengths = self._check_lengths(lengths, T, N)
        return self._run(x, h0, c0, lengths, bool(train), self._weights())

    def _run(self, x: np.ndarray, h0: np.ndarray, c0: Optional[np.ndarray], lengths: Optional[np.ndarray],
             train: bool, weights: _Weights, rng: Optional[np.random.Generator] = None
             ) -> Tuple[np.ndarray, State, Optional[Tape]]:
        """``forward`` on arguments already checked: x of the model's dtype in the caller's layout
        (``batch_first`` or not), states and lengths as the core takes them, the parameters in
        ``_weights()``'s form; dropout masks from ``rng`` (default: the model's generator)."""
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        x = _c_aligned(x)
        T, N = x.shape[0], x.shape[1]
        masks = None
        if train and self.dropout > 0 and self.num_layers > 1:
            keep = 1.0 - self.dropout
            shape = (self.num_layers - 1, T, N, self.dirs * self._out_size)
            masks = (((rng or self._dropout_rng).random(shape) < keep) / keep).astype(self.dtype)
        y, h_n, c_n, etape = self._engine.forward(self.cell, self.num_layers, self.bidirectional, weights, x,
                                                  h0, c0, lengths, masks, train, hidden_size=self.hidden_size)
        if self.batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        tape = Tape(self, etape, weights, masks, T, N, lengths is not None) if train else None
        return y, ((h_n, c_n) if self._has_c else h_n), tape

    def backward(self, tape: Tape, dy: Optional[np.ndarray] = None, dh_n: Optional[np.ndarray] = None,
                 dc_n: Optional[np.ndarray] = None, *, input_grad: bool = True) -> Gradients:
        """Backpropagation through time of a training forward.

        Parameters
        ----------
        tape : Tape
            From ``forward(..., train=True)`` of this model; the parameters may have changed values
            since (the tape keeps the ones it used) but not shapes.
        dy : numpy.ndarray or None
            Gradient of the loss with respect to ``y``: ``y``'s shape and the model's dtype. None: zero.
        dh_n, dc_n : numpy.ndarray or None
            Gradients with respect to the final states, ``(num_layers * dirs, N, hidden_size)``;
            ``dc_n`` for LSTM only. None: zero.
        input_grad : bool
            Whether to compute the gradient of ``x`` (default True). False skips it: the first
            layer's ``dx`` product, a sixth of an LSTM layer's backward FLOPs, is not computed, and
            the result has no ``"x"`` entry. The other gradients are the same bits either way.

        Returns
        -------
        Gradients
            A dict: ``"x"`` like ``x`` (``batch_first`` respected; absent with
            ``input_grad=False``), ``"h0"`` (and ``"c0"``) like the states, and one entry per
            parameter name with that parameter's shape; all in the model's dtype.
            ``grads.parameters()`` holds the parameter gradients alone, ``grads.inputs()`` the
            others.
        """
        if not isinstance(tape, Tape):
            raise TypeError(f"tape: expected the tape returned by forward(..., train=True), got {_describe(tape)}")
        if not isinstance(input_grad, (bool, np.bool_)):
            raise TypeError(f"input_grad: expected a bool, got {_describe(input_grad)}")
        if tape.model is not self:
            raise ValueError("tape: it was made by another model")
        for group, kept in zip(self._layout(), tape.weights):
            for (name, _), then in zip(group, kept):
                now = self._params.get(name)
                if then is not None and getattr(now, "shape", None) != then.shape:
                    raise ValueError(f"tape: parameter {name!r} changed shape since the forward that made this "
                                     f"tape: {then.shape} then, {_describe(now)} now")
        T, N, H, R = tape.T, tape.N, self.hidden_size, self._out_size
        if dy is not None:
            dy = self._check_array(dy, "dy", 3)
            want = self._user_shape((T, N, self.dirs * R))
            if dy.shape != want:
                raise ValueError(f"dy: expected shape {want} (like y), got {dy.shape}")
        dh_n = self._check_optional_state(dh_n, "dh_n", (self.num_layers * self.dirs, N, R))
        if self._has_c:
            dc_n = self._check_optional_state(dc_n, "dc_n", (self.num_layers * self.dirs, N, H))
        elif dc_n is not None:
            raise ValueError(f"dc_n: {type(self).__name__} has no cell state; pass None")
        dx, dh0, dc0, dw = self._run_backward(tape, dy, dh_n, dc_n, bool(input_grad))
        inputs: Dict[str, np.ndarray] = {}
        if dx is not None:
            inputs["x"] = dx
        inputs["h0"] = dh0
        if dc0 is not None:
            inputs["c0"] = dc0
        names = [n for n, _ in self._param_shapes()]
        flat = [a for group in dw for a in group if a is not None]
        return Gradients(inputs, zip(names, flat))

    def _run_backward(self, tape: Tape, dy: Optional[np.ndarray], dh_n: Optional[np.ndarray],
                      dc_n: Optional[np.ndarray], input_grad: bool) -> Tuple[
                          Optional[np.ndarray], np.ndarray, Optional[np.ndarray], List[Tuple[np.ndarray, ...]]]:
        """``backward`` on arguments already checked (dy in the caller's layout): dx (in that layout,
        or None), dh0, dc0 (or None) and, per layer and direction, the parameters' gradients in the
        cell's order."""
        if dy is not None:
            dy = _c_aligned(dy.transpose(1, 0, 2) if self.batch_first else dy)
        dx, dh0, dc0, dw = self._engine.backward(tape.engine_tape, tape.weights, tape.masks, dy, dh_n, dc_n,
                                                 input_grad)
        if dx is not None and self.batch_first:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        return dx, dh0, dc0, dw

    # ---- interoperability and files: thin delegates to _torch, _keras, _onnx and _io ------

    @classmethod
    def from_torch(cls, module: Any) -> Any:
        """This model from a torch.nn.RNN/LSTM/GRU of the same kind: configuration, dtype and weights.

        A torch GRU becomes GRU(reset_after=True); torch's bias=False gives zero biases.
        """
        from . import _torch
        return _torch.from_torch(module, cls)

    @classmethod
    def from_torch_state_dict(cls, state_dict: Mapping[str, Any], batch_first: bool = False, dropout: float = 0.0,
                              **config: Any) -> Any:
        """This model from a torch RNN/LSTM/GRU state dict (tensors or arrays).

        input_size, hidden_size, num_layers, bidirectional and dtype come from the names and shapes;
        batch_first and dropout are not in a state dict and are given here (RNN: also nonlinearity).
        """
        from . import _torch
        return _torch.from_torch_state_dict(cls, state_dict, batch_first, dropout, **config)

    def to_torch(self) -> Any:
        """A torch.nn.RNN/LSTM/GRU (CPU) with this configuration, dtype and weights.

        Raises ValueError for GRU(reset_after=False), which PyTorch has no equivalent of.
        """
        from . import _torch
        return _torch.to_torch(self)

    def to_keras(self) -> Any:
        """A keras.Sequential computing ``self(x)[0]`` on (N, T, D) input, whatever batch_first says:
        per layer a keras SimpleRNN/LSTM/GRU (return_sequences=True), in Bidirectional when
        bidirectional, with Dropout(dropout) layers in between when dropout > 0."""
        from . import _keras
        return _keras.to_keras(self)

    def to_onnx(self, path: Any, x_only: bool = False, shapes: str = "rnncore") -> Any:
        """Write this model to ``path`` as an ONNX graph (opset 17), one RNN/LSTM/GRU operator per layer.

        Graph inputs (T and N are dynamic)::

            x        (T, N, input_size), or (N, T, input_size) if batch_first; this model's dtype
            h0       (num_layers * dirs, N, hidden_size); zeros for no initial state
            c0       like h0; LSTM only
            lengths  (N,) int64 in [0, T]; T for every row when the sequences are full

        ``x_only=True`` writes x as the only input: zero initial state, full lengths.
        Graph outputs: y, h_n and (LSTM) c_n, as from ``self(x, state, lengths)`` with
        ``shapes="rnncore"``; with ``shapes="onnx"``, y keeps ONNX's direction axis, (T, dirs, N, H)
        ((N, T, dirs, H) if batch_first), and with batch_first h_n and c_n are (N, num_layers * dirs, H).
        A row of length 0 ends in zeros in ONNX Runtime, in h0 in rnncore (README.md, "ONNX").
        A peephole LSTM's P is written in ONNX's row order (p_i, p_o, p_f); the projection and
        LayerNorm LSTMs have no ONNX operator and are refused. Dropout is not exported (inference).
        ONNX Runtime runs these operators in float32 only. Returns ``path``.
        """
        from . import _onnx
        return _onnx.to_onnx(self, path, x_only=x_only, shapes=shapes)

    def save(self, path: Any) -> None:
        """Write configuration and parameters to an .npz file (see ``rnncore.load``)."""
        from . import _io
        _io.save(self, path)

    def load(self, path: Any) -> Any:
        """Read parameters saved by ``save`` into this model, which must have the same architecture and
        dtype; batch_first and dropout stay this model's. Returns self. Nothing changes on error."""
        from . import _io
        return _io.load_into(self, path)

    # ---- argument checking ---------------------------------------------------------------

    def _user_shape(self, time_major_shape: Sequence[int]) -> Tuple[int, ...]:
        """A time-major shape as the user sees it."""
        s = tuple(time_major_shape)
        return (s[1], s[0]) + s[2:] if self.batch_first and len(s) >= 2 else s

    def _check_array(self, a: object, name: str, ndim: int) -> np.ndarray:
        if not isinstance(a, np.ndarray):
            raise _not_an_array(name, a, self.dtype)
        if isinstance(a, np.ma.MaskedArray):
            raise TypeError(f"{name}: masked arrays are not supported (the mask would be ignored); pass "
                            f"{name}.filled(0), and lengths for padding")
        if a.dtype != self.dtype:
            raise _wrong_dtype(name, a, self.dtype)
        if a.ndim != ndim:
            layout = "(N, T, input_size)" if self.batch_first else "(T, N, input_size)"
            what = f"{ndim} dimensions" + (f" {layout}" if name == "x" else "")
            raise ValueError(f"{name}: expected {what}, got shape {a.shape}")
        return a

    def _check_optional_state(self, a: object, name: str, shape: Tuple[int, ...]) -> Optional[np.ndarray]:
        if a is None:
            return None
        a = self._check_array(a, name, 3)
        if a.shape != shape:
            size = "proj_size" if shape[2] == self.proj_size and not name.startswith(("c", "dc")) else "hidden_size"
            raise ValueError(f"{name}: expected shape {shape} (num_layers * dirs, N, {size}), got {a.shape}")
        return _c_aligned(a)

    def _check_state(self, state: object, N: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        shape = (self.num_layers * self.dirs, N, self._out_size)
        if self._has_c:
            if state is None:
                state = (None, None)
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"state: expected a tuple (h0, c0) for LSTM, got {_describe(state)}")
            cshape = (self.num_layers * self.dirs, N, self.hidden_size)
            h0 = self._check_optional_state(state[0], "h0", shape)
            c0 = self._check_optional_state(state[1], "c0", cshape)
            return (np.zeros(shape, self.dtype) if h0 is None else h0), (np.zeros(cshape, self.dtype) if c0 is None
                                                                         else c0)
        if isinstance(state, (tuple, list)):
            raise TypeError(f"state: expected the array h0 for {type(self).__name__}, got a {type(state).__name__}")
        h0 = self._check_optional_state(state, "h0", shape)
        return (np.zeros(shape, self.dtype) if h0 is None else h0), None

    def _check_call_sizes(self, T: int, N: int) -> None:
        """ValueError, before anything is allocated, when the core's counts would overflow (as bindings.cpp checks)."""
        rows = (T + 1) * N
        wide = max(self.input_size, self.dirs * self.hidden_size, (self._gates + 1) * self.hidden_size)
        if rows >= _BLAS_LIMIT:
            raise ValueError(f"x: sizes too large: T={T} and N={N} give (T + 1) * N = {rows} rows; the core's BLAS "
                             f"counts are 32-bit (below {_BLAS_LIMIT})")
        if rows * wide * 8 > 2**62:
            raise ValueError(f"x: sizes too large: (T + 1) * N = {rows} rows of {wide} values (T={T}, N={N}, "
                             f"hidden_size={self.hidden_size}) are more bytes than 64 bits count")

    @staticmethod
    def _check_lengths(lengths: object, T: int, N: int) -> Optional[np.ndarray]:
        if lengths is None:
            return None
        try:
            arr = np.asarray(lengths)
        except (ValueError, TypeError):
            raise TypeError(f"lengths: expected a flat sequence of {N} integers, got {_describe(lengths)}") from None
        if arr.size == 0 and not isinstance(lengths, np.ndarray):
            arr = arr.astype(np.int64)  # NumPy reads [] as float64
        if arr.dtype == object and arr.shape == (N,) and all(
                isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in arr):
            raise ValueError(f"lengths: expected values in [0, T={T}], got integers beyond int64")
        if arr.dtype.kind not in "iu":
            raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
        if arr.shape != (N,):
            raise ValueError(f"lengths: expected shape ({N},) (one per batch row), got {arr.shape}")
        if N and (arr.min() < 0 or arr.max() > T):
            raise ValueError(f"lengths: expected values in [0, T={T}], got min {arr.min()} and max {arr.max()}")
        return _c_aligned(np.asarray(arr, dtype=np.int64))


def _c_aligned(a: np.ndarray) -> np.ndarray:
    """a itself when the core can read it as it is (C-contiguous and aligned), else such a copy."""
    flags = a.flags
    return a if flags.c_contiguous and flags.aligned else np.array(a, order="C")


def _short_repr(v: object, limit: int = 80) -> str:
    """repr(v), cut to about ``limit`` characters: messages stay short whatever the value."""
    r = repr(v)
    return r if len(r) <= limit else r[:limit - 15] + f"... ({len(r)} chars)"


def _listed(names: Iterable[Any], limit: int = 8) -> str:
    """Sorted names as a list literal, at most ``limit`` of them, then how many more: bounded messages."""
    names = sorted(names)
    shown = ", ".join(_short_repr(n, 60) for n in names[:limit])
    more = f", ... and {len(names) - limit} more ({len(names)} in all)" if len(names) > limit else ""
    return f"[{shown}{more}]"


def _positive_int(v: object, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {_describe(v)}")
    if v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v}")
    return int(v)


class RNN(_Recurrent):
    __doc__ = """Simple (Elman) RNN over whole sequences: ``h_t = f(x_t W_ih^T + h_{t-1} W_hh^T + b)``,
    ``f`` = tanh or relu. Forward with ``model(x)`` or ``model.forward``, gradients with ``backward``.
""" + _ARGS_DOC.format(extra="""
    nonlinearity : {"tanh", "relu"}, default "tanh"
        The activation ``f``.""", gates="1", b_hn="")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bidirectional: bool = False, batch_first: bool = False, dropout: float = 0.0,
                 dtype: Optional[DTypeLike] = None, seed: Seed = None) -> None:
        self._configure_extra(nonlinearity=nonlinearity)
        super().__init__(input_size, hidden_size, num_layers, bidirectional, batch_first, dropout, dtype, seed)

    def _configure_extra(self, nonlinearity: object = "tanh") -> None:  # type: ignore[override]
        if not isinstance(nonlinearity, str) or nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {_short_repr(nonlinearity)}")
        self.nonlinearity = nonlinearity

    @property
    def cell(self) -> str:  # type: ignore[override]
        return "rnn_" + self.nonlinearity

    def _extra_repr(self) -> str:
        return f", nonlinearity={self.nonlinearity!r}"

    def _extra_config(self) -> Dict[str, Any]:
        return {"nonlinearity": self.nonlinearity}


class LSTM(_Recurrent):
    __doc__ = """Long short-term memory over whole sequences. Gates ``i, f, g, o``:
    ``c_t = f * c_{t-1} + i * g``, ``h_t = o * tanh(c_t)``; the state is the tuple ``(h, c)``.
    Forward with ``model(x)`` or ``model.forward``, gradients with ``backward``.
""" + _ARGS_DOC.format(extra="", gates="4, in the order i, f, g, o", b_hn="") + """
    Variants (README, "LSTM variants"), which may be combined except peephole with layer_norm:

    proj_size : int, default 0
        LSTMP, as PyTorch's ``proj_size`` (``0 < proj_size < hidden_size``; 0 for none):
        ``h_t = W_hr (o * tanh(c_t))`` with ``W_hr_l{k}`` ``(proj_size, H)``; h, the outputs and
        ``W_hh``'s columns have proj_size, c keeps hidden_size.
    peephole : bool, default False
        ONNX's and oneDNN's peephole LSTM: ``i = sigmoid(... + p_i * c_{t-1})``,
        ``f = sigmoid(... + p_f * c_{t-1})``, ``o = sigmoid(... + p_o * c_t)``, with ``P_l{k}``
        ``(3, H)``, rows ``p_i, p_f, p_o``.
    layer_norm : bool, default False
        The LayerNorm LSTM of Ba, Kiros and Hinton (2016), eqs. 20-22: the gates are
        ``LN(W_hh h; ln_h) + LN(W_ih x; ln_x) + b``, each LN over the whole 4H row, and
        ``h_t = o * tanh(LN(c_t; ln_c))``, the carried ``c_t`` not normalised. Gains
        ``ln_{x,h}_gamma_l{k}`` ``(4H,)``, ``ln_c_gamma_l{k}`` ``(H,)`` start at 1, shifts
        (``_beta``) at 0.
"""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 batch_first: bool = False, dropout: float = 0.0, dtype: Optional[DTypeLike] = None,
                 seed: Seed = None, proj_size: int = 0, peephole: bool = False, layer_norm: bool = False) -> None:
        self._configure_extra(proj_size=proj_size, peephole=peephole, layer_norm=layer_norm,
                              hidden_size=hidden_size)
        super().__init__(input_size, hidden_size, num_layers, bidirectional, batch_first, dropout, dtype, seed)

    def _configure_extra(self, proj_size: Any = 0, peephole: Any = False, layer_norm: Any = False,  # type: ignore[override]
                         hidden_size: Any = None) -> None:
        for name, v in (("peephole", peephole), ("layer_norm", layer_norm)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name}: expected a bool, got {_describe(v)}")
        if peephole and layer_norm:
            raise ValueError("peephole, layer_norm: not both: the LayerNorm LSTM (Ba et al. 2016) has no "
                             "peepholes, and where p * c would enter a normalised gate is not defined by either")
        if isinstance(proj_size, (bool, np.bool_)) or not isinstance(proj_size, numbers.Integral):
            raise TypeError(f"proj_size: expected an int (0 for no projection), got {_describe(proj_size)}")
        if proj_size < 0:
            raise ValueError(f"proj_size: expected 0 (no projection) or 0 < proj_size < hidden_size, got {proj_size}")
        H = hidden_size  # None from _unparameterised, which checks it once hidden_size is set
        if proj_size and isinstance(H, numbers.Integral) and not isinstance(H, bool) and proj_size >= H:
            raise ValueError(f"proj_size: expected 0 < proj_size < hidden_size={H}, got {proj_size}")
        self.proj_size = int(proj_size)
        self.peephole = bool(peephole)
        self.layer_norm = bool(layer_norm)

    @classmethod
    def _unparameterised(cls, config: Mapping[str, Any]) -> "LSTM":
        config = dict(config)
        config.setdefault("proj_size", 0)
        config.setdefault("peephole", False)
        config.setdefault("layer_norm", False)
        model: LSTM = super()._unparameterised(config)
        if model.proj_size >= model.hidden_size:
            raise ValueError(f"proj_size: expected 0 < proj_size < hidden_size={model.hidden_size}, "
                             f"got {model.proj_size}")
        return model

    @property
    def cell(self) -> str:  # type: ignore[override]
        return "lstm_peephole" if self.peephole else "lstm_ln" if self.layer_norm else "lstm"

    def _extra_repr(self) -> str:
        return "".join(f", {k}={v}" for k, v in self._extra_config().items())

    def _extra_config(self) -> Dict[str, Any]:
        """The variant's arguments that differ from the plain LSTM's (a plain LSTM's file and repr stay as before)."""
        out: Dict[str, Any] = {}
        if self.proj_size:
            out["proj_size"] = self.proj_size
        if self.peephole:
            out["peephole"] = True
        if self.layer_norm:
            out["layer_norm"] = True
        return out


class GRU(_Recurrent):
    __doc__ = """Gated recurrent unit over whole sequences. Gates ``r, z, n``;
    ``h_t = (1 - z) * h_{t-1} + z * n``. Forward with ``model(x)`` or ``model.forward``, gradients
    with ``backward``.
""" + _ARGS_DOC.format(extra="""
    reset_after : bool, default False
        False (the notes' form): ``n = tanh(x W_in^T + (r * h) W_hn^T + b_n)``. True (the
        cuDNN/PyTorch form): ``n = tanh(x W_in^T + b_n + r * (h W_hn^T + b_hn))``, with a
        separate ``b_hn``; only this form converts to PyTorch.""", gates="3, in the order r, z, n",
                       b_hn=",\n    and ``b_hn_l{k}`` ``(H,)`` when ``reset_after``")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, reset_after: bool = False,
                 bidirectional: bool = False, batch_first: bool = False, dropout: float = 0.0,
                 dtype: Optional[DTypeLike] = None, seed: Seed = None) -> None:
        self._configure_extra(reset_after=reset_after)
        super().__init__(input_size, hidden_size, num_layers, bidirectional, batch_first, dropout, dtype, seed)

    def _configure_extra(self, reset_after: object = False) -> None:  # type: ignore[override]
        if not isinstance(reset_after, (bool, np.bool_)):
            raise TypeError(f"reset_after: expected a bool, got {_describe(reset_after)}")
        self.reset_after = bool(reset_after)

    @property
    def cell(self) -> str:  # type: ignore[override]
        return "gru_after" if self.reset_after else "gru"

    def _extra_repr(self) -> str:
        return f", reset_after={self.reset_after}"

    def _extra_config(self) -> Dict[str, Any]:
        return {"reset_after": self.reset_after}
