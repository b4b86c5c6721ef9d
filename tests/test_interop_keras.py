"""Keras 3 interop (torch backend): rnncore.from_keras and model.to_keras.

Keras on a non-TensorFlow backend rounds the result of its own matmuls to float32 even for
float64 layers (its type promotion maps float64 to float32 outside TensorFlow), except where it
hands LSTM / reset_after GRU to torch's fused kernels; float64 comparisons therefore use a
float32-sized tolerance. The weight conversions themselves are exact in both dtypes.
"""

import os

import numpy as np
import pytest

os.environ["KERAS_BACKEND"] = "torch"
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

import rnncore  # noqa: E402

# Keras' own variables trip NumPy 2's __array__(copy=...) deprecation on every get/set_weights.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

if keras.backend.backend() != "torch":
    pytest.skip(f"keras is already running on {keras.backend.backend()}", allow_module_level=True)

T, N, D, H = 5, 3, 4, 6
LENGTHS = np.array([5, 2, 1])
VARIANTS = ("rnn_tanh", "rnn_relu", "lstm", "gru", "gru_after")
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-6, atol=1e-6)}
MAX_ERR = {np.float32: 0.0, np.float64: 0.0}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\nmax |rnncore - keras|: f32 {MAX_ERR[np.float32]:.3g}, f64 {MAX_ERR[np.float64]:.3g}")


def close(actual, expected, dtype, what):
    actual = np.asarray(actual)
    expected = expected.detach().numpy() if hasattr(expected, "detach") else np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == np.dtype(dtype), what
    MAX_ERR[dtype] = max(MAX_ERR[dtype], float(np.abs(actual.astype(np.float64) - expected).max()))
    np.testing.assert_allclose(actual, expected, err_msg=what, **TOL[dtype])


def rnncore_model(variant, num_layers, bidirectional, dtype, **kw):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=True, dtype=dtype, seed=0, **kw)
    if variant.startswith("rnn_"):
        return rnncore.RNN(D, H, nonlinearity=variant[4:], **kw)
    if variant == "lstm":
        return rnncore.LSTM(D, H, **kw)
    return rnncore.GRU(D, H, reset_after=variant == "gru_after", **kw)


def keras_layer(variant, bidirectional, dtype, **kw):
    kw = dict(return_sequences=True, return_state=True, dtype=np.dtype(dtype).name, **kw)
    if variant.startswith("rnn_"):
        layer = keras.layers.SimpleRNN(H, activation=variant[4:], **kw)
    elif variant == "lstm":
        layer = keras.layers.LSTM(H, **kw)
    else:
        layer = keras.layers.GRU(H, reset_after=variant == "gru_after", **kw)
    return keras.layers.Bidirectional(layer) if bidirectional else layer


def assert_same_parameters(a, b):
    assert set(a.parameters()) == set(b.parameters())
    for k, v in a.parameters().items():
        assert b.parameters()[k].dtype == v.dtype, k
        np.testing.assert_array_equal(b.parameters()[k], v, err_msg=k)


GRID = [(1, False, np.float32), (1, True, np.float64), (2, False, np.float64), (2, True, np.float32),
        (2, True, np.float64)]


@pytest.mark.parametrize("num_layers,bidirectional,dtype", GRID,
                         ids=[f"L{L}-{'bi' if b else 'uni'}-{np.dtype(d).name}" for L, b, d in GRID])
@pytest.mark.parametrize("variant", VARIANTS)
def test_to_keras_round_trip_and_outputs(variant, num_layers, bidirectional, dtype):
    rm = rnncore_model(variant, num_layers, bidirectional, dtype)
    km = rm.to_keras()
    assert isinstance(km, keras.Sequential)
    recurrent = [layer for layer in km.layers if not isinstance(layer, keras.layers.Dropout)]
    assert len(recurrent) == num_layers
    assert all(isinstance(layer, keras.layers.Bidirectional) == bidirectional for layer in recurrent)
    back = rnncore.from_keras(km)
    assert repr(back) == repr(rm)
    assert_same_parameters(rm, back)

    x = np.random.default_rng(1).standard_normal((N, T, D)).astype(dtype)
    close(rm(x)[0], km(x), dtype, "y")


@pytest.mark.parametrize("bidirectional,dtype", [(False, np.float64), (True, np.float32), (True, np.float64)],
                         ids=["uni-f64", "bi-f32", "bi-f64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_from_keras_stack_with_states_and_lengths(variant, bidirectional, dtype):
    """Two Keras layers called with initial states and a padding mask; final states compared too."""
    layers = [keras_layer(variant, bidirectional, dtype) for _ in range(2)]
    rng = np.random.default_rng(2)
    dirs = 2 if bidirectional else 1
    n_states = 2 if variant == "lstm" else 1
    x = rng.standard_normal((N, T, D)).astype(dtype)
    init = [rng.standard_normal((2 * dirs, N, H)).astype(dtype) for _ in range(n_states)]
    mask = torch.tensor(np.arange(T)[None, :] < LENGTHS[:, None])
    out, finals = x, [[] for _ in range(n_states)]
    for k, layer in enumerate(layers):
        # Keras orders states direction-major, each direction's (h[, c]).
        states = [init[s][k * dirs + d] for d in range(dirs) for s in range(n_states)]
        res = layer(out, initial_state=states, mask=mask)
        out = res[0]
        for i, st in enumerate(res[1:]):
            finals[i % n_states].append(st)
    rm = rnncore.from_keras(layers)
    assert rm.batch_first and rm.num_layers == 2 and rm.bidirectional == bidirectional and rm.dtype == dtype
    y, st = rm(x, tuple(init) if variant == "lstm" else init[0], lengths=LENGTHS)
    st = st if variant == "lstm" else (st,)
    valid = np.arange(T)[None, :] < LENGTHS[:, None]
    close(y[valid], out.detach().numpy()[valid], dtype, "y at valid steps")
    assert not y[~valid].any()
    for s in range(n_states):
        close(st[s], torch.stack(finals[s]), dtype, ("h_n", "c_n")[s])


def test_dropout_layers_between_recurrent_layers_are_the_models_dropout():
    rm = rnncore.GRU(D, H, num_layers=3, dropout=0.3, batch_first=True, seed=0)
    km = rm.to_keras()
    kinds = [type(layer).__name__ for layer in km.layers]
    assert kinds == ["GRU", "Dropout", "GRU", "Dropout", "GRU"]
    assert all(layer.rate == 0.3 for layer in km.layers if isinstance(layer, keras.layers.Dropout))
    back = rnncore.from_keras(km)
    assert back.dropout == 0.3 and back.num_layers == 3
    x = np.random.default_rng(3).standard_normal((N, T, D)).astype(np.float32)
    close(rm(x)[0], km(x, training=False), np.float32, "y with inactive dropout")


def test_time_major_model_and_batch_first_choice():
    rm = rnncore.LSTM(D, H, batch_first=False, seed=0)
    km = rm.to_keras()                     # Keras reads (N, T, D) regardless
    x = np.random.default_rng(4).standard_normal((T, N, D)).astype(np.float32)
    close(rm(x)[0], np.asarray(km(x.transpose(1, 0, 2)).detach()).transpose(1, 0, 2), np.float32, "y")
    assert rnncore.from_keras(km, batch_first=False).batch_first is False
    assert rnncore.from_keras(km).batch_first is True


def test_keras_layer_without_bias():
    layer = keras.layers.GRU(H, use_bias=False, reset_after=True, return_sequences=True)
    x = np.random.default_rng(5).standard_normal((N, T, D)).astype(np.float32)
    y_k = layer(x)
    rm = rnncore.from_keras(layer)
    assert not rm.parameters()["b_l0"].any() and not rm.parameters()["b_hn_l0"].any()
    close(rm(x)[0], y_k, np.float32, "y")


def built(layer, d=D):
    layer.build((None, None, d))
    return layer


@pytest.mark.parametrize("bad,match", [
    (lambda: keras.layers.LSTM(H), "not built"),
    (lambda: built(keras.layers.LSTM(H, go_backwards=True)), "go_backwards"),
    (lambda: built(keras.layers.LSTM(H, activation="relu")), "activation 'relu'"),
    (lambda: built(keras.layers.GRU(H, recurrent_activation="hard_sigmoid")), "recurrent_activation"),
    (lambda: built(keras.layers.Bidirectional(keras.layers.LSTM(H), merge_mode="sum")), "merge_mode"),
    (lambda: [built(keras.layers.LSTM(H, return_sequences=True)), built(keras.layers.GRU(H), H)], "GRU after LSTM"),
    (lambda: [built(keras.layers.GRU(H, return_sequences=True)), built(keras.layers.GRU(H + 1), H)], "units"),
    (lambda: [built(keras.layers.GRU(H, return_sequences=True)),
              built(keras.layers.Bidirectional(keras.layers.GRU(H)), H)], "mixes Bidirectional"),
    (lambda: [built(keras.layers.GRU(H)), keras.layers.Dropout(0.1)], "trailing Dropout"),
    (lambda: [keras.layers.Dropout(0.1), built(keras.layers.GRU(H))], "between recurrent layers"),
    (lambda: [built(keras.layers.GRU(H)), built(keras.layers.GRU(H, reset_after=False), H)], "reset_after"),
    (lambda: [built(keras.layers.Dense(H))], "Dense is not"),
    (lambda: [], "no recurrent layer"),
])
def test_from_keras_rejects_what_rnncore_cannot_compute(bad, match):
    with pytest.raises(ValueError, match=match):
        rnncore.from_keras(bad())


def test_from_keras_type_errors():
    with pytest.raises(TypeError, match="Keras layer"):
        rnncore.from_keras("LSTM")
    with pytest.raises(TypeError, match="dtype"):
        rnncore.from_keras([built(keras.layers.GRU(H, return_sequences=True)),
                            built(keras.layers.GRU(H, dtype="float64"), H)])


def test_broken_parameter_is_named_not_exported():
    rm = rnncore.RNN(D, H)
    del rm.parameters()["W_ih_l0"]
    with pytest.raises(TypeError, match="W_ih_l0"):
        rm.to_keras()
