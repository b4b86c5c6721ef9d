"""rnncore inside PyTorch: ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` replacements that compute on rnncore's core.

``import rnncore.torch`` (or the first use of ``rnncore.torch``) imports PyTorch; plain ``import rnncore``
does not. ``pip install "rnncore[torch]"`` installs both.

    lstm = rnncore.torch.LSTM(16, 64, num_layers=2, batch_first=True)   # torch.nn.LSTM's arguments
    y, (h_n, c_n) = lstm(x)                                              # torch.nn.LSTM's forward
    model = rnncore.torch.convert(model)     # every torch.nn.LSTM/GRU/RNN of a model, in place
    model = rnncore.torch.revert(model)      # and back

The classes are subclasses of ``torch.nn.LSTM``, ``torch.nn.GRU`` and ``torch.nn.RNN``: the same
constructor, parameters (names, shapes, initialisation), ``state_dict``, ``forward(input, hx)``
signature and results (tensors or ``PackedSequence``, batched or unbatched). Only ``forward``
differs: it calls rnncore's ``forward(train=True)`` and, through a ``torch.autograd.Function``,
its ``backward``.

How PyTorch's parameters become rnncore's (``_convert`` holds the same map for state dicts;
README.md, "PyTorch, Keras and ONNX") is a plan per configuration (``_parameter_plan``) that the
autograd function applies in NumPy both ways: weights pass as they are, as views of the
parameters' memory (the GRU's z rows change sign), rnncore's one bias per gate is
``bias_ih + bias_hh`` (both receive its gradient), and the reset_after GRU's candidate keeps
``bias_hh``'s n rows apart as ``b_hn``; backward maps rnncore's gradients back the same way.

Dropout (``dropout > 0`` and ``num_layers > 1``, in training mode) draws its masks from a NumPy
generator seeded, at each call, with one integer drawn from PyTorch's default CPU generator:
``torch.manual_seed`` makes runs repeatable, but the masks differ from ``torch.nn.LSTM``'s.
"""

import numpy as np

try:
    import torch
except ImportError as e:
    raise ImportError(f'rnncore.torch needs PyTorch: pip install "rnncore[torch]" ({e})') from e
from torch.nn.utils.rnn import PackedSequence  # noqa: E402

from . import _convert, _core, models  # noqa: E402
from .models import _c_aligned  # noqa: E402

__all__ = ["LSTM", "GRU", "RNN", "convert", "revert", "share_threads"]

_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


# ---- the autograd function ------------------------------------------------------------------

class _NoDoubleBackward(torch.autograd.Function):
    """Passes the gradients of rnncore's backward through; differentiating them raises."""

    @staticmethod
    def forward(ctx, n, *tensors):
        return tuple(t.view_as(t) for t in tensors[:n])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("rnncore.torch: double backward (a gradient of a gradient) is not supported: rnncore's "
                           "backward is not itself differentiable. Use torch.nn.LSTM/GRU/RNN (rnncore.torch.revert) "
                           "for higher-order gradients.")


class _Recurrent(torch.autograd.Function):
    """rnncore's forward and backward as one autograd node.

    Inputs: the call (a ``_Call``), then x, h0, c0 (tensors or None) and the module's own
    parameters (``_flat_weights``, PyTorch's layout). Outputs: y, h_n (and c_n for LSTM). The
    parameters reach rnncore as NumPy views, or through ``_Call``'s map where rnncore's layout
    differs; backward maps rnncore's gradients back to each of them.
    """

    @staticmethod
    def forward(ctx, call, x, h0, c0, *params):
        ctx.set_materialize_grads(False)
        core = call.core
        y, state, tape = core._run(_np(x), _state(h0, call, 0), _state(c0, call, 1) if core._has_c else None,
                                   call.lengths, call.keep_tape, call.weights, call.rng)
        ctx.call, ctx.tape = call, tape
        ctx.save_for_backward(*params)   # PyTorch then refuses a backward after they changed in place
        if core._has_c:
            return torch.from_numpy(y), torch.from_numpy(state[0]), torch.from_numpy(state[1])
        return torch.from_numpy(y), torch.from_numpy(state)

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n=None):
        ctx.saved_tensors   # raises if a parameter was modified in place since the forward
        call = ctx.call
        if ctx.tape is None:
            raise RuntimeError("rnncore.torch: no tape was kept for this forward (internal error)")
        need = ctx.needs_input_grad
        dx, dh0, dc0, dw = call.core._run_backward(ctx.tape, _np(dy), _aligned(dh_n), _aligned(dc_n), bool(need[1]))
        out = [None,
               torch.from_numpy(dx) if need[1] else None,
               torch.from_numpy(dh0) if need[2] else None,
               torch.from_numpy(dc0) if need[3] and dc0 is not None else None]
        out += call.torch_grads(dw, need[4:])
        if torch.is_grad_enabled():   # create_graph=True: make differentiating these results an error
            given = [g for g in (dy, dh_n, dc_n) if g is not None]
            idx = [i for i, g in enumerate(out) if g is not None]
            passed = _NoDoubleBackward.apply(len(idx), *[out[i] for i in idx], *given)
            for i, g in zip(idx, passed):
                out[i] = g
        return tuple(out)


class _Call:
    """One call of a module, as ``_Recurrent`` takes it: the rnncore model of the module's
    configuration (without parameters of its own), the parameters in rnncore's layout
    (``weights``, as ``models._Recurrent._weights`` gives them), the lengths, whether to keep a
    tape, the dropout generator, and the map of gradients back to the module's parameters."""

    __slots__ = ("core", "plan", "weights", "lengths", "keep_tape", "rng", "shapes")

    def __init__(self, core, plan, weights, lengths, keep_tape, rng, shapes):
        self.core, self.plan, self.weights, self.lengths = core, plan, weights, lengths  # plan: _core_weights'
        self.keep_tape, self.rng, self.shapes = keep_tape, rng, shapes

    def zeros(self, k):
        """Zero initial state: h0 (k = 0) or c0 (k = 1)."""
        return np.zeros(self.shapes[k], self.core.dtype)

    def torch_grads(self, dw, needed):
        """The gradients of the module's parameters, in ``_flat_weights``' order, from rnncore's
        (per layer and direction, in the cell's order): those not ``needed`` are None."""
        names, ops, sign = self.plan
        out = [None] * len(names)
        flat = [g for group in dw for g in group]
        for (op, a, b, _), g in zip(ops, flat):
            if op == "as is":
                out[a] = g
            elif op == "sum":                      # rnncore's one bias: bias_ih + bias_hh, both get its gradient
                out[a], out[b] = g, g.copy()       # (apart: an optimiser may scale one in place)
            elif op == "signed":                   # the reset_after GRU's weights: z rows change sign
                g *= sign[:, None]
                out[a] = g
            elif op == "signed sum":               # its bias: bias_ih, and bias_hh's r and z rows
                g *= sign
                rz = 2 * (g.shape[0] // 3)
                out[a], out[b] = g, np.zeros_like(g)
                out[b][:rz] = g[:rz]
            elif op == "tail":                     # b_hn: bias_hh's n rows (bias_hh made just above: b precedes b_hn)
                out[a][2 * g.shape[0]:] = g
        return [torch.from_numpy(g) if g is not None and need else None for g, need in zip(out, needed)]


def _np(t):
    """A NumPy view of a CPU tensor (None stays None); no copy."""
    return None if t is None else t.detach().numpy()


def _aligned(t):
    """A C-contiguous, aligned NumPy array of a tensor's values (a view when it is one already); None stays None."""
    return None if t is None else _c_aligned(t.detach().numpy())


def _state(t, call, k):
    """An initial state as the core takes it: the tensor's values, or zeros for None (k: 0 h0, 1 c0)."""
    return call.zeros(k) if t is None else _aligned(t)


# ---- the modules ----------------------------------------------------------------------------

def _describe(v):
    if isinstance(v, torch.Tensor):
        return f"a {v.device.type} tensor of shape {tuple(v.shape)} and dtype {str(v.dtype).replace('torch.', '')}"
    return type(v).__name__


class _Module:
    """What rnncore.torch.LSTM, GRU and RNN add to their torch.nn base classes (a mixin)."""

    reset_after = True     # GRU only; the rnncore-layout GRU (reset_after=False) sets it False

    # -- configuration -------------------------------------------------------------------------

    @property
    def _cell(self):
        if self.mode == "LSTM":
            return "lstm"
        if self.mode == "GRU":
            return "gru_after" if self.reset_after else "gru"
        return "rnn_tanh" if self.mode == "RNN_TANH" else "rnn_relu"

    def _core_template(self, dtype, batch_first, dropout):
        """An rnncore model of this configuration without parameters, cached per (dtype, layout, dropout)."""
        key = (dtype, batch_first, dropout, self.input_size, self.hidden_size, self.num_layers, self.bidirectional,
               self._cell, getattr(self, "proj_size", 0))
        cache = self.__dict__.setdefault("_rnncore_cache", {})
        core = cache.get(key)
        if core is None:
            cfg = dict(input_size=self.input_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
                       bidirectional=bool(self.bidirectional), batch_first=batch_first, dropout=dropout,
                       dtype=_NP_DTYPES[dtype])
            if self._cell.startswith("rnn_"):
                cls, cfg["nonlinearity"] = models.RNN, self._cell[4:]
            elif self._cell == "lstm":
                cls = models.LSTM
                if getattr(self, "proj_size", 0):
                    cfg["proj_size"] = self.proj_size
            else:
                cls, cfg["reset_after"] = models.GRU, self._cell == "gru_after"
            core = cache[key] = cls._unparameterised(cfg)
        return core

    def _parameter_views(self):
        """NumPy views of the module's parameters (``_flat_weights``) and their dtype. They are made,
        and the parameters checked, again only when a parameter is another tensor or its memory
        moved (``module.double()``, ``p.data = ...``); in-place updates (an optimiser's) show through."""
        w = self._flat_weights
        cache = self.__dict__.setdefault("_rnncore_cache", {})
        got = cache.get("views")
        if (got is not None and len(got[0]) == len(w) and all(a is b for a, b in zip(got[0], w))
                and got[1] == [t.data_ptr() for t in w]):
            return got[2], got[3]
        dtype = self._check_parameters()
        views = [_np(t) for t in w]
        cache["views"] = (list(w), [t.data_ptr() for t in w], views, dtype)
        return views, dtype

    def _core_weights(self, core, views):
        """The plan (``_parameter_plan``) and this module's parameters in rnncore's layout, in
        ``models._Recurrent._weights``' form: views of the module's own where the layouts agree,
        fresh arrays where rnncore's parameter is computed from them."""
        plan = core.__dict__.get("_torch_plan")
        if plan is None or plan[0] != self._flat_weights_names:
            plan = core._torch_plan = (list(self._flat_weights_names), self._parameter_plan(core),
                                       _convert._z_sign(core.cell, core.hidden_size, core.dtype))
        sign = plan[2]
        out = []
        for op, a, b, shape in plan[1]:
            if op == "as is":
                out.append(_c_aligned(views[a]))
            elif op == "sum":                      # rnncore's one bias: bias_ih + bias_hh
                out.append(views[a] + views[b])
            elif op == "zeros":
                out.append(np.zeros(shape, core.dtype))
            elif op == "signed":                   # the reset_after GRU's weights: z rows change sign
                out.append(np.multiply(views[a], sign[:, None], order="C"))
            elif op == "signed sum":               # its bias: bias_ih + bias_hh's r and z rows, signed
                H = shape[0] // 3
                v = views[a].copy()
                v[:2 * H] += views[b][:2 * H]
                out.append(v * sign)
            else:                                  # "tail": b_hn, bias_hh's n rows
                out.append(_c_aligned(views[a][2 * shape[0]:]))
        per = len(core._param_list())
        return plan, [tuple(out[i:i + per]) for i in range(0, len(out), per)]

    def _parameter_plan(self, core):
        """How each of rnncore's parameters comes from this module's (indices into _flat_weights)."""
        idx = {n: i for i, n in enumerate(self._flat_weights_names)}
        cell = self._cell
        plan = []
        for name, shape in core._param_shapes():
            kind, sfx = name.split("_l", 1)
            sfx = "_l" + sfx
            if cell == "gru":                      # rnncore's own layout: its parameters are the module's
                plan.append(("as is", idx[name], None, shape) if name in idx else ("zeros", None, None, shape))
            elif kind in ("W_ih", "W_hh"):
                i = idx["weight" + kind[1:] + sfx]
                plan.append(("signed" if cell == "gru_after" else "as is", i, None, shape))
            elif kind == "b":
                if not self.bias:
                    plan.append(("zeros", None, None, shape))
                else:
                    i, j = idx["bias_ih" + sfx], idx["bias_hh" + sfx]
                    plan.append(("signed sum" if cell == "gru_after" else "sum", i, j, shape))
            elif kind == "b_hn":
                plan.append(("tail", idx["bias_hh" + sfx], None, shape) if self.bias else ("zeros", None, None, shape))
            else:                                  # W_hr (proj_size): torch's weight_hr, the same matrix
                plan.append(("as is", idx["weight_hr" + sfx], None, shape))
        return plan

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_rnncore_cache", None)      # rebuilt on the next call; rnncore models are not pickled here
        return state

    def _apply(self, fn, *args, **kwargs):
        # module.float(), .double(), .to(...): the views kept of the old parameters would keep
        # their memory alive until the next call
        self.__dict__.pop("_rnncore_cache", None)
        return super()._apply(fn, *args, **kwargs)

    # -- argument checking ---------------------------------------------------------------------

    def _check_tensor(self, t, name, dtype):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {_describe(t)}")
        if t.device.type != "cpu":
            raise ValueError(f"{name}: rnncore computes on the CPU only, got {_describe(t)}; keep the module and "
                             f"its inputs on the CPU, or use torch.nn.{type(self).__name__} "
                             f"(rnncore.torch.revert) on other devices")
        if t.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {str(dtype).replace('torch.', '')} (the module's parameters'), "
                            f"got {_describe(t)}")
        if t.layout != torch.strided or t.is_conj() or t.is_neg() or t.is_quantized:
            raise TypeError(f"{name}: expected a dense (strided) tensor, got {_describe(t)} with layout {t.layout}")

    def _check_parameters(self):
        dtypes = set()
        # torch keeps _flat_weights in step with the named parameters (RNNBase.__setattr__)
        for name, p in zip(self._flat_weights_names, self._flat_weights):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"parameter {name!r}: expected a tensor, got {type(p).__name__}")
            if p.device.type != "cpu":
                raise ValueError(f"parameter {name!r}: rnncore computes on the CPU only, got {_describe(p)}; keep "
                                 f"the module on the CPU (module.cpu()), or use torch.nn.{type(self).__name__} "
                                 f"(rnncore.torch.revert) on other devices")
            dtypes.add(p.dtype)
        if len(dtypes) != 1 or next(iter(dtypes)) not in _NP_DTYPES:
            raise TypeError(f"{type(self).__name__}: rnncore computes in float32 or float64; the parameters are "
                            f"{sorted(str(d).replace('torch.', '') for d in dtypes)} (module.float() or module.double())")
        return dtypes.pop()

    def _check_state(self, t, name, shape, batched):
        if t.dim() != len(shape):
            raise ValueError(f"{name}: expected {len(shape)} dimensions for {'batched 3-D' if batched else 'unbatched 2-D'}"
                             f" input, got shape {tuple(t.shape)}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape} (num_layers * num_directions, "
                             f"{'batch, ' if len(shape) == 3 else ''}hidden size), got {tuple(t.shape)}")

    # -- forward -------------------------------------------------------------------------------

    def _rnncore_forward(self, input, hx=None):
        views, dtype = self._parameter_views()
        name = type(self).__name__
        has_c = self.mode == "LSTM"
        dirs = 2 if self.bidirectional else 1
        H = self.hidden_size
        H_out = getattr(self, "proj_size", 0) or H
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self._check_tensor(data, "input.data", dtype)
            if data.dim() != 2 or data.shape[1] != self.input_size:
                raise ValueError(f"input: expected packed data of shape (total, input_size={self.input_size}), got "
                                 f"{tuple(data.shape)}")
            x, lengths, idx = _unpack(data, batch_sizes, sorted_indices)
            batched, batch_first = True, False
        else:
            self._check_tensor(input, "input", dtype)
            if input.dim() not in (2, 3):
                raise ValueError(f"input: expected 3 dimensions ({'batch, seq' if self.batch_first else 'seq, batch'},"
                                 f" input_size) or 2 (seq, input_size) unbatched, got shape {tuple(input.shape)}")
            batched = input.dim() == 3
            if input.shape[-1] != self.input_size:
                raise ValueError(f"input: expected last dimension input_size={self.input_size}, got shape "
                                 f"{tuple(input.shape)}")
            batch_first = self.batch_first and batched
            x = input if batched else input.unsqueeze(1)
        T, N = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
        if T == 0 or N == 0:
            raise ValueError(f"input: expected at least one time step and one sequence, got shape {tuple(x.shape)}")
        shapes = [(self.num_layers * dirs, N, H_out), (self.num_layers * dirs, N, H)]
        h0 = c0 = None
        if hx is not None:
            if has_c:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError(f"hx: expected a tuple (h_0, c_0) for {name}, got {_describe(hx)}")
                h0, c0 = hx
            else:
                if isinstance(hx, (tuple, list)):
                    raise TypeError(f"hx: expected a tensor h_0 for {name}, got a {type(hx).__name__}")
                h0 = hx
            for t, tname, shape in zip((h0, c0), ("hx[0]" if has_c else "hx", "hx[1]"), shapes):
                if t is None and has_c:
                    raise TypeError(f"{tname}: expected a tensor, got None (pass hx=None for zero initial states)")
                if t is None:
                    continue
                self._check_tensor(t, tname, dtype)
                self._check_state(t, tname, shape if batched else (shape[0], shape[2]), batched)
            if not batched:
                h0 = h0.unsqueeze(1)
                c0 = c0.unsqueeze(1) if c0 is not None else None
        train_dropout = self.training and self.dropout > 0 and self.num_layers > 1
        template = self._core_template(dtype, batch_first, self.dropout if train_dropout else 0.0)
        template._check_call_sizes(T, N)
        plan, weights = self._core_weights(template, views)
        params = self._flat_weights
        keep_tape = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in [x, h0, c0] + params)
        rng = None
        if train_dropout:
            seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())
            rng = np.random.default_rng(seed)
        call = _Call(template, plan, weights, None if lengths is None else lengths.numpy(), keep_tape or train_dropout,
                     rng, shapes)
        out = _Recurrent.apply(call, x, h0, c0, *params)
        y, hidden = out[0], (out[1], out[2]) if has_c else out[1]
        if packed:
            y = PackedSequence(y.reshape(-1, y.shape[-1]).index_select(0, idx), batch_sizes, sorted_indices,
                               unsorted_indices)
        elif not batched:
            y = y.squeeze(1)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if has_c else hidden.squeeze(1)
        return y, hidden


def _unpack(data, batch_sizes, sorted_indices):
    """Padded time-major x (T, N, D) in the batch's own order, its lengths (int64 tensor), and
    the rows of the flattened (T * N) padding that hold the packed data, in packed order."""
    T, N = len(batch_sizes), int(batch_sizes[0])
    valid = torch.arange(N)[None, :] < batch_sizes[:, None]          # (T, N): sorted positions
    t_idx, i_idx = valid.nonzero(as_tuple=True)                       # row-major: the packed order
    order = i_idx if sorted_indices is None else sorted_indices[i_idx]
    idx = t_idx * N + order
    lengths = torch.empty(N, dtype=torch.int64)
    lengths[torch.arange(N) if sorted_indices is None else sorted_indices] = valid.sum(0)
    if data.shape[0] == T * N and (sorted_indices is None or
                                   bool((sorted_indices == torch.arange(N)).all())):
        x = data.view(T, N, data.shape[1])                             # full rows in order: no copy
    else:
        x = data.new_zeros(T * N, data.shape[1]).index_copy(0, idx, data).view(T, N, data.shape[1])
    return x, lengths, idx


def _compile_disabled(f):
    """f, run eagerly under torch.compile: the rest of a compiled model still compiles (README.md,
    "Inside PyTorch")."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(f) if disable is not None else f


class LSTM(_Module, torch.nn.LSTM):
    """``torch.nn.LSTM`` computed by rnncore (CPU, float32/float64): same arguments, parameters and results."""

    forward = _compile_disabled(_Module._rnncore_forward)


class RNN(_Module, torch.nn.RNN):
    """``torch.nn.RNN`` computed by rnncore (CPU, float32/float64): same arguments, parameters and results."""

    forward = _compile_disabled(_Module._rnncore_forward)


class GRU(_Module, torch.nn.GRU):
    """``torch.nn.GRU`` computed by rnncore (CPU, float32/float64): same arguments, parameters and results.

    ``reset_after=False`` gives the notes' GRU instead (reset gate applied before the recurrent
    matmul: n = tanh(x W_in^T + (r * h) W_hn^T + b_n)), which PyTorch does not have. Its parameters
    are rnncore's own: ``W_ih_l{k}`` (3H, D), ``W_hh_l{k}`` (3H, H) and ``b_l{k}`` (3H,) per layer
    (``_reverse`` for the backward direction), gates r, z, n, with z weighting the candidate
    (h = (1 - z) * h_prev + z * n), exactly ``rnncore.GRU(reset_after=False).parameters()``;
    ``bias=False`` leaves out ``b``. Such a module cannot be reverted to ``torch.nn.GRU``.
    """

    def __init__(self, *args, reset_after=True, **kwargs):
        if not isinstance(reset_after, (bool, np.bool_)):
            raise TypeError(f"reset_after: expected a bool, got {type(reset_after).__name__}")
        super().__init__(*args, **kwargs)
        if not reset_after:
            self.reset_after = False
            names, groups = [], []
            for group in self._all_weights:
                new = []
                for old in group:
                    kind, sfx = old.split("_l", 1)
                    p = self._parameters.pop(old)
                    if kind == "bias_hh":     # rnncore keeps one bias per gate: bias_ih's values become b
                        continue
                    key = {"weight_ih": "W_ih", "weight_hh": "W_hh", "bias_ih": "b"}[kind] + "_l" + sfx
                    self.register_parameter(key, p)
                    new.append(key)
                names += new
                groups.append(new)
            self._flat_weights_names, self._all_weights = names, groups
            self._init_flat_weights()

    def extra_repr(self):
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")

    forward = _compile_disabled(_Module._rnncore_forward)


# ---- convert / revert -----------------------------------------------------------------------

_TO_RNNCORE = {torch.nn.LSTM: LSTM, torch.nn.GRU: GRU, torch.nn.RNN: RNN}
_TO_TORCH = {v: k for k, v in _TO_RNNCORE.items()}


def _walk(model, kinds):
    """(qualified name, module) of every module of exactly one of ``kinds`` (the model itself too)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    return [(name or "<model>", m) for name, m in model.named_modules(remove_duplicate=True) if type(m) in kinds]


def convert(model):
    """Make every ``torch.nn.LSTM``, ``GRU`` and ``RNN`` in ``model`` (the model itself included)
    compute on rnncore, in place, and return ``model``.

    The modules stay the same objects, with the same parameters (an optimizer made before keeps
    updating them), buffers, hooks and train/eval mode: only their class changes, to
    ``rnncore.torch.LSTM``, ``GRU`` or ``RNN``. Subclasses of the torch modules (which may compute
    something else) are left alone. Checks every module before changing any: parameters on the CPU
    in float32 or float64.
    """
    found = _walk(model, _TO_RNNCORE)
    for name, m in found:
        try:
            probe = object.__new__(_TO_RNNCORE[type(m)])
            probe.__dict__.update(m.__dict__)
            probe._check_parameters()
        except (TypeError, ValueError) as e:
            raise type(e)(f"model: submodule {name!r} cannot compute on rnncore: {e}") from None
    for _, m in found:
        m.__class__ = _TO_RNNCORE[type(m)]
    return model


def revert(model):
    """Undo ``convert``: every ``rnncore.torch.LSTM``, ``GRU`` and ``RNN`` in ``model`` becomes a
    ``torch.nn`` module again, in place (same objects and parameters); returns ``model``.
    A ``GRU(reset_after=False)`` has no torch equivalent: ValueError, and nothing changes."""
    found = _walk(model, _TO_TORCH)
    for name, m in found:
        if isinstance(m, GRU) and not m.reset_after:
            raise ValueError(f"model: submodule {name!r} is a GRU(reset_after=False), which torch.nn.GRU cannot "
                             f"compute (PyTorch's GRU applies the reset gate after the recurrent matmul)")
    for _, m in found:
        m.__dict__.pop("_rnncore_cache", None)
        m.__class__ = _TO_TORCH[type(m)]
    return model


# ---- threads --------------------------------------------------------------------------------

def _torch_openmp_library():
    """The path of the OpenMP runtime PyTorch's ATen runs on, when that is its parallel backend
    and the library can be found among the process's mapped files ('' when it is OpenMP but the
    file is not known: the process's global symbols are searched); None when ATen does not use
    OpenMP."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    import os
    here = os.path.dirname(os.path.realpath(torch.__file__))
    try:
        with open("/proc/self/maps") as f:
            fields = (line.split(None, 5) for line in f)
            paths = {x[5].strip() for x in fields if len(x) == 6}
    except OSError:
        return ""
    ours = sorted(p for p in paths if os.path.basename(p).startswith(("libgomp", "libomp", "libiomp"))
                  and os.path.realpath(p).startswith(here + os.sep))
    return ours[0] if ours else ""


def share_threads(on=True):
    """Run rnncore's team on PyTorch's OpenMP threads (``on=True``, the default from
    ``import rnncore.torch``) or on rnncore's own (``on=False``); returns whether they are shared
    now.

    After each of its parallel operations, PyTorch's OpenMP threads spin for a while, waiting for
    the next one. In a training step rnncore's work falls between PyTorch's operations, and its own
    team would compete with those spinning threads for the cores. Shared, each rnncore call runs as
    one parallel region of PyTorch's OpenMP runtime, whose waiting threads take it up at once. The
    thread count is still ``rnncore.set_num_threads``'s, and results are the same bits either way.
    ``rnncore.team_stats()["openmp_calls"]`` counts the calls that ran so. Sharing needs a PyTorch
    whose parallel backend is OpenMP (``torch.__config__.parallel_info()``) on Linux or macOS;
    elsewhere it stays off and this returns False.
    """
    if not isinstance(on, (bool, np.bool_)):
        raise TypeError(f"on: expected a bool, got {type(on).__name__} {on!r}")
    if not on:
        _core.detach_openmp()
        return False
    path = _torch_openmp_library()
    if path is None:
        return False
    return bool(_core.attach_openmp(path) or (path != "" and _core.attach_openmp("")))


share_threads(True)
