"""What rnncore-bench shows a user: tables that fit the terminal, progress without a terminal, the
plots, the --help text. Rendered from the committed results of a quick suite (no timing here)."""

import io
import json
import os

import pytest

from rnncore.bench import cli, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(ROOT, "benchmarks", "results", "quick", "results.json")


@pytest.fixture(scope="module")
def results():
    if not os.path.exists(QUICK):
        pytest.skip("no committed quick-suite results in this checkout")
    with open(QUICK) as f:
        return json.load(f)


@pytest.mark.parametrize("width", [80, 100, 120])
def test_terminal_text_fits_the_width(results, width):
    text = report.to_text(results, width)
    assert max(len(line) for line in text.splitlines()) <= width
    # nothing measured is lost: every peer's speed-up for every scenario is still printed
    for sc in results["scenarios"]:
        for name, r in sc["peers"].items():
            if "speedup" in r:
                assert report._x(r["speedup"]) in text
    assert "in report.md" in text


def test_full_width_when_not_asked(results):
    full = report.to_text(results)
    assert max(len(line) for line in full.splitlines()) > 120
    assert "IQR" in full and "% peak" in full


def test_narrow_tables_keep_rows_whole(results):
    text = report.to_text(results, 80)
    rows = [line for line in text.splitlines() if line.startswith("LSTM      100,1,256,256")]
    assert rows and all(line.split()[-1].endswith("x") for line in rows)


def test_progress_without_a_terminal_prints_lines():
    out = io.StringIO()                       # not a tty: one line per scenario, no carriage returns
    bar = cli.ProgressBar(out)
    for i in range(1, 4):
        bar(i, 3, f"case {i}")
        bar(i, 3, f"case {i} detail")         # details of the same scenario are not repeated
    bar.note("step latency")
    bar.done()
    text = out.getvalue()
    assert "\r" not in text
    assert [line.split("]")[0] for line in text.splitlines()[:3]] == ["[1/3", "[2/3", "[3/3"]
    assert text.splitlines()[-1] == "step latency"


def test_cli_width_from_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "90")
    assert cli._terminal_width() == 90
    monkeypatch.delenv("COLUMNS")
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert cli._terminal_width() is None     # a pipe or a file gets the full tables


def test_help_shows_both_shape_forms(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "T,N,D,H" in text and "T,N,H" in text
    assert cli.parse_shape("100,8,256") == (100, 8, 256, 256)


def test_speedup_plot_is_labelled(results, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    captured = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(fig, path, *a, **k):
        captured[os.path.basename(str(path))] = fig
        return real_savefig(fig, path, *a, **k)

    matplotlib.figure.Figure.savefig = spy
    try:
        paths, note = report.write_plots(results, str(tmp_path))
    finally:
        matplotlib.figure.Figure.savefig = real_savefig
    assert note is None and {os.path.basename(p) for p in paths} == {"time_float32_t2.png", "speedup_float32_t2.png"}
    fig = captured["speedup_float32_t2.png"]
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert "1x" in ticks and all(t.endswith("x") for t in ticks if t)
    assert any(abs(line.get_ydata()[0] - 1.0) < 1e-12 for line in ax.get_lines())      # the 1x line
    values = [t.get_text() for t in ax.texts]
    bars = [p for p in ax.patches if p.get_height() == p.get_height() and p.get_height() > 0]
    assert len(values) == len(bars) and all(v.endswith("x") for v in values)            # a value on each bar
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    bbox = fig.legends[0].get_window_extent(renderer)
    for a in fig.axes:                                                                   # the legend is above the data
        assert bbox.y0 >= a.get_window_extent(renderer).y1
    plt.close("all")


def test_variants_table_fits_the_width(results):
    """The LSTM variants' table (rnncore.bench.variants) is split by columns when the terminal is narrow."""
    from rnncore.bench import variants
    res = variants.run(threads=1, shapes=[(4, 3, 8, 8)], rounds=1, calls=1)
    both = dict(results, variants=res)
    for width in (60, 80):
        text = report.to_text(both, width)
        assert max(len(line) for line in text.splitlines()) <= max(width, 73)   # 73: the widest key columns
        assert "vs torch LN loop" in text or "torch" not in res["peers"]
    full = variants.to_text(res)
    assert variants.to_text(res, 200) == full
