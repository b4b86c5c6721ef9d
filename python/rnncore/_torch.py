"""rnncore models to and from torch.nn.RNN / LSTM / GRU modules (torch is imported on use).

The weights go through the exact state-dict conversions of ``_convert``. A torch GRU is
rnncore's ``GRU(reset_after=True)``; rnncore's default GRU (reset gate before the matmul) has no
torch equivalent. torch's ``bias=False`` gives zero biases. An LSTM's ``proj_size`` is carried exactly
(PyTorch's weight_hr_l{k} is rnncore's W_hr_l{k}); rnncore's peephole and LayerNorm LSTMs have no
torch counterpart.
"""

import re
import warnings

import numpy as np

from . import models
from ._convert import from_torch_state_dict as _params_from_torch
from ._convert import to_torch_state_dict as _params_to_torch

_TORCH_NAME = {models.RNN: "RNN", models.LSTM: "LSTM", models.GRU: "GRU"}
_KEY = re.compile(r"^(weight_ih|weight_hh|weight_hr|bias_ih|bias_hh)_l(\d+)(_reverse)?$")


def _rnncore_class(cls):
    for base in _TORCH_NAME:
        if issubclass(cls, base):
            return base
    raise TypeError(f"expected rnncore.RNN, LSTM or GRU, got {cls!r}")


def _numpy(v, what):
    if hasattr(v, "detach"):
        name = str(v.dtype).replace("torch.", "")
        if name not in ("float32", "float64"):
            raise TypeError(f"{what}: expected float32 or float64 parameters, got {name}")
        return v.detach().cpu().numpy()
    if isinstance(v, np.ma.MaskedArray):
        raise TypeError(f"{what}: masked arrays are not supported (the mask would be ignored); pass a plain ndarray")
    return np.asarray(v)


def _dtype_of(arrays, what):
    dtypes = {np.dtype(a.dtype) for a in arrays}
    if len(dtypes) != 1:
        raise TypeError(f"{what}: parameters of mixed dtypes {sorted(map(str, dtypes))}")
    dt = dtypes.pop()
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{what}: expected float32 or float64 parameters, got {dt}")
    return dt


def from_torch(module, cls=None):
    """An rnncore model equal to ``module`` (a torch.nn.RNN, LSTM or GRU): config, dtype and weights."""
    import torch

    kinds = {"RNN": (torch.nn.RNN, models.RNN), "LSTM": (torch.nn.LSTM, models.LSTM),
             "GRU": (torch.nn.GRU, models.GRU)}
    found = next((k for k, (tcls, _) in kinds.items() if isinstance(module, tcls)), None)
    if found is None:
        raise TypeError(f"module: expected a torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
    target = kinds[found][1]
    if cls is not None and _rnncore_class(cls) is not target:
        raise TypeError(f"module: {cls.__name__}.from_torch needs a torch.nn.{_TORCH_NAME[_rnncore_class(cls)]}, "
                        f"got torch.nn.{found}")
    sd = {k: _numpy(v, "module") for k, v in module.state_dict().items()}
    dtype = _dtype_of(sd.values(), "module")
    kw = dict(num_layers=module.num_layers, bidirectional=module.bidirectional, batch_first=module.batch_first,
              dropout=float(module.dropout), dtype=dtype)
    if target is models.RNN:
        kw["nonlinearity"] = module.nonlinearity
    if target is models.GRU:
        kw["reset_after"] = True
    if getattr(module, "proj_size", 0):
        kw["proj_size"] = int(module.proj_size)
    model = (cls or target)(module.input_size, module.hidden_size, **kw)
    model.load_state_dict(_params_from_torch(sd, model.cell))
    return model


def to_torch(model):
    """A torch module with ``model``'s configuration, dtype and weights (on the CPU)."""
    import torch

    base = _rnncore_class(type(model))
    model._weights()                        # a parameter of the wrong shape or dtype is named here
    if base is models.GRU and not model.reset_after:
        raise ValueError("to_torch: this GRU has reset_after=False (the reset gate is applied before the recurrent "
                         "matmul); PyTorch's nn.GRU only computes the reset_after=True form, so it has no PyTorch "
                         "equivalent. Use rnncore.GRU(..., reset_after=True) to exchange GRUs with PyTorch.")
    if not models.CELL_INFO[model.cell]["torch"]:
        what = "peephole" if getattr(model, "peephole", False) else "layer_norm"
        raise ValueError(f"to_torch: this LSTM has {what}=True, which torch.nn.LSTM does not compute; it has no "
                         f"PyTorch equivalent")
    kw = dict(num_layers=model.num_layers, bias=True, batch_first=model.batch_first, dropout=model.dropout,
              bidirectional=model.bidirectional, dtype={np.float32: torch.float32, np.float64: torch.float64}[
                  model.dtype.type])
    if base is models.RNN:
        kw["nonlinearity"] = model.nonlinearity
    if model.proj_size:
        kw["proj_size"] = model.proj_size
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*dropout.*")   # torch warns about dropout with one layer
        module = getattr(torch.nn, _TORCH_NAME[base])(model.input_size, model.hidden_size, **kw)
    sd = _params_to_torch(model.state_dict(), model.cell)
    module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=True)
    return module


def from_torch_state_dict(cls, state_dict, batch_first=False, dropout=0.0, **config):
    """An rnncore model from a torch RNN/LSTM/GRU state dict; sizes, depth, direction and dtype from the shapes."""
    base = _rnncore_class(cls)
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"state_dict: expected a mapping of name -> tensor, got {type(state_dict).__name__}")
    sd = {k: _numpy(v, f"state_dict[{k!r}]") for k, v in state_dict.items()}
    bad = sorted(k for k in sd if not _KEY.match(k) or (k.startswith("weight_hr") and base is not models.LSTM))
    if bad:
        raise ValueError(f"state_dict: names {models._listed(bad)} are not those of a torch.nn.{_TORCH_NAME[base]} "
                         f"(expected weight_ih_l0, weight_hh_l0, bias_ih_l0, ..., weight_hr_l0 for an LSTM with "
                         f"proj_size)")
    if "weight_ih_l0" not in sd or "weight_hh_l0" not in sd:
        raise ValueError("state_dict: no weight_ih_l0 / weight_hh_l0")
    dtype = _dtype_of(sd.values(), "state_dict")
    if sd["weight_ih_l0"].ndim != 2 or sd["weight_hh_l0"].ndim != 2:
        raise ValueError("state_dict: weight_ih_l0 and weight_hh_l0 must be matrices")
    G = models.CELL_INFO["lstm" if base is models.LSTM else "gru_after" if base is models.GRU else "rnn_tanh"]["gates"]
    H = sd["weight_hh_l0"].shape[0] // G
    D = sd["weight_ih_l0"].shape[1]
    P = sd["weight_hr_l0"].shape[0] if "weight_hr_l0" in sd and sd["weight_hr_l0"].ndim == 2 else 0
    layers = 1 + max(int(_KEY.match(k).group(2)) for k in sd)
    bidirectional = any(k.endswith("_reverse") for k in sd)
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, dropout=dropout, dtype=dtype)
    allowed = {"nonlinearity"} if base is models.RNN else set()
    if set(config) - allowed:
        raise TypeError(f"{cls.__name__}.from_torch_state_dict: unexpected arguments {sorted(set(config) - allowed)}")
    if base is models.GRU:
        kw["reset_after"] = True
    if P:
        kw["proj_size"] = P
    model = cls(D, H, **kw, **config)
    shapes = dict(model._param_shapes())
    want = {}
    for name in (n for n in shapes if n.startswith("W_ih")):
        sfx, (rows, d) = name[len("W_ih"):], shapes[name]
        want["weight_ih" + sfx] = (rows, d)
        want["weight_hh" + sfx] = (rows, P or H)
        if P:
            want["weight_hr" + sfx] = (P, H)
        if any(k.startswith("bias") for k in sd):
            want["bias_ih" + sfx] = want["bias_hh" + sfx] = (rows,)
    missing, unexpected = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    if missing or unexpected:
        raise ValueError(f"state_dict: names do not match a {layers}-layer{' bidirectional' * bidirectional} "
                         f"torch.nn.{_TORCH_NAME[base]}: missing {models._listed(missing)}, "
                         f"unexpected {models._listed(unexpected)}")
    for k, shape in want.items():
        if sd[k].shape != shape:
            raise ValueError(f"state_dict[{k!r}]: expected shape {shape} for a torch.nn.{_TORCH_NAME[base]} with "
                             f"input size {D} and hidden size {H}, got {tuple(sd[k].shape)}")
    params = _params_from_torch(sd, model.cell)
    model.load_state_dict(params)
    return model
