"""Reading the measured numbers against the seed's claims: one verdict per column of the table."""

import math

import numpy as np

from ._format import _g, _ratio
from .measure import COLUMNS, _mse_at, _profile_key

_TIE = 1.5   # MSEs (and spike rates) within this factor of each other count as equal: a few seeds are noisy


def _div(a, b):
    return a / b if b else math.inf


def _verdicts(cfg, speed, memory, stability):
    """Per seed column: {"verdict": "agrees" | "partly" | "disagrees" | "n/a", "checks": [[ok, text], ...],
    "reading": one line}. Each check is one of the seed's claims against the measurement."""
    if not all(c in cfg["cells"] for c in ("RNN", "LSTM", "GRU")):
        na = {"verdict": "n/a", "checks": [], "reading": "needs the RNN, LSTM and GRU rows"}
        return {col: dict(na) for col in COLUMNS[1:]}

    def verdict(checks):
        passed = sum(ok for ok, _ in checks)
        word = "agrees" if passed == len(checks) else ("disagrees" if passed == 0 else "partly")
        reading = f"{passed} of {len(checks)} claims hold: " + "; ".join(
            ("✓ " if ok else "✗ ") + text for ok, text in checks)
        return {"verdict": word, "checks": [[bool(ok), text] for ok, text in checks], "reading": reading}

    three = ("RNN", "LSTM", "GRU")
    out = {}

    reach = {c: memory[c]["largest_T_solved"] or 0 for c in three}
    reached = ", ".join(f"{c} {reach[c] or 'none'}" for c in three)
    checks = [
        (reach["RNN"] < min(reach["LSTM"], reach["GRU"]), f"RNN limited (largest T solved: {reached})"),
        (reach["LSTM"] >= reach["GRU"], "LSTM (alta) reaches at least as far as GRU (media a alta)"),
    ]
    both = min(reach["LSTM"], reach["GRU"])
    if both:
        # the ladder's resolution can hide a difference: compare how reliably and how fast both learn there
        how = {}
        for c in ("LSTM", "GRU"):
            seeds = memory[c]["runs"][str(both)]["seeds"]
            steps = [r["steps_to_solve"] for r in seeds if r["solved"]]
            how[c] = (len(steps), float(np.median(steps)), memory[c]["runs"][str(both)]["seeds_total"])
        checks.append((how["LSTM"][0] >= how["GRU"][0] and how["LSTM"][1] <= _TIE * how["GRU"][1],
                       f"LSTM learns T={both} at least as reliably and, within {_TIE:g}x, as fast as GRU "
                       f"(seeds solved, median step: LSTM {how['LSTM'][0]}/{how['LSTM'][2]} at "
                       f"{how['LSTM'][1]:.0f}, GRU {how['GRU'][0]}/{how['GRU'][2]} at {how['GRU'][1]:.0f})"))
    out[COLUMNS[1]] = verdict(checks)

    T0 = min(cfg["ladder"])
    mse = {c: _mse_at(memory, c, T0) for c in three}
    inf = {c: (math.inf if v is None else v) for c, v in mse.items()}
    shown = ", ".join(f"{c} {_g(mse[c])}" for c in three)
    checks = [
        (inf["RNN"] > _TIE * max(inf["LSTM"], inf["GRU"]), f"RNN low (held-out MSE at T={T0}: {shown})"),
        (inf["LSTM"] <= _TIE * inf["GRU"], f"LSTM (alta) at least as precise as GRU (media-alta), within "
                                           f"{_TIE:g}x (LSTM/GRU = {_div(inf['LSTM'], inf['GRU']):.2f})"),
    ]
    out[COLUMNS[2]] = verdict(checks)

    tr = {c: speed[c]["train_seq_per_s"] for c in three}
    size = {c: speed[c]["parameters"] for c in three}
    ratio = tr["GRU"] / tr["LSTM"]
    st = {c: stability[c] for c in three}

    def vanish(c):
        return _profile_key(st[c]["trained"] or st[c]["init"])

    rate = {c: st[c]["grad_spikes_per_1000_steps"] or 0.0 for c in three}
    Ts = cfg["stability_T"]
    checks = [
        (tr["RNN"] > max(tr["LSTM"], tr["GRU"]),
         f"RNN fast (training: RNN {tr['RNN']:,.0f}, GRU {tr['GRU']:,.0f}, LSTM {tr['LSTM']:,.0f} seq/s)"),
        (vanish("RNN") < min(vanish("LSTM"), vanish("GRU")) - 1.0,
         f"RNN unstable: its gradient vanishes most (first/last ||dL/dx_t|| at T={Ts} after training: "
         + ", ".join(f"{c} {_ratio(st[c]['trained'] or st[c]['init'])}" for c in three) + ")"),
        (rate["RNN"] > _TIE * max(rate["LSTM"], rate["GRU"]),
         f"RNN unstable: clearly (>{_TIE:g}x) the most gradient spikes (per 1000 steps: "
         + ", ".join(f"{c} {rate[c]:.1f}" for c in three) + ")"),
        (tr["LSTM"] < min(tr["RNN"], tr["GRU"]), "LSTM slowest"),
        (size["LSTM"] > max(size["RNN"], size["GRU"]),
         f"LSTM largest ({size['LSTM']:,} parameters; GRU {size['GRU']:,}, RNN {size['RNN']:,})"),
        (inf["LSTM"] <= _TIE * min(inf["GRU"], inf["RNN"]), f"LSTM most precise, within {_TIE:g}x "
                                                             f"(MSE at T={T0}: {shown})"),
        (1.0 < ratio <= 2.0, f"GRU a little faster than LSTM (trains {ratio:.2f}x as fast; 'a little' = 1-2x)"),
    ]
    out[COLUMNS[3]] = verdict(checks)
    return out
