"""A small training toolkit for rnncore models: a loss, a linear readout, gradient clipping, Adam.

Parameters are dicts name -> ndarray, like a model's ``parameters()``. A model's (or cell's, or
stream's) ``backward`` returns a :class:`rnncore.Gradients`: a dict of every gradient whose
``parameters()`` are the parameter gradients alone, apart from the gradients with respect to
the input and the initial states ("x", "h0", "c0"). ``Adam`` takes the models and layers it
trains, and reads from the gradients of each exactly that one's parameter names, so an input's
gradient is never clipped or applied as a parameter's. One training step::

    opt = Adam([rnn, readout], lr=1e-3)                # built once: the parameters of both
    y, h_n, tape = rnn.forward(x, train=True)          # x (T, N, D), h_n (1, N, H)
    loss, dpred = mse_loss(readout.forward(h_n[-1]), target)          # target (N, out)
    grads = rnn.backward(tape, dh_n=readout.backward(dpred)[None])    # readout.grads filled too
    opt.step(grads, readout.grads, max_norm=1.0)       # one global norm over both, clipped; then Adam

Nothing is cast: arrays must have the dtype of the layer or parameter they meet, and masked
arrays are refused (their mask would be ignored).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import models
from .models import Gradients, Seed, _listed, _positive_int

# What clip_grad_norm takes: a dict name -> gradient (a backward's Gradients counts its parameter
# gradients only) or a list of those.
GradientsArg = Union[Mapping[str, np.ndarray], Sequence[Mapping[str, np.ndarray]]]
# What Adam trains: a dict name -> parameter, an object with parameters(), or a list of those.
ParamsArg = Any

__all__ = ["mse_loss", "Linear", "clip_grad_norm", "Adam"]


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{type(a).__name__} of dtype {a.dtype}"
    return type(a).__name__


def _not_masked(a: object, name: str) -> None:
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name}: masked arrays are not supported (the mask would be ignored); pass a plain ndarray")


def _float_array(a: object, name: str) -> np.ndarray:
    """a itself if it is a plain floating point ndarray, else a TypeError naming it."""
    _not_masked(a, name)
    if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating point ndarray, got {_describe(a)}")
    return a


def _positive_number(v: object, name: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a positive number, got {type(v).__name__}")
    if not v > 0:
        raise ValueError(f"{name}: expected a positive number, got {v!r}")
    return float(v)


def mse_loss(pred: ArrayLike, target: ArrayLike) -> Tuple[float, np.ndarray]:
    """Mean squared error over every element.

    pred: floating point array; target: numbers of the same shape (cast to pred's dtype).
    Returns (loss, dpred): loss a Python float, dpred = d loss / d pred, shape and dtype of pred.
    """
    _not_masked(pred, "pred")
    _not_masked(target, "target")
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.dtype.kind != "f":
        raise TypeError(f"pred: expected floating point values, got dtype {pred.dtype}")
    if target.dtype.kind not in "fiu":
        raise TypeError(f"target: expected real numbers, got dtype {target.dtype}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target: expected the same shape, got {pred.shape} and {target.shape}")
    if pred.size == 0:
        raise ValueError("pred: expected at least one element")
    diff = pred - target.astype(pred.dtype, copy=False)
    loss = float(np.mean(np.square(diff, dtype=np.float64)))
    dpred = (diff * (2.0 / diff.size)).astype(pred.dtype, copy=False)
    return loss, dpred


class Linear:
    """y = x W^T + b, for reading out hidden states.

    Parameters: "W" (out_features, in_features), "b" (out_features,), initialised uniform in
    ±1/sqrt(in_features) from ``seed``. ``forward`` keeps its input for one ``backward``.
    Inputs must have the layer's dtype (float32 by default), as a model's do.
    """

    def __init__(self, in_features: int, out_features: int, dtype: DTypeLike = np.float32, seed: Seed = None) -> None:
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype: expected float32 or float64, got {models._short_repr(dtype)}") from None
        if self.dtype not in models._DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(self.in_features)
        self._params = {
            "W": rng.uniform(-k, k, size=(self.out_features, self.in_features)).astype(self.dtype),
            "b": rng.uniform(-k, k, size=(self.out_features,)).astype(self.dtype),
        }
        self.grads: Dict[str, np.ndarray] = {}
        self._x: Optional[np.ndarray] = None

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}, dtype={self.dtype.name})"

    def parameters(self) -> Dict[str, np.ndarray]:
        """The live parameters, name -> ndarray; editing an array in place changes the layer."""
        return self._params

    def _check(self, a: object, name: str) -> np.ndarray:
        _not_masked(a, name)
        if not isinstance(a, np.ndarray):
            raise models._not_an_array(name, a, self.dtype)
        if a.dtype != self.dtype:
            raise models._wrong_dtype(name, a, self.dtype, "layer")
        return a

    def _weights(self) -> List[np.ndarray]:
        """W and b, checked as a model checks its parameters (they may have been replaced through parameters())."""
        out: List[np.ndarray] = []
        for name, shape in (("W", (self.out_features, self.in_features)), ("b", (self.out_features,))):
            a = self._params.get(name)
            _not_masked(a, f"parameter {name!r}")
            if not isinstance(a, np.ndarray) or a.dtype != self.dtype:
                raise TypeError(f"parameter {name!r}: expected an ndarray of dtype {self.dtype}, got {_describe(a)}")
            if a.shape != shape:
                raise ValueError(f"parameter {name!r}: expected shape {shape}, got {a.shape}")
            out.append(a)
        return out

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (..., in_features) -> y (..., out_features)."""
        x = self._check(x, "x")
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"x: expected last dimension in_features={self.in_features}, got shape {x.shape}")
        W, b = self._weights()
        self._x = x
        y: np.ndarray = x @ W.T + b
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy (..., out_features), like the last forward's y -> dx (..., in_features).

        Sets ``grads`` = {"W": dL/dW, "b": dL/db}, summed over all leading axes.
        """
        if self._x is None:
            raise RuntimeError("backward: call forward first")
        dy = self._check(dy, "dy")
        want = self._x.shape[:-1] + (self.out_features,)
        if dy.shape != want:
            raise ValueError(f"dy: expected shape {want} (like y), got {dy.shape}")
        W, _ = self._weights()
        x2 = self._x.reshape(-1, self.in_features)
        dy2 = dy.reshape(-1, self.out_features)
        self.grads = {"W": (dy2.T @ x2).astype(self.dtype, copy=False),
                      "b": dy2.sum(axis=0).astype(self.dtype, copy=False)}
        dx: np.ndarray = dy @ W
        return dx


def _gradient_dicts(grads: object, name: str) -> List[Tuple[str, Mapping[str, Any]]]:
    """[(label, dict name -> gradient)] from a dict, a Gradients (its parameter gradients only) or a list of those."""
    if isinstance(grads, (list, tuple)):
        return [(f"{name}[{i}]", d) for i, g in enumerate(grads) for _, d in _gradient_dicts(g, f"{name}[{i}]")]
    if isinstance(grads, Gradients):
        return [(name, grads.parameters())]
    if isinstance(grads, Mapping):
        return [(name, grads)]
    raise TypeError(f"{name}: expected a dict of name -> ndarray (a backward's result counts its parameter "
                    f"gradients only) or a list of those, got {_describe(grads)}")


def _global_norm(arrays: Iterable[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in arrays)))


def clip_grad_norm(grads: GradientsArg, max_norm: float) -> float:
    """Scale gradients in place so that their global L2 norm is at most ``max_norm``; returns the
    norm before clipping (a float, computed in float64).

    grads: a dict name -> ndarray (every array in it counts), what a model's ``backward``
    returns (a :class:`rnncore.Gradients`: its parameter gradients count, "x", "h0" and "c0"
    neither count nor change), or a list of those, clipped together by one global norm.
    """
    max_norm = _positive_number(max_norm, "max_norm")
    arrays: List[np.ndarray] = []
    seen = set()
    for label, d in _gradient_dicts(grads, "grads"):
        for k, g in d.items():
            g = _float_array(g, f"{label}[{k!r}]")
            if not g.flags.writeable:
                raise ValueError(f"{label}[{k!r}]: read-only; clipping scales gradients in place")
            if id(g) not in seen:      # an array listed twice is scaled once
                seen.add(id(g))
                arrays.append(g)
    total = _global_norm(arrays)
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in arrays:
            g *= g.dtype.type(scale)
    return total


class Adam:
    """Adam (Kingma & Ba, 2015) with bias correction, updating parameters in place.

    ``params``: what it trains, as one or several parameter groups: a dict name -> ndarray, an
    object with ``parameters()`` (a model, a cell, a ``Linear``), or a list of those. ``step``
    then takes one gradient dict per group, in the same order, and reads from each exactly its
    group's parameter names (a model's "x", "h0", "c0" are never read).

    For each parameter p with gradient g, at step t = 1, 2, ...::

        g <- g + weight_decay * p                 (L2 penalty, as torch.optim.Adam; not AdamW)
        m <- beta1 * m + (1 - beta1) * g          v <- beta2 * v + (1 - beta2) * g^2
        p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    m and v start at zero and have each parameter's shape and dtype; ``m`` and ``v`` are dicts
    name -> array (with several groups, a list of such dicts, one per group).
    """

    def __init__(self, params: ParamsArg, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        lr = _positive_number(lr, "lr")
        try:
            b1, b2 = (float(b) for b in betas)
        except (TypeError, ValueError):
            raise TypeError(f"betas: expected two numbers in [0, 1), got {models._short_repr(betas)}") from None
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        if isinstance(weight_decay, (bool, np.bool_)) or not isinstance(weight_decay, (int, float, np.integer,
                                                                                       np.floating)):
            raise TypeError(f"weight_decay: expected a number >= 0, got {type(weight_decay).__name__}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay: expected a number >= 0, got {weight_decay!r}")
        eps = _positive_number(eps, "eps")
        self._groups = self._parameter_groups(params)
        self.params: Any = self._groups[0][1] if len(self._groups) == 1 else [g for _, g, _ in self._groups]
        self.lr, self.betas, self.eps, self.weight_decay = lr, (b1, b2), float(eps), float(weight_decay)
        self.t = 0
        ms = [{k: np.zeros_like(g[k]) for k in names} for _, g, names in self._groups]
        vs = [{k: np.zeros_like(g[k]) for k in names} for _, g, names in self._groups]
        self._mv = list(zip(ms, vs))
        self.m: Any
        self.v: Any
        self.m, self.v = (ms[0], vs[0]) if len(ms) == 1 else (ms, vs)

    @staticmethod
    def _parameter_groups(params: object) -> List[Tuple[str, Mapping[str, np.ndarray], Tuple[str, ...]]]:
        """[(label, live mapping name -> ndarray, names)], each parameter checked."""
        def one(p: Any, label: str, what: str) -> Tuple[str, Mapping[str, np.ndarray]]:
            if isinstance(p, Mapping):
                return (label, p)
            if callable(getattr(p, "parameters", None)) and isinstance(p.parameters(), Mapping):
                return (type(p).__name__, p.parameters())
            raise TypeError(f"{what}: expected a dict of name -> ndarray or an object with parameters(), "
                            f"got {_describe(p)}")

        if isinstance(params, (list, tuple)):
            groups = [one(p, f"params[{i}]", f"params[{i}]") + (f"params[{i}]",) for i, p in enumerate(params)]
        elif isinstance(params, Mapping) or callable(getattr(params, "parameters", None)):
            groups = [one(params, "params", "params") + ("params",)]
        else:
            raise TypeError(f"params: expected a dict of name -> ndarray, an object with parameters() (a model, a "
                            f"cell, a Linear) or a list of those, got {_describe(params)}")
        out: List[Tuple[str, Mapping[str, np.ndarray], Tuple[str, ...]]] = []
        owner: Dict[int, str] = {}
        for label, mapping, where in groups:
            for k, p in mapping.items():
                p = _float_array(p, f"{where}[{k!r}]")
                if not p.flags.writeable:
                    raise ValueError(f"{where}[{k!r}]: read-only; Adam updates parameters in place")
                if id(p) in owner:
                    raise ValueError(f"{where}[{k!r}]: the same array as {owner[id(p)]}; it would be updated twice")
                owner[id(p)] = f"{where}[{k!r}]"
            out.append((label, mapping, tuple(mapping)))
        if not owner:
            raise ValueError("params: expected at least one parameter, got none")
        return out

    def step(self, *grads: Mapping[str, np.ndarray], max_norm: Optional[float] = None) -> Optional[float]:
        """One update: one gradient dict per parameter group, in the order given to the constructor.

        Each must hold a gradient of the parameter's shape and dtype for every parameter name of its
        group; other keys are never read (a :class:`rnncore.Gradients` may be passed as it is).
        With ``max_norm``, the gradients read are scaled together to a global L2 norm of at most
        ``max_norm`` first (as ``clip_grad_norm``; the arrays passed in are not changed), and the norm
        before clipping is returned. Everything is checked before anything changes.
        """
        n = len(self._groups)
        if len(grads) != n:
            labels = ", ".join(label for label, _, _ in self._groups)
            raise TypeError(f"grads: expected {n} gradient dict{'s' if n > 1 else ''}, one per parameter group "
                            f"({labels}) in order, got {len(grads)}")
        if max_norm is not None:
            max_norm = _positive_number(max_norm, "max_norm")
        work = []
        for i, ((_, params, names), g, (m, _)) in enumerate(zip(self._groups, grads, self._mv)):
            where = "grads" if n == 1 else f"grads[{i}]"
            if isinstance(g, Gradients):
                g = g.parameters()
            if not isinstance(g, Mapping):
                raise TypeError(f"{where}: expected a dict of name -> ndarray, got {_describe(g)}")
            missing = [k for k in names if k not in g]
            if missing:
                raise KeyError(f"{where}: no gradient for {_listed(missing)}")
            for k in names:
                p = params.get(k)
                if not isinstance(p, np.ndarray) or p.shape != m[k].shape or p.dtype != m[k].dtype:
                    raise ValueError(f"params[{k!r}]: replaced by {_describe(p)} since this Adam was built; "
                                     f"expected shape {m[k].shape} and dtype {m[k].dtype}")
                gk = g[k]
                _not_masked(gk, f"{where}[{k!r}]")
                if np.shape(gk) != p.shape:
                    raise ValueError(f"{where}[{k!r}]: expected shape {p.shape}, got {np.shape(gk)}")
                if not isinstance(gk, np.ndarray) or gk.dtype != p.dtype:
                    got = gk.dtype if isinstance(gk, np.ndarray) else type(gk).__name__
                    raise TypeError(f"{where}[{k!r}]: expected dtype {p.dtype} (the parameter's), got {got}")
                work.append((p, gk, i, k))
        total: Optional[float] = None
        scale = 1.0
        if max_norm is not None:
            total = _global_norm(gk for _, gk, _, _ in work)
            if total > max_norm:
                scale = max_norm / (total + 1e-6)
        self.t += 1
        b1, b2 = self.betas
        step_size = self.lr / (1.0 - b1 ** self.t)
        v_correction = 1.0 / (1.0 - b2 ** self.t)
        for p, gp, i, k in work:
            if scale != 1.0:
                gp = gp * p.dtype.type(scale)
            if self.weight_decay:
                gp = gp + p.dtype.type(self.weight_decay) * p
            mk, vk = self._mv[i][0][k], self._mv[i][1][k]
            mk *= b1
            mk += (1.0 - b1) * gp
            vk *= b2
            vk += (1.0 - b2) * np.square(gp)
            p -= (step_size * mk / (np.sqrt(vk * v_correction) + self.eps)).astype(p.dtype, copy=False)
        return total
