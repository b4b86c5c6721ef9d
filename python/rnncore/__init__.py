"""rnncore: simple RNN, LSTM and GRU for NumPy on a C++ core with BLAS, forward and backward.

    import numpy as np, rnncore
    lstm = rnncore.LSTM(16, 64, num_layers=2, bidirectional=True, dtype=np.float32, seed=0)
    y, (h_n, c_n) = lstm(x)                                  # inference
    y, state, tape = lstm.forward(x, train=True)             # training
    grads = lstm.backward(tape, dy)                          # dict: "x", "h0", "c0", parameters
    grads.parameters()                                       # the parameter gradients alone

``rnncore.reference`` has the same classes computed by a plain NumPy oracle; ``rnncore.train`` a loss,
a linear readout, gradient clipping and Adam.

Interoperability (the frameworks are imported only when used): ``LSTM.from_torch(module)`` /
``model.to_torch()``, ``rnncore.from_keras(layers)`` / ``model.to_keras()``, ``model.to_onnx(path)`` /
``rnncore.from_onnx(path)``; files: ``model.save(path)`` / ``rnncore.load(path)``. Inside PyTorch:
``rnncore.torch.LSTM`` / ``GRU`` / ``RNN`` (torch.nn modules computed by rnncore), ``rnncore.torch.convert(model)``.
"""

import numbers
import operator
import os as _os
from typing import Any, Dict

import numpy as np

# OpenBLAS reads these when it is loaded (with _core, just below): they choose its kernels and their blocking,
# so they decide the order of its sums, hence the result bits.
_BLAS_KERNEL_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_BLAS_ENV = {k: _os.environ.get(k) for k in _BLAS_KERNEL_ENV}

if _os.name == "nt":
    # Windows has no run path: importing scipy_openblas32 adds the folder of its OpenBLAS DLL to the
    # DLL search path (Linux and macOS find the library through _core's run path instead).
    import scipy_openblas32  # noqa: F401

from . import _core, _threadpool, reference, train  # noqa: E402
from ._convert import from_torch_state_dict, to_torch_state_dict  # noqa: E402
from ._io import load  # noqa: E402
from ._keras import from_keras  # noqa: E402
from ._onnx import from_onnx  # noqa: E402
from . import onnx  # noqa: E402  (rnncore.onnx: find_recurrent, import_graph; the onnx package loads on use)
from ._torch import from_torch  # noqa: E402
from ._version import __version__  # noqa: E402
from .cells import GRUCell, LSTMCell, RNNCell, Stream  # noqa: E402
from .models import GRU, LSTM, RNN, Gradients, Tape  # noqa: E402

__all__ = ["__version__", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "Stream", "Tape", "Gradients", "reference", "train",
           "set_num_threads", "get_num_threads", "team_stats", "release_memory", "MAX_THREADS", "blas_info",
           "from_torch_state_dict", "to_torch_state_dict", "from_torch", "from_keras", "from_onnx", "load"]


MAX_THREADS = _core.MAX_THREADS


def set_num_threads(n: int) -> None:
    """Threads of rnncore's team: every call from then on uses up to ``n`` threads (1 to
    ``MAX_THREADS`` = 1024). Any integer type is accepted (``np.int64`` too). Safe to call at any
    time; results do not depend on it, bit for bit. ``threadpoolctl.threadpool_limits`` sets the
    same number when threadpoolctl is installed."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n: expected an integer, got {type(n).__name__} {n!r}")
    n = operator.index(n)
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"n: expected an integer from 1 to {MAX_THREADS}, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Threads of rnncore's team (its BLAS always works single-threaded inside them)."""
    return _core.get_num_threads()


def team_stats() -> Dict[str, int]:
    """Counters of rnncore's team since the process started: calls that used it, calls that ran
    on their caller alone (the team was busy with another call, or recently stalled), items one
    thread took over from another, stalls (a thread lost its core mid-call and the call went on
    without it), worker threads started, and calls that ran on PyTorch's OpenMP threads instead
    of rnncore's own (``openmp_calls``, also counted in ``team_calls``; ``rnncore.torch.share_threads``)."""
    return dict(_core.team_stats())


def release_memory() -> int:
    """Give back to the system the workspace blocks that calls keep for the calls after them, and
    return how many bytes that was. Freed workspace blocks of 1 MiB and more, and the memory of
    freed output arrays and gradients of that size, are kept (at most 16
    blocks, 256 MiB in all) so that the next call need not fault their pages in again; a block
    nobody reuses within a second is given back at the next call anyway (README, Memory)."""
    held = int(_core.workspace_kept())
    _core.release_workspace()
    return held


def blas_info() -> Dict[str, Any]:
    """What computes: the OpenBLAS kernel (core name), its build config, threads, our kernels' ISA, and
    the environment variables that choose OpenBLAS's kernels as they were when rnncore was imported
    (None when unset). Results are bit-identical between runs that report the same ``corename``,
    ``config``, ``kernels`` and ``env`` (README, Guarantees: Determinism)."""
    return {"corename": _core.blas_corename(), "config": _core.blas_config(), "threads": _core.get_num_threads(),
            "kernels": _core.kernel_isa(), "env": dict(_BLAS_ENV)}


_threadpool.register()


def __getattr__(name: str) -> Any:
    # rnncore.torch (PyTorch modules on rnncore's core) imports torch: loaded on first use only
    if name == "torch":
        import importlib
        try:
            return importlib.import_module(".torch", __name__)
        except ImportError as e:   # an attribute lookup answers AttributeError; `import rnncore.torch` shows the cause
            raise AttributeError(f"rnncore.torch is not available: {e}") from e
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
