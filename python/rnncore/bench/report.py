"""Rendering a suite's results: terminal table, Markdown report, JSON file, PNG plots."""

import json
import os
import textwrap

import numpy as np

from .config import BUSY_SHARE, CELL_DESCRIPTIONS, CELL_LABELS, PEER_ORDER

FLAG = "!"
BUSY = "*"


def _peer_columns(results):
    """Peers that took part somewhere (not skipped everywhere at import), rnncore first."""
    names = [n for n in PEER_ORDER if n in results["peers"] and results["peers"][n]["available"]]
    return [n for n in names if n != "rnncore"]


def _label(results, name):
    return results["peers"].get(name, {}).get("label", name)


def _shape(sc):
    return f"{sc['T']},{sc['N']},{sc['D']},{sc['H']}" + (" varlen" if sc["varlen"] else "")


def _busy(sc):
    v = sc.get("others_cpu_share")
    return v is not None and v > BUSY_SHARE


def _ms(v):
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _x(v):
    return "-" if v is None else f"{v:.2f}x" if v < 10 else f"{v:.1f}x"


def _groups(results):
    """(threads, dtype, mode) -> scenarios, in run order."""
    out = {}
    for sc in results["scenarios"]:
        out.setdefault((sc["threads"], sc["dtype"], sc["mode"]), []).append(sc)
    return out


def _peer_cells(sc, name):
    """(time text, speed-up text) for one peer in one scenario."""
    r = sc["peers"].get(name)
    if r is None:
        return "", ""
    st = r["status"]
    if st == "n/a":
        return "n/a", ""
    if st in ("skipped", "error"):
        return st, ""
    flag = FLAG if st == "flagged" else ""
    return _ms(r.get("median_ms")) + flag, _x(r.get("speedup")) + flag


def _rows(results, key):
    cols = _peer_columns(results)
    header = ["cell", "T,N,D,H", "rnncore ms", "IQR", "GFLOP/s", "% peak"]
    for n in cols:
        header += [f"{_label(results, n)} ms", "speed-up"]
    rows = []
    for sc in _groups(results)[key]:
        r = sc["peers"].get("rnncore", {})
        if "median_ms" in r:
            base = [_ms(r["median_ms"]), f"{100 * r['iqr_ms'] / r['median_ms']:.0f}%", f"{r['gflops']:.1f}",
                    f"{100 * r['peak_fraction']:.1f}%" if r.get("peak_fraction") else "-"]
        else:
            base = [r.get("status", "-"), "", "", ""]
        row = [sc["cell_label"], _shape(sc) + (" " + BUSY if _busy(sc) else "")] + base
        for n in cols:
            row += list(_peer_cells(sc, n))
        rows.append(row)
    return header, rows


def _text_table(header, rows, right_from=2):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def fmt(r):
        return "  ".join(str(c).ljust(w) if i < right_from else str(c).rjust(w) for i, (c, w) in
                         enumerate(zip(r, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def _fit_table(header, rows, width, keys=2, right_from=2, groups=None):
    """The table as texts at most ``width`` wide where possible: whole when it fits; else the first
    ``keys`` columns (what names a row) beside as many column groups as fit, in as many tables as
    needed. ``groups``: lists of column indices that stay together (default: every column alone)."""
    full = _text_table(header, rows, right_from)
    if not width or max(len(line) for line in full.splitlines()) <= width:
        return [full]
    groups = groups or [[i] for i in range(keys, len(header))]

    def build(gs):
        idx = list(range(keys)) + [c for g in gs for c in g]
        return _text_table([header[i] for i in idx], [[r[i] for i in idx] for r in rows],
                           right_from=sum(1 for i in idx if i < right_from))

    tables, current = [], []
    for g in groups:
        trial = build(current + [g])
        if current and max(len(line) for line in trial.splitlines()) > width:
            tables.append(build(current))
            current = [g]
        else:
            current.append(g)
    if current:
        tables.append(build(current))
    return tables


def _fit_scenario_table(header, rows, width):
    """The per-scenario table for a terminal ``width`` columns wide: whole when it fits; else without
    IQR, GFLOP/s and % peak (report.md keeps them); else one table per group of peers that fits."""
    full = _text_table(header, rows)
    if not width or max(len(line) for line in full.splitlines()) <= width:
        return full, None
    keep = [0, 1, 2] + list(range(6, len(header)))
    h = [header[i] for i in keep]
    r = [[row[i] for i in keep] for row in rows]
    groups, idle = [], []
    for k in range(3, len(h), 2):
        if all(row[k] in ("n/a", "skipped", "") for row in r):   # e.g. ONNX Runtime in training
            idle.append(h[k][:-len(" ms")] if h[k].endswith(" ms") else h[k])
        else:
            groups.append([k, k + 1])
    if not groups:
        return _text_table(h[:3], [row[:3] for row in r]), None
    tables = _fit_table(h, r, width, keys=3, right_from=2, groups=groups)
    note = "(IQR, GFLOP/s and % of the GEMM peak: in report.md"
    note += f"; not measured in any of these cases: {', '.join(idle)})" if idle else ")"
    return "\n\n".join(tables), note


def _wrap(text, width, keep):
    """Lines longer than ``width`` wrapped, their continuation indented; lines in ``keep`` (tables) and
    Markdown table rows stay whole."""
    if not width:
        return text
    out = []
    for line in text.split("\n"):
        if len(line) <= width or line in keep or line.lstrip().startswith("|"):
            out.append(line)
            continue
        indent = line[:len(line) - len(line.lstrip())]
        out += textwrap.wrap(line, width, subsequent_indent=indent + "    ", break_on_hyphens=False,
                             break_long_words=False) or [line]
    return "\n".join(out)


def _md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _summary_lines(results):
    out = []
    for g in results["summary"]:
        lbl = f"{g['mode']:<9} vs {_label(results, g['peer']):<16}"
        ctx = f"{g['dtype']}, {g['threads']} thread{'s' if g['threads'] != 1 else ''}"
        if g["n"]:
            out.append(f"{lbl} {_x(g['geomean']):>7} geometric mean over {g['n']} case(s), range "
                       f"{_x(g['min'])} .. {_x(g['max'])}  [{ctx}]")
        else:
            out.append(f"{lbl}     -   no agreeing case  [{ctx}]")
        if g["flagged"]:
            out[-1] += f"  ({g['flagged']} disagreeing case(s) left out)"
        if g.get("busy_left_out"):
            out[-1] += f"  ({g['busy_left_out']} case(s) on a busy machine left out)"
        if g.get("from_busy_rows"):
            out[-1] += "  (all its cases ran on a busy machine)"
    return out


def _varlen_rows(results):
    rows = []
    for v in results["varlen"]:
        for name, p in v["peers"].items():
            rows.append([CELL_LABELS[v["cell"]], v["mode"], f"{v['T']},{v['N']},{v['D']},{v['H']}",
                         _label(results, name) + (FLAG if p["flagged"] else ""), _ms(p["full_ms"]), _ms(p["varlen_ms"]),
                         f"{p['time_ratio']:.2f}", f"{v['steps_ratio']:.2f}"])
    return ["cell", "mode", "T,N,D,H", "peer", "full ms", "varlen ms", "time ratio", "valid-steps ratio"], rows


def _problems(results):
    """Disagreements and errors, one line each."""
    out = []
    for sc in results["scenarios"]:
        for name, r in sc["peers"].items():
            if r["status"] == "flagged":
                out.append(f"{_label(results, name)} DISAGREES with rnncore on {sc['id']}: {r.get('reason', '')}"
                           f" (max |diff| {r['check']['max_abs_diff'] if r.get('check') else '?'})")
            elif r["status"] == "error":
                out.append(f"{_label(results, name)} failed on {sc['id']}: {r['reason']}")
    return out


def _skips(results):
    out = []
    for name, p in results["peers"].items():
        if not p["available"]:
            out.append(f"{p['label']} ({name}): skipped: {p['reason']}")
    reasons = {}
    for sc in results["scenarios"]:
        for name, r in sc["peers"].items():
            if r["status"] in ("n/a", "skipped") and results["peers"][name]["available"]:
                reasons.setdefault((name, r["reason"]), []).append(sc)
    for (name, why), scs in reasons.items():
        out.append(f"{_label(results, name)}: {why} ({len(scs)} case(s), e.g. {scs[0]['id']})")
    return out


def _peak_lines(results):
    out = []
    for e in results["gemm_peak"].values():
        parts = ", ".join(f"{k} {v:.0f}" for k, v in e["gflops"].items())
        out.append(f"{e['dtype']} GEMM {e['size']}^3, {e['threads']} thread(s): {parts} GFLOP/s; "
                   f"'% peak' uses the best, {e['best']:.0f} ({e['best_source']})" if e["best"] else
                   f"{e['dtype']} GEMM, {e['threads']} thread(s): not measured")
    return out


def _isolation_lines(results):
    out = []
    for n, iso in results["isolation_check"].items():
        if not iso:
            continue
        c = iso["case"]
        out.append(f"{n} thread(s), {CELL_LABELS[c['cell']]} {c['mode']} ({c['T']},{c['N']},{c['D']},{c['H']}); "
                   f"median time interleaved / median time alone:")
        pause = f"{iso['pause_ms_median']:.0f} ms" if iso.get("pause_ms_median") is not None else "?"
        for name, e in iso["peers"].items():
            out.append(f"  {_label(results, name):<16} alone {_ms(e['alone_ms'])} ms;  one run per visit, no pause "
                       f"{e['interleaved_no_gap_ratio']:.2f}x;  the suite's way {e['interleaved_gap_ratio']:.2f}x")
        out.append(f"  (the suite's pauses: median {pause}" + ("" if iso.get("schedstat") else
                                                               ", fixed: no per-thread CPU times here") + ")")
    return out


def _machine_lines(results):
    m = results["machine"]
    b = m["rnncore_blas"]
    lines = [f"CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs, {m['usable_cpus']} usable; "
             f"{', '.join(m['cpu_flags'])}); {m['memory_gib']} GiB",
             f"python {m['python']}, numpy {m['numpy']}, rnncore {m['rnncore']}"
             + (f" (commit {m['rnncore_git_commit'][:10]})" if m.get("rnncore_git_commit") else ""),
             f"rnncore BLAS: {b['config']}; core {b['corename']}; rnncore kernels {b['kernels']}; rnncore threads "
             f"{b['threads']}" + (f" (its OpenBLAS itself set to {m['rnncore_openblas_threads']})"
                                  if m.get("rnncore_openblas_threads") is not None else "")]
    nb = m.get("numpy_blas")
    if nb:
        lines.append(f"NumPy BLAS (reference peer, numpy_matmul): {nb['config']}; core {nb['corename']}")
    t = m.get("torch")
    if t:
        lines.append(f"torch {t['version']} (MKL {t['mkl']}, oneDNN {t['mkldnn']}, CPU capability "
                     f"{t['cpu_capability']}), default threads {t['threads']}")
    env = m["env"]
    setv = [f"{k}={v}" for k, v in env.items() if v != "unset"]
    lines.append("environment: " + (", ".join(setv) if setv else "none set") + "; unset: "
                 + ", ".join(k for k, v in env.items() if v == "unset"))
    la0, la1 = m.get("loadavg_start"), m.get("loadavg_end")
    lines.append("other processes' share of the CPUs at start " + _pct(m.get("others_cpu_share_start")) + ", at end "
                 + _pct(m.get("others_cpu_share_end")) + "; load average at start "
                 + (f"{la0[0]:.2f}" if la0 else "?") + ", at end " + (f"{la1[0]:.2f}" if la1 else "?")
                 + f"; date {m['date']}")
    return lines


def _pct(v):
    return "?" if v is None else f"{100 * v:.0f}%"


def _warnings(results):
    m = results["machine"]
    out = []
    core = m["env"].get("OPENBLAS_CORETYPE", "unset")
    if core != "unset":
        out.append(f"OPENBLAS_CORETYPE={core} forces OpenBLAS's {core} kernels (rnncore's BLAS reports core "
                   f"{m['rnncore_blas']['corename']}); unset it to benchmark the kernel this CPU would get")
    busy = [v for v in (m.get("others_cpu_share_start"), m.get("others_cpu_share_end")) if v is not None]
    if busy and max(busy) > 0.1:
        out.append(f"the machine was busy: other processes used {_pct(max(busy))} of the CPUs (at start/end); they "
                   f"compete for the cores, so times are slower and noisier and the ratios less reliable")
    nbusy = sum(_busy(sc) for sc in results["scenarios"])
    if nbusy:
        out.append(f"{nbusy} of {len(results['scenarios'])} rows ran while other processes used more than "
                   f"{100 * BUSY_SHARE:.0f}% of the CPUs (marked {BUSY}); rerun them on a quiet machine")
    for n, iso in results["isolation_check"].items():
        for name, e in (iso or {}).get("peers", {}).items():
            r = e["interleaved_gap_ratio"]
            if r > 1.4 or r < 0.7:   # the check itself varies by ~20% from run to run
                out.append(f"isolation check ({n} threads): {name} runs {r:.2f}x its alone time in the suite's "
                           f"interleaving; ratios between peers may be distorted")
    return out


def to_text(results, width=None):
    """The results for a terminal. ``width``: its columns; tables are fitted to it (fewer columns,
    or one table per group of peers) and long lines wrapped. None: everything at full width."""
    out = []
    tables = set()

    def table(text):
        tables.update(text.splitlines())
        return text

    for key in _groups(results):
        threads, dtype, mode = key
        out.append(f"\n== {mode}, {dtype}, {threads} thread{'s' if threads != 1 else ''} ==   "
                   f"(speed-up = peer median / rnncore median; {FLAG} = disagrees with rnncore)")
        text, note = _fit_scenario_table(*_rows(results, key), width)
        out.append(table(text))
        if note:
            out.append(note)
    if results.get("step_latency"):
        from . import step_latency
        text = step_latency.to_text(results["step_latency"], width)
        tables.update(text.splitlines()[2:])   # the table, not its title
        out.append(text)
    if results.get("floors"):
        from . import floors
        out.append(floors.to_text(results["floors"]))
    if results.get("variants"):
        from . import variants
        text = variants.to_text(results["variants"], width)
        tables.update(text.splitlines()[1:-1])   # the table, not its title and legend
        out.append(text)
    nbusy = sum(_busy(sc) for sc in results["scenarios"])
    if nbusy:
        out.append(f"{BUSY} other processes used more than {100 * BUSY_SHARE:.0f}% of the CPUs during the row: "
                   f"slower and noisier times, less reliable ratios ({nbusy} of {len(results['scenarios'])} rows)")
    out.append("\nrnncore's speed-up:")
    out += ["  " + s for s in _summary_lines(results)]
    if results["varlen"]:
        v0 = results["varlen"][0]
        out.append(f"\nVariable lengths (lengths uniform in [1,T], seeded; valid steps {v0['valid_steps']} of "
                   f"{v0['full_steps']}): cost should follow the valid steps")
        out.append(table("\n\n".join(_fit_table(*_varlen_rows(results), width, keys=4, right_from=4))))
    problems = _problems(results)
    if problems:
        out.append("\n" + "!" * 78)
        out += ["!! " + p for p in problems]
        out.append("!" * 78)
    skips = _skips(results)
    if skips:
        out.append("\nNot measured:")
        out += ["  " + s for s in skips]
    out.append("\nGEMM peak:")
    out += ["  " + s for s in _peak_lines(results)]
    iso = _isolation_lines(results)
    if iso:
        out.append("\nIsolation check (each peer alone vs interleaved; ~1.00x means interleaving is harmless):")
        out += ["  " + s for s in iso]
    out.append("\nMachine:")
    out += ["  " + s for s in _machine_lines(results)]
    w = _warnings(results)
    if w:
        out.append("\nWarnings:")
        out += ["  " + s for s in w]
    return _wrap("\n".join(out).lstrip("\n"), width, tables)


def to_markdown(results, plots=(), plot_note=None, seed_table_md=None):
    cfg = results.get("config", {})
    out = ["# rnncore benchmark report", ""]
    if results.get("scenarios"):
        out += [f"Suite `{cfg.get('preset')}`: {len(results['scenarios'])} scenarios in "
                f"{results['duration_s']:.0f} s. Times are medians in milliseconds; speed-up = peer median / rnncore "
                f"median (above 1: rnncore is faster). {FLAG} marks a peer whose outputs disagree with rnncore's: its "
                f"time is shown but not used.", ""]
        out += ["## Summary", ""] + [f"- {s}" for s in _summary_lines(results)] + [""]
        if results.get("step_latency"):
            from . import step_latency
            out += [step_latency.to_markdown(results["step_latency"])]
        if results.get("floors"):
            from . import floors
            out += [floors.to_markdown(results["floors"])]
        if results.get("variants"):
            from . import variants
            out += [variants.to_markdown(results["variants"])]
        problems = _problems(results)
        if problems:
            out += ["## Disagreements and errors", ""] + [f"- **{p}**" for p in problems] + [""]
        for key in _groups(results):
            threads, dtype, mode = key
            out += [f"## {mode.capitalize()}, {dtype}, {threads} thread{'s' if threads != 1 else ''}", "",
                    _md_table(*_rows(results, key)), ""]
        nbusy = sum(_busy(sc) for sc in results["scenarios"])
        if nbusy:
            out += [f"{BUSY} other processes used more than {100 * BUSY_SHARE:.0f}% of the CPUs during the row "
                    f"({nbusy} of {len(results['scenarios'])} rows): slower and noisier times, less reliable ratios.",
                    ""]
        if results["varlen"]:
            v0 = results["varlen"][0]
            out += ["## Variable-length batches", "",
                    f"N={v0['N']} rows with lengths drawn uniformly from [1, T] (seeded): {v0['valid_steps']} valid "
                    f"steps of {v0['full_steps']}. If cost follows the valid steps, the time ratio (varlen / full "
                    f"length, same shape) is close to the valid-steps ratio.", "",
                    _md_table(*_varlen_rows(results)), ""]
        out += ["## Agreement", "", "Largest |peer - rnncore| over every output and gradient compared:", ""]
        rows = []
        for sc in results["scenarios"]:
            for name, r in sc["peers"].items():
                c = r.get("check")
                if c:
                    rows.append([sc["id"], _label(results, name), "yes" if c["ok"] else "**NO**",
                                 f"{c['max_abs_diff']:.2e}" if c["max_abs_diff"] is not None else "-",
                                 f"{c['max_abs_diff_dx']:.2e}" if c.get("max_abs_diff_dx") is not None else "-"])
        out += [_md_table(["scenario", "peer", "agrees", "max abs diff", "max abs diff (dx)"], rows), ""]
        skips = _skips(results)
        if skips:
            out += ["## Not measured", ""] + [f"- {s}" for s in skips] + [""]
        if plots:
            out += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
        elif plot_note:
            out += ["## Plots", "", plot_note, ""]
        out += ["## Method", ""] + [f"- **{k}**: {v}" for k, v in results["method"].items()]
        out += ["- **cells**: " + "; ".join(f"{CELL_LABELS[c]} = {CELL_DESCRIPTIONS[c]}" for c in cfg.get("cells", ())),
                ""]
        iso = _isolation_lines(results)
        if iso:
            out += ["### Isolation check", "",
                    "The worker pools of a multi-threaded OpenBLAS (NumPy's), ONNX Runtime and PyTorch's OpenMP "
                    "busy-wait after a call; on 2 cores a spinning pool slows the next library down. Each peer "
                    "timed alone (back to back, after the others went idle) against naive interleaving (one run "
                    "per visit, no pause) and against the suite's method (pause until idle, blocks):", "",
                    "```"] + iso + ["```", ""]
        out += ["### GEMM peak", "", "One large GEMM per BLAS reachable here; rnncore's own OpenBLAS is called through "
                "ctypes (the same library copy rnncore uses, set to the benchmark's thread count for this "
                "measurement), `numpy_matmul` is NumPy's separate OpenBLAS, `torch_mm` is PyTorch's MKL.", ""] + [f"- {s}" for s in _peak_lines(results)] + [""]
    if seed_table_md:
        out += ["## Seed table", "", seed_table_md.strip(), ""]
    out += ["## Machine", ""] + [f"- {s}" for s in _machine_lines(results)] + [""]
    w = _warnings(results) if results.get("scenarios") is not None else []
    if w:
        out += ["## Warnings", ""] + [f"- {s}" for s in w] + [""]
    return "\n".join(out)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, np.dtype):
        return str(o)
    return repr(o)


def to_json(results):
    return json.dumps(results, indent=1, default=_json_default, allow_nan=True)


_SPEEDUP_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_TIME_TICKS = tuple(m * 10.0 ** e for e in range(-3, 6) for m in (1, 2, 5))


def _ratio_label(v):
    return f"{v:.2f}x" if v < 1 else f"{v:.1f}x" if v < 10 else f"{v:.0f}x"


def _log_axis(ax, values, ticks, fmt, pad=1.6, include=()):
    """A log y axis over the data (and ``include``), with labelled ticks from ``ticks`` only."""
    vals = [v for v in list(values) + list(include) if v is not None and np.isfinite(v) and v > 0]
    if not vals:
        return
    lo, hi = min(vals) / pad, max(vals) * pad ** 2   # room above the bars for their values
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    import matplotlib.ticker
    shown = [t for t in ticks if lo <= t <= hi] or [t for t in ticks if t >= lo][:1]
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(shown))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt(v)))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def write_plots(results, out_dir):
    """PNG plots per (threads, dtype): times and speed-ups per shape. Returns (paths, note).

    Each bar carries its value; the y axes are logarithmic with labelled ticks (0.5x, 1x, 2x, 5x ...
    on the speed-up plot, whose line at 1x marks equal speed); the legend sits above the panels."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return [], f"No plots: matplotlib is not importable ({type(e).__name__}: {e}); pip install 'rnncore[plots]'."
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    by = {}
    for sc in results["scenarios"]:
        by.setdefault((sc["threads"], sc["dtype"]), []).append(sc)
    peers = ["rnncore"] + _peer_columns(results)
    colors = {"rnncore": "#1f77b4", "torch": "#ff7f0e", "reference": "#7f7f7f", "onnxruntime": "#2ca02c"}
    for (threads, dtype), scs in by.items():
        modes = list(dict.fromkeys(s["mode"] for s in scs))
        cells = list(dict.fromkeys(s["cell"] for s in scs))
        for kind in ("time", "speedup"):
            shown = peers if kind == "time" else peers[1:]
            if not shown:
                continue
            per_panel = len(shown) * max(len([s for s in scs if s["mode"] == m and s["cell"] == c])
                                         for m in modes for c in cells)
            wide = per_panel > 12   # many bars: one row per cell, the modes side by side, wider panels
            width = max(4.4, 0.4 * per_panel + 1.0)
            if wide:
                fig, axes = plt.subplots(len(cells), len(modes), figsize=(width * len(modes), 3.6 * len(cells) + 1.0),
                                         squeeze=False)
            else:
                fig, axes = plt.subplots(len(modes), len(cells), figsize=(4.4 * len(cells), 4.0 * len(modes) + 0.9),
                                         squeeze=False)
            for i, mode in enumerate(modes):
                for j, cell in enumerate(cells):
                    ax = axes[j][i] if wide else axes[i][j]
                    sel = [s for s in scs if s["mode"] == mode and s["cell"] == cell]
                    labels = [_shape(s).replace(" varlen", "\nvarlen") for s in sel]
                    xs = np.arange(len(sel))
                    w = 0.8 / max(1, len(shown))
                    every = []
                    for k, name in enumerate(shown):
                        vals, hatch = [], []
                        for s in sel:
                            r = s["peers"].get(name, {})
                            v = r.get("median_ms") if kind == "time" else r.get("speedup")
                            vals.append(np.nan if v is None else v)
                            hatch.append(r.get("status") == "flagged")
                        every += vals
                        bars = ax.bar(xs + (k - (len(shown) - 1) / 2) * w, vals, w, label=_label(results, name),
                                      color=colors.get(name), bottom=None)
                        for b, h, v in zip(bars, hatch, vals):
                            if h:
                                b.set_hatch("xx")
                            if np.isfinite(v):
                                text = _ratio_label(v) if kind == "speedup" else _ms(v)
                                ax.annotate(text, (b.get_x() + b.get_width() / 2, v), xytext=(0, 2),
                                            textcoords="offset points", ha="center", va="bottom", fontsize=7,
                                            bbox=dict(boxstyle="square,pad=0.05", fc="white", ec="none", alpha=0.8))
                    if kind == "speedup":
                        _log_axis(ax, every, _SPEEDUP_TICKS, lambda v: f"{v:g}x", include=(1.0,))
                        ax.axhline(1.0, color="black", lw=1.0, ls="--", zorder=0)
                        ax.set_ylabel("rnncore speed-up (peer time / rnncore time)", fontsize=7.5)
                    else:
                        _log_axis(ax, every, _TIME_TICKS, lambda v: f"{v:g}")
                        ax.set_ylabel("median time per call, ms", fontsize=7.5)
                    ax.set_xticks(xs)
                    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7.5)
                    ax.set_title(f"{CELL_LABELS[cell]} {mode}", fontsize=10)
                    ax.tick_params(axis="y", labelsize=8)
                    ax.grid(axis="y", which="major", lw=0.4, alpha=0.5)
            handles, labels = axes[0][0].get_legend_handles_labels()
            if kind == "speedup":
                title = (f"rnncore speed-up over each peer, {dtype}, {threads} thread(s): above the dashed 1x line "
                         f"rnncore is faster")
                foot = ("Shapes T,N,D,H. Hatched: the peer's outputs disagree with rnncore's (not used). "
                        "No bar: the peer does not have this cell or was not measured (report.md says why).")
            else:
                title = f"time per call (lower is faster), {dtype}, {threads} thread(s)"
                foot = "Shapes T,N,D,H. Hatched: the peer's outputs disagree with rnncore's (not used)."
            fig.suptitle(title, fontsize=12, y=0.995)
            fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.965), ncol=len(labels),
                       fontsize=10, frameon=False)
            fig.text(0.5, 0.005, foot, ha="center", va="bottom", fontsize=8)
            fig.tight_layout(rect=(0, 0.03, 1, 0.93))
            path = os.path.join(out_dir, f"{kind}_{dtype}_t{threads}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths, None


def write_all(results, out_dir, plots=True, seed_table=None):
    """results.json, the plots and report.md into out_dir (created). Returns {kind: path}.

    The JSON goes first; a failing plot becomes a note in the report, never a lost run."""
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    jpath = os.path.join(out_dir, "results.json")
    with open(jpath, "w") as f:
        f.write(to_json(results))
    written["json"] = jpath
    paths, note = [], "Plots disabled (--no-plots)."
    if plots and results.get("scenarios"):
        try:
            paths, note = write_plots(results, out_dir)
        except Exception as e:
            paths, note = [], f"No plots: plotting failed ({type(e).__name__}: {e})."
    st_md = seed_table.get("markdown") if seed_table is not None else None
    mpath = os.path.join(out_dir, "report.md")
    with open(mpath, "w") as f:
        f.write(to_markdown(results, paths, note, st_md))
    written["markdown"] = mpath
    if paths:
        written["plots"] = paths
    else:
        written["plot_note"] = note
    return written
