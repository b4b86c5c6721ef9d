"""The implementations the benchmark compares: rnncore itself and its peers.

A peer turns one case (cell, mode, shape, dtype, lengths), one set of rnncore parameters and one
set of inputs into a ``Prepared``: ``run()`` is the call that gets timed, ``outputs()`` gives the
last run's results in rnncore's layout and names (for the agreement check, outside the timing):

    y (T, N, H), h_n (1, N, H), c_n (LSTM)                              every mode
    dx (T, N, D), dh0 (1, N, H), dc0 (LSTM), dW_ih_l0, dW_hh_l0, db_l0, (db_hn_l0)   training

Training computes the loss sum(y * dy) and its gradients with respect to the input, the initial
states and every parameter.
"""

import abc
import importlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

import rnncore

GATES = {name: info["gates"] for name, info in rnncore.models.CELL_INFO.items()}


@dataclass
class Case:
    cell: str
    mode: str                      # "inference" or "training"
    T: int
    N: int
    D: int
    H: int
    dtype: np.dtype
    lengths: Optional[np.ndarray]  # (N,) int64 in [1, T], or None for full length


@dataclass
class Inputs:
    x: np.ndarray                  # (T, N, D)
    h0: np.ndarray                 # (1, N, H)
    c0: Optional[np.ndarray]       # (1, N, H), LSTM only
    dy: np.ndarray                 # (T, N, H), zero at padding


class Prepared:
    """What a peer built for one case: ``run()`` (timed), ``clear()`` and ``outputs()`` (not timed)."""

    def __init__(self, run, outputs, box):
        self.run = run
        self._outputs = outputs
        self._box = box

    def clear(self):
        self._box[0] = None

    def outputs(self):
        return self._outputs(self._box[0])


def make_model(module, cell, D, H, dtype):
    """An rnncore-API model (``rnncore`` or ``rnncore.reference``) for one cell."""
    if cell.startswith("rnn_"):
        return module.RNN(D, H, nonlinearity=cell[4:], dtype=dtype)
    if cell == "lstm":
        return module.LSTM(D, H, dtype=dtype)
    return module.GRU(D, H, reset_after=(cell == "gru_after"), dtype=dtype)


class Peer(abc.ABC):
    name = "?"
    label = "?"
    is_baseline = False
    reduced = False        # the NumPy reference: fewer repeats, skipped on the biggest cases

    def skip_reason(self):
        """None when usable here, else why not (not installed, import failed, ...)."""
        return None

    def unsupported(self, case):
        """None when this peer can compute the case, else a short "n/a (...)" reason."""
        return None

    def set_threads(self, n):
        """Use n threads; returns the count the library reports afterwards (or None)."""
        return None

    def version(self):
        return None

    @abc.abstractmethod
    def prepare(self, case, params, inputs):
        """The callables that run this peer on the case (a Prepared)."""


def _state_of(case, inputs):
    return (inputs.h0, inputs.c0) if case.cell == "lstm" else inputs.h0


def _api_outputs(cell, y, state, grads=None):
    out = {"y": y}
    if cell == "lstm":
        out["h_n"], out["c_n"] = state
    else:
        out["h_n"] = state
    for k, v in (grads or {}).items():
        out["d" + k] = v                # x -> dx, h0 -> dh0, W_ih_l0 -> dW_ih_l0, ...
    return out


class _ApiPeer(Peer):
    """A peer with rnncore's own Python API: rnncore itself and the NumPy reference."""

    @abc.abstractmethod
    def _module(self):
        """The module whose RNN/LSTM/GRU classes this peer runs."""

    def prepare(self, case, params, inputs):
        model = make_model(self._module(), case.cell, case.D, case.H, case.dtype)
        model.load_state_dict(params)
        x, dy, lengths = inputs.x, inputs.dy, case.lengths
        state = _state_of(case, inputs)
        box = [None]
        if case.mode == "inference":
            def run():
                box[0] = model(x, state, lengths)

            def outputs(res):
                return _api_outputs(case.cell, res[0], res[1])
        else:
            def run():
                y, st, tape = model.forward(x, state, lengths, train=True)
                box[0] = (y, st, model.backward(tape, dy))

            def outputs(res):
                return _api_outputs(case.cell, *res)
        return Prepared(run, outputs, box)


class RnncorePeer(_ApiPeer):
    name = "rnncore"
    label = "rnncore"
    is_baseline = True

    def _module(self):
        return rnncore

    def set_threads(self, n):
        rnncore.set_num_threads(n)
        return rnncore.get_num_threads()

    def version(self):
        return rnncore.__version__


class ReferencePeer(_ApiPeer):
    """rnncore.reference: the same math in plain NumPy, one time step at a time (NumPy's own BLAS)."""

    name = "reference"
    label = "NumPy reference"
    reduced = True

    def __init__(self, numpy_blas=None):
        self._blas = numpy_blas    # suite.LoadedBlas of NumPy's OpenBLAS, to set its threads

    def _module(self):
        return rnncore.reference

    def set_threads(self, n):
        if self._blas is not None and self._blas.set_threads(n):
            return self._blas.get_threads()
        return None

    def version(self):
        return f"numpy {np.__version__}"


class TorchPeer(Peer):
    """torch.nn.RNN / LSTM / GRU on the CPU; inference under torch.inference_mode, training by autograd."""

    name = "torch"
    label = "PyTorch"
    _CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru_after")

    def __init__(self):
        self._torch = None
        self._reason = None
        if importlib.util.find_spec("torch") is None:
            self._reason = "torch is not installed (pip install torch)"
            return
        try:
            self._torch = importlib.import_module("torch")
        except Exception as e:  # a broken install must not stop the suite
            self._reason = f"import torch failed: {type(e).__name__}: {e}"

    def skip_reason(self):
        return self._reason

    def unsupported(self, case):
        if case.cell == "gru":
            return "n/a (PyTorch has no reset-before GRU)"
        if case.cell not in self._CELLS:
            return f"n/a (no PyTorch equivalent of {case.cell})"
        return None

    def set_threads(self, n):
        self._torch.set_num_threads(n)
        return self._torch.get_num_threads()

    def version(self):
        return self._torch.__version__ if self._torch is not None else None

    def prepare(self, case, params, inputs):
        torch = self._torch
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(case.dtype)]
        if case.cell.startswith("rnn_"):
            mod = torch.nn.RNN(case.D, case.H, nonlinearity=case.cell[4:], dtype=tdtype)
        elif case.cell == "lstm":
            mod = torch.nn.LSTM(case.D, case.H, dtype=tdtype)
        else:
            mod = torch.nn.GRU(case.D, case.H, dtype=tdtype)
        sd = rnncore.to_torch_state_dict(params, case.cell)
        mod.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()})
        T = case.T
        lengths = None if case.lengths is None else torch.from_numpy(np.asarray(case.lengths, np.int64))

        def forward(x, hx):
            if lengths is None:
                return mod(x, hx)
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            out, st = mod(packed, hx)
            return pad_packed_sequence(out, total_length=T)[0], st

        lstm = case.cell == "lstm"
        box = [None]
        if case.mode == "inference":
            mod.eval()
            x = torch.from_numpy(inputs.x)
            hx = (torch.from_numpy(inputs.h0), torch.from_numpy(inputs.c0)) if lstm else torch.from_numpy(inputs.h0)

            def run():
                with torch.inference_mode():
                    box[0] = forward(x, hx)

            def outputs(res):
                return _torch_outputs(case, res, None, None)
            return Prepared(run, outputs, box)

        x = torch.from_numpy(inputs.x.copy()).requires_grad_(True)
        leaves = [torch.from_numpy(inputs.h0.copy()).requires_grad_(True)]
        if lstm:
            leaves.append(torch.from_numpy(inputs.c0.copy()).requires_grad_(True))
        hx = tuple(leaves) if lstm else leaves[0]
        dy = torch.from_numpy(inputs.dy)

        def run():
            x.grad = None
            for t in leaves:
                t.grad = None
            mod.zero_grad(set_to_none=True)
            y, st = forward(x, hx)
            y.backward(dy)
            box[0] = (y, st)

        def outputs(res):
            return _torch_outputs(case, res, (x, leaves), mod)
        return Prepared(run, outputs, box)


def _np(t):
    return t.detach().cpu().numpy()


def _torch_outputs(case, res, leaves, mod):
    y, st = res
    out = {"y": _np(y)}
    if case.cell == "lstm":
        out["h_n"], out["c_n"] = _np(st[0]), _np(st[1])
    else:
        out["h_n"] = _np(st)
    if leaves is None:
        return out
    x, states = leaves
    out["dx"] = _np(x.grad)
    out["dh0"] = _np(states[0].grad)
    if case.cell == "lstm":
        out["dc0"] = _np(states[1].grad)
    # torch's parameter gradients in rnncore's layout (see rnncore._convert): S flips the sign of
    # the GRU's z rows; rnncore's b is bias_ih + bias_hh, and the GRU's b_hn is bias_hh's n rows.
    H = case.H
    grads = {k: _np(p.grad) for k, p in mod.named_parameters()}
    sign = np.ones(GATES[case.cell] * H, grads["weight_ih_l0"].dtype)
    if case.cell == "gru_after":
        sign[H:2 * H] = -1
    out["dW_ih_l0"] = grads["weight_ih_l0"] * sign[:, None]
    out["dW_hh_l0"] = grads["weight_hh_l0"] * sign[:, None]
    out["db_l0"] = grads["bias_ih_l0"] * sign
    if case.cell == "gru_after":
        out["db_hn_l0"] = grads["bias_hh_l0"][2 * H:]
    return out


class OnnxRuntimePeer(Peer):
    """ONNX Runtime (CPU) running the model's own ONNX export; inference only."""

    name = "onnxruntime"
    label = "ONNX Runtime"

    def __init__(self):
        self._ort = None
        self._threads = None
        reasons = []
        if not hasattr(rnncore.LSTM(1, 1), "to_onnx"):
            reasons.append("rnncore has no ONNX exporter yet (models have no to_onnx method)")
        elif importlib.util.find_spec("onnx") is None:
            reasons.append("the onnx package, which model.to_onnx needs, is not installed (pip install onnx)")
        if importlib.util.find_spec("onnxruntime") is None:
            reasons.append("onnxruntime is not installed (pip install onnxruntime)")
        elif not reasons:
            try:
                self._ort = importlib.import_module("onnxruntime")
            except Exception as e:
                reasons.append(f"import onnxruntime failed: {type(e).__name__}: {e}")
        self._reason = "; ".join(reasons) or None
        self._dir = None

    def skip_reason(self):
        return self._reason

    def unsupported(self, case):
        if case.mode != "inference":
            return "n/a (inference only)"
        if np.dtype(case.dtype) != np.float32:
            return "n/a (ONNX Runtime runs the RNN operators in float32 only)"
        return None

    def set_threads(self, n):
        self._threads = n   # applied to each session (intra_op_num_threads)
        return n

    def version(self):
        return getattr(self._ort, "__version__", None)

    def prepare(self, case, params, inputs):
        ort = self._ort
        model = make_model(rnncore, case.cell, case.D, case.H, case.dtype)
        model.load_state_dict(params)
        if self._dir is None:   # removed with this peer
            self._dir = tempfile.TemporaryDirectory(prefix="rnncore-bench-onnx-")
        path = os.path.join(self._dir.name, f"{case.cell}_{case.T}x{case.N}x{case.D}x{case.H}.onnx")
        model.to_onnx(path)
        so = ort.SessionOptions()
        if self._threads:
            so.intra_op_num_threads = self._threads
            so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feeds = {}
        for i, inp in enumerate(sess.get_inputs()):
            name = inp.name.lower()
            if "len" in name:
                if case.lengths is None:
                    feeds[inp.name] = np.full(case.N, case.T, np.int32 if "int32" in inp.type else np.int64)
                else:
                    feeds[inp.name] = case.lengths.astype(np.int32 if "int32" in inp.type else np.int64)
            elif "c0" in name or "initial_c" in name:
                feeds[inp.name] = inputs.c0
            elif "h0" in name or "initial_h" in name:
                feeds[inp.name] = inputs.h0
            elif i == 0 or name in ("x", "input", "inputs"):
                feeds[inp.name] = inputs.x
            else:
                raise RuntimeError(f"cannot tell what the exported graph's input {inp.name!r} is")
        if case.lengths is not None and not any("len" in k.lower() for k in feeds):
            raise RuntimeError("the exported graph takes no sequence lengths")
        box = [None]

        def run():
            box[0] = sess.run(None, feeds)

        def outputs(res):
            y = res[0]
            if y.ndim == 4:             # ONNX's (T, num_directions, N, H)
                y = y[:, 0]
            out = {"y": y, "h_n": res[1]}
            if case.cell == "lstm" and len(res) > 2:
                out["c_n"] = res[2]
            return out
        return Prepared(run, outputs, box)


PEER_CLASSES = {"rnncore": RnncorePeer, "torch": TorchPeer, "reference": ReferencePeer,
                "onnxruntime": OnnxRuntimePeer}
PEER_ALIASES = {"pytorch": "torch", "numpy": "reference", "ref": "reference", "ort": "onnxruntime",
                "onnx": "onnxruntime"}
