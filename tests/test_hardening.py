"""Hardening: sizes and memory, NaN and Inf, subnormals, threads, determinism, tapes.

Cases that could take the interpreter down (out-of-range sizes, failed allocations, direct
calls into the core, many threads) run in a subprocess, so a crash fails one test, not the run.
"""

import contextlib
import ctypes
import json
import os
import pathlib
import platform
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import rnncore

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_after"]
DTYPES = [np.float32, np.float64]
# tools/sanitize.sh: quarantined frees and instrumented code make time and resident memory meaningless
measurable = pytest.mark.skipif(os.environ.get("RNNCORE_SANITIZED") == "1", reason="under sanitizers")


def make(kind, dtype=np.float64, D=4, H=5, ref=False, **kw):
    ns = rnncore.reference if ref else rnncore
    kw = dict(dtype=dtype, seed=kw.pop("seed", 0), **kw)
    if kind.startswith("rnn"):
        return ns.RNN(D, H, nonlinearity=kind[4:], **kw)
    if kind == "lstm":
        return ns.LSTM(D, H, **kw)
    return ns.GRU(D, H, reset_after=kind == "gru_after", **kw)


def reference_of(model):
    ref = make(model.cell, np.float64, model.input_size, model.hidden_size, ref=True,
               num_layers=model.num_layers, bidirectional=model.bidirectional, batch_first=model.batch_first)
    ref.load_state_dict(model.state_dict())
    return ref


def states(st):
    return st if isinstance(st, tuple) else (st,)


def run_isolated(code, timeout=240, env=None):
    """Run code in a fresh interpreter; its exit status (a crash included) decides. Returns stdout."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    if os.environ.get("RNNCORE_SANITIZED") == "1":
        os.write(2, r.stderr.encode())  # where tools/sanitize.sh looks for reports
    assert r.returncode == 0, f"exit status {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    return r.stdout


def fwd_bwd(model, x, state=None, lengths=None, dy=None):
    y, st, tape = model.forward(x, state, lengths=lengths, train=True)
    g = model.backward(tape, np.ones_like(y) if dy is None else dy)
    return y, st, g


# ---- sizes and memory --------------------------------------------------------------------

def test_sizes_that_overflow_are_refused_before_allocating():
    run_isolated("""
        import numpy as np, rnncore
        def refused(f, *words):
            try:
                f()
            except ValueError as e:
                assert all(w in str(e) for w in words), str(e)
            else:
                raise AssertionError("no ValueError")
        zero = np.zeros(4, np.float32)
        m = rnncore.LSTM(4, 3)
        # stride-0 views: no memory behind them, sizes the core's 32-bit counts cannot hold
        refused(lambda: m(np.lib.stride_tricks.as_strided(zero, (2**31, 1, 4), (0, 0, 4))), "x:", "T=2147483648")
        refused(lambda: m(np.lib.stride_tricks.as_strided(zero, (3, 2**30, 4), (0, 0, 4))), "x:", "N=1073741824")
        refused(lambda: rnncore.GRU(2**31, 3), "input_size:", "2147483648")
        refused(lambda: rnncore.LSTM(3, 2**29), "hidden_size:", "536870912")
        refused(lambda: rnncore.RNN(3, 2**28, num_layers=2**10), "num_layers:")
        print("ok")
    """)


def _memory_limit_bytes():
    info = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    kb = lambda k: int(info[k].split()[0]) * 1024  # noqa: E731
    return kb("MemTotal") + kb("SwapTotal")


@pytest.mark.skipif(not os.path.exists("/proc/sys/vm/overcommit_memory")
                    or open("/proc/sys/vm/overcommit_memory").read().strip() == "1",
                    reason="needs Linux with an overcommit policy that refuses impossible allocations")
def test_allocations_that_cannot_be_had_raise_memory_error():
    """A huge model, and a call whose workspace cannot be had (x itself is small): MemoryError,
    and the process carries on."""
    limit = _memory_limit_bytes()
    H = 1024
    N = 4  # below 8 rows inference keeps every step's input projection (from 8 on, one step of it)
    T = int(1.5 * limit / (16 * H * N)) + 1  # the LSTM float32 workspace, 16 H bytes a row, is 1.5x memory
    run_isolated(f"""
        import numpy as np, rnncore
        for make in (lambda: rnncore.LSTM(4, 2**20), lambda: rnncore.GRU(4, 4, num_layers=10**10)):
            try:
                make()
            except MemoryError:
                pass
            else:
                raise AssertionError("no MemoryError")
        m = rnncore.LSTM(1, {H}, seed=0)
        x = np.zeros(({T}, {N}, 1), np.float32)
        for train in (False, True):
            try:
                m.forward(x, train=train)
            except MemoryError:
                pass
            else:
                raise AssertionError("no MemoryError")
        y, _ = m(np.ones((3, 2, 1), np.float32))
        assert np.isfinite(y).all()
        print("ok")
    """)


@measurable
def test_ten_thousand_calls_leave_memory_flat():
    out = run_isolated("""
        import os, numpy as np, rnncore
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        rng = np.random.default_rng(0)
        models = [rnncore.LSTM(4, 5, num_layers=2, bidirectional=True, seed=0),
                  rnncore.GRU(4, 5, reset_after=True, seed=0),
                  rnncore.GRU(4, 5, num_layers=2, dropout=0.5, seed=0),
                  rnncore.RNN(4, 5, nonlinearity="relu", dtype=np.float64, seed=0)]
        x = rng.standard_normal((4, 3, 4))
        lens = np.array([4, 0, 2])
        def call(i):
            m = models[i % len(models)]
            y, st, tape = m.forward(x.astype(m.dtype), lengths=lens if i % 2 else None, train=True)
            m.backward(tape, np.ones_like(y))
        for i in range(1000):
            call(i)
        before = rss()
        for i in range(10000):
            call(i)
        grew = rss() - before
        print(grew)
        assert grew < 512 * 1024, f"resident memory grew by {grew} bytes over 10,000 calls"
    """)
    assert int(out.split()[-1]) < 512 * 1024


@measurable
def test_a_discarded_tape_frees_its_buffers():
    """Buffers above glibc's mmap threshold are unmapped on free, so resident memory shows it. A
    dropped tape's large blocks are first kept for the next calls (they take them instead of
    fresh pages); release_memory gives them back to the system."""
    run_isolated("""
        import os, gc, numpy as np, rnncore
        from rnncore import _core
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        m = rnncore.LSTM(64, 128, seed=0)
        x = np.random.default_rng(0).standard_normal((200, 64, 64)).astype(np.float32)
        m.forward(x, train=True)
        rnncore.release_memory()
        assert _core.workspace_kept() == 0
        base = rss()
        for _ in range(5):
            y, st, tape = m.forward(x, train=True)
            held = rss()
            assert held - base > 0.9 * tape.nbytes, (held - base, tape.nbytes)
            nbytes = tape.nbytes
            del tape
            gc.collect()
            assert _core.workspace_kept() > 0.9 * nbytes, (_core.workspace_kept(), nbytes)
            kept = rnncore.release_memory()
            assert kept > 0.9 * nbytes and _core.workspace_kept() == 0, (kept, nbytes)
            assert held - rss() > 0.9 * nbytes, (held - rss(), nbytes)
            del y, st
        rnncore.release_memory()                      # y's block too: outputs of 1 MiB and more are kept as well
        assert rss() - base < 4 * 2**20, rss() - base
        print("ok")
    """, env={"MALLOC_MMAP_THRESHOLD_": "131072"})


@measurable
def test_kept_workspace_is_bounded_reused_and_given_back_when_unused():
    """Freed workspace blocks of 1 MiB and more are kept for later calls: at most 16 of them and
    256 MiB in all; the next call of the same size takes them instead of fresh pages (resident
    memory stays flat); a block left unused for a second is given back at the next call."""
    run_isolated("""
        import os, time, numpy as np, rnncore
        from rnncore import _core
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        rng = np.random.default_rng(0)
        m = rnncore.LSTM(64, 128, seed=0)
        for T in (50, 400, 100, 800, 25, 200):       # blocks of many sizes, up to hundreds of MiB
            x = rng.standard_normal((T, 64, 64)).astype(np.float32)
            y, _, tape = m.forward(x, train=True)
            m.backward(tape, y)
            del tape
            assert 0 < _core.workspace_kept() <= 256 * 2**20, _core.workspace_kept()
        x = rng.standard_normal((200, 64, 64)).astype(np.float32)
        def step():
            y, _, tape = m.forward(x, train=True)
            m.backward(tape, y)
        step()
        before = rss()
        for _ in range(10):
            step()
        assert rss() - before < 2 * 2**20, rss() - before
        kept = _core.workspace_kept()
        assert kept > 0
        time.sleep(1.2)
        m(np.ones((2, 1, 64), np.float32))            # a small call: it gives the old blocks back
        assert _core.workspace_kept() == 0, (_core.workspace_kept(), kept)
        print("ok")
    """, env={"MALLOC_MMAP_THRESHOLD_": "131072"})


def test_large_outputs_take_kept_blocks_and_give_them_back():
    """Output arrays and gradients of 1 MiB and more take their memory from the kept workspace
    blocks and give it back when NumPy frees them, so that the next call's outputs reuse it; they
    are ordinary, writeable, C-contiguous arrays that pickle and outlive their model."""
    run_isolated("""
        import gc, pickle, numpy as np, rnncore
        from rnncore import _core
        m = rnncore.LSTM(16, 128, seed=0)
        x = np.random.default_rng(0).standard_normal((50, 64, 16)).astype(np.float32)
        rnncore.release_memory()
        y, _ = m(x)                                   # (50, 64, 128) float32: 1.6 MiB
        assert y.nbytes >= 2**20 and y.flags.c_contiguous and y.flags.writeable and y.flags.aligned
        want = y.copy()
        where = y.ctypes.data
        kept = _core.workspace_kept()
        del y
        gc.collect()
        assert _core.workspace_kept() >= want.nbytes, (_core.workspace_kept(), kept, want.nbytes)
        y, _ = m(x)
        assert y.ctypes.data == where                 # the same block again
        np.testing.assert_array_equal(y, want)
        y[0, 0, 0] = 5.0                              # writeable, and its own memory
        assert pickle.loads(pickle.dumps(y))[0, 0, 0] == 5.0
        m2 = rnncore.LSTM(512, 128, seed=0)           # W_ih's gradient: (512, 512) float32, 1 MiB
        x2 = np.ones((3, 2, 512), np.float32)
        _, _, tape = m2.forward(x2, train=True)
        g = m2.backward(tape, np.ones((3, 2, 128), np.float32))["W_ih_l0"]
        assert g.nbytes >= 2**20 and np.isfinite(g).all()
        del m, m2, tape
        gc.collect()
        assert y[0, 0, 0] == 5.0 and np.array_equal(y[1:], want[1:]) and np.isfinite(g).all()   # outlive the models
        print("ok")
    """)


def tape_formula(model, T, N, lengths):
    """The bytes the driver keeps (driver.h, Tape): the layer inputs, then per layer and direction
    h of every step (plus h0), c likewise for LSTM, and the gate cache for LSTM and GRU. Slot s of
    the cache has a row for each row that ran step s - 1 (all N for s = 0): rows that ran every
    step fill their last slot, the others leave one zero row behind."""
    H, dirs, L = model.hidden_size, model.dirs, model.num_layers
    lengths = np.full(N, T) if lengths is None else np.asarray(lengths)
    steps = int(lengths.sum())  # valid (row, step) pairs
    cache_rows = N + steps - int(np.sum(lengths == T))
    cache = {"rnn_tanh": 0, "rnn_relu": 0, "lstm": 4 * H, "gru": 4 * H, "gru_after": 4 * H}[model.cell]
    per_dir = (N + steps) * H * (2 if model.cell == "lstm" else 1) + cache_rows * cache
    inputs = T * N * model.input_size + (L - 1) * T * N * dirs * H
    masks = (L - 1) * T * N * dirs * H if model.dropout > 0 and L > 1 else 0
    return (inputs + L * dirs * per_dir + masks) * model.dtype.itemsize


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_tape_nbytes_is_the_formula(kind, dtype):
    rng = np.random.default_rng(0)
    T, N = 6, 5
    for layers, bi, dropout in [(1, False, 0.0), (2, True, 0.0), (3, False, 0.3)]:
        m = make(kind, dtype, D=7, H=3, num_layers=layers, bidirectional=bi, dropout=dropout)
        for lengths in (None, np.array([6, 0, 3, 1, 6])):
            y, st, tape = m.forward(rng.standard_normal((T, N, 7)).astype(dtype), lengths=lengths, train=True)
            assert tape.nbytes == tape_formula(m, T, N, lengths), (layers, bi, lengths)


# ---- NaN and Inf ---------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's inf - inf
@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["x", "h0"])
def test_non_finite_input_stays_in_its_row_and_matches_the_reference(kind, dtype, bad, where):
    rng = np.random.default_rng(1)
    T, N = 5, 4
    m = make(kind, dtype, num_layers=2, bidirectional=True)
    x = rng.standard_normal((T, N, 4))
    h0 = rng.standard_normal((4, N, 5))
    state = (h0, h0) if kind == "lstm" else h0  # LSTM: the same values in c0
    cast = lambda s: tuple(a.astype(dtype) for a in s) if isinstance(s, tuple) else s.astype(dtype)  # noqa: E731
    dy = rng.standard_normal((T, N, 10))
    clean_y, clean_st, clean_g = fwd_bwd(m, x.astype(dtype), cast(state), dy=dy.astype(dtype))
    xb, h0b = x.copy(), h0.copy()
    if where == "x":
        xb[2, 1, 0] = bad
    else:
        h0b[1, 1, 3] = bad
    state_b = (h0b, h0b) if kind == "lstm" else h0b
    y, st, g = fwd_bwd(m, xb.astype(dtype), cast(state_b), dy=dy.astype(dtype))
    others = [0, 2, 3]
    np.testing.assert_array_equal(y[:, others], clean_y[:, others])
    for a, b in zip(states(st), states(clean_st)):
        np.testing.assert_array_equal(a[:, others], b[:, others])
    for k in ("x", "h0", "c0"):
        if k in g:
            np.testing.assert_array_equal(g[k][:, others], clean_g[k][:, others], err_msg=k)
    if bad != bad and where == "x":  # NaN reaches everything downstream of it in its row
        assert np.isnan(y[:, 1]).all()
    y_r, st_r = reference_of(m)(xb, state_b)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(y, y_r, **tol)  # NaN where the reference has NaN, Inf where it has Inf
    for a, b in zip(states(st), states(st_r)):
        np.testing.assert_allclose(a, b, **tol)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ["W_ih_l0", "W_hh_l0", "b_l1"])
def test_non_finite_weight_propagates_like_the_reference(kind, dtype, bad, name):
    rng = np.random.default_rng(2)
    m = make(kind, dtype, num_layers=2)
    p = m.parameters()[name]
    p.flat[p.size // 2] = bad
    x = rng.standard_normal((5, 3, 4))
    h0 = rng.standard_normal((2, 3, 5))
    y, st = m(x.astype(dtype), (h0.astype(dtype),) * 2 if kind == "lstm" else h0.astype(dtype))
    y_r, st_r = reference_of(m)(x, (h0, h0) if kind == "lstm" else h0)
    if bad != bad:
        assert np.isnan(y).any()
    np.testing.assert_allclose(y, y_r, rtol=2e-4, atol=2e-5)
    for a, b in zip(states(st), states(st_r)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("kind", CELLS)
def test_non_finite_padding_changes_nothing(kind):
    rng = np.random.default_rng(3)
    T, N = 6, 4
    lengths = np.array([6, 2, 0, 4])
    m = make(kind, np.float32, num_layers=2, bidirectional=True)
    x = rng.standard_normal((T, N, 4)).astype(np.float32)
    dy = rng.standard_normal((T, N, 10)).astype(np.float32)
    xb, dyb = x.copy(), dy.copy()
    for n, length in enumerate(lengths):
        xb[length:, n] = [np.nan, np.inf, -np.inf, np.nan]
        dyb[length:, n] = np.nan
    y, st, g = fwd_bwd(m, x, lengths=lengths, dy=dy)
    yb, stb, gb = fwd_bwd(m, xb, lengths=lengths, dy=dyb)
    np.testing.assert_array_equal(y, yb)
    for a, b in zip(states(st), states(stb)):
        np.testing.assert_array_equal(a, b)
    for k in g:
        if k != "x":
            np.testing.assert_array_equal(g[k], gb[k], err_msg=k)
    for n, length in enumerate(lengths):
        np.testing.assert_array_equal(gb["x"][:length, n], g["x"][:length, n])
        assert (gb["x"][length:, n] == 0).all()


def test_non_finite_everywhere_never_crashes_or_hangs():
    run_isolated("""
        import itertools, numpy as np, rnncore
        rng = np.random.default_rng(0)
        kinds = [(rnncore.RNN, dict(nonlinearity="tanh")), (rnncore.RNN, dict(nonlinearity="relu")),
                 (rnncore.LSTM, {}), (rnncore.GRU, {}), (rnncore.GRU, dict(reset_after=True))]
        for (cls, kw), dt, bad, where in itertools.product(kinds, (np.float32, np.float64),
                                                           (np.nan, np.inf, -np.inf),
                                                           ("x", "h0", "W_ih", "W_hh", "b", "dy", "all")):
            m = cls(4, 5, num_layers=2, bidirectional=True, dtype=dt, seed=0, **kw)
            x = rng.standard_normal((6, 9, 4)).astype(dt)
            h0 = rng.standard_normal((4, 9, 5)).astype(dt)
            dy = rng.standard_normal((6, 9, 10)).astype(dt)
            mask = lambda a: rng.random(a.shape) < (0.5 if where == "all" else 0.05)
            for name, a in (("x", x), ("h0", h0), ("dy", dy)):
                if where in (name, "all"):
                    a[mask(a)] = bad
            for name, p in m.parameters().items():
                if where == "all" or name.startswith(where + "_l"):
                    p[mask(p)] = bad
            state = (h0, h0.copy()) if cls is rnncore.LSTM else h0
            y, st, tape = m.forward(x, state, lengths=rng.integers(0, 7, 9), train=True)
            m.backward(tape, dy, *(st if isinstance(st, tuple) else (st,)))
        print("ok")
    """, timeout=120)


# ---- subnormals ----------------------------------------------------------------------------

def _interleaved_ratios(base, others, rounds=9):
    """Per round, one call of ``base`` and of each of ``others`` back to back (their order rotating),
    so that each ratio compares two times taken at the same moment, under the same load; the
    median over the rounds, per function in ``others``."""
    calls = [base] + list(others)
    ratios = [[] for _ in others]
    for r in range(rounds):
        took = [0.0] * len(calls)
        for j in range(len(calls)):
            i = (j + r) % len(calls)
            t = time.perf_counter()
            calls[i]()
            took[i] = time.perf_counter() - t
        for k in range(len(others)):
            ratios[k].append(took[k + 1] / took[0])
    return [float(np.median(rs)) for rs in ratios]


def _no_subnormals(a):
    tiny = np.finfo(a.dtype).tiny
    return bool(np.all((a == 0) | ~(np.abs(a) < tiny)))


@measurable
@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_subnormals_do_not_slow_the_core_down(kind, dtype):
    """Without flush-to-zero these calls take 8-60x as long (the recurrence's operands subnormal, or
    a state decaying through the subnormal range); with it, about as long as normal numbers.
    Timed interleaved with the normal call; and, without timing, no subnormal value comes out of
    the time loop (outputs, final states, the initial state's gradient)."""
    rng = np.random.default_rng(4)
    tiny = np.finfo(dtype).tiny
    T, N, D, H = 150, 8, 32, 48
    x = rng.standard_normal((T, N, D)).astype(dtype)
    normal = make(kind, dtype, D, H)
    subnormal = make(kind, dtype, D, H)
    for name, p in subnormal.parameters().items():
        if name.startswith(("W_hh", "b")):
            p *= tiny / 4
    fading = make(kind, dtype, D, H)
    for name, p in fading.parameters().items():
        if name.startswith("b"):
            p[:] = 0
        if name.startswith("W_hh"):
            p *= 0.05
    x_fading = np.zeros_like(x)
    x_fading[0] = x[0]
    h0 = np.full((1, N, H), tiny / 4, dtype)
    sub_state = (h0, h0) if kind == "lstm" else h0
    for y, st, g in (fwd_bwd(subnormal, x, sub_state), fwd_bwd(fading, x_fading)):
        for a in (y, *states(st), g["h0"]):
            assert _no_subnormals(a)
    before = rnncore.get_num_threads()
    rnncore.set_num_threads(1)
    try:
        fwd_bwd(normal, x)                                   # warm up
        sub, fade = _interleaved_ratios(lambda: fwd_bwd(normal, x),
                                        [lambda: fwd_bwd(subnormal, x, sub_state), lambda: fwd_bwd(fading, x_fading)])
    finally:
        rnncore.set_num_threads(before)
    assert sub < 3 and fade < 3, f"median time over normal: subnormal {sub:.2f}x, fading {fade:.2f}x"


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_subnormal_results_still_match_the_reference_and_do_not_depend_on_threads(kind, dtype):
    rng = np.random.default_rng(5)
    tiny = np.finfo(dtype).tiny
    m = make(kind, dtype, num_layers=2, bidirectional=True)
    for name, p in m.parameters().items():
        if name.startswith("W_hh"):
            p *= tiny * 64  # products of the recurrence land in the subnormal range
    x = (rng.standard_normal((8, 40, 4)) * 1e-2).astype(dtype)
    lens = rng.integers(0, 9, 40)
    h0 = np.full((4, 40, 5), tiny / 3, dtype)
    state = (h0, h0) if kind == "lstm" else h0
    dy = (rng.standard_normal((8, 40, 10)) * tiny * 8).astype(dtype)
    before = rnncore.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            rnncore.set_num_threads(n)
            results.append(fwd_bwd(m, x, state, lens, dy))
    finally:
        rnncore.set_num_threads(before)
    for y, st, g in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        for k in g:
            np.testing.assert_array_equal(g[k], results[0][2][k], err_msg=k)
    ref = reference_of(m)
    y_r, _, tape_r = ref.forward(x.astype(np.float64), tuple(a.astype(np.float64) for a in state)
                                 if kind == "lstm" else h0.astype(np.float64), lengths=lens, train=True)
    g_r = ref.backward(tape_r, dy.astype(np.float64))
    y, _, g = results[0]
    tol = dict(rtol=1e-10, atol=1e-300) if dtype == np.float64 else dict(rtol=2e-4, atol=1e-30)
    np.testing.assert_allclose(y, y_r, **tol)
    for k in g_r:
        np.testing.assert_allclose(g[k], g_r[k], err_msg=k, rtol=tol["rtol"],
                                   atol=max(tol["atol"], 1e-4 * float(np.abs(g_r[k]).max(initial=0))))


def _numpy_flushes():
    """Whether this thread computes with flush-to-zero (NumPy honours the thread's MXCSR)."""
    return np.float32(1e-30) * np.float32(1e-10) == 0


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="MXCSR is x86")
def test_the_callers_mxcsr_is_restored():
    """Flush-to-zero holds inside the core only: the caller's mode comes back after each call,
    whether it had FTZ/DAZ off (the default) or on."""
    libm = ctypes.CDLL("libm.so.6")
    env = (ctypes.c_char * 32)()  # glibc x86-64 fenv_t: x87 environment, then MXCSR at byte 28
    libm.fegetenv(env)
    saved = bytes(env)
    m = make("lstm", np.float32, num_layers=2, bidirectional=True)
    x = np.random.default_rng(6).standard_normal((5, 20, 4)).astype(np.float32)
    assert not _numpy_flushes()
    fwd_bwd(m, x)
    assert not _numpy_flushes()
    mxcsr = int.from_bytes(saved[28:32], "little") | 0x8040
    ctypes.memmove(ctypes.addressof(env) + 28, mxcsr.to_bytes(4, "little"), 4)
    libm.fesetenv(env)
    try:
        assert _numpy_flushes()
        fwd_bwd(m, x)
        assert _numpy_flushes()
    finally:
        ctypes.memmove(env, saved, 32)
        libm.fesetenv(env)
    assert not _numpy_flushes()


# ---- threads -------------------------------------------------------------------------------

class _CoreCall(threading.Thread):
    """A thread that sets ``entered``, makes one call into the core, then sets ``done``: an event
    the call cannot set itself, so while ``done`` is clear the thread has not left the call."""

    def __init__(self, call):
        super().__init__(daemon=True)
        self.call, self.error = call, None
        self.entered, self.done = threading.Event(), threading.Event()

    def run(self):
        self.entered.set()
        try:
            self.call()
        except BaseException as e:  # reported by the test, in its own thread
            self.error = e
        finally:
            self.done.set()


@contextlib.contextmanager
def _gil_switches_only_when_released():
    """A switch interval far beyond the test: a thread holding the GIL keeps it until it blocks, ends,
    or releases it in C. Then the main thread, woken by a worker's ``entered``, gets the GIL back only
    when the worker gives it up: inside the core call if the core releases it, else when it has ended.
    What the main thread sees then proves the release without measuring time."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _core_calls(kind, scale):
    """A forward or a backward straight into the core (no NumPy work around it that might release
    the GIL itself), lasting about ``scale`` times a few ms; arguments prepared here."""
    m = make("lstm", np.float32, D=32, H=64)
    x = np.random.default_rng(7).standard_normal((100 * scale, 32, 32)).astype(np.float32)
    weights, h0 = m._weights(), np.zeros((1, 32, 64), np.float32)
    if kind == "forward":
        return lambda: rnncore._core.forward(2, 1, 1, weights, x, h0, h0, None, None, False)
    y, _, tape = m.forward(x, train=True)
    dy = np.ones_like(y)
    return lambda: rnncore._core.backward(tape.engine_tape, tape.weights, None, dy, None, None)


def _seen_inside(workers):
    """Start each worker in turn; True when the main thread, holding the GIL, sees every one of them
    entered and not done (all of them in their core calls at once) and counts meanwhile."""
    seen = False
    with _gil_switches_only_when_released():
        for w in workers:
            w.start()        # blocks until the worker runs; the worker then keeps the GIL until it releases it
            w.entered.wait()
        if all(not w.done.is_set() for w in workers):
            progress = 0
            while progress < 100_000:   # Python runs here while every worker is inside the core
                progress += 1
            seen = progress == 100_000 and not any(w.done.is_set() for w in workers)
        for w in workers:
            w.done.wait()    # blocking releases the GIL: the workers finish
    for w in workers:
        w.join()
        if w.error is not None:
            raise w.error
    return seen


@pytest.mark.parametrize("kind", ["forward", "backward"])
def test_the_gil_is_released_during_the_work(kind):
    """Another thread runs Python while one is inside a core call: proved by the order of events, not
    by time. With the GIL held, the main thread could not run before the worker had set ``done``. A try
    can also miss when this thread is not scheduled during the whole call (heavy load): then a longer
    call; a core that holds the GIL fails every try."""
    for i in range(6):
        if _seen_inside([_CoreCall(_core_calls(kind, 2 ** i))]):
            return
    raise AssertionError(f"the main thread never ran while a {kind} call was in the core")


def test_two_threads_are_inside_the_core_at_once():
    """Two threads' calls in the core at the same moment, seen by a third holding the GIL."""
    for i in range(6):
        if _seen_inside([_CoreCall(_core_calls("forward", 2 ** (i + 1))), _CoreCall(_core_calls("backward", 2 ** i))]):
            return
    raise AssertionError("never saw two threads inside the core at once")


def test_concurrent_calls_and_set_num_threads_give_the_serial_results():
    run_isolated("""
        import threading, numpy as np, rnncore
        rng = np.random.default_rng(9)
        models = [rnncore.LSTM(6, 7, num_layers=2, bidirectional=True, seed=0),
                  rnncore.GRU(6, 7, dtype=np.float64, seed=1),
                  rnncore.RNN(6, 7, nonlinearity="relu", num_layers=2, seed=2),
                  rnncore.GRU(6, 7, reset_after=True, bidirectional=True, seed=3)]
        jobs = []
        for i in range(16):
            m = models[i % len(models)]
            N = int(rng.integers(1, 48))
            x = rng.standard_normal((int(rng.integers(1, 12)), N, 6)).astype(m.dtype)
            lens = rng.integers(0, x.shape[0] + 1, N) if i % 2 else None
            jobs.append((m, x, lens))
        def run(job):
            m, x, lens = job
            y, st, tape = m.forward(x, lengths=lens, train=True)
            g = m.backward(tape, np.cos(y))
            return [y] + [g[k] for k in sorted(g)]
        rnncore.set_num_threads(2)
        serial = [run(j) for j in jobs]
        errors, stop = [], threading.Event()
        def worker(seed):
            order = np.random.default_rng(seed).permutation(len(jobs))
            for _ in range(4):
                for i in order:
                    got = run(jobs[i])
                    if not all(np.array_equal(a, b) for a, b in zip(got, serial[i])):
                        errors.append(i)
        def toggler():
            n = 0
            while not stop.is_set():
                rnncore.set_num_threads(1 + n % 3)
                n += 1
        team = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        tog = threading.Thread(target=toggler)
        tog.start()
        for t in team: t.start()
        for t in team: t.join()
        stop.set(); tog.join()
        assert not errors, errors
        print("ok")
    """)


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_same_call_twice_is_bit_identical_and_threads_do_not_matter(kind, dtype):
    rng = np.random.default_rng(10)
    m = make(kind, dtype, D=6, H=9, num_layers=2, bidirectional=True)
    T, N = 7, 100
    x = rng.standard_normal((T, N, 6)).astype(dtype)
    lens = rng.integers(0, T + 1, N)
    dy = rng.standard_normal((T, N, 18)).astype(dtype)
    before = rnncore.get_num_threads()
    out = []
    try:
        for n in (1, 1, 2, 4):
            rnncore.set_num_threads(n)
            out.append(fwd_bwd(m, x, lengths=lens, dy=dy))
    finally:
        rnncore.set_num_threads(before)
    y0, st0, g0 = out[0]
    for y, st, g in out[1:]:
        np.testing.assert_array_equal(y, y0)
        for a, b in zip(states(st), states(st0)):
            np.testing.assert_array_equal(a, b)
        for k in g0:
            np.testing.assert_array_equal(g[k], g0[k], err_msg=k)


_BITS = """
import hashlib, json, numpy as np, rnncore
rng = np.random.default_rng(0)
m = rnncore.LSTM(24, 40, num_layers=2, bidirectional=True, seed=0)
x = rng.standard_normal((30, 17, 24)).astype(np.float32)
y, st, tape = m.forward(x, lengths=rng.integers(0, 31, 17), train=True)
g = m.backward(tape, np.cos(y))
h = hashlib.sha256(y.tobytes())
for k in sorted(g):
    h.update(g[k].tobytes())
info = rnncore.blas_info()
info.pop("threads")
print(json.dumps([h.hexdigest(), info]))
"""


def test_the_same_kernels_give_the_same_bits_in_another_process():
    """The determinism promise holds for the same kernels, as blas_info() reports them (which includes the
    environment variables that choose OpenBLAS's kernels: OPENBLAS_CORETYPE changes the bits). Two fresh
    processes, one with another thread count, report the same and compute the same bits as this one."""
    runs = [json.loads(run_isolated(_BITS, env=env).splitlines()[-1])
            for env in ({}, {"OPENBLAS_NUM_THREADS": "1"})]
    here = rnncore.blas_info()
    here.pop("threads")
    assert runs[0] == runs[1]
    assert runs[0][1] == here
    assert here["env"] == {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}


def test_the_determinism_promise_names_the_blas_kernels():
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### Determinism"):readme.index("### Memory")]
    for words in ("blas_info()", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "same kernels"):
        assert words in section, words


# ---- tapes ---------------------------------------------------------------------------------

def test_foreign_and_stale_tapes_are_refused():
    x = np.random.default_rng(11).standard_normal((3, 2, 4)).astype(np.float32)
    m, twin = make("lstm", np.float32, num_layers=2), make("lstm", np.float32, num_layers=2)
    _, _, tape = m.forward(x, train=True)
    with pytest.raises(ValueError, match="^tape: it was made by another model"):
        twin.backward(tape)
    ref = reference_of(m)
    _, _, ref_tape = ref.forward(x.astype(np.float64), train=True)
    with pytest.raises(ValueError, match="^tape: it was made by another model"):
        m.backward(ref_tape)
    with pytest.raises(TypeError, match="^tape: expected the tape"):
        m.backward(tape.engine_tape)
    g = m.backward(tape)  # replacing a parameter by one of the same shape keeps the tape usable
    m.parameters()["W_hh_l1"] = m.parameters()["W_hh_l1"] * 2
    g2 = m.backward(tape)
    for k in g:
        np.testing.assert_array_equal(g[k], g2[k], err_msg=k)
    m.parameters()["W_hh_l1"] = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"^tape: parameter 'W_hh_l1' changed shape .*\(20, 5\) then"):
        m.backward(tape)
    del m.parameters()["W_hh_l1"]
    with pytest.raises(ValueError, match="^tape: parameter 'W_hh_l1' changed shape"):
        m.backward(tape)


def test_core_fuzz_never_crashes():
    """Straight into the core with inconsistent sizes, dtypes, counts and objects: an exception,
    never a crash (the binding's own checks guard the driver's memory)."""
    out = run_isolated("""
        import collections, numpy as np, rnncore
        core = rnncore._core
        rng = np.random.default_rng(12)
        gates = {0: 1, 1: 1, 2: 4, 3: 3, 4: 3}
        junk = [None, 1, "a", [1], (1,), np.zeros(3, np.float32), np.zeros((2, 2, 2), np.int64)]
        seen = collections.Counter()
        def array(shape, dt):
            return rng.standard_normal(shape).astype(dt)
        def bend(shape):  # usually the right shape, sometimes one axis off by one
            if rng.random() < 0.06:
                i = rng.integers(len(shape)) if shape else 0
                return tuple(max(0, s + (1 if rng.random() < 0.5 else -1)) if j == i else s
                             for j, s in enumerate(shape))
            return shape
        def maybe(v):
            return junk[rng.integers(len(junk))] if rng.random() < 0.03 else v
        for _ in range(4000):
            cell = int(rng.integers(0, 5)) if rng.random() < 0.97 else int(rng.integers(-2, 8))
            layers = int(rng.integers(1, 4)) if rng.random() < 0.97 else int(rng.integers(-1, 1))
            dirs = int(rng.integers(1, 3)) if rng.random() < 0.97 else int(rng.choice([0, 3, -1]))
            T, N, D, H = (int(v) for v in rng.integers([1, 0, 1, 1], [6, 20, 5, 5]))
            dt = "f4" if rng.random() < 0.5 else "f8"
            other = dt if rng.random() < 0.98 else rng.choice(["f2", "i4", "f4", "f8", "c8", "?"])
            G, L, W = gates.get(cell, 1), max(layers, 1) * max(dirs, 1), max(dirs, 1) * H
            weights = [maybe(tuple(array(bend(s), other if rng.random() < 0.1 else dt) for s in
                                   ((G * H, D if k < max(dirs, 1) else W), (G * H, H), (G * H,)))
                             + ((array(bend((H,)), dt) if cell == 4 or rng.random() < 0.1 else None),))
                       for k in range(L + (int(rng.integers(-1, 2)) if rng.random() < 0.03 else 0))]
            x, h0 = maybe(array(bend((T, N, D)), other)), maybe(array(bend((L, N, H)), dt))
            c0 = maybe(array(bend((L, N, H)), dt) if rng.random() < 0.9 else None)
            lens = maybe(rng.integers(-1 if rng.random() < 0.05 else 0, T + 1 + (rng.random() < 0.05),
                                      bend((N,))) if rng.random() < 0.5 else None)
            masks = maybe(array(bend((max(layers - 1, 0), T, N, W)), dt) if rng.random() < 0.3 else None)
            try:
                y, h_n, c_n, tape = core.forward(cell, layers, dirs, weights, x, h0, c0, lens, masks,
                                                 bool(rng.random() < 0.7))
                seen["forward"] += 1
            except (ValueError, TypeError) as e:
                seen[type(e).__name__] += 1
                continue
            if tape is None:
                continue
            dy = maybe(array(bend(y.shape), dt) if rng.random() < 0.8 else None)
            dh = maybe(array(bend(h_n.shape), dt) if rng.random() < 0.5 else None)
            dc = maybe(array(bend(h_n.shape), dt) if rng.random() < 0.5 else None)
            try:
                core.backward(tape, weights if rng.random() < 0.97 else weights[:-1], masks, dy, dh, dc)
                seen["backward"] += 1
            except (ValueError, TypeError) as e:
                seen["backward " + type(e).__name__] += 1
        print(dict(seen))
        assert seen["forward"] > 1000 and seen["backward"] > 500, seen
    """)
    assert "forward" in out
