"""rnncore-bench --torch-step (rnncore.bench.torch_step): the plumbing, on tiny shapes; no timing is asserted."""

import json

import pytest

pytest.importorskip("torch")

import rnncore  # noqa: E402
from rnncore.bench import cli, torch_step  # noqa: E402


def test_run_reports_every_shape_and_the_overhead():
    threads = rnncore.get_num_threads()
    res = torch_step.run(shapes=[(5, 2, 8), (4, 3, 6)], threads=1, rounds=1, budget_s=0.01, overhead_shape=(5, 2, 8))
    assert rnncore.get_num_threads() == threads                     # restored
    assert [(r["T"], r["N"], r["H"]) for r in res["shapes"]] == [(5, 2, 8), (4, 3, 6)]
    for r in res["shapes"]:
        assert r["max_rel_diff"] < 1e-4                              # the two modules computed the same step
        assert set(r["median_s"]) == {"rnncore.torch.LSTM", "torch.nn.LSTM"}
        assert all(v > 0 for v in r["median_s"].values())
        assert r["speedup"] == pytest.approx(r["median_s"]["torch.nn.LSTM"] / r["median_s"]["rnncore.torch.LSTM"])
        assert r["speedup_min"] == pytest.approx(r["min_s"]["torch.nn.LSTM"] / r["min_s"]["rnncore.torch.LSTM"])
        assert all(r["min_s"][k] <= r["median_s"][k] for k in r["min_s"])
    o = res["overhead"]
    assert (o["T"], o["N"], o["H"]) == (5, 2, 8)
    assert o["overhead_s"] == pytest.approx(o["median_s"]["module"] - o["median_s"]["bare"])
    assert o["fraction_of_step"] == pytest.approx(o["overhead_s"] / o["step_s"])
    assert o["overhead_min_s"] == pytest.approx(o["min_s"]["module"] - o["min_s"]["bare"])
    text = torch_step.to_text(res)
    assert "wrapper overhead" in text and "speedup" in text
    assert "| 5 | 2 | 8 |" in torch_step.to_markdown(res)


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
