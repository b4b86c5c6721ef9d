"""rnncore-bench --torch-step (rnncore.bench.torch_step): the plumbing, on tiny shapes; no timing is asserted."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")

import rnncore  # noqa: E402
from rnncore.bench import cli, torch_step  # noqa: E402


def test_run_reports_every_shape_and_the_overhead():
    threads = rnncore.get_num_threads()
    res = torch_step.run(shapes=[(5, 2, 8), (4, 3, 6)], threads=1, rounds=1, budget_s=0.01, overhead_shape=(5, 2, 8),
                         gemm_size=128, overhead_samples=6)
    assert rnncore.get_num_threads() == threads                     # restored
    assert [(r["T"], r["N"], r["H"]) for r in res["shapes"]] == [(5, 2, 8), (4, 3, 6)]
    for r in res["shapes"]:
        assert r["max_rel_diff"] < 1e-4                              # the two modules computed the same step
        assert set(r["median_s"]) == {"rnncore.torch.LSTM", "torch.nn.LSTM", "no LSTM work"}
        assert r["rest_s"] == r["median_s"]["no LSTM work"] > 0
        assert all(v > 0 for v in r["median_s"].values())
        assert r["speedup"] == pytest.approx(r["median_s"]["torch.nn.LSTM"] / r["median_s"]["rnncore.torch.LSTM"])
        assert r["speedup_min"] == pytest.approx(r["min_s"]["torch.nn.LSTM"] / r["min_s"]["rnncore.torch.LSTM"])
        assert all(r["min_s"][k] <= r["median_s"][k] for k in r["min_s"])
        # the floor: the step's FLOPs at the measured peak, and torch.nn's time over it
        assert r["floor_s"] == pytest.approx(torch_step.lstm_step_flops(r["T"], r["N"], r["H"], input_grad=False)
                                             / (res["peak"]["gflops"] * 1e9))
        assert r["max_speedup"] == pytest.approx(r["median_s"]["torch.nn.LSTM"] / (r["floor_s"] + r["rest_s"]))
        assert r["floor_s"] < r["min_s"]["rnncore.torch.LSTM"]       # microseconds of FLOPs, milliseconds of step
    assert res["peak"]["source"] in res["peak"]["all_gflops"] and res["peak"]["gflops"] > 0
    assert len(res["peak"]["measured_gflops"]) == 2                   # before and after the steps: the best
    assert res["peak"]["gflops"] == pytest.approx(max(res["peak"]["measured_gflops"]))
    o = res["overhead"]
    assert (o["T"], o["N"], o["H"]) == (5, 2, 8)
    assert o["samples"] == 6 and set(o["median_s"]) == {"step", "module", "bare", "bare + empty Function"}
    assert o["step_s"] == o["median_s"]["step"]
    t = {k: np.array(v) for k, v in o["rounds_s"].items()}
    assert all(len(v) == 6 for v in t.values())
    # differences taken within each round, then the median over the rounds
    assert o["overhead_s"] == pytest.approx(np.median(t["module"] - t["bare"]))
    assert o["overhead_iqr_s"][0] <= o["overhead_s"] <= o["overhead_iqr_s"][1]
    assert o["fraction_of_step"] == pytest.approx(np.median((t["module"] - t["bare"]) / t["step"]))
    assert o["autograd_s"] == pytest.approx(np.median(t["bare + empty Function"] - t["bare"]))
    assert o["autograd_fraction_of_step"] == pytest.approx(np.median((t["bare + empty Function"] - t["bare"]) / t["step"]))
    text = torch_step.to_text(res)
    assert "wrapper overhead" in text and "speedup" in text and "autograd machinery alone" in text
    assert "| 5 | 2 | 8 |" in torch_step.to_markdown(res)


def test_paired_rounds_call_every_variant_once_in_a_rotating_order():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    times = torch_step._paired(fns, 4)
    assert calls[:3] == list("abc")                               # one call each before the rounds
    assert calls[3:] == list("abc" "bca" "cab" "abc")             # then each round starts one further on
    assert all(len(v) == 4 and all(s >= 0 for s in v) for v in times.values())


def test_the_floor_counts_the_six_products_of_an_lstm_layer():
    """Forward and backward of a layer at D = H: each of the six products (input projection,
    recurrent product, their two transposes for dx and dh, dW_ih, dW_hh) multiplies T * N rows by
    one weight matrix, 2 FLOPs per multiply-add."""
    T, N, H = 7, 3, 5
    m = rnncore.LSTM(H, H, seed=0)
    p = m.parameters()
    per_row = p["W_ih_l0"].size + p["W_hh_l0"].size              # one pass over both weights, per row
    assert torch_step.lstm_step_flops(T, N, H) == 2 * 3 * T * N * per_row
    # without dx: the five others (dx multiplies by W_ih, the size of one of the six)
    assert torch_step.lstm_step_flops(T, N, H, input_grad=False) == 2 * 3 * T * N * per_row - 2 * T * N * p["W_ih_l0"].size


def test_the_empty_function_runs_a_backward_that_reaches_every_parameter():
    """The autograd-only yardstick: a forward and backward through PyTorch's machinery that leave
    every parameter's .grad set, to a fresh tensor (it computes nothing)."""
    torch = pytest.importorskip("torch")
    import rnncore.torch as rt
    m = rt.LSTM(6, 5)
    run = torch_step._empty_function(torch, m, torch.randn(4, 3, 6))
    before = {}
    for p in m.parameters():
        p.grad = before[p] = torch.ones_like(p)
    run()
    for p in m.parameters():
        assert p.grad is not None and p.grad is not before[p] and p.grad.shape == p.shape


def test_the_step_without_lstm_work_runs_the_loss_and_adam_over_every_parameter():
    torch = pytest.importorskip("torch")
    import rnncore.torch as rt
    m = rt.LSTM(6, 5)
    x, target = torch.randn(4, 3, 6), torch.randn(4, 3, 5)
    step = torch_step._no_lstm_step_fn(torch, m, x, target)
    step()
    step()
    params = list(m.parameters())
    assert [step.optimizer.state[p]["step"].item() for p in params] == [2] * len(params)   # Adam took every one
    assert all(p.grad is not None and not p.grad.any() for p in params)                     # the preset zeros


def test_cli_mode_writes_its_files(tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["--torch-step", "--shape", "4,2,6", "--threads", "1", "--rounds", "1", "--quick", "-q",
                   "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "torch_step.json").read_text())
    assert [(r["T"], r["N"], r["H"]) for r in res["shapes"]] == [(4, 2, 6)]
    assert res["threads"] == 1
    assert "torch_step.md" in capsys.readouterr().out
    assert cli.main(["--torch-step", "--shape", "4,2,5,6", "-q", "--out", str(out)]) == 2   # D != H refused
