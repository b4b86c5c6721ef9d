"""The LSTM variants (README, "LSTM variants") against rnncore's plain LSTM and their peers.

Per shape (T, N, D = H; the suite's, up to H = 512) and mode (inference; training = forward and
backward), in rounds whose order rotates, each visit after a pause until the other libraries'
threads are idle and one untimed call, medians: rnncore's plain LSTM; its projection (proj_size = H / 2), peephole and LayerNorm
variants; PyTorch's ``nn.LSTM(proj_size=H / 2)``, the peer of the projection; and, since no library
has a LayerNorm LSTM, the one a PyTorch user would write (``torch.nn.LayerNorm`` in a Python loop
over time, the input projection and its LN for all steps at once, as PyTorch's benchmarks/fastrnns
writes it). Each peer is checked against rnncore first, both in float64 (a long LayerNorm LSTM's
float32 results drift from any float64 one by up to 1e-2), and timed only if it agrees. Reported: each
variant's time over the plain LSTM's (the cost of the variant), and each peer's time over the
variant's (rnncore's speed-up).
"""

import importlib.util
import warnings

import numpy as np

import rnncore

from .timing import Quiesce, _timings

SHAPES = [(100, 1, 256, 256), (100, 8, 256, 256), (100, 64, 256, 256), (50, 32, 512, 512)]
QUICK_SHAPES = [(100, 1, 256, 256), (100, 64, 256, 256)]
MAX_H = 512  # the suite's shapes up to this hidden size (a Python loop over 1024 units takes long)


def shapes_of(suite_shapes):
    """The suite's (T, N, D, H) shapes that the variants are timed at: D = H, H up to MAX_H."""
    return [tuple(s) for s in suite_shapes if len(s) == 4 and s[2] == s[3] and s[3] <= MAX_H]
VARIANTS = [("LSTM", {}), ("proj", {"proj_size": None}), ("peephole", {"peephole": True}),
            ("layer_norm", {"layer_norm": True})]


def _rnncore_call(m, x, mode):
    if mode == "inference":
        return lambda: m(x)
    dy = np.ones((x.shape[0], x.shape[1], m.proj_size or m.hidden_size), x.dtype)

    def train():
        _, _, tape = m.forward(x, train=True)
        m.backward(tape, dy)
    return train


def _agree(torch, module, model, x):
    """Whether the torch module computes the rnncore model's function: both in float64 (float32
    results of a long LayerNorm LSTM drift apart from any float64 one by up to 1e-2, rnncore's and
    NumPy's alike), within 1e-8 of the largest output."""
    import copy

    kw = dict(proj_size=model.proj_size, peephole=model.peephole, layer_norm=model.layer_norm)
    m64 = type(model)(model.input_size, model.hidden_size, dtype=np.float64, seed=0, **kw)
    m64.load_state_dict(model.state_dict())
    t64 = copy.deepcopy(module).double()
    want = m64(x.astype(np.float64))[0]
    with torch.no_grad():
        got = t64(torch.from_numpy(x.astype(np.float64)))
    got = (got[0] if isinstance(got, tuple) else got).numpy()
    return bool(np.abs(got - want).max() <= 1e-8 * max(1.0, float(np.abs(want).max())))


def _torch_call(torch, mod, xt, mode):
    if mode == "inference":
        def infer():
            with torch.inference_mode():
                mod(xt)
        return infer
    xg = xt.clone().requires_grad_(True)

    def train():
        y = mod(xg)
        (y[0] if isinstance(y, tuple) else y).sum().backward()
    return train


def _torch_peers(torch, models, x, mode):
    """name -> (callable, outputs-or-None) for PyTorch's proj LSTM and LayerNorm LSTM (a Python loop)."""
    nn = torch.nn
    out = {}
    xt = torch.from_numpy(x)

    proj = models["proj"]
    tp = proj.to_torch()
    # PyTorch says once that oneDNN has no LSTM with projections (it runs its own code instead)
    warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
    ok = _agree(torch, tp, proj, x)
    out["torch proj"] = (tp, ok)

    ln = models["layer_norm"]
    T, N, D = x.shape
    H = ln.hidden_size

    class LayerNormLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.W_ih = nn.Linear(D, 4 * H, bias=False)
            self.W_hh = nn.Linear(H, 4 * H, bias=False)
            self.b = nn.Parameter(torch.zeros(4 * H))
            self.ln_x, self.ln_h, self.ln_c = nn.LayerNorm(4 * H), nn.LayerNorm(4 * H), nn.LayerNorm(H)

        def forward(self, x):
            h = x.new_zeros(x.shape[1], H)
            c = x.new_zeros(x.shape[1], H)
            xp = self.ln_x(self.W_ih(x))
            ys = []
            for t in range(x.shape[0]):
                i, f, g, o = (xp[t] + self.ln_h(self.W_hh(h)) + self.b).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(self.ln_c(c))
                ys.append(h)
            return torch.stack(ys)

    tl = LayerNormLSTM()
    p = ln.parameters()
    with torch.no_grad():
        for dst, src in ((tl.W_ih.weight, "W_ih_l0"), (tl.W_hh.weight, "W_hh_l0"), (tl.b, "b_l0"),
                         (tl.ln_x.weight, "ln_x_gamma_l0"), (tl.ln_x.bias, "ln_x_beta_l0"),
                         (tl.ln_h.weight, "ln_h_gamma_l0"), (tl.ln_h.bias, "ln_h_beta_l0"),
                         (tl.ln_c.weight, "ln_c_gamma_l0"), (tl.ln_c.bias, "ln_c_beta_l0")):
            dst.copy_(torch.from_numpy(p[src]))
    ok = _agree(torch, tl, ln, x)
    out["torch layer_norm loop"] = (tl, ok)

    calls = {}
    for name, (mod, ok) in out.items():
        calls[name] = (_torch_call(torch, mod, xt, mode), ok)
    return calls


def run(threads=2, quick=False, rounds=None, calls=None, progress=None, shapes=None):
    rounds = rounds or (3 if quick else 5)
    calls = calls or (3 if quick else 5)
    shapes = (QUICK_SHAPES if quick else SHAPES) if shapes is None else shapes
    torch = None
    if importlib.util.find_spec("torch") is not None:
        import torch
    before = rnncore.get_num_threads()
    torch_before = torch.get_num_threads() if torch else None
    rnncore.set_num_threads(threads)
    if torch:
        torch.set_num_threads(threads)
    pause = Quiesce(0.02)
    res = {"threads": threads, "rounds": rounds, "calls": calls, "dtype": "float32",
           "peers": "PyTorch " + torch.__version__ if torch else "none (torch is not installed)", "rows": []}
    try:
        for T, N, D, H in shapes:
            x = np.random.default_rng(0).standard_normal((T, N, D)).astype(np.float32)
            models = {name: rnncore.LSTM(D, H, seed=0, **{k: (H // 2 if v is None else v) for k, v in kw.items()})
                      for name, kw in VARIANTS}
            for mode in ("inference", "training"):
                if progress:
                    progress(f"variants {mode} {T},{N},{D},{H}")
                fns = {name: (_rnncore_call(m, x, mode), True) for name, m in models.items()}
                if torch:
                    fns.update(_torch_peers(torch, models, x, mode))
                for f, _ in fns.values():
                    f()
                times = {name: [] for name in fns}
                names = [name for name, (_, ok) in fns.items() if ok]
                for r in range(rounds):
                    for name in names[r % len(names):] + names[:r % len(names)]:  # the order rotates
                        pause()  # until the last library's pool (PyTorch's OpenMP team) is idle
                        fns[name][0]()
                        times[name].append(float(np.median(_timings(fns[name][0], calls))))
                med = {name: float(np.median(t)) * 1e3 for name, t in times.items() if t}
                row = {"shape": [T, N, D, H], "mode": mode, "ms": med,
                       "disagree": sorted(name for name, (_, ok) in fns.items() if not ok)}
                row["vs_plain"] = {v: med[v] / med["LSTM"] for v, _ in VARIANTS[1:]}
                row["speedup"] = {}
                if "torch proj" in med:
                    row["speedup"]["proj vs torch proj"] = med["torch proj"] / med["proj"]
                if "torch layer_norm loop" in med:
                    row["speedup"]["layer_norm vs torch loop"] = med["torch layer_norm loop"] / med["layer_norm"]
                res["rows"].append(row)
    finally:
        rnncore.set_num_threads(before)
        if torch:
            torch.set_num_threads(torch_before)
    return res


def _lines(res):
    head = ["T,N,D,H", "mode", "LSTM ms", "proj", "peephole", "layer_norm", "proj vs PyTorch proj",
            "layer_norm vs PyTorch loop"]
    rows = []
    for r in res["rows"]:
        v, s = r["vs_plain"], r["speedup"]
        rows.append([",".join(map(str, r["shape"])), r["mode"], f"{r['ms']['LSTM']:.2f}",
                     f"{v['proj']:.2f}x", f"{v['peephole']:.2f}x", f"{v['layer_norm']:.2f}x",
                     f"{s['proj vs torch proj']:.2f}x" if "proj vs torch proj" in s else "-",
                     f"{s['layer_norm vs torch loop']:.2f}x" if "layer_norm vs torch loop" in s else "-"])
    return head, rows


def _title(res):
    return (f"LSTM variants (float32, {res['threads']} threads; proj_size = H/2; medians of {res['rounds']} "
            f"interleaved rounds of {res['calls']} calls; peers: {res['peers']})")


_LEGEND = ("proj, peephole, layer_norm: the variant's time over the plain LSTM's (below 1.3x is the target); "
           "'vs' columns: the peer's time over rnncore's variant (above 1: rnncore is faster).")


def to_markdown(res):
    if not res["rows"]:
        return f"## {_title(res)}\n\nNo shape with D = H <= {MAX_H} in this run.\n"
    head, rows = _lines(res)
    out = [f"## {_title(res)}", "", _LEGEND, "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    bad = sorted({d for r in res["rows"] for d in r["disagree"]})
    if bad:
        out += ["", "Not timed, outputs disagreed with rnncore's: " + ", ".join(bad)]
    return "\n".join(out + [""])


def to_text(res, width=None):
    """The table for a terminal; with ``width``, split by columns into tables that fit it."""
    if not res["rows"]:
        return f"{_title(res)}: no shape with D = H <= {MAX_H} in this run"
    head, rows = _lines(res)
    short = ["T,N,D,H", "mode", "LSTM ms", "proj", "peep", "LN", "vs torch proj", "vs torch LN loop"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(short)]
    fmt = "  ".join("{:<%d}" % w if i < 2 else "{:>%d}" % w for i, w in enumerate(widths))
    table = [fmt.format(*short)] + [fmt.format(*r) for r in rows]
    if width and max(len(line) for line in table) > width:
        from .report import _fit_table
        table = "\n\n".join(_fit_table(short, rows, width, keys=2, right_from=2)).splitlines()
    return "\n".join([_title(res)] + table + [_LEGEND])
