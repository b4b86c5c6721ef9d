"""The benchmark suite's plumbing (not its timings): scenarios, peers, the agreement check, the
reports and the command line, on tiny shapes with one repetition."""

import importlib.util
import json
import os
import sys
import types

import numpy as np
import pytest

import rnncore
from rnncore.bench import cli, config, peers, report, suite, timing

HAS_TORCH = importlib.util.find_spec("torch") is not None
SHAPE = (4, 3, 5, 6)    # T, N, D, H


def tiny_config(**kw):
    base = dict(shapes=[SHAPE], varlen=[SHAPE], repeats=1, warmup=1, gap_ms=0.0, max_gap_ms=20.0,
                isolation_check=False, gemm_size=64, threads=(1,))
    base.update(kw)
    return config.make_config("quick", **base)


@pytest.fixture(scope="module")
def results():
    return suite.run(tiny_config())


def by_id(results):
    return {sc["id"]: sc for sc in results["scenarios"]}


# ------------------------------------------------------------------------------------------
# the suite on a tiny shape
# ------------------------------------------------------------------------------------------

def test_every_scenario_runs_with_each_available_peer(results):
    scs = results["scenarios"]
    assert len(scs) == 4 * 2 * 2                         # cells x modes x (full, varlen)
    for sc in scs:
        p = sc["peers"]
        assert p["rnncore"]["status"] == "ok" and p["rnncore"]["n"] == 1
        assert p["reference"]["status"] == "ok", p["reference"]
        assert p["reference"]["check"]["ok"] and p["reference"]["check"]["max_abs_diff"] < 1e-3
        if HAS_TORCH:
            if sc["cell"] == "gru":
                assert p["torch"] == {"status": "n/a", "reason": "n/a (PyTorch has no reset-before GRU)"}
            else:
                assert p["torch"]["status"] == "ok", p["torch"]
                assert p["torch"]["check"]["max_abs_diff"] < 1e-3
                assert p["torch"]["speedup"] > 0
        else:
            assert p["torch"]["status"] == "skipped" and "not installed" in p["torch"]["reason"]
        assert p["onnxruntime"]["status"] in ("skipped", "n/a", "ok"), p["onnxruntime"]
        if p["onnxruntime"]["status"] == "ok":
            assert sc["mode"] == "inference" and p["onnxruntime"]["check"]["ok"]


def test_training_compares_gradients_of_inputs_states_and_parameters(results):
    sc = by_id(results)[f"lstm/training/{'x'.join(map(str, SHAPE))}/float32/t1"]
    compared = sc["peers"]["reference"]["check"]["compared"]
    for name in ("y", "h_n", "c_n", "dx", "dh0", "dc0", "dW_ih_l0", "dW_hh_l0", "db_l0"):
        assert name in compared
    if HAS_TORCH:
        assert set(compared) <= set(sc["peers"]["torch"]["check"]["compared"])
        gru = [s for s in results["scenarios"] if s["cell"] == "gru_after" and s["mode"] == "training"][0]
        assert "db_hn_l0" in gru["peers"]["torch"]["check"]["compared"]


def test_onnxruntime_is_skipped_with_the_precise_reason(results):
    info = results["peers"]["onnxruntime"]
    if not hasattr(rnncore.LSTM(1, 1), "to_onnx"):
        assert not info["available"] and "to_onnx" in info["reason"]
    if importlib.util.find_spec("onnxruntime") is None:
        assert "onnxruntime is not installed" in info["reason"]
    if info["available"]:
        modes = {sc["mode"] for sc in results["scenarios"] if sc["peers"]["onnxruntime"]["status"] == "ok"}
        assert modes == {"inference"}


def test_json_schema(results):
    data = json.loads(report.to_json(results))
    for key in ("schema", "config", "machine", "gemm_peak", "peers", "method", "isolation_check", "scenarios",
                "summary", "varlen", "duration_s", "threads_set"):
        assert key in data, key
    assert data["schema"] == suite.SCHEMA
    m = data["machine"]
    for key in ("cpu", "logical_cpus", "memory_gib", "python", "numpy", "rnncore", "rnncore_blas", "env", "date",
                "others_cpu_share_start", "others_cpu_share_end", "numpy_blas"):
        assert key in m, key
    assert set(m["rnncore_blas"]) >= {"corename", "config", "threads", "kernels"}
    assert m["env"]["OPENBLAS_CORETYPE"] in ("unset",) or isinstance(m["env"]["OPENBLAS_CORETYPE"], str)
    assert set(config.ENV_VARS) <= set(m["env"])
    for sc in data["scenarios"]:
        for key, typ in (("id", str), ("cell", str), ("mode", str), ("T", int), ("N", int), ("D", int), ("H", int),
                         ("dtype", str), ("threads", int), ("varlen", bool), ("valid_steps", int),
                         ("flops", float), ("repeats", int), ("peers", dict),
                         ("others_cpu_share", (float, type(None)))):
            assert isinstance(sc[key], typ), (key, sc[key])
        r = sc["peers"]["rnncore"]
        for key in ("median_ms", "min_ms", "q1_ms", "q3_ms", "iqr_ms", "gflops"):
            assert isinstance(r[key], float)
        assert isinstance(r["times_ms"], list) and len(r["times_ms"]) == r["n"]
        for name, p in sc["peers"].items():
            assert p["status"] in ("ok", "flagged", "skipped", "n/a", "error")
            if p["status"] in ("skipped", "n/a", "error"):
                assert isinstance(p["reason"], str) and p["reason"]
            if "check" in p:
                assert isinstance(p["check"]["ok"], bool)
                assert isinstance(p["check"]["max_abs_diff"], float)
    for g in data["summary"]:
        assert {"mode", "peer", "n", "geomean", "flagged"} <= set(g)


def test_gemm_peak_and_peak_fraction(results):
    (entry,) = results["gemm_peak"].values()
    assert entry["best"] > 0 and entry["best_source"] in entry["gflops"]
    assert "rnncore_openblas" in entry["gflops"]       # rnncore's own OpenBLAS found through ctypes
    r = results["scenarios"][0]["peers"]["rnncore"]
    assert r["peak_fraction"] == pytest.approx(r["gflops"] / entry["best"])


def test_varlen_records_valid_steps(results):
    ids = by_id(results)
    var = [sc for sc in results["scenarios"] if sc["varlen"]]
    assert len(var) == 8
    T, N, D, H = SHAPE
    for sc in var:
        lengths = np.array(sc["lengths"])
        assert lengths.shape == (N,) and lengths.min() >= 1 and lengths.max() <= T
        assert sc["valid_steps"] == int(lengths.sum()) and sc["full_steps"] == T * N
        assert sc["flops"] == timing.flops(sc["cell"], sc["mode"], sc["valid_steps"], D, H)
        assert sc["twin"] in ids and not ids[sc["twin"]]["varlen"]
    assert len({tuple(sc["lengths"]) for sc in var}) == 1     # the same seeded lengths for every cell
    pairs = results["varlen"]
    assert len(pairs) == 8
    for v in pairs:
        assert v["steps_ratio"] == pytest.approx(v["valid_steps"] / (T * N))
        assert v["peers"]["rnncore"]["time_ratio"] > 0


def test_terminal_and_markdown_show_the_rows(results, tmp_path):
    text = report.to_text(results)
    md = report.to_markdown(results)
    shape = ",".join(map(str, SHAPE))
    for out in (text, md):
        for label in ("RNN-tanh", "LSTM", "GRU", "GRU-ra"):
            assert label in out
        assert shape in out and shape + " varlen" in out
        assert "NumPy reference" in out and "speed-up" in out
        assert "ONNX Runtime" in out
        assert "GEMM" in out and "rnncore_openblas" in out
        assert "valid-steps ratio" in out
        if HAS_TORCH:
            assert "PyTorch" in out and "n/a" in out
    assert "== inference, float32" in text and "== training, float32" in text
    assert "| cell | T,N,D,H | rnncore ms |" in md
    assert "## Method" in md and "## Machine" in md and "pause" in md
    written = report.write_all(results, str(tmp_path), plots=True)
    assert json.load(open(written["json"]))["schema"] == suite.SCHEMA
    assert "# rnncore benchmark report" in open(written["markdown"]).read()
    if importlib.util.find_spec("matplotlib") is not None:
        assert len(written["plots"]) == 2 and all(p.endswith(".png") for p in written["plots"])
    else:
        assert "matplotlib" in written["plot_note"]


# ------------------------------------------------------------------------------------------
# the agreement check
# ------------------------------------------------------------------------------------------

def test_agreement_function():
    a = {"y": np.linspace(-1, 1, 50, dtype=np.float32), "dW": np.full(7, 300.0, np.float32)}
    ok = suite.agreement(a, {k: v.copy() for k, v in a.items()}, "float32")
    assert ok["ok"] and ok["max_abs_diff"] == 0.0
    near = suite.agreement(a, {"y": a["y"] + 5e-4, "dW": a["dW"] * (1 + 5e-4)}, "float32")
    assert near["ok"]                                        # within tolerance; dW by its scale
    off = suite.agreement(a, {"y": a["y"] + 0.01, "dW": a["dW"]}, "float32")
    assert not off["ok"] and off["by_output"]["y"] == pytest.approx(0.01, rel=1e-3)
    assert "y:" in off["failures"][0]
    nan = suite.agreement(a, {"y": np.full(50, np.nan, np.float32), "dW": a["dW"]}, "float32")
    assert not nan["ok"]
    shape = suite.agreement(a, {"y": a["y"][:3], "dW": a["dW"]}, "float32")
    assert not shape["ok"]


class WrongReference(peers.ReferencePeer):
    """The NumPy reference with deliberately wrong weights: must be flagged."""

    def prepare(self, case, params, inputs):
        bad = {k: v * np.asarray(1.1, v.dtype) for k, v in params.items()}
        return super().prepare(case, bad, inputs)


def _flag_case(cfg, peer_map, cell="lstm", mode="training"):
    sc = [s for s in suite.scenario_list(cfg) if s["cell"] == cell and s["mode"] == mode and not s["varlen"]][0]
    return suite.run_scenario(sc, peer_map, cfg)


def test_a_disagreeing_peer_is_flagged_loudly():
    cfg = tiny_config(cells=("lstm",), modes=("training",), varlen=[])
    out = _flag_case(cfg, {"rnncore": peers.RnncorePeer(), "reference": WrongReference()})
    r = out["peers"]["reference"]
    assert r["status"] == "flagged" and not r["check"]["ok"]
    assert r["check"]["max_abs_diff"] > 1e-2
    assert "DISAGREES" in r["reason"]
    assert "median_ms" in r and "speedup" in r                # still timed, but marked
    fake = {"scenarios": [out], "peers": {"rnncore": {"label": "rnncore", "available": True},
                                          "reference": {"label": "NumPy reference", "available": True}}}
    fake["summary"] = suite._summaries(fake["scenarios"])
    (g,) = fake["summary"]
    assert g["flagged"] == 1 and g["n"] == 0 and g["geomean"] is None   # not used in the summary
    problems = report._problems(fake)
    assert problems and "DISAGREES" in problems[0]
    header, rows = report._rows(fake, (out["threads"], out["dtype"], out["mode"]))
    assert rows[0][header.index("speed-up")].endswith(report.FLAG)


def test_rows_run_on_a_busy_machine_are_marked(results):
    busy = json.loads(report.to_json(results))
    for sc in busy["scenarios"]:
        sc["others_cpu_share"] = 0.0
    busy["scenarios"][0]["others_cpu_share"] = 0.5
    text = report.to_text(busy)
    assert f"{report.BUSY} other processes used more than" in text and "1 of 16 rows" in text
    header, rows = report._rows(busy, (busy["scenarios"][0]["threads"], "float32", "inference"))
    assert rows[0][1].endswith(report.BUSY) and not rows[1][1].endswith(report.BUSY)
    summary = suite._summaries(busy["scenarios"])
    ref = [g for g in summary if g["peer"] == "reference" and g["mode"] == "inference"][0]
    assert ref["busy_left_out"] == 1 and ref["n"] == 7


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_a_disagreeing_torch_is_flagged(monkeypatch):
    real = peers.TorchPeer.prepare

    def wrong_weights(self, case, params, inputs):
        p = dict(params)
        p["W_hh_l0"] = params["W_hh_l0"][::-1].copy()          # rows shuffled: another function
        return real(self, case, p, inputs)
    monkeypatch.setattr(peers.TorchPeer, "prepare", wrong_weights)
    cfg = tiny_config(cells=("gru_after",), modes=("inference",), varlen=[])
    out = _flag_case(cfg, {"rnncore": peers.RnncorePeer(), "torch": peers.TorchPeer()}, "gru_after", "inference")
    assert out["peers"]["torch"]["status"] == "flagged"
    assert out["peers"]["torch"]["check"]["max_abs_diff"] > 1e-3


def test_isolation_check_plumbing():
    cfg = tiny_config(cells=("rnn_tanh",), modes=("inference",))
    iso = suite.isolation_check(cfg, suite.make_peers(["reference"]), reps=1, settle_s=0.0, shape=SHAPE)
    assert set(iso["peers"]) == {"rnncore", "reference"}
    for e in iso["peers"].values():
        assert e["alone_ms"] > 0 and e["interleaved_gap_ratio"] > 0 and e["interleaved_no_gap_ratio"] > 0


class Recorder:
    """A fake prepared peer that logs its runs."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def run(self):
        self.log.append(self.name)

    def clear(self):
        pass


def test_interleave_rotates_and_splits_the_runs_into_rounds():
    log = []
    prepared = {n: Recorder(n, log) for n in ("a", "b", "c")}
    times, errors = timing.interleave(prepared, {"a": 6, "b": 6, "c": 2}, 3, {"a": 1, "b": 0, "c": 0},
                                     timing._NoPause())
    assert not errors and [len(times[n]) for n in "abc"] == [6, 6, 2]
    # round 1: a (1 untimed + 2), b (2), c (1); round 2 starts with b; round 3 with c (already done)
    assert log == ["a"] * 3 + ["b"] * 2 + ["c"] + ["b"] * 2 + ["c"] + ["a"] * 3 + ["a"] * 3 + ["b"] * 2


def test_quiesce_pause_is_bounded(monkeypatch):
    """On a virtual clock (no wall time, so no load can make it flake): the pause ends at max_s
    when the other threads never go idle, and after min_s and one look when they are idle."""
    clock = [0.0]

    def sleep(seconds):
        clock[0] += seconds

    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0], sleep=sleep))
    q = timing.Quiesce(0.01, max_s=0.05)
    q.ok = True
    busy = iter(range(0, 10**12, 10**7))                 # 10 ms of CPU between any two looks: never idle
    monkeypatch.setattr(q, "_workers_ns", lambda: next(busy))
    w = q()
    assert 0.05 <= w < 0.05 + 0.0051 and q.waits == [w]
    monkeypatch.setattr(q, "_workers_ns", lambda: 0)     # idle
    clock[0] = 0.0
    w = q()
    assert w == pytest.approx(0.015) and q.waits[-1] == w


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------

def test_parse_shape():
    assert cli.parse_shape("100,8,256,128") == (100, 8, 256, 128)
    assert cli.parse_shape("100, 8, 256") == (100, 8, 256, 256)
    for bad in ("100,8", "a,b,c,d", "100,0,256,256", "1,2,3,4,5", "", "100,8,-1,4"):
        with pytest.raises(Exception, match="expected T,N,D,H"):
            cli.parse_shape(bad)


@pytest.mark.parametrize("argv, message", [
    (["--shape", "100,8"], "expected T,N,D,H"),
    (["--shape", "100,8,x,4"], "expected T,N,D,H"),
    (["--cell", "transformer"], "unknown cell 'transformer'"),
    (["--peer", "tensorflow"], "unknown peer 'tensorflow'"),
    (["--mode", "eval"], "expected inference or training"),
    (["--dtype", "float16"], "expected float32 or float64"),
    (["--threads", "0"], "expected positive integers"),
    (["--repeats", "0"], "expected a positive integer"),
    (["--quick", "--full"], "not allowed with"),
])
def test_cli_errors_are_clear(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv + ["--list"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_options_build_the_config():
    p = cli.build_parser()
    cfg = cli.config_from_args(p.parse_args(
        ["--quick", "--cell", "lstm,gru-ra", "--cell", "rnn", "--mode", "training", "--shape", "10,2,3,4",
         "--shape", "5,1,8", "--threads", "1,2", "--peer", "torch", "--repeats", "2", "--gap-ms", "5",
         "--dtype", "float64"]), p)
    assert cfg.preset == "quick"
    assert cfg.cells == ("lstm", "gru_after", "rnn_tanh")
    assert cfg.modes == ("training",)
    assert cfg.shapes == [(10, 2, 3, 4), (5, 1, 8, 8)] and cfg.varlen == []
    assert cfg.threads == (1, 2) and cfg.peers == ("torch",) and cfg.repeats == 2 and cfg.gap_ms == 5
    assert cfg.dtypes == ("float64",)
    default = cli.config_from_args(p.parse_args([]), p)
    assert default.shapes == config.DEFAULT_SHAPES and default.varlen == [config.VARLEN_SHAPE]
    assert default.cells == ("rnn_tanh", "lstm", "gru", "gru_after")
    full = cli.config_from_args(p.parse_args(["--full"]), p)
    assert full.ref_max_gflop is None and len(full.shapes) > len(default.shapes)


def test_cli_list(capsys):
    assert cli.main(["--quick", "--list"]) == 0
    out = capsys.readouterr().out
    assert "lstm/training/100x64x256x256/varlen/float32" in out and "peer onnxruntime" in out


def test_cli_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out, as the committed runs use
    code = cli.main(["--shape", "3,2,4,4", "--cell", "lstm", "--mode", "inference", "--peer", "reference",
                     "--repeats", "1", "--gap-ms", "0", "--gemm-size", "0", "--no-isolation-check", "--no-plots",
                     "--threads", "1", "--no-floors", "-q", "--out", "o"])
    assert code == 0
    out = capsys.readouterr().out
    assert "LSTM" in out and "3,2,4,4" in out and "report.md" in out
    # the paths printed are the ones given: a terminal record holds no machine's directories
    assert f"wrote {os.path.join('o', 'results.json')}" in out and str(tmp_path) not in out
    data = json.load(open(tmp_path / "o" / "results.json"))
    assert [sc["id"] for sc in data["scenarios"]] == ["lstm/inference/3x2x4x4/float32/t1"]
    assert data["gemm_peak"] == {}


def test_cli_seed_table_delegates(tmp_path, capsys, monkeypatch):
    calls = {}
    fake = types.ModuleType("rnncore.bench.seed_table")

    def run(budget, seed, progress):
        calls.update(budget=budget, seed=seed)
        progress("step one")
        return {"rows": [1, 2]}
    fake.run = run
    fake.to_text = lambda r: "SEED TABLE TEXT"
    fake.to_markdown = lambda r: "| Modelo | x |\n|---|---|\n| LSTM | 1 |"
    monkeypatch.setitem(sys.modules, "rnncore.bench.seed_table", fake)
    import rnncore.bench
    monkeypatch.setattr(rnncore.bench, "seed_table", fake, raising=False)
    assert cli.main(["--seed-table", "--quick", "--seed", "3", "-q", "--out", str(tmp_path)]) == 0
    assert calls == {"budget": "quick", "seed": 3}
    assert "SEED TABLE TEXT" in capsys.readouterr().out
    md = open(tmp_path / "report.md").read()
    assert "| LSTM | 1 |" in md and "## Machine" in md
    assert json.load(open(tmp_path / "results.json"))["seed_table"]["result"] == {"rows": [1, 2]}
    cli.main(["--seed-table", "--full", "-q", "--out", str(tmp_path)])
    assert calls["budget"] == "full"


def test_step_latency_plumbing():
    from rnncore.bench import step_latency
    res = step_latency.run(H=16, steps=3, rounds=1)
    assert [c["kind"] for c in res["cells"]] == ["rnn_tanh", "lstm", "gru", "gru_after"]
    for c in res["cells"]:
        for mode in ("inference", "training"):
            assert c[mode]["rnncore"] > 0
        if res["torch"] is not None and c["kind"] != "gru":
            assert c["inference"]["torch"] > 0 and c["agree"] < 1e-5  # same weights, same step
    assert "n/a" in step_latency.to_text(res).split("GRU ")[1].splitlines()[0]
    md = step_latency.to_markdown(res)
    assert md.count("\n| ") == 1 + len(res["cells"])
    json.dumps(res)


def test_floors_measure_and_render():
    """The step floor, the step-GEMM microbenchmark and the contention check, at toy sizes."""
    from rnncore.bench import floors
    before = rnncore.get_num_threads()
    res = {"step_floor": floors.step_floor(H=32, T=6, threads=2, rounds=1, calls=2),
           "step_gemm": floors.step_gemm(Ms=(1, 8), K=16, N=32, peak_size=64, rounds=1),
           "contention": floors.contention(rounds=1, calls=2, T=4, H=16)}
    assert rnncore.get_num_threads() == before
    cells = res["step_floor"]["cells"]
    assert [c["cell"] for c in cells] == ["RNN-tanh", "LSTM", "GRU", "GRU-ra"]
    assert [c["rows"] for c in cells] == [32, 128, 96, 96]
    assert all(c["floor_us_per_step"] > 0 and c["ratio"] == c["rnncore_us_per_step"] / c["floor_us_per_step"]
               for c in cells)
    sg = res["step_gemm"]
    if not sg.get("skipped"):
        assert [r["M"] for r in sg["rows"]] == [1, 8]
        assert all(r["rnncore_gflops"] > 0 and r["openblas_gflops"] > 0 for r in sg["rows"])
        assert sg["peak"]["gflops"] >= max(r["rnncore_gflops"] for r in sg["rows"])
    ct = res["contention"]
    if not ct.get("skipped"):
        assert ct["ratio"] == ct["two_threads_ms"] / ct["one_thread_idle_core_ms"] and ct["busy_cpu"] != ct["idle_cpu"]
    md = floors.to_markdown(res)
    assert "## Step floor" in md and "| LSTM | 128 |" in md and "## Contention" in md


def test_the_suite_leaves_thread_counts_as_it_found_them():
    """It sets every peer to the case's thread count while it runs, and gives the counts back."""
    before = rnncore.get_num_threads()
    rnncore.set_num_threads(3)
    try:
        suite.run(tiny_config(cells=("rnn_tanh",), modes=("inference",), peers=("rnncore",), varlen=[],
                              gemm_size=0, threads=(1,)))
        assert rnncore.get_num_threads() == 3
    finally:
        rnncore.set_num_threads(before)
