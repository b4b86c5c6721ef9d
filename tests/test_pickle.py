"""Pickling and copying: arrays, models, cells and streams survive pickle, deepcopy and a trip
through worker processes (spawn and forkserver), and come back as independent, working objects."""

import concurrent.futures
import copy
import multiprocessing
import pickle

import numpy as np
import pytest

import rnncore

KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_after"]


def make(kind, dtype=np.float32, **kw):
    kw = dict(dtype=dtype, seed=kw.pop("seed", 0), **kw)
    if kind.startswith("rnn"):
        return rnncore.RNN(4, 3, nonlinearity=kind[4:], **kw)
    if kind == "lstm":
        return rnncore.LSTM(4, 3, **kw)
    return rnncore.GRU(4, 3, reset_after=kind == "gru_after", **kw)


def roundtrip(obj):
    return pickle.loads(pickle.dumps(obj))


def run_all(model, x):
    """Inference, a training forward and its backward: everything a user calls."""
    y, st = model(x)
    y2, _, tape = model.forward(x, train=True)
    g = model.backward(tape, np.ones_like(y2))
    return [y] + list(st if isinstance(st, tuple) else (st,)) + [g[k] for k in sorted(g)]


def assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_unpickled_arrays_are_accepted(dtype):
    """An unpickled array's dtype equals the model's but is another object: it must pass."""
    m = make("lstm", dtype, num_layers=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 4)).astype(dtype)
    h0 = rng.standard_normal((2, 2, 3)).astype(dtype)
    xp, h0p = roundtrip(x), roundtrip(h0)
    assert xp.dtype is not np.dtype(dtype) and xp.dtype == np.dtype(dtype)  # the case the core once refused
    y, (h, c) = m(x, (h0, h0))
    yp, (hp, cp) = m(xp, (h0p, h0p))
    assert_same([y, h, c], [yp, hp, cp])
    y, _, tape = m.forward(xp, (h0p, h0p), train=True)
    g = m.backward(tape, roundtrip(np.ones_like(y)), roundtrip(h0), roundtrip(h0))
    assert set(g) >= {"x", "h0", "c0"}


def test_the_core_compares_dtypes_by_value():
    """Straight into the core: equal dtypes pass whatever object they are; others still fail."""
    core = rnncore._core
    w = [tuple(roundtrip(np.zeros(s, np.float32)) for s in ((12, 4), (12, 3), (12,))) + (None,)]
    x, h0 = roundtrip(np.zeros((3, 2, 4), np.float32)), roundtrip(np.zeros((1, 2, 3), np.float32))
    y, h, c, _ = core.forward(2, 1, 1, w, x, h0, h0, None, None, False)
    assert y.shape == (3, 2, 3) and not y.any()
    with pytest.raises(TypeError, match="h0: expected dtype float32, got float64"):
        core.forward(2, 1, 1, w, x, h0.astype(np.float64), h0, None, None, False)
    swapped = h0.astype(h0.dtype.newbyteorder())
    with pytest.raises(TypeError, match="h0: expected dtype float32"):
        core.forward(2, 1, 1, w, x, swapped, h0, None, None, False)
    with pytest.raises(TypeError, match="x: expected float32 or float64"):
        core.forward(2, 1, 1, w, x.astype(x.dtype.newbyteorder()), h0, h0, None, None, False)


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "copy"])
@pytest.mark.parametrize("kind", KINDS)
def test_models_copy_into_independent_working_models(kind, how):
    m = make(kind, np.float64, num_layers=2, bidirectional=True, batch_first=True, dropout=0.25)
    dup = {"pickle": roundtrip, "deepcopy": copy.deepcopy, "copy": copy.copy}[how](m)
    assert type(dup) is type(m) and repr(dup) == repr(m)
    x = np.random.default_rng(1).standard_normal((2, 5, 4))
    expected = run_all(m, x)
    m._dropout_rng = np.random.default_rng(m.seed)  # the same masks for the next two comparisons
    dup._dropout_rng = np.random.default_rng(m.seed)
    assert_same(run_all(dup, x), run_all(m, x))
    assert len(expected) > 3
    if how == "copy":
        return  # a shallow copy shares its parameter arrays, as copy.copy does for any container
    for k, v in dup.parameters().items():
        assert not np.shares_memory(v, m.parameters()[k]), k
    before = m.state_dict()
    for v in dup.parameters().values():
        v += 1.0
    for k, v in m.parameters().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


@pytest.mark.parametrize("how", [roundtrip, copy.deepcopy], ids=["pickle", "deepcopy"])
def test_cells_and_streams_copy_into_working_objects(how):
    rng = np.random.default_rng(2)
    cell = rnncore.GRUCell(4, 3, reset_after=True, seed=0)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    h = cell(x)
    twin = how(cell)
    np.testing.assert_array_equal(twin(x, h), cell(x, h))
    twin.parameters()["W_hh"][:] = 0
    assert cell.parameters()["W_hh"].any()

    model = make("lstm", num_layers=2)
    stream = model.stream(lengths=[6, 3])
    xs = rng.standard_normal((6, 2, 4)).astype(np.float32)
    stream(xs[:2])
    copied = how(stream)
    assert copied.t == 2 and copied.model is not model
    rest = stream(xs[2:])
    np.testing.assert_array_equal(copied(xs[2:]), rest)
    np.testing.assert_array_equal(copied.state[0], stream.state[0])
    whole, _ = model(xs, lengths=[6, 3])
    np.testing.assert_array_equal(rest, whole[2:])


def test_shared_parameters_stay_shared_inside_one_copy():
    """A cell made from a model shares its arrays with it; copied together, the copies share too."""
    model = make("rnn_tanh")
    cell = rnncore.RNNCell.from_model(model)
    m2, c2 = copy.deepcopy((model, cell))
    assert c2.to_model() is m2
    m3, c3 = roundtrip((model, cell))
    assert c3.to_model() is m3


def test_tapes_refuse_to_be_pickled_or_copied():
    m = make("gru")
    _, _, tape = m.forward(np.ones((2, 1, 4), np.float32), train=True)
    for f in (pickle.dumps, copy.deepcopy, copy.copy):
        with pytest.raises(TypeError, match="^tape: a Tape cannot be pickled or copied"):
            f(tape)
    m.backward(tape)  # still usable


# ---- through worker processes ----------------------------------------------------------------

def _worker(payload):
    """In a fresh process: run what came, change the model there, and send it all back."""
    model, cell, stream, x = payload
    out = run_all(model, x)
    step = cell(x[0])
    chunk = stream(x)
    for v in model.parameters().values():
        v *= 2.0
    info = rnncore.blas_info()
    info.pop("threads")                                 # results do not depend on it
    return out, step, chunk, model, info


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_models_cells_and_streams_through_a_process_pool(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    rng = np.random.default_rng(3)
    model = make("lstm", num_layers=2, bidirectional=True)
    cell = rnncore.LSTMCell(4, 3, seed=1)
    streamed = make("gru", seed=2)
    stream = streamed.stream()
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    stream(x)                                           # it carries a state into the worker
    before = model.state_dict()
    ctx = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        out, step, chunk, back, info = pool.submit(_worker, (model, cell, stream, x)).result(timeout=300)
    # same kernels in the worker (same machine, same environment), so the same bits
    here = rnncore.blas_info()
    here.pop("threads")
    assert info == here
    assert_same(out, run_all(model, x))
    np.testing.assert_array_equal(step[0], cell(x[0])[0])
    np.testing.assert_array_equal(chunk, stream(x))
    for k, v in model.parameters().items():              # the worker's change stayed there
        np.testing.assert_array_equal(v, before[k], err_msg=k)
        np.testing.assert_array_equal(back.parameters()[k], 2 * before[k], err_msg=k)
    y, _ = back(x)                                       # and the model it sent back works here
    assert y.shape == (5, 2, 6) and np.isfinite(y).all()
