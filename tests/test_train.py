"""rnncore.train: Adam by hand, gradient clipping, Linear and MSE against finite differences,
and the toolkit training models to known solutions."""

import numpy as np
import pytest

import rnncore
from rnncore.train import Adam, Linear, clip_grad_norm, mse_loss


# ---- Adam ----------------------------------------------------------------------------------------

def test_adam_first_two_steps_by_hand():
    p = {"w": np.array([1.0, -2.0]), "s": np.array([[0.5]])}
    opt = Adam(p, lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    # step 1, g = [0.5, -1.0]: m = 0.1 g, v = 0.001 g^2; corrected m/(1-0.9) = g, v/(1-0.999) = g^2,
    # so the update is lr * g / (|g| + eps) = 0.1 * sign(g) (up to eps).
    opt.step({"w": np.array([0.5, -1.0]), "s": np.array([[2.0]])})
    w1 = np.array([1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 + 0.1 * 1.0 / (1.0 + 1e-8)])
    s1 = 0.5 - 0.1 * 2.0 / (2.0 + 1e-8)
    np.testing.assert_allclose(p["w"], w1, rtol=0, atol=1e-14)
    np.testing.assert_allclose(p["w"], [0.9, -1.9], rtol=0, atol=1e-8)
    np.testing.assert_allclose(p["s"], [[s1]], rtol=0, atol=1e-14)
    # step 2, g = [-0.25, -1.0] for w:
    #   m = 0.9 * [0.05, -0.1] + 0.1 * [-0.25, -1.0] = [0.02, -0.19]
    #   v = 0.999 * [0.00025, 0.001] + 0.001 * [0.0625, 1.0] = [0.00031225, 0.001999]
    #   m_hat = m / 0.19 = [0.105263157..., -1.0]; v_hat = v / 0.001999 = [0.156203101..., 1.0]
    #   w -= 0.1 * m_hat / (sqrt(v_hat) + 1e-8)
    #     = [0.9 - 0.1 * 0.105263158 / 0.395225380, -1.9 + 0.1] = [0.8733663..., -1.8]   (eps shifts these by ~1e-9)
    # and for s, g = 2.0 again: m = 0.9*0.2 + 0.2 = 0.38, v = 0.999*0.004 + 0.004 = 0.007996,
    #   m_hat = 2.0, v_hat = 4.0, s = 0.4 - 0.1 * 2 / 2 = 0.3
    opt.step({"w": np.array([-0.25, -1.0]), "s": np.array([[2.0]])})
    w2 = w1 - 0.1 * np.array([0.02 / 0.19, -1.0]) / (np.sqrt([0.00031225 / 0.001999, 1.0]) + 1e-8)
    assert abs(w2[0] - 0.87336630) < 1e-7 and abs(w2[1] + 1.8) < 1e-7
    np.testing.assert_allclose(p["w"], w2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p["s"], [[s1 - 0.1 * 2.0 / (2.0 + 1e-8)]], rtol=0, atol=1e-12)
    np.testing.assert_allclose(p["s"], [[0.3]], rtol=0, atol=1e-8)
    np.testing.assert_allclose(opt.m["w"], [0.02, -0.19], rtol=1e-12)
    np.testing.assert_allclose(opt.v["w"], [0.00031225, 0.001999], rtol=1e-12)
    assert opt.t == 2


def test_adam_weight_decay_is_added_to_the_gradient():
    p = {"w": np.array([2.0])}
    Adam(p, lr=0.5, weight_decay=0.1).step({"w": np.array([0.0])})
    # g = 0 + 0.1 * 2 = 0.2 > 0, and the first step moves by lr in the gradient's sign
    np.testing.assert_allclose(p["w"], [1.5], atol=1e-7)


def test_adam_updates_in_place_keeps_dtype_and_checks_names():
    w = np.ones((2, 3), np.float32)
    p = {"w": w}
    opt = Adam(p, lr=1e-2)
    opt.step({"w": np.ones((2, 3), np.float32), "x": np.zeros(5)})   # extra keys ignored
    assert p["w"] is w and w.dtype == np.float32
    np.testing.assert_allclose(w, 0.99, rtol=1e-6)
    with pytest.raises(KeyError):
        opt.step({})
    with pytest.raises(ValueError):
        opt.step({"w": np.ones(3, np.float32)})


# ---- clip_grad_norm ------------------------------------------------------------------------------

def test_clip_grad_norm_scales_above_the_limit():
    g = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([[4.0]], np.float32)}
    a = g["a"]
    total = clip_grad_norm(g, 1.0)
    assert total == pytest.approx(5.0)
    assert g["a"] is a and a.dtype == np.float32
    np.testing.assert_allclose(g["a"], [0.6, 0.0], rtol=1e-5)
    np.testing.assert_allclose(g["b"], [[0.8]], rtol=1e-5)
    new_norm = np.sqrt(np.sum(g["a"] ** 2) + np.sum(g["b"] ** 2))
    assert new_norm == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_leaves_small_gradients_alone():
    g = {"a": np.array([0.3, 0.4])}
    assert clip_grad_norm(g, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(g["a"], [0.3, 0.4])
    with pytest.raises(ValueError):
        clip_grad_norm(g, 0.0)


# ---- gradients against finite differences --------------------------------------------------------

def _fd(f, a, eps=1e-6):
    """Central differences of the scalar f() with respect to every entry of a (changed in place)."""
    out = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        keep = a[i]
        a[i] = keep + eps
        up = f()
        a[i] = keep - eps
        down = f()
        a[i] = keep
        out[i] = (up - down) / (2 * eps)
    return out


def test_mse_loss_value_and_gradient():
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 4, 2))
    loss, dpred = mse_loss(pred, target)
    assert loss == pytest.approx(np.mean((pred - target) ** 2))
    np.testing.assert_allclose(dpred, _fd(lambda: mse_loss(pred, target)[0], pred), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError):
        mse_loss(pred, target[:2])


def test_linear_backward_matches_finite_differences():
    rng = np.random.default_rng(1)
    lin = Linear(5, 3, dtype=np.float64, seed=2)
    x = rng.standard_normal((4, 2, 5))        # any leading axes
    target = rng.standard_normal((4, 2, 3))

    def loss():
        return mse_loss(lin.forward(x), target)[0]

    y = lin.forward(x)
    assert y.shape == (4, 2, 3)
    np.testing.assert_allclose(y, x @ lin.parameters()["W"].T + lin.parameters()["b"])
    _, dy = mse_loss(y, target)
    dx = lin.backward(dy)
    grads = dict(lin.grads)
    np.testing.assert_allclose(dx, _fd(loss, x), rtol=1e-6, atol=1e-9)
    for name in ("W", "b"):
        np.testing.assert_allclose(grads[name], _fd(loss, lin.parameters()[name]), rtol=1e-6, atol=1e-9)


def test_linear_is_seeded_and_live():
    a, b = Linear(4, 2, seed=7), Linear(4, 2, seed=7)
    np.testing.assert_array_equal(a.parameters()["W"], b.parameters()["W"])
    assert a.parameters()["W"].dtype == np.float32
    a.parameters()["b"][:] = 1.0
    np.testing.assert_allclose(a.forward(np.zeros((3, 4), np.float32)), 1.0)


# ---- training to a known solution ----------------------------------------------------------------

def test_linear_regression_converges_to_the_true_weights():
    rng = np.random.default_rng(3)
    W_true = np.array([[1.5, -2.0, 0.5], [0.0, 1.0, -1.0]])
    b_true = np.array([0.25, -0.5])
    lin = Linear(3, 2, dtype=np.float64, seed=0)
    opt = Adam(lin.parameters(), lr=0.05)
    for _ in range(600):
        x = rng.standard_normal((32, 3))
        _, dy = mse_loss(lin.forward(x), x @ W_true.T + b_true)
        lin.backward(dy)
        opt.step(lin.grads)
    np.testing.assert_allclose(lin.parameters()["W"], W_true, atol=1e-3)
    np.testing.assert_allclose(lin.parameters()["b"], b_true, atol=1e-3)


def test_gru_and_readout_learn_the_sum_of_a_sequence():
    """A 1-layer GRU + Linear on the final state learns y = sum_t x_t (T = 8, inputs uniform in [-1, 1])."""
    rng = np.random.default_rng(4)
    T, H = 8, 16
    gru = rnncore.GRU(1, H, dtype=np.float32, seed=5)
    readout = Linear(H, 1, dtype=np.float32, seed=6)
    params = {**gru.parameters(), **{"readout." + k: v for k, v in readout.parameters().items()}}
    opt = Adam(params, lr=1e-2)

    def batch(n):
        x = rng.uniform(-1, 1, size=(T, n, 1)).astype(np.float32)
        return x, x.sum(axis=0)                     # (T, n, 1), (n, 1)

    x_eval, y_eval = batch(256)
    _, h, _ = gru.forward(x_eval)
    start = mse_loss(readout.forward(h[-1]), y_eval)[0]
    for _ in range(400):
        x, y = batch(32)
        _, h, tape = gru.forward(x, train=True)
        _, dpred = mse_loss(readout.forward(h[-1]), y)
        dh = readout.backward(dpred)
        g = gru.backward(tape, dh_n=dh[None])
        grads = {**{k: g[k] for k in gru.parameters()}, **{"readout." + k: v for k, v in readout.grads.items()}}
        clip_grad_norm(grads, 5.0)
        opt.step(grads)
    _, h, _ = gru.forward(x_eval)
    end = mse_loss(readout.forward(h[-1]), y_eval)[0]
    # the target's variance is T/3 = 2.67; predicting 0 scores that
    assert start > 1.0
    assert end < 0.05, (start, end)


# ---- the traps of the documented loop ------------------------------------------------------------

def test_rnncore_train_is_an_attribute_after_import_rnncore():
    import subprocess
    import sys
    code = "import rnncore; from rnncore.train import Adam; assert rnncore.train.Adam is Adam; print('ok')"
    r = subprocess.run([sys.executable, "-c", "import rnncore; print(rnncore.train.Adam.__name__)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "Adam", r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "ok", r.stderr[-2000:]


def _lstm_step(seed=0):
    rng = np.random.default_rng(seed)
    m = rnncore.LSTM(3, 4, num_layers=2, seed=seed)
    x = rng.standard_normal((6, 5, 3)).astype(np.float32)
    y, _, tape = m.forward(x, train=True)
    return m, m.backward(tape, (rng.standard_normal(y.shape) * 50).astype(np.float32))


def test_backward_separates_parameter_gradients_from_input_gradients():
    m, g = _lstm_step()
    assert isinstance(g, rnncore.Gradients) and isinstance(g, dict)
    assert list(g.parameters()) == list(m.parameters())
    assert set(g.inputs()) == {"x", "h0", "c0"} and set(g) == set(m.parameters()) | {"x", "h0", "c0"}
    cell = rnncore.GRUCell(3, 4, reset_after=True, seed=0)
    h, tape = cell.forward(np.ones((2, 3), np.float32), train=True)
    gc = cell.backward(tape, np.ones_like(h))
    assert set(gc.parameters()) == set(cell.parameters()) and set(gc.inputs()) == {"x", "h"}
    stream = rnncore.GRU(3, 4, seed=0).stream()
    y, tape = stream.forward(np.ones((2, 2, 3), np.float32), train=True)
    assert set(stream.backward(tape, np.ones_like(y)).inputs()) == {"x", "h0"}


def test_clip_grad_norm_counts_parameter_gradients_only():
    """Handed what backward returns, it measured and scaled "x", "h0" and "c0" too: the wrong norm."""
    m, g = _lstm_step()
    inputs = {k: v.copy() for k, v in g.inputs().items()}
    params = {k: v.copy() for k, v in g.parameters().items()}
    want = np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in params.values()))
    everything = np.sqrt(want ** 2 + sum(np.sum(np.square(v, dtype=np.float64)) for v in inputs.values()))
    assert everything > 1.01 * want > 1.0                  # the two norms differ here, and both need clipping
    total = clip_grad_norm(g, 1.0)
    assert total == pytest.approx(want, rel=1e-12)
    for k, v in inputs.items():                              # input gradients untouched
        np.testing.assert_array_equal(g[k], v)
    for k, v in params.items():
        np.testing.assert_allclose(g[k], v * (1.0 / (want + 1e-6)), rtol=1e-6)
    # several dicts at once: one global norm
    a, b = {"w": np.array([3.0])}, {"w": np.array([4.0])}
    assert clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose([a["w"][0], b["w"][0]], [0.6, 0.8], rtol=1e-6)


def test_adam_takes_models_layers_and_lists_and_reads_only_their_parameter_names():
    m, g = _lstm_step()
    head = Linear(4, 2, seed=1)
    head.forward(np.ones((5, 4), np.float32))
    head.backward(np.ones((5, 2), np.float32))
    # the documented loop ...
    m1, h1 = rnncore.LSTM(3, 4, num_layers=2, seed=0), Linear(4, 2, seed=1)
    opt = Adam([m1, h1], lr=0.01)
    g1 = {k: v.copy() for k, v in g.items()}
    norm = opt.step(rnncore.Gradients({"x": g1.pop("x"), "h0": g1.pop("h0"), "c0": g1.pop("c0")}, g1),
                    dict(head.grads), max_norm=1.0)
    # ... is the by-hand one: one dict of parameter gradients, clipped, then one Adam step
    m2, h2 = rnncore.LSTM(3, 4, num_layers=2, seed=0), Linear(4, 2, seed=1)
    params = {**m2.parameters(), **{"head." + k: v for k, v in h2.parameters().items()}}
    grads = {**{k: g[k].copy() for k in m2.parameters()}, **{"head." + k: v.copy() for k, v in head.grads.items()}}
    assert norm == pytest.approx(clip_grad_norm(grads, 1.0), rel=1e-12)
    Adam(params, lr=0.01).step(grads)
    for k, v in m1.parameters().items():
        np.testing.assert_allclose(v, m2.parameters()[k], rtol=1e-6, atol=1e-7, err_msg=k)
    for k, v in h1.parameters().items():
        np.testing.assert_allclose(v, h2.parameters()[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert not np.array_equal(m1.parameters()["W_ih_l0"], rnncore.LSTM(3, 4, num_layers=2, seed=0).parameters()["W_ih_l0"])
    # the gradients handed to step are not changed by its clipping
    g3 = {k: v.copy() for k, v in head.grads.items()}
    Adam(Linear(4, 2, seed=1), lr=0.01).step(g3, max_norm=1e-3)
    for k, v in head.grads.items():
        np.testing.assert_array_equal(g3[k], v)


@pytest.mark.parametrize("params,exc,match", [
    (lambda: [1, 2], TypeError, r"^params\[0\]: expected a dict of name -> ndarray or an object with parameters\(\), got int"),
    (lambda: [np.zeros(3)], TypeError, r"^params\[0\]: expected a dict"),
    (lambda: "abc", TypeError, r"^params: expected a dict of name -> ndarray, an object with parameters\(\) .*got str"),
    (lambda: [], ValueError, r"^params: expected at least one parameter"),
    (lambda: {"w": [1.0, 2.0]}, TypeError, r"^params\['w'\]: expected a floating point ndarray, got list"),
    (lambda: {"w": np.zeros(3, np.int32)}, TypeError, r"^params\['w'\]: expected a floating point ndarray, got .*int32"),
    (lambda: {"w": np.ma.masked_array(np.zeros(3))}, TypeError, r"^params\['w'\]: masked arrays are not supported"),
    (lambda: {"w": np.zeros(3)[::-1].copy().__array__()}, None, None),
])
def test_adam_bad_params(params, exc, match):
    if exc is None:
        Adam(params())
        return
    with pytest.raises(exc, match=match):
        Adam(params())


def test_adam_refuses_read_only_and_shared_arrays():
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"^params\['w'\]: read-only"):
        Adam({"w": ro})
    m = rnncore.RNN(2, 3, seed=0)
    with pytest.raises(ValueError, match=r"^params\[1\]\['W_ih'\]: the same array as params\[0\]\['W_ih_l0'\]"):
        Adam([m, rnncore.RNNCell.from_model(m)])


def test_adam_step_bad_gradients():
    m, g = _lstm_step()
    head = Linear(4, 2, seed=1)
    opt = Adam([m, head])
    with pytest.raises(TypeError, match=r"^grads: expected 2 gradient dicts, one per parameter group \(LSTM, Linear\)"):
        opt.step(g)
    with pytest.raises(KeyError, match=r"grads\[1\]: no gradient for \['W', 'b'\]"):
        opt.step(g, {})
    bad = {"W": np.zeros((2, 4)), "b": np.zeros(2, np.float32)}
    with pytest.raises(TypeError, match=r"^grads\[1\]\['W'\]: expected dtype float32 \(the parameter's\), got float64"):
        opt.step(g, bad)
    bad = {"W": np.ma.masked_array(np.zeros((2, 4), np.float32)), "b": np.zeros(2, np.float32)}
    with pytest.raises(TypeError, match=r"^grads\[1\]\['W'\]: masked arrays are not supported"):
        opt.step(g, bad)
    with pytest.raises(ValueError, match=r"^max_norm: expected a positive number"):
        opt.step(g, {"W": np.zeros((2, 4), np.float32), "b": np.zeros(2, np.float32)}, max_norm=-1)
    assert opt.t == 0                                        # nothing changed by a refused step


def test_clip_grad_norm_bad_input():
    with pytest.raises(TypeError, match=r"^grads\['a'\]: masked arrays are not supported"):
        clip_grad_norm({"a": np.ma.masked_array([3.0, 4.0], mask=[False, True])}, 1.0)
    with pytest.raises(TypeError, match=r"^grads\['a'\]: expected a floating point ndarray, got list"):
        clip_grad_norm({"a": [3.0, 4.0]}, 1.0)
    with pytest.raises(TypeError, match=r"^grads: expected a dict of name -> ndarray"):
        clip_grad_norm(np.zeros(3), 1.0)
    for bad in (0, -1.0, float("nan"), "1", True):
        with pytest.raises((ValueError, TypeError), match=r"^max_norm: expected a positive number"):
            clip_grad_norm({"a": np.ones(2)}, bad)


def test_linear_refuses_what_it_would_silently_cast():
    lin = Linear(4, 2, seed=0)                              # float32
    with pytest.raises(TypeError, match=r"^x: expected dtype float32 \(the layer's dtype\), got float64"):
        lin.forward(np.zeros((3, 4)))
    with pytest.raises(TypeError, match=r"^x: masked arrays are not supported"):
        lin.forward(np.ma.masked_array(np.zeros((3, 4), np.float32)))
    with pytest.raises(TypeError, match=r"^x: expected a numpy.ndarray of dtype float32, got list"):
        lin.forward([[0.0] * 4])
    lin.forward(np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match=r"^dy: expected dtype float32 \(the layer's dtype\), got float64"):
        lin.backward(np.zeros((3, 2)))
    for args, exc, match in [((0, 2), ValueError, "^in_features: expected a positive int, got 0"),
                             ((2.5, 2), TypeError, "^in_features: expected a positive int, got float"),
                             ((2, "3"), TypeError, "^out_features: expected a positive int, got str")]:
        with pytest.raises(exc, match=match):
            Linear(*args)
    with pytest.raises(TypeError, match="^dtype: expected float32 or float64, got int32"):
        Linear(2, 2, dtype=np.int32)
    lin.parameters()["W"] = np.ma.masked_array(lin.parameters()["W"], mask=True)
    with pytest.raises(TypeError, match=r"^parameter 'W': masked arrays are not supported"):
        lin.forward(np.zeros((3, 4), np.float32))
    lin.parameters()["W"] = np.zeros((2, 4))
    with pytest.raises(TypeError, match=r"^parameter 'W': expected an ndarray of dtype float32, got ndarray of dtype float64"):
        lin.forward(np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match=r"^weight_decay: expected a number >= 0, got str"):
        Adam({"w": np.zeros(2)}, weight_decay="0.1")


def test_mse_loss_refuses_masked_and_non_float():
    with pytest.raises(TypeError, match=r"^pred: masked arrays are not supported"):
        mse_loss(np.ma.masked_array([1.0, 2.0], mask=[0, 1]), np.zeros(2))
    with pytest.raises(TypeError, match=r"^target: masked arrays are not supported"):
        mse_loss(np.zeros(2), np.ma.masked_array([1.0, 2.0], mask=[0, 1]))
    with pytest.raises(TypeError, match=r"^pred: expected floating point values, got dtype int64"):
        mse_loss(np.array([1, 2]), np.zeros(2))
