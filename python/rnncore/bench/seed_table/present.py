"""Presentation: the seed's table beside the measurements and the verdicts, as Markdown and as text."""

import numpy as np

from ._format import _g, _ratio
from .measure import COLUMNS, SEED_TABLE, _mse_at
from .verdicts import _TIE

def _run_cell(run):
    """One ladder rung for the tables: held-out MSE (median over the seeds that ran it), ✓ when
    solved and the median step the solving seeds got there, and k/n seeds solved when n > 1."""
    if run is None:
        return "—"
    text = _g(run["final_mse_median"])
    solved = [r["steps_to_solve"] for r in run["seeds"] if r["solved"]]
    if run["solved"]:
        text += f" ✓ paso {int(np.median(solved))}"
    if run["seeds_total"] > 1:
        text += f" ({len(solved)}/{run['seeds_total']})"
    return text


def _first_failure(mem):
    failed = [r["T"] for r in mem["runs"].values() if not r["solved"]]
    return min(failed) if failed else None


def _measured_rows(result):
    cfg = result["config"]
    T0 = min(cfg["ladder"])
    seed_rows = {r[0]: r for r in SEED_TABLE}
    rows = []
    for cell in cfg["cells"]:
        mem, sp, st = result["memory"][cell], result["speed"][cell], result["stability"][cell]
        reach, fail = mem["largest_T_solved"], _first_failure(mem)
        memory = f"resuelve hasta T={reach}" if reach else "no resuelve ningún T"
        if reach:
            memory += f": {_run_cell(mem['runs'][str(reach)])}"
        if fail:
            memory += f"; falla T={fail}: {_run_cell(mem['runs'][str(fail)])}"
        rate = st["grad_spikes_per_1000_steps"]
        rows.append({
            "cell": cell,
            "seed": seed_rows.get(cell, (cell, "—", "—", "—"))[1:],
            "memory": memory,
            "capacity": f"MSE {_g(_mse_at(result['memory'], cell, T0))} a T={T0}",
            "speed": (f"{sp['train_seq_per_s']:,.0f} sec/s entrenamiento, {sp['infer_seq_per_s']:,.0f} inferencia; "
                      f"{sp['parameters']:,} parámetros; gradiente 1.º/último {_ratio(st['trained'])}; "
                      f"{'—' if rate is None else f'{rate:.1f}'} picos/1000 pasos"),
        })
    return rows


def _method_lines(result):
    cfg, task, env = result["config"], result["task"], result["environment"]
    forget = (f" LSTM forget-gate bias +{cfg['lstm_forget_bias']:g} at init." if cfg["lstm_forget_bias"] else "")
    return [
        f"Speed: {cfg['dtype']}, H = D = {cfg['speed_hidden']}, T = {cfg['speed_T']}, N = {cfg['speed_N']}; "
        f"median of {cfg['speed_repeats']} interleaved rounds after {cfg['speed_warmup']} warm-up; training = "
        f"forward + backward with a gradient on every output; {env['speed_threads']} BLAS thread(s), "
        f"kernel {env['blas']}. Wall-clock numbers: they move with the machine's load.",
        f"Long-term memory: adding problem (Hochreiter & Schmidhuber 1997), 1 layer, H = {cfg['hidden']}, "
        f"Linear readout of the final hidden state; per cell and T at most {cfg['steps']} Adam steps "
        f"(lr {cfg['lr']}, batch {cfg['batch']}, global gradient-norm clip {cfg['clip']}), the same batches for "
        f"every cell, {cfg['train_seeds']} seed(s); held-out set of {cfg['eval_size']}, evaluated every "
        f"{cfg['eval_every']} steps. Solved = held-out MSE < {task['threshold']:g} (always predicting 1 scores "
        f"{task['baseline_mse']:.3f}); "
        + ("a rung stops once solved; " if cfg["early_stop"] else "")
        + f"the ladder {', '.join(map(str, cfg['ladder']))} stops after {cfg['stop_after_failures']} failure(s)."
        + forget,
        f"Modelling capacity / precision: held-out MSE after the full {cfg['steps']} steps at T = "
        f"{min(cfg['ladder'])}, where memory is not the limit; MSEs within {_TIE:g}x count as equal.",
        f"Stability at T = {cfg['stability_T']}: mean over the batch of ||dLoss/dx_t||, first step over last "
        f"(below 1 = vanishing), at initialisation and after training (the median seed); spikes = training steps whose pre-clip "
        f"gradient norm exceeds {cfg['spike_factor']:g}x the median of the {cfg['spike_window']} steps before, "
        f"counted over the rungs every cell trained on (T = "
        f"{', '.join(map(str, next(iter(result['stability'].values()))['spike_rungs']))}).",
    ]


def to_markdown(result):
    """A Markdown section: the seed's table, the measured values beside it, and a reading per column."""
    cfg = result["config"]
    header = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines = ["## The seed's comparison table, measured with rnncore", "", "What the notes claim:", ""] + header
    lines += ["| **" + r[0] + "** | " + " | ".join(r[1:]) + " |" for r in SEED_TABLE]
    lines += ["", f"Measured (budget `{result['budget']}`, seed {result['seed']}); the notes' words, then → what "
                  "rnncore measures:", ""] + header
    for row in _measured_rows(result):
        claim = row["seed"]
        lines.append(f"| **{row['cell']}** | {claim[0]} → {row['memory']} | {claim[1]} → {row['capacity']} | "
                     f"{claim[2]} → {row['speed']} |")
    lines += ["", "Reading, per column (✓ the measurement supports the claim, ✗ it does not):", ""]
    for col in COLUMNS[1:]:
        v = result["verdicts"][col]
        lines.append(f"- **{col}** — {v['verdict']}. {v['reading']}.")

    T_all = _all_T(result)
    lines += ["", "Adding problem, held-out MSE by sequence length (✓ solved, at the step given; — not run):", "",
              "| Modelo | " + " | ".join(f"T={T}" for T in T_all) + " |", "|" + "---|" * (len(T_all) + 1)]
    for cell in cfg["cells"]:
        runs = result["memory"][cell]["runs"]
        lines.append(f"| {cell} | " + " | ".join(_run_cell(runs.get(str(T))) for T in T_all) + " |")

    lines += ["", f"Speed, size and stability (gradients at T = {cfg['stability_T']}):", "",
              "| Modelo | parámetros | entrenamiento (sec/s) | inferencia (sec/s) | ‖dL/dx₁‖ / ‖dL/dx_T‖ al inicio "
              "| tras entrenar | picos de gradiente |", "|---|---|---|---|---|---|---|"]
    for cell in cfg["cells"]:
        sp, st = result["speed"][cell], result["stability"][cell]
        lines.append(f"| {cell} | {sp['parameters']:,} | {sp['train_seq_per_s']:,.0f} | {sp['infer_seq_per_s']:,.0f} "
                     f"| {_ratio(st['init'])} | {_ratio(st['trained'])} | "
                     f"{st['grad_spikes']} en {st['steps']:,} pasos |")
    lines += ["", "How it was measured:", ""] + ["- " + m for m in _method_lines(result)]
    lines += ["", f"Run time {result['timings']['total_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def _all_T(result):
    return sorted({int(T) for m in result["memory"].values() for T in m["runs"]})


def _table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))] + \
        [fmt.format(*map(str, r)).rstrip() for r in rows]


def to_text(result):
    """The same content for a terminal."""
    cfg = result["config"]
    out = [f"The seed's comparison table, measured with rnncore (budget {result['budget']}, seed {result['seed']})",
           "", "The notes claim:", ""]
    out += _table(COLUMNS, SEED_TABLE)
    out += ["", "Measured:", ""]
    T0 = min(cfg["ladder"])
    rows = []
    for cell in cfg["cells"]:
        mem, sp, st = result["memory"][cell], result["speed"][cell], result["stability"][cell]
        rate = st["grad_spikes_per_1000_steps"]
        rows.append([cell, mem["largest_T_solved"] or "none", _g(_mse_at(result["memory"], cell, T0)),
                     f"{sp['train_seq_per_s']:,.0f}", f"{sp['infer_seq_per_s']:,.0f}", f"{sp['parameters']:,}",
                     _ratio(st["init"]), _ratio(st["trained"]), "—" if rate is None else f"{rate:.1f}"])
    out += _table(["cell", "max T solved", f"MSE at T={T0}", "train seq/s", "infer seq/s", "params",
                   f"grad 1st/last T={cfg['stability_T']} init", "trained", "spikes/1000 steps"], rows)
    T_all = _all_T(result)
    out += ["", "Adding problem, held-out MSE by T (✓ solved, at the step given):", ""]
    out += _table(["cell"] + [f"T={T}" for T in T_all],
                  [[cell] + [_run_cell(result["memory"][cell]["runs"].get(str(T))) for T in T_all]
                   for cell in cfg["cells"]])
    out += [""]
    for col in COLUMNS[1:]:
        v = result["verdicts"][col]
        out.append(f"{col}: {v['verdict']}. {v['reading']}.")
    out += [""] + _method_lines(result) + ["", f"Run time {result['timings']['total_s']:.0f} s."]
    return "\n".join(out) + "\n"
