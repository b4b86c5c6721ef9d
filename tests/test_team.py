"""rnncore's team of threads: the time loop split by hidden-unit slices and row groups, a team that
lives across calls, thread controls (set_num_threads, threadpoolctl), fork and Ctrl-C.

Results must not depend on the thread count, bit for bit, whatever split the driver picks: the
cases below make it pick column slices (H of 32 to 80 units), row groups (N of 16 and more) and
both, with lengths, two layers, both directions and training."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import rnncore

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_after"]


def make(kind, D, H, dtype=np.float32, **kw):
    if kind.startswith("rnn"):
        return rnncore.RNN(D, H, nonlinearity=kind[4:], dtype=dtype, seed=3, **kw)
    if kind == "lstm":
        return rnncore.LSTM(D, H, dtype=dtype, seed=3, **kw)
    return rnncore.GRU(D, H, reset_after=kind == "gru_after", dtype=dtype, seed=3, **kw)


def run_all(model, x, lengths, dy):
    """Every array a call gives: training outputs, states and gradients, and inference outputs."""
    y, state, tape = model.forward(x, lengths=lengths, train=True)
    grads = model.backward(tape, dy)
    yi, _ = model(x, lengths=lengths)
    states = list(state) if isinstance(state, tuple) else [state]
    return [y, yi, *states] + [grads[k] for k in sorted(grads)]


@pytest.fixture
def threads():
    before = rnncore.get_num_threads()
    yield
    rnncore.set_num_threads(before)


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T,N,H,layers,bidir,varlen", [
    (7, 1, 64, 1, False, False),    # one row: unit slices only
    (6, 5, 48, 2, True, True),      # slices of unequal size, lengths, a stack, both directions
    (5, 20, 80, 1, False, True),    # slices and row groups
    (4, 33, 32, 2, False, False),   # many rows, few units
])
def test_every_thread_count_gives_the_same_bits(threads, kind, dtype, T, N, H, layers, bidir, varlen):
    rng = np.random.default_rng(11)
    D = 24
    m = make(kind, D, H, dtype, num_layers=layers, bidirectional=bidir)
    x = rng.standard_normal((T, N, D)).astype(dtype)
    lengths = rng.integers(0, T + 1, N) if varlen else None
    dy = rng.standard_normal((T, N, (2 if bidir else 1) * H)).astype(dtype)
    results = {}
    for n in (1, 2, 3, 4):
        rnncore.set_num_threads(n)
        results[n] = run_all(m, x, lengths, dy)
    for n in (2, 3, 4):
        for a, b in zip(results[1], results[n]):
            assert a.tobytes() == b.tobytes(), f"{n} threads differ from 1"


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_after"])
def test_the_split_loop_matches_the_reference(threads, kind):
    """The column-split loop against the NumPy oracle (float64), with two threads."""
    rnncore.set_num_threads(2)
    rng = np.random.default_rng(5)
    m = make(kind, 16, 64, np.float64, bidirectional=True)
    ref_cls = {"lstm": rnncore.reference.LSTM, "gru": rnncore.reference.GRU, "gru_after": rnncore.reference.GRU}[kind]
    kw = {} if kind == "lstm" else {"reset_after": kind == "gru_after"}
    ref = ref_cls(16, 64, bidirectional=True, dtype=np.float64, **kw)
    ref.load_state_dict(m.state_dict())
    x = rng.standard_normal((9, 3, 16))
    lengths = np.array([9, 4, 0])
    y, st, tape = m.forward(x, lengths=lengths, train=True)
    yr, str_, taper = ref.forward(x, lengths=lengths, train=True)
    np.testing.assert_allclose(y, yr, rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    g, gr = m.backward(tape, dy), ref.backward(taper, dy)
    for k in gr:
        np.testing.assert_allclose(g[k], gr[k], rtol=1e-9, atol=1e-11, err_msg=k)


def test_the_team_lives_across_calls(threads):
    """Calls reuse the same workers: a thousand calls start no new thread."""
    rnncore.set_num_threads(2)
    m = make("lstm", 8, 64)
    x = np.ones((3, 1, 8), np.float32)
    m(x)
    before = rnncore.team_stats()
    for _ in range(1000):
        m(x)
    after = rnncore.team_stats()
    assert after["workers"] == before["workers"]
    assert after["team_calls"] + after["solo_calls"] >= before["team_calls"] + before["solo_calls"] + 1000


def test_set_num_threads_takes_integers_and_refuses_the_rest(threads):
    rnncore.set_num_threads(np.int64(3))
    assert rnncore.get_num_threads() == 3
    rnncore.set_num_threads(np.uint8(1))
    assert rnncore.get_num_threads() == 1
    for bad in (0, -1, rnncore.MAX_THREADS + 1, 2**31, 10**6):
        with pytest.raises(ValueError, match=r"n: expected an integer from 1 to 1024, got"):
            rnncore.set_num_threads(bad)
    for bad in (2.0, "2", None, True, np.float32(2)):
        with pytest.raises(TypeError, match="n: expected an integer"):
            rnncore.set_num_threads(bad)
    assert rnncore.get_num_threads() == 1


def _scipy_openblas32(info):
    return [i for i in info if i["internal_api"] == "openblas"
            and os.path.basename(i["filepath"]).startswith("libscipy_openblas.")]


def test_threadpoolctl_limits_the_team_and_never_threads_rnncores_blas(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not hasattr(threadpoolctl, "register"):
        pytest.skip("threadpoolctl older than 3.4")
    rnncore.set_num_threads(2)
    mine = [i for i in threadpoolctl.threadpool_info() if i["internal_api"] == "rnncore"]
    assert len(mine) == 1 and mine[0]["num_threads"] == 2 and mine[0]["version"] == rnncore.__version__
    m = make("lstm", 16, 64)
    x = np.ones((20, 64, 16), np.float32)
    with threadpoolctl.threadpool_limits(limits=1):
        assert rnncore.get_num_threads() == 1
    assert rnncore.get_num_threads() == 2
    with threadpoolctl.threadpool_limits(limits=8):
        assert rnncore.get_num_threads() == 8
        y, _, tape = m.forward(x, train=True)
        m.backward(tape, y)
        # the limit reached rnncore's OpenBLAS too; a call set it back to one thread
        assert [i["num_threads"] for i in _scipy_openblas32(threadpoolctl.threadpool_info())] in ([1], [])
    assert rnncore.get_num_threads() == 2


def _torch_openmp():
    """Skips unless PyTorch is installed and runs its operations on OpenMP."""
    torch = pytest.importorskip("torch")
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("PyTorch's parallel backend is not OpenMP here")


def _shared_prelude(shared):
    """Script lines that put rnncore's team on PyTorch's OpenMP threads (rnncore.torch does on import)."""
    if not shared:
        return ""
    _torch_openmp()
    return "import rnncore.torch; assert rnncore._core.openmp_attached()"


@pytest.mark.parametrize("kind,kw", [(k, {}) for k in CELLS] + [("lstm", {"layer_norm": True}),
                                                                ("lstm", {"proj_size": 24})])
def test_calls_on_pytorchs_openmp_threads_give_the_same_bits(threads, kind, kw):
    """rnncore.torch runs the team on PyTorch's OpenMP threads: every call then is one parallel
    region of that runtime (counted in openmp_calls), and gives the bits of rnncore's own team."""
    _torch_openmp()
    import rnncore.torch as rt
    rnncore.set_num_threads(2)
    rng = np.random.default_rng(5)
    m = make(kind, 12, 40, num_layers=2, bidirectional=True, **kw)
    x = rng.standard_normal((9, 20, 12)).astype(np.float32)
    lengths = rng.integers(1, 10, 20)
    H_out = kw.get("proj_size", 40)
    dy = rng.standard_normal((9, 20, 2 * H_out)).astype(np.float32)
    try:
        assert rt.share_threads(True)
        # A busy machine can make the team stall and run calls on their caller alone for up to a
        # second (README, Threads): repeat until a call has run on PyTorch's threads; every
        # repetition's bits are compared below.
        runs, deadline = [], time.monotonic() + 10
        while True:
            before = rnncore.team_stats()["openmp_calls"]
            runs.append(run_all(m, x, lengths, dy))
            if rnncore.team_stats()["openmp_calls"] > before:
                break
            assert time.monotonic() < deadline, "no call ran on PyTorch's OpenMP threads in 10 s"
            time.sleep(0.05)
        assert rt.share_threads(False) is False
        before = rnncore.team_stats()["openmp_calls"]
        own = run_all(m, x, lengths, dy)
        assert rnncore.team_stats()["openmp_calls"] == before
    finally:
        rt.share_threads(True)       # as importing rnncore.torch left it
    for shared in runs:
        assert len(shared) == len(own)
        for a, b in zip(shared, own):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_share_threads_takes_a_bool():
    _torch_openmp()
    import rnncore.torch as rt
    for bad in ("yes", 1, None):
        with pytest.raises(TypeError, match="on: expected a bool"):
            rt.share_threads(bad)
    assert rnncore._core.openmp_attached()


def run_isolated(code, timeout=240):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"exit status {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
@pytest.mark.parametrize("shared", [False, True])
def test_a_forked_child_gets_a_team_of_its_own(shared):
    """Also when the parent's calls ran on PyTorch's OpenMP threads: those do not survive fork,
    and the child runs on a team of rnncore's own."""
    out = run_isolated(f"""
        import os, numpy as np, rnncore
        {_shared_prelude(shared)}
        rnncore.set_num_threads(2)
        m = rnncore.LSTM(8, 64, seed=1)
        x = np.random.default_rng(0).standard_normal((30, 2, 8)).astype(np.float32)
        want = m(x)[0]
        pid = os.fork()
        if pid == 0:   # the parent's workers do not exist here
            before = rnncore.team_stats()["openmp_calls"]
            ok = all(np.array_equal(m(x)[0], want) for _ in range(20))
            own = rnncore.team_stats()["openmp_calls"] == before
            os._exit(0 if ok and own and rnncore.team_stats()["team_calls"] > 0 else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert np.array_equal(m(x)[0], want)
        print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_children_forked_while_another_thread_computes_can_compute():
    """Forks taken while a thread of the parent keeps calling rnncore, whose calls take the
    workspace pool's lock at every buffer: the lock may be held at the fork, and every child
    must still compute (a child that hangs is killed by its alarm and counts as bad)."""
    out = run_isolated("""
        import os, signal, threading, numpy as np, rnncore
        rnncore.set_num_threads(1)
        m = rnncore.LSTM(8, 16, seed=1)
        x = np.random.default_rng(0).standard_normal((3, 2, 8)).astype(np.float32)
        want = m(x)[0]
        stop = []
        def busy():
            while not stop:
                y, _, tape = m.forward(x, train=True)
                m.backward(tape, y)
        t = threading.Thread(target=busy)
        t.start()
        bad = 0
        for i in range(120):
            pid = os.fork()
            if pid == 0:
                signal.alarm(20)
                ok = all(np.array_equal(m(x)[0], want) for _ in range(3))
                os._exit(0 if ok else 3)
            _, status = os.waitpid(pid, 0)
            bad += os.waitstatus_to_exitcode(status) != 0
        stop.append(1)
        t.join()
        print(bad)
    """)
    assert out.split()[-1] == "0", out


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("threads_,shared", [(1, False), (2, False), (2, True)])
def test_ctrl_c_stops_a_long_call_soon_and_changes_nothing(threads_, shared):
    """SIGINT during a long forward + backward: KeyboardInterrupt within a fraction of the
    call's length, the model unchanged, and the next call gives the usual bits. The signal is
    sent once the call has started (a thread waits for an event set just before it)."""
    out = run_isolated(f"""
        import os, signal, threading, time, numpy as np, rnncore
        {_shared_prelude(shared)}
        # Python's own Ctrl-C handling, whatever this process inherited (a parent that ignores
        # SIGINT passes that on through exec)
        inherited = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        rnncore.set_num_threads({threads_})
        m = rnncore.LSTM(32, 256, seed=2)
        before = {{k: v.copy() for k, v in m.parameters().items()}}
        rng = np.random.default_rng(0)
        small = rng.standard_normal((50, 4, 32)).astype(np.float32)
        want = m(small)[0]
        x = rng.standard_normal((60000, 1, 32)).astype(np.float32)
        t = time.perf_counter(); m(x[:600]); per_step = (time.perf_counter() - t) / 600
        started, sent = threading.Event(), []
        def interrupt():
            started.wait()
            time.sleep(0.05)
            sent.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=interrupt, daemon=True).start()
        t0 = time.perf_counter()
        try:
            started.set()
            y, _, tape = m.forward(x, train=True)   # seconds of work, uninterrupted
            m.backward(tape, y)
            print("not interrupted after", time.perf_counter() - t0, "s; SIGINT handler inherited", inherited,
                  "signal sent at", sent, rnncore.team_stats())
        except KeyboardInterrupt:
            latency = time.perf_counter() - sent[0]
            print("interrupted", latency, 3 * per_step * len(x))
        assert all(np.array_equal(before[k], v) for k, v in m.parameters().items())
        assert np.array_equal(m(small)[0], want)
    """)
    words = out.split()
    assert words[0] == "interrupted", out
    latency, whole_call = float(words[1]), float(words[2])
    # forward + backward uninterrupted: about 3 forwards (`whole_call`)
    assert latency < max(0.5, 0.25 * whole_call), out
