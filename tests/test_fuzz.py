"""Bad input, fuzzed: every call either computes what the reference computes or raises
ValueError / TypeError whose message starts with the argument's name."""

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import rnncore

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_after"]
FLOATS = [np.dtype(np.float32), np.dtype(np.float64)]


def make(kind, dtype, layers, bidirectional, batch_first, D, H, ref=False):
    ns = rnncore.reference if ref else rnncore
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, dtype=dtype, seed=0)
    if kind.startswith("rnn"):
        return ns.RNN(D, H, nonlinearity=kind[4:], **kw)
    if kind == "lstm":
        return ns.LSTM(D, H, **kw)
    return ns.GRU(D, H, reset_after=kind == "gru_after", **kw)


@st.composite
def configs(draw):
    kind = draw(st.sampled_from(CELLS))
    dtype = draw(st.sampled_from(FLOATS))
    layers = draw(st.integers(1, 2))
    bidirectional = draw(st.booleans())
    batch_first = draw(st.booleans())
    D, H = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    T, N = draw(st.integers(1, 5)), draw(st.integers(0, 4))
    model = make(kind, dtype, layers, bidirectional, batch_first, D, H)
    return model, T, N


def laid_out(a, how, draw_axes):
    """The values of a (C-contiguous) in another memory layout, as a view where possible."""
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "reversed":
        axes = draw_axes(a.ndim)
        return np.flip(np.flip(a, axes).copy(), axes)
    if how == "strided":
        big = np.zeros(tuple(2 * s + 1 for s in a.shape), a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if how == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if how == "unaligned":
        buf = np.zeros(a.nbytes + 1, np.uint8)
        b = np.ndarray(a.shape, a.dtype, buf, offset=1)
        b[...] = a
        return b
    if how == "broadcast" and a.ndim and a.shape[0] and np.array_equal(a, np.broadcast_to(a[:1], a.shape)):
        return np.broadcast_to(a[:1], a.shape)  # stride 0 along the first axis
    return a


LAYOUTS = ["c", "fortran", "reversed", "strided", "readonly", "unaligned", "broadcast"]


def axes_drawer(data):
    return lambda ndim: tuple(data.draw(st.sets(st.integers(0, ndim - 1), min_size=1)))


def user(model, shape_tm):
    """A time-major shape as the user passes it."""
    return (shape_tm[1], shape_tm[0]) + tuple(shape_tm[2:]) if model.batch_first else tuple(shape_tm)


def state_shape(model, N):
    return (model.num_layers * model.dirs, N, model.hidden_size)


@given(configs(), st.data())
@FUZZ
def test_any_layout_computes_like_the_reference(cfg, data):
    model, T, N = cfg
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dt, axes = model.dtype, axes_drawer(data)
    layout = lambda: data.draw(st.sampled_from(LAYOUTS))  # noqa: E731
    x = rng.standard_normal(user(model, (T, N, model.input_size))).astype(dt)
    if data.draw(st.booleans()):  # constant over the first axis, so a stride-0 view can carry it
        x = np.ascontiguousarray(np.broadcast_to(x[:1], x.shape))
    lengths = None
    if data.draw(st.booleans()):
        ldt = data.draw(st.sampled_from(["int8", "uint8", "int16", "int32", "int64", "uint64", ">i8", "list"]))
        values = rng.integers(0, T + 1, size=N)
        lengths = values.tolist() if ldt == "list" else laid_out(values.astype(ldt), layout(), axes)
    hs = state_shape(model, N)
    h0 = rng.standard_normal(hs).astype(dt) if data.draw(st.booleans()) else None
    c0 = rng.standard_normal(hs).astype(dt) if data.draw(st.booleans()) else None
    state = (h0, c0) if isinstance(model, rnncore.LSTM) else h0

    y_shape = user(model, (T, N, model.dirs * model.hidden_size))
    dy = rng.standard_normal(y_shape).astype(dt) if data.draw(st.booleans()) else None
    dh_n = rng.standard_normal(hs).astype(dt) if data.draw(st.booleans()) else None
    dc_n = rng.standard_normal(hs).astype(dt) if isinstance(model, rnncore.LSTM) and data.draw(st.booleans()) else None

    def view(a):
        return None if a is None else laid_out(a, layout(), axes)

    y, st_, tape = model.forward(view(x), (view(h0), view(c0)) if isinstance(model, rnncore.LSTM) else view(h0),
                                 lengths=lengths, train=True)
    g = model.backward(tape, view(dy), view(dh_n), view(dc_n))

    # a layout changes nothing: bit-identical to the contiguous arrays
    y_c, st_c, tape_c = model.forward(x, state, lengths=lengths, train=True)
    g_c = model.backward(tape_c, dy, dh_n, dc_n)
    np.testing.assert_array_equal(y, y_c)
    for k in g_c:
        np.testing.assert_array_equal(g[k], g_c[k], err_msg=k)

    ref = make(model.cell, np.float64, model.num_layers, model.bidirectional, model.batch_first,
               model.input_size, model.hidden_size, ref=True)
    ref.load_state_dict(model.state_dict())
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    ref_state = (f64(h0), f64(c0)) if isinstance(model, rnncore.LSTM) else f64(h0)
    y_r, st_r, tape_r = ref.forward(f64(x), ref_state, lengths=lengths, train=True)
    g_r = ref.backward(tape_r, f64(dy), f64(dh_n), f64(dc_n))
    tol = dict(rtol=1e-9, atol=1e-11) if dt == np.float64 else dict(rtol=2e-4, atol=1e-4)
    np.testing.assert_allclose(y, y_r, **tol)
    for a, b in zip(st_ if isinstance(st_, tuple) else (st_,), st_r if isinstance(st_r, tuple) else (st_r,)):
        np.testing.assert_allclose(a, b, **tol)
    for k in g_r:
        np.testing.assert_allclose(g[k], g_r[k], err_msg=k, rtol=tol["rtol"],
                                   atol=tol["atol"] * max(1.0, float(np.abs(g_r[k]).max(initial=0))))


BAD_DTYPES = ["float16", "int8", "int32", "int64", "uint8", "bool", "object", "complex64", "complex128", "U3",
              "datetime64[s]", [("a", "f4")], "swapped", "other"]


def bad_dtype(model, spec):
    if spec == "swapped":
        return model.dtype.newbyteorder()
    if spec == "other":
        return FLOATS[1 - FLOATS.index(model.dtype)]
    return np.dtype(spec)


def expect_error(call, name, exc=(ValueError, TypeError)):
    """call() raises exc with a message that starts with the argument's name."""
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert re.match(rf"({name})\b", msg), f"message does not name {name}: {msg!r}"
    return info


def good_call(model, T, N, rng):
    """Valid arguments for one training forward and its backward, as a dict of name -> value."""
    dt = model.dtype
    hs = state_shape(model, N)
    return {
        "x": rng.standard_normal(user(model, (T, N, model.input_size))).astype(dt),
        "h0": rng.standard_normal(hs).astype(dt),
        "c0": rng.standard_normal(hs).astype(dt),
        "lengths": rng.integers(0, T + 1, size=N),
        "dy": rng.standard_normal(user(model, (T, N, model.dirs * model.hidden_size))).astype(dt),
        "dh_n": rng.standard_normal(hs).astype(dt),
        "dc_n": rng.standard_normal(hs).astype(dt),
    }


def call_with(model, a):
    is_lstm = isinstance(model, rnncore.LSTM)
    state = (a["h0"], a["c0"]) if is_lstm else a["h0"]
    y, _, tape = model.forward(a["x"], state, lengths=a["lengths"], train=a.get("train", True))
    return model.backward(tape, a["dy"], a["dh_n"], a["dc_n"] if is_lstm else None)


ARRAY_ARGS = ["x", "h0", "c0", "dy", "dh_n", "dc_n"]


@given(configs(), st.sampled_from(ARRAY_ARGS), st.sampled_from(BAD_DTYPES), st.integers(0, 2**32 - 1))
@FUZZ
def test_a_wrong_dtype_is_a_type_error_naming_the_argument(cfg, arg, spec, seed):
    model, T, N = cfg
    assume(isinstance(model, rnncore.LSTM) or arg not in ("c0", "dc_n"))
    a = good_call(model, T, N, np.random.default_rng(seed))
    a[arg] = np.zeros(a[arg].shape, bad_dtype(model, spec))
    info = expect_error(lambda: call_with(model, a), arg, TypeError)
    assert str(a[arg].dtype) in str(info.value)


@st.composite
def wrong_shapes(draw, shape, axes):
    """shape with one of `axes` resized, or an axis more or fewer."""
    how = draw(st.sampled_from(["grow", "shrink", "drop_axis", "add_axis"]))
    s = list(shape)
    if how == "drop_axis":
        del s[draw(st.integers(0, len(s) - 1))]
    elif how == "add_axis":
        s.insert(draw(st.integers(0, len(s))), draw(st.integers(1, 2)))
    else:
        i = draw(st.sampled_from(axes))
        s[i] = max(0, s[i] + draw(st.integers(1, 2)) * (1 if how == "grow" else -1))
    assume(tuple(s) != tuple(shape))
    return tuple(s)


@given(configs(), st.sampled_from(ARRAY_ARGS), st.data())
@FUZZ
def test_a_wrong_shape_is_a_value_error_naming_the_argument(cfg, arg, data):
    model, T, N = cfg
    assume(isinstance(model, rnncore.LSTM) or arg not in ("c0", "dc_n"))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    a = good_call(model, T, N, rng)
    # another T or N makes a valid x, with which h0 and lengths then disagree: x varies in D only
    shape = data.draw(wrong_shapes(a[arg].shape, [2] if arg == "x" else [0, 1, 2]))
    a[arg] = rng.standard_normal(shape).astype(model.dtype)
    expect_error(lambda: call_with(model, a), arg, ValueError)


BAD_LENGTHS = {
    "float": lambda T, N: np.full(N, 1.0),
    "bool": lambda T, N: [True] * max(N, 1),
    "str": lambda T, N: "1" * N,
    "none_inside": lambda T, N: [None] * max(N, 1),
    "complex": lambda T, N: np.ones(N, complex),
    "negative": lambda T, N: [-1] * max(N, 1),
    "beyond_T": lambda T, N: [T + 1] * max(N, 1),
    "beyond_int64": lambda T, N: [2**64] * max(N, 1),
    "uint64_max": lambda T, N: np.full(max(N, 1), 2**64 - 1, np.uint64),
    "too_many": lambda T, N: [1] * (N + 1),
    "too_few": lambda T, N: [1] * (N - 1) if N else [[1]],
    "scalar": lambda T, N: 1,
    "nested": lambda T, N: [[1]] * max(N, 1),
    "ragged": lambda T, N: [[1], [1, 2]],
    "dict": lambda T, N: {0: 1},
    "object": lambda T, N: object(),
}


@given(configs(), st.sampled_from(sorted(BAD_LENGTHS)), st.integers(0, 2**32 - 1))
@FUZZ
def test_bad_lengths_name_lengths(cfg, which, seed):
    model, T, N = cfg
    a = good_call(model, T, N, np.random.default_rng(seed))
    a["lengths"] = BAD_LENGTHS[which](T, N)
    if which == "negative" and N == 0:
        a["lengths"] = []  # nothing to be negative: valid
        call_with(model, a)
        return
    expect_error(lambda: call_with(model, a), "lengths")


ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=3),
    st.lists(st.integers(-3, 3), max_size=4), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.tuples(st.none(), st.none()),
    st.builds(lambda shape, dt: np.zeros(shape, dt),
              st.lists(st.integers(0, 3), max_size=4).map(tuple),
              st.sampled_from(["f4", "f8", "i8", "?", "O", "c8", "f2"])),
)


@given(configs(), st.sampled_from(["x", "state", "lengths", "train", "tape", "dy", "dh_n", "dc_n"]), ANYTHING,
       st.integers(0, 2**32 - 1))
@FUZZ
def test_anything_in_any_argument(cfg, arg, value, seed):
    """Arbitrary objects: a valid result or an error naming the argument; never anything else."""
    model, T, N = cfg
    is_lstm = isinstance(model, rnncore.LSTM)
    a = good_call(model, T, N, np.random.default_rng(seed))
    state = (a["h0"], a["c0"]) if is_lstm else a["h0"]
    fwd = dict(x=a["x"], state=state, lengths=a["lengths"], train=True)
    # x sets T and N, so a valid x of another size is reported by what then disagrees with it
    names = {"state": "state|h0|c0", "x": "x|h0|c0|state|lengths"}.get(arg, arg)
    if arg in fwd:
        fwd[arg] = value
        try:
            y, _, tape = model.forward(**fwd)
        except (ValueError, TypeError) as e:
            assert re.match(rf"({names})\b", str(e)), str(e)
            return
        if tape is not None:
            model.backward(tape)
        return
    _, _, tape = model.forward(**fwd)
    bwd = dict(tape=tape, dy=a["dy"], dh_n=a["dh_n"], dc_n=a["dc_n"] if is_lstm else None)
    bwd[arg] = value
    try:
        model.backward(**bwd)
    except (ValueError, TypeError) as e:
        assert re.match(rf"({names})\b", str(e)), str(e)
