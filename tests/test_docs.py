"""The documentation users read from the package: constructor arguments, shapes, the parameter
count against PyTorch's, the extension's docstrings."""

import inspect

import numpy as np
import pytest

import rnncore
from rnncore import _core


@pytest.mark.parametrize("cls", [rnncore.RNN, rnncore.LSTM, rnncore.GRU])
def test_every_constructor_argument_is_documented(cls):
    doc = cls.__doc__
    for name in inspect.signature(cls).parameters:
        assert f"\n    {name} : " in doc, f"{cls.__name__}: argument {name} not documented"
    assert "seed=None" in doc and "different weights" in doc          # None draws fresh weights
    assert "1/sqrt(hidden_size)" in doc                               # the initialisation


def test_initialisation_is_what_the_docstring_says():
    m = rnncore.LSTM(3, 16, num_layers=2, seed=5)
    k = 1 / np.sqrt(16)
    rng = np.random.default_rng(5)
    rng.integers(2**63)                    # first the seed of the dropout masks' generator
    for name, a in m.parameters().items():
        want = rng.uniform(-k, k, size=a.shape).astype(np.float32)
        np.testing.assert_array_equal(a, want, err_msg=name)
    assert not np.array_equal(rnncore.GRU(3, 4).parameters()["W_hh_l0"], rnncore.GRU(3, 4).parameters()["W_hh_l0"])


@pytest.mark.parametrize("method", ["__call__", "forward", "backward"])
def test_calls_document_shapes_and_dtypes(method):
    doc = getattr(rnncore.LSTM, method).__doc__
    assert "(T, N, input_size)" in doc or "(T, N, dirs * hidden_size)" in doc or "y``'s shape" in doc
    assert "(num_layers * dirs, N, hidden_size)" in doc
    assert "dtype" in doc


def test_num_parameters_against_pytorch():
    """The docstring's example: one bias per gate here, two in PyTorch."""
    assert "14,592" in rnncore.LSTM.num_parameters.__doc__ and "14,848" in rnncore.LSTM.num_parameters.__doc__
    m = rnncore.LSTM(16, 32, num_layers=2)
    assert m.num_parameters() == 14592 == sum(a.size for a in m.parameters().values())
    torch = pytest.importorskip("torch")
    t = torch.nn.LSTM(16, 32, num_layers=2)
    assert sum(p.numel() for p in t.parameters()) == 14848
    for cls, tcls, G in ((rnncore.RNN, torch.nn.RNN, 1), (rnncore.GRU, torch.nn.GRU, 3)):
        kw = {"reset_after": True} if cls is rnncore.GRU else {}
        m = cls(5, 7, num_layers=2, bidirectional=True, **kw)
        t = tcls(5, 7, num_layers=2, bidirectional=True)
        # per layer and direction PyTorch has G * H more biases; a reset_after GRU's b_hn is one of its H-sized ones
        extra = 2 * 2 * (G * 7 - (7 if cls is rnncore.GRU else 0))
        assert sum(p.numel() for p in t.parameters()) == m.num_parameters() + extra


def test_extension_functions_have_docstrings():
    for name in ("forward", "backward", "set_num_threads", "get_num_threads", "team_stats", "blas_corename",
                 "blas_config", "kernel_isa", "packed_bytes_of_last_call", "bench_step_gemm", "bench_gemv_floor"):
        doc = getattr(_core, name).__doc__ or ""
        text = "\n".join(line for line in doc.splitlines() if not line.startswith(name + "("))
        assert len(text.strip()) > 20, name


def test_set_num_threads_docstring_names_the_team():
    assert "team" in rnncore.set_num_threads.__doc__ and "BLAS" not in rnncore.set_num_threads.__doc__.split(".")[0]
