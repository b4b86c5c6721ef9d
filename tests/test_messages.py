"""Errors that say how to fix the call: another dtype than the model's, a torch.Tensor, a list."""

import numpy as np
import pytest

import rnncore
from rnncore.train import Linear

X64 = np.random.default_rng(0).standard_normal((5, 2, 4))


def _models():
    return [rnncore.RNN(4, 3, seed=0), rnncore.LSTM(4, 3, seed=0), rnncore.GRU(4, 3, seed=0)]


@pytest.mark.parametrize("model", _models(), ids=lambda m: type(m).__name__)
def test_float64_into_a_float32_model_suggests_astype_or_dtype(model):
    before = model.state_dict()
    with pytest.raises(TypeError, match=r"^x: expected dtype float32 \(the model's dtype\), got float64; "
                                        r"convert it with x\.astype\(np\.float32\), or build the model with "
                                        r"dtype=np\.float64"):
        model(X64)
    # the suggestion works
    y, _ = model(X64.astype(np.float32))
    y64, _ = type(model)(4, 3, dtype=np.float64, seed=0)(X64)
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-6)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_states_and_gradients_name_the_fix_too():
    m = rnncore.LSTM(4, 3, seed=0)
    x = X64.astype(np.float32)
    h0 = np.zeros((1, 2, 3))
    with pytest.raises(TypeError, match=r"^h0: .*got float64; convert it with h0\.astype\(np\.float32\)"):
        m(x, (h0, h0.astype(np.float32)))
    y, _, tape = m.forward(x, train=True)
    with pytest.raises(TypeError, match=r"^dy: .*dy\.astype\(np\.float32\)"):
        m.backward(tape, np.ones(y.shape))


def test_integer_input_suggests_astype_only():
    with pytest.raises(TypeError, match=r"got int64; convert it with x\.astype\(np\.float32\)$"):
        rnncore.GRU(4, 3)(np.zeros((5, 2, 4), np.int64))


def test_a_list_is_not_accepted():
    m = rnncore.GRU(4, 3, seed=0)
    with pytest.raises(TypeError, match=r"^x: expected a numpy\.ndarray of dtype float32, got list: lists and "
                                        r"tuples are not accepted .*np\.asarray\(x, dtype=np\.float32\)"):
        m(X64.tolist())
    with pytest.raises(TypeError, match=r"not accepted"):
        rnncore.GRUCell(4, 3)(X64[0].tolist())


def test_a_torch_tensor_suggests_numpy_or_the_torch_modules():
    torch = pytest.importorskip("torch")
    t = torch.zeros(5, 2, 4)
    for call in (lambda: rnncore.LSTM(4, 3)(t), lambda: rnncore.LSTMCell(4, 3)(t[0]),
                 lambda: Linear(4, 3).forward(t)):
        with pytest.raises(TypeError, match=r"got Tensor \(torch\.Tensor\); pass x\.detach\(\)\.cpu\(\)\.numpy\(\), "
                                            r"or use the rnncore\.torch modules"):
            call()
    # the suggestion works
    y, _ = rnncore.LSTM(4, 3, seed=0)(t.detach().cpu().numpy())
    assert y.shape == (5, 2, 3)


def test_linear_layer_names_its_own_dtype():
    with pytest.raises(TypeError, match=r"^x: expected dtype float32 \(the layer's dtype\), got float64; convert it "
                                        r"with x\.astype\(np\.float32\), or build the layer with dtype=np\.float64"):
        Linear(4, 3).forward(X64)
