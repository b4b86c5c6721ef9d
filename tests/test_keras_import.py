"""rnncore.from_keras and the Keras layers' call flags: return_sequences, return_state, go_backwards,
stateful, unroll and masking are honoured or refused by name, never silently dropped."""

import os

import numpy as np
import pytest

os.environ["KERAS_BACKEND"] = "torch"
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

import rnncore  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

if keras.backend.backend() != "torch":
    pytest.skip(f"keras is already running on {keras.backend.backend()}", allow_module_level=True)

T, N, D, H = 5, 3, 4, 6
TOL = dict(rtol=1e-5, atol=1e-5)


def np_(t):
    return t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)


def x_of(seed=0):
    return np.random.default_rng(seed).standard_normal((N, T, D)).astype(np.float32)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_return_sequences_false_refused_or_taken_on_request(kind, bidirectional):
    layer = getattr(keras.layers, kind)(H)                      # Keras' default: return_sequences=False
    if bidirectional:
        layer = keras.layers.Bidirectional(layer)
    x = x_of(1)
    out = np_(layer(x))
    assert out.shape == (N, (2 if bidirectional else 1) * H)
    with pytest.raises(ValueError, match="return_sequences=False.*full_sequence=True"):
        rnncore.from_keras(layer)
    m = rnncore.from_keras(layer, full_sequence=True)
    y, _ = m(x)
    want = y[:, -1] if not bidirectional else np.concatenate([y[:, -1, :H], y[:, 0, H:]], axis=1)
    np.testing.assert_allclose(want, out, **TOL)            # what the message says Keras' output is


def test_inner_layer_with_return_sequences_false_is_refused():
    a, b = keras.layers.GRU(H), keras.layers.GRU(H, return_sequences=True)
    a.build((None, None, D))
    b.build((None, None, H))
    with pytest.raises(ValueError, match="layer 0 .*return_sequences=False on a layer that feeds another"):
        rnncore.from_keras([a, b], full_sequence=True)
    with pytest.raises(TypeError, match="full_sequence: expected a bool"):
        rnncore.from_keras([b], full_sequence=1)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_return_state_is_the_models_final_state(bidirectional):
    layer = keras.layers.LSTM(H, return_sequences=True, return_state=True)
    if bidirectional:
        layer = keras.layers.Bidirectional(layer)
    x = x_of(2)
    res = layer(x)
    m = rnncore.from_keras(layer)
    y, (h_n, c_n) = m(x)
    np.testing.assert_allclose(y, np_(res[0]), **TOL)
    # Keras: [output, h, c] per direction, forward first
    for d in range(2 if bidirectional else 1):
        np.testing.assert_allclose(h_n[d], np_(res[1 + 2 * d]), **TOL)
        np.testing.assert_allclose(c_n[d], np_(res[2 + 2 * d]), **TOL)


def test_unroll_is_the_same_computation():
    layer = keras.layers.GRU(H, return_sequences=True, unroll=True)
    x = x_of(3)
    out = np_(layer(x))
    np.testing.assert_allclose(rnncore.from_keras(layer)(x)[0], out, **TOL)


def test_go_backwards_stateful_and_masking_refused_by_name():
    back = keras.layers.LSTM(H, return_sequences=True, go_backwards=True)
    back.build((None, None, D))
    with pytest.raises(ValueError, match="go_backwards=True outside a Bidirectional"):
        rnncore.from_keras(back)
    stateful = keras.layers.SimpleRNN(H, return_sequences=True, stateful=True)
    stateful.build((N, T, D))
    with pytest.raises(ValueError, match="stateful=True .* pass state=, or use model.stream"):
        rnncore.from_keras(stateful)
    masked = keras.Sequential([keras.Input((None, D)), keras.layers.Masking(0.0),
                               keras.layers.LSTM(H, return_sequences=True)])
    with pytest.raises(ValueError, match="layer 0 .*Masking .*pass each row's length"):
        rnncore.from_keras(masked)
