"""Rendering a suite's results: terminal table, Markdown report, JSON file, PNG plots."""

import json
import os

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


def to_text(results):
    out = []
    for key in _groups(results):
        threads, dtype, mode = key
        out.append(f"\n== {mode}, {dtype}, {threads} thread{'s' if threads != 1 else ''} ==   "
                   f"(speed-up = peer median / rnncore median; {FLAG} = disagrees with rnncore)")
        out.append(_text_table(*_rows(results, key)))
    if results.get("step_latency"):
        from . import step_latency
        out.append(step_latency.to_text(results["step_latency"]))
    if results.get("floors"):
        from . import floors
        out.append(floors.to_text(results["floors"]))
    if results.get("variants"):
        from . import variants
        out.append(variants.to_text(results["variants"]))
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
        out.append(_text_table(*_varlen_rows(results), right_from=4))
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
    return "\n".join(out).lstrip("\n")


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


def write_plots(results, out_dir):
    """PNG plots per (threads, dtype): times and speed-ups per shape. Returns (paths, note)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
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
            fig, axes = plt.subplots(len(modes), len(cells), figsize=(4.2 * len(cells), 3.6 * len(modes)),
                                     squeeze=False)
            shown = peers if kind == "time" else peers[1:]
            for i, mode in enumerate(modes):
                for j, cell in enumerate(cells):
                    ax = axes[i][j]
                    sel = [s for s in scs if s["mode"] == mode and s["cell"] == cell]
                    labels = [_shape(s).replace(" varlen", "\nvarlen") for s in sel]
                    xs = np.arange(len(sel))
                    w = 0.8 / max(1, len(shown))
                    for k, name in enumerate(shown):
                        vals, hatch = [], []
                        for s in sel:
                            r = s["peers"].get(name, {})
                            v = r.get("median_ms") if kind == "time" else r.get("speedup")
                            vals.append(np.nan if v is None else v)
                            hatch.append(r.get("status") == "flagged")
                        bars = ax.bar(xs + (k - (len(shown) - 1) / 2) * w, vals, w, label=_label(results, name),
                                      color=colors.get(name))
                        for b, h in zip(bars, hatch):
                            if h:
                                b.set_hatch("xx")
                    ax.set_yscale("log")
                    fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
                    ax.yaxis.set_major_formatter(fmt)
                    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                    if kind == "speedup":
                        ax.axhline(1.0, color="black", lw=0.8)
                    ax.set_xticks(xs)
                    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
                    ax.set_title(f"{CELL_LABELS[cell]} {mode}", fontsize=9)
                    ax.set_ylabel("median ms" if kind == "time" else "rnncore speed-up (x)", fontsize=8)
                    ax.tick_params(axis="y", labelsize=7)
            handles, labels = axes[0][0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="upper left", fontsize=8, ncol=len(labels))
            title = "time per call" if kind == "time" else "rnncore speed-up over each peer (hatched: disagrees)"
            fig.suptitle(f"{title} — {dtype}, {threads} thread(s); shapes T,N,D,H", fontsize=10)
            fig.tight_layout(rect=(0, 0, 0.93, 0.95))
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
