"""rnncore.bench.seed_table on a tiny budget: structure, JSON, Markdown, determinism."""

import json

import numpy as np
import pytest

from rnncore.bench import seed_table

TINY = dict(speed_hidden=16, speed_T=10, speed_N=4, speed_warmup=1, speed_repeats=2,
            hidden=8, batch=16, steps=40, eval_every=10, eval_size=64, ladder=(4, 8, 12),
            stability_T=8, stability_size=32, workers=1)
CELLS = ("RNN", "LSTM", "GRU", "GRU (reset_after)")


@pytest.fixture(scope="module")
def runs():
    lines = []
    first = seed_table.run("quick", seed=3, progress=lines.append, config=TINY)
    second = seed_table.run("quick", seed=3, config=TINY)
    return first, second, lines


def test_structure(runs):
    r, _, lines = runs
    assert r["budget"] == "quick" and r["seed"] == 3
    assert r["config"]["steps"] == 40 and r["config"]["ladder"] == [4, 8, 12]
    assert tuple(r["config"]["cells"]) == CELLS
    assert any(line.startswith("memory: LSTM T=4") for line in lines)
    for cell in CELLS:
        sp = r["speed"][cell]
        assert sp["parameters"] > 0 and sp["train_seq_per_s"] > 0 and sp["infer_seq_per_s"] > 0
        mem = r["memory"][cell]
        assert "4" in mem["runs"] and "8" in mem["runs"]     # the first rung and the stability T always run
        run4 = mem["runs"]["4"]
        assert run4["T"] == 4 and len(run4["seeds"]) == 1
        rec = run4["seeds"][0]
        # the shortest T always trains the full budget (it measures precision)
        assert rec["full_budget"] and rec["steps_done"] == 40
        assert [s for s, _ in rec["eval_curve"]] == [10, 20, 30, 40]
        assert rec["final_mse"] == rec["eval_curve"][-1][1]
        assert rec["solved"] == (rec["final_mse"] < 0.05)
        assert mem["largest_T_solved"] in (None, 4, 8, 12)
        st = r["stability"][cell]
        assert st["T"] == 8 and st["init"]["first"] > 0 and st["init"]["last"] > 0
        assert st["grad_spikes_per_1000_steps"] >= 0
        assert len(mem["runs"]["8"]["seeds"][0]["grad_norm_per_step_init"]) == 8
    assert r["speed"]["RNN"]["parameters"] == 2 * 16 ** 2 + 16   # H*D + H*H + H
    assert r["speed"]["LSTM"]["parameters"] == 4 * (2 * 16 ** 2 + 16)
    assert set(r["verdicts"]) == set(seed_table.COLUMNS[1:])
    for v in r["verdicts"].values():
        assert v["verdict"] in ("agrees", "partly", "disagrees") and v["reading"]
        assert v["checks"] and all(isinstance(ok, bool) for ok, _ in v["checks"])


def test_ladder_stops_after_a_failure():
    r = seed_table.run("quick", seed=0, config=dict(TINY, steps=5, eval_every=5, cells=("RNN",)))
    assert set(r["memory"]["RNN"]["runs"]) == {"4", "8"}       # 4 fails, 12 is skipped, 8 is the stability T
    assert r["memory"]["RNN"]["largest_T_solved"] is None
    assert r["verdicts"]["Memoria a largo plazo"]["verdict"] == "n/a"


def test_workers_do_not_change_the_numbers():
    cfg = dict(TINY, train_seeds=2, speed_repeats=1)
    one = seed_table.deterministic_part(seed_table.run("quick", seed=3, config=cfg))
    two = seed_table.deterministic_part(seed_table.run("quick", seed=3, config=dict(cfg, workers=2)))
    assert two.pop("config")["workers"] == 2 and one.pop("config")["workers"] == 1
    assert two == one
    run4 = one["memory"]["GRU"]["runs"]["4"]
    assert run4["seeds_total"] == 2 and [r["seed_index"] for r in run4["seeds"]] == [0, 1]
    assert run4["seeds"][0]["eval_curve"] != run4["seeds"][1]["eval_curve"]


def test_early_stop_ends_a_rung_once_solved():
    # a loose threshold: every cell counts as solved at the first evaluation above the shortest T
    r = seed_table.run("quick", seed=1, config=dict(TINY, cells=("GRU",), threshold=1.0))
    rec = r["memory"]["GRU"]["runs"]["8"]["seeds"][0]
    assert rec["solved"] and rec["steps_to_solve"] == 10 and rec["steps_done"] == 10
    assert r["memory"]["GRU"]["largest_T_solved"] == 12


def test_json_round_trip(runs):
    r = runs[0]
    text = json.dumps(r, allow_nan=False, ensure_ascii=False)
    assert json.loads(text) == json.loads(json.dumps(r, allow_nan=False))


def test_markdown_has_the_seed_table_and_one_row_per_cell(runs):
    md = seed_table.to_markdown(runs[0])
    header = "| Modelo | Memoria a largo plazo | Capacidad de modelado | Velocidad / Tamaño |"
    assert md.count(header) == 2                       # the seed's table, then the measured one
    for words in ("❌ Limitada", "✅ Alta", "✅ Media a alta", "Media-Alta", "⚡ Rápida pero inestable",
                  "🐢 Más lenta, más precisa", "⚡⚡ Un poco más rápida que LSTM"):
        assert words in md
    measured = md.split(header)[2].split("\n\n")[0].strip().splitlines()[1:]
    assert [row.split("|")[1].strip() for row in measured] == [f"**{c}**" for c in CELLS]
    for col in seed_table.COLUMNS[1:]:
        assert f"- **{col}** — " in md
    text = seed_table.to_text(runs[0])
    assert "Memoria a largo plazo" in text and "GRU (reset_after)" in text


def test_same_seed_same_numbers(runs):
    a, b, _ = runs
    assert seed_table.deterministic_part(a) == seed_table.deterministic_part(b)
    assert a["memory"]["LSTM"]["runs"]["4"]["seeds"][0]["eval_curve"] == \
        b["memory"]["LSTM"]["runs"]["4"]["seeds"][0]["eval_curve"]


def test_adding_batch():
    x, y = seed_table.adding_batch(np.random.default_rng(0), 10, 50)
    assert x.shape == (10, 50, 2) and y.shape == (50, 1) and x.dtype == np.float32
    marks = x[:, :, 1]
    assert np.all(marks.sum(axis=0) == 2)
    assert np.all(marks[:5].sum(axis=0) == 1) and np.all(marks[5:].sum(axis=0) == 1)
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * marks).sum(axis=0), rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError):
        seed_table.run("huge")
    with pytest.raises(ValueError):
        seed_table.run("quick", config={"no_such_knob": 1})
    with pytest.raises(ValueError):
        seed_table.run("quick", cells=("Transformer",))
