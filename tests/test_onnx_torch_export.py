"""Graphs written by torch.onnx.export (torch 2.13): both its exporters, read by rnncore.from_onnx /
rnncore.onnx.import_graph and compared with PyTorch itself.

The TorchScript exporter (dynamo=False) writes one ONNX RNN/LSTM/GRU node per layer, with zero
initial states built by Shape/Gather/Concat/Expand. The dynamo exporter (the default; it needs
onnxscript) writes LSTM and GRU nodes with constant zero states and Reshapes to the export's static
sizes, and unrolls torch.nn.RNN into MatMul/Tanh steps, which leave no recurrent node to read.
"""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import rnncore  # noqa: E402
import rnncore.onnx as rox  # noqa: E402

T, N, D, H = 5, 2, 4, 3
TOL = dict(rtol=1e-5, atol=1e-5)


def export(module, args, path, dynamo, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, path, dynamo=dynamo, **kw)
        except Exception as e:       # pragma: no cover - the exporter is optional in torch
            pytest.skip(f"torch.onnx.export(dynamo={dynamo}) unavailable here: {type(e).__name__}: {e}")


def torch_outputs(tm, x, state=None):
    with torch.no_grad():
        y, st = tm(torch.from_numpy(x), state)
    return [y.numpy()] + ([s.numpy() for s in st] if isinstance(st, tuple) else [st.numpy()])


CASES = [(kind, layers, bi, bf) for kind in ("LSTM", "GRU", "RNN") for layers, bi, bf in ((1, False, False),
                                                                                        (2, True, True))]


@pytest.mark.parametrize("kind,layers,bi,bf", CASES, ids=[f"{c[0]}-L{c[1]}-{'bi' if c[2] else 'uni'}-"
                                                           f"{'bf' if c[3] else 'tm'}" for c in CASES])
def test_torchscript_exporter(kind, layers, bi, bf, tmp_path):
    torch.manual_seed(1)
    tm = getattr(torch.nn, kind)(D, H, num_layers=layers, bidirectional=bi, batch_first=bf)
    x = np.random.default_rng(0).standard_normal((N, T, D) if bf else (T, N, D)).astype(np.float32)
    path = str(tmp_path / "t.onnx")
    export(tm, (torch.from_numpy(x),), path, False, input_names=["x"], dynamic_axes={"x": {0: "a", 1: "b"}})
    want = torch_outputs(tm, x)
    m = rnncore.from_onnx(path)
    assert (type(m).__name__, m.num_layers, m.bidirectional, m.batch_first) == (kind, layers, bi, bf)
    y, _ = m(x)
    np.testing.assert_allclose(y, want[0], **TOL)
    imp = rox.import_graph(path)
    assert imp.inputs == ["x"]
    for got, w in zip(imp.run(None, {"x": x}), want):
        np.testing.assert_allclose(got, w, **TOL)
    x2 = x[:, :3] if bf else x[:3]                  # dynamic axes: another length
    np.testing.assert_allclose(imp.run(None, {"x": x2})[0], torch_outputs(tm, x2)[0], **TOL)


def test_torchscript_exporter_with_initial_states(tmp_path):
    torch.manual_seed(2)
    tm = torch.nn.LSTM(D, H, num_layers=2, bidirectional=True)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    h0 = rng.standard_normal((4, N, H)).astype(np.float32)
    c0 = rng.standard_normal((4, N, H)).astype(np.float32)
    path = str(tmp_path / "s.onnx")
    export(tm, (torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0))), path, False,
           input_names=["x", "h0", "c0"])
    want = torch_outputs(tm, x, (torch.from_numpy(h0), torch.from_numpy(c0)))
    imp = rox.import_graph(path)
    assert set(imp.inputs) == {"x", "h0", "c0"}
    for got, w in zip(imp.run(None, {"x": x, "h0": h0, "c0": c0}), want):
        np.testing.assert_allclose(got, w, **TOL)
    m = rnncore.from_onnx(path)                     # the model's state is torch's (h0, c0)
    np.testing.assert_allclose(m(x, (h0, c0))[0], want[0], **TOL)


@pytest.mark.parametrize("kind,layers,bi,bf", [("LSTM", 2, True, True)])   # one: each export takes seconds
def test_dynamo_exporter(kind, layers, bi, bf, tmp_path):
    pytest.importorskip("onnxscript")
    torch.manual_seed(3)
    tm = getattr(torch.nn, kind)(D, H, num_layers=layers, bidirectional=bi, batch_first=bf)
    x = np.random.default_rng(2).standard_normal((N, T, D) if bf else (T, N, D)).astype(np.float32)
    path = str(tmp_path / "d.onnx")
    export(tm, (torch.from_numpy(x),), path, True, input_names=["x"], verbose=False)
    want = torch_outputs(tm, x)
    m = rnncore.from_onnx(path)
    assert (m.num_layers, m.bidirectional, m.batch_first) == (layers, bi, bf)
    np.testing.assert_allclose(m(x)[0], want[0], **TOL)
    for got, w in zip(rox.import_graph(path).run(None, {"x": x}), want):
        np.testing.assert_allclose(got, w, **TOL)


def test_dynamo_exporter_unrolls_rnn(tmp_path):
    pytest.importorskip("onnxscript")
    tm = torch.nn.RNN(D, H)
    path = str(tmp_path / "r.onnx")
    export(tm, (torch.randn(T, N, D),), path, True, input_names=["x"], verbose=False)
    with pytest.raises(ValueError, match="no RNN, LSTM or GRU operator.*unroll"):
        rnncore.from_onnx(path)
