"""A PyTorch training step with rnncore.torch.LSTM against the same step with torch.nn.LSTM.

``rnncore-bench --torch-step`` runs it. One step is what a PyTorch training loop does per batch:
forward of the LSTM (D = H, one layer, float32), an MSE loss against a fixed target, backward,
and an Adam step over the LSTM's parameters. Both modules start from the same weights; before
timing, their losses and gradients are checked to agree. Both use the same thread count
(rnncore's team and PyTorch's intra-op pool).

The wrapper's own cost is measured at the first shape: forward and backward of the module
(autograd, argument checks, the parameter map) against the same forward and backward called on
an ``rnncore.LSTM`` directly with NumPy arrays (without the input's gradient, which the module
skips too when the input needs none), as a fraction of the module's full step. Beside them, the
bare calls followed by a ``torch.autograd.Function`` with the module's inputs and outputs that
computes nothing: the difference is what PyTorch's autograd machinery alone costs there, between
heavy calls (any module written as such a Function pays it). These four (the full step, the
module, the bare calls, the bare calls and the empty Function) run one call each per round, in a
rotating order, and each difference is taken within a round: on a machine whose speed drifts
between seconds, the difference of two calls made milliseconds apart is far steadier than that
of two medians taken apart.

The floor: an LSTM layer's forward and backward are six GEMM-shaped products of the same size
(forward: the input projection and the recurrent products; backward: the recurrent products,
dx, dW_ih and dW_hh), 2 * 6 * T * N * 4H * H FLOPs at D = H; five when the input needs no
gradient, as here (the step's input is data), since dx is then not needed. At the best size^3
SGEMM rate measured in the same run (rnncore's OpenBLAS, NumPy's matmul or torch.mm, whichever
is fastest, with the same threads; measured before the steps and again after them, the best of
both), the five products alone take ``floor_s``. The rest of the
step (the loss, PyTorch's autograd and Adam) is timed beside the two modules as the same step
with the empty Function in place of the LSTM and no gradients made (``rest_s``, a lower bound). No implementation's step
can be faster than ``floor_s + rest_s``, so ``torch.nn.LSTM``'s step time over it bounds the
speedup any replacement can reach (``max_speedup``).

Times are medians over interleaved rounds: each round times every variant in turn (in a rotating
order), so a slowdown of the machine touches all of them alike. The ratio of the minima is given
too: on a busy machine it is the steadier of the two.
"""

import os
import platform
import time

import numpy as np

import rnncore

SHAPES = ((100, 8, 256), (100, 64, 256), (50, 32, 512))
OVERHEAD_SHAPE = (100, 8, 256)
TARGET_SPEEDUP_N8 = 1.5       # the targets: at least 1.5x faster at N = 8, no slower anywhere
TARGET_OVERHEAD = 0.05        # the wrapper's cost, at most 5 % of the step at (100, 8, 256)


def _timings(fn, reps, warmup=0):
    from .timing import _timings as timings   # the benchmark's one timing loop
    return timings(fn, reps, warmup)


def _interleaved(fns, rounds, budget_s):
    """name -> list of seconds per call: ``rounds`` rounds, each timing every fn for about
    ``budget_s / rounds`` seconds, in a rotating order."""
    names = list(fns)
    once = {n: min(_timings(fns[n], 2, warmup=1)) for n in names}
    reps = {n: max(2, min(40, int(budget_s / rounds / max(once[n], 1e-6)))) for n in names}
    out = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            out[n] += _timings(fns[n], reps[n])
    return out


def _train_step(torch, params, forward, target, lr, zero=None):
    """One training step as a closure: ``zero()`` (default: the optimizer's zero_grad), y =
    ``forward()``, the MSE loss against ``target``, backward, and an Adam step over ``params``."""
    opt = torch.optim.Adam(params, lr=lr)
    loss_fn = torch.nn.functional.mse_loss
    zero = zero or (lambda: opt.zero_grad(set_to_none=True))

    def step():
        zero()
        loss = loss_fn(forward(), target)
        loss.backward()
        opt.step()
    step.optimizer = opt
    return step


def _step_fn(torch, model, x, target, lr=1e-4):
    return _train_step(torch, model.parameters(), lambda: model(x)[0], target, lr)


def _check_agreement(torch, ours, theirs, x, target):
    """Largest relative difference of the loss and of the gradients (float32: about 1e-6 expected)."""
    worst = 0.0
    losses, grads = [], []
    for m in (ours, theirs):
        m.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(m(x)[0], target)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.detach().clone() for p in m.parameters()])
        m.zero_grad(set_to_none=True)
    for a, b in zip([losses[0]] + grads[0], [losses[1]] + grads[1]):
        worst = max(worst, float((a - b).abs().max() / max(float(b.abs().max()), 1e-30)))
    return worst


def lstm_step_flops(T, N, H, input_grad=True):
    """FLOPs of one LSTM layer's forward and backward at D = H: six products of T*N x H by H x 4H,
    five without the input's gradient (dx)."""
    return 2.0 * (6 if input_grad else 5) * T * N * 4 * H * H


def _gemm_peak(torch, threads, size):
    """The best size^3 float32 GEMM rate (FLOP/s) of rnncore's OpenBLAS, NumPy's matmul (when the
    threads are all the cores) and torch.mm, and which (timing.gemm_peaks)."""
    from .machine import rnncore_blas
    from .timing import gemm_peaks

    class _Torch:
        _torch = torch
    peaks = gemm_peaks([threads], [np.float32], size, {"torch": _Torch()}, rnncore_blas(), None, reps=3)
    entry = next(iter(peaks.values()))
    return entry["best"] * 1e9, entry["best_source"], entry["gflops"]


def run(shapes=SHAPES, threads=2, rounds=5, budget_s=1.5, seed=0, progress=None, overhead_shape=OVERHEAD_SHAPE,
        gemm_size=2048, overhead_samples=60):
    """Returns a JSON-ready dict: per shape, median seconds of a step for each module and the
    ratio, the step without the LSTM's work, and the step's GEMM floor; then the wrapper overhead
    at ``overhead_shape`` (when it is one of ``shapes``), over ``overhead_samples`` rounds."""
    import torch

    import rnncore.torch as rt

    before = rnncore.get_num_threads(), torch.get_num_threads()
    rnncore.set_num_threads(threads)
    torch.set_num_threads(threads)
    out = {"what": "PyTorch training step (forward, MSE loss, backward, Adam): rnncore.torch.LSTM vs torch.nn.LSTM",
           "dtype": "float32", "threads": threads, "rounds": rounds, "seed": seed, "machine": _machine(torch),
           "shapes": [], "overhead": None, "openmp_shared": rnncore._core.openmp_attached(), "peak": None}
    try:
        peaks = []

        def measure_peak():
            if progress:
                progress(f"torch step: GEMM peak ({gemm_size}^3)")
            peaks.append(_gemm_peak(torch, threads, gemm_size))
        if gemm_size > 0:
            measure_peak()
        for T, N, H in shapes:
            if progress:
                progress(f"torch step: T={T} N={N} H={H}")
            torch.manual_seed(seed)
            ours = rt.LSTM(H, H)
            theirs = torch.nn.LSTM(H, H)
            theirs.load_state_dict(ours.state_dict())
            g = torch.Generator().manual_seed(seed)
            x, target = torch.randn(T, N, H, generator=g), torch.randn(T, N, H, generator=g)
            agree = _check_agreement(torch, ours, theirs, x, target)
            fns = {"rnncore.torch.LSTM": _step_fn(torch, ours, x, target),
                   "torch.nn.LSTM": _step_fn(torch, theirs, x, target),
                   "no LSTM work": _no_lstm_step_fn(torch, rt.LSTM(H, H), x, target)}
            times = _interleaved(fns, rounds, budget_s)
            med = {k: float(np.median(v)) for k, v in times.items()}
            best = {k: float(np.min(v)) for k, v in times.items()}
            row = {"T": T, "N": N, "D": H, "H": H, "max_rel_diff": agree, "median_s": med, "min_s": best,
                   "samples": {k: len(v) for k, v in times.items()},
                   "speedup": med["torch.nn.LSTM"] / med["rnncore.torch.LSTM"],
                   "speedup_min": best["torch.nn.LSTM"] / best["rnncore.torch.LSTM"],
                   "rest_s": med["no LSTM work"]}
            out["shapes"].append(row)
            if (T, N, H) == tuple(overhead_shape or ()):
                out["overhead"] = _overhead(torch, ours, x, target, overhead_samples, progress)
        if gemm_size > 0:  # the best of a measurement before and one after the steps
            measure_peak()
            peak, source, all_ = max(peaks, key=lambda p: p[0])
            out["peak"] = {"size": gemm_size, "gflops": peak / 1e9, "source": source, "all_gflops": all_,
                           "measured_gflops": [p[0] / 1e9 for p in peaks]}
            for row in out["shapes"]:
                row["floor_s"] = lstm_step_flops(row["T"], row["N"], row["H"], input_grad=False) / peak
                row["max_speedup"] = row["median_s"]["torch.nn.LSTM"] / (row["floor_s"] + row["rest_s"])
    finally:
        rnncore.set_num_threads(before[0])
        torch.set_num_threads(before[1])
    return out


def _empty_class(torch, module, x, param_grads=True):
    """A ``torch.autograd.Function`` with the module's inputs and outputs (x, the states, the
    parameters; y, h_n, c_n) that computes nothing: its outputs are arrays made once. With
    ``param_grads`` its backward returns fresh, unwritten tensors as the parameters' gradients
    (fresh as any module's are: PyTorch keeps them without a copy), else none. Its forward and
    backward cost what PyTorch's autograd machinery costs any such module."""
    T, N, H = x.shape[0], x.shape[1], module.hidden_size
    y, h, c = (np.zeros(s, np.float32) for s in ((T, N, H), (1, N, H), (1, N, H)))
    params = list(module.parameters())

    class Empty(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, h0, c0, *ps):
            ctx.save_for_backward(*ps)
            return torch.from_numpy(y), torch.from_numpy(h), torch.from_numpy(c)

        @staticmethod
        def backward(ctx, dy, dh, dc):
            ps = ctx.saved_tensors
            return (None, None, None) + tuple(torch.empty_like(p) if param_grads else None for p in ps)

    return Empty, params


def _empty_function(torch, module, x):
    """Forward and backward through ``_empty_class``'s Function, as ``_overhead`` times the module's."""
    Empty, params = _empty_class(torch, module, x)
    dy = torch.from_numpy(np.ones((x.shape[0], x.shape[1], module.hidden_size), np.float32))

    def run():
        for p in params:
            p.grad = None
        out = Empty.apply(x, None, None, *params)
        out[0].backward(dy)
    return run


def _no_lstm_step_fn(torch, module, x, target, lr=1e-4):
    """``_step_fn``'s step with the LSTM's forward and backward replaced by ``_empty_class``'s
    Function, and gradients of zeros set once: what the rest of the step (the loss and its
    gradient, PyTorch's autograd, Adam) costs at the least. (No gradient is made or accumulated:
    a lower bound of what any module's step adds to its LSTM's products.)"""
    Empty, params = _empty_class(torch, module, x, param_grads=False)
    grads = [torch.zeros_like(p) for p in params]

    def preset():
        for p, g in zip(params, grads):
            p.grad = g
    return _train_step(torch, params, lambda: Empty.apply(x, None, None, *params)[0], target, lr, zero=preset)


def _paired(fns, samples):
    """name -> list of seconds: ``samples`` rounds, each calling every fn once, in a rotating
    order; entry i of every list comes from round i (so that differences can be taken round by
    round, between calls a few milliseconds apart)."""
    names = list(fns)
    for n in names:
        fns[n]()
    out = {n: [] for n in names}
    for r in range(samples):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[n]()
            out[n].append(time.perf_counter() - t0)
    return out


def _overhead(torch, module, x, target, samples, progress):
    """Forward and backward through the module against the same calls on rnncore.LSTM directly;
    and, beside the bare calls, a Function that computes nothing (_empty_function): PyTorch's own
    share of the difference, measured as (bare calls + the empty Function) - bare calls. The full
    step runs in the same rounds: each difference is taken within a round and set against that
    round's step, and the medians over the rounds are given."""
    if progress:
        progress("torch step: wrapper overhead")
    core = rnncore.from_torch(module)
    xn = x.numpy()
    dy = np.random.default_rng(1).standard_normal((x.shape[0], x.shape[1], module.hidden_size)).astype(np.float32)
    dyt = torch.from_numpy(dy)
    empty = _empty_function(torch, module, x)

    def wrapped():
        module.zero_grad(set_to_none=True)
        y, _ = module(x)
        y.backward(dyt)

    def bare():  # as the module: x needs no gradient, so none is computed
        y, _, tape = core.forward(xn, train=True)
        core.backward(tape, dy, input_grad=x.requires_grad)

    def bare_and_empty():
        bare()
        empty()
    times = _paired({"step": _step_fn(torch, module, x, target), "module": wrapped, "bare": bare,
                     "bare + empty Function": bare_and_empty}, samples)
    t = {k: np.array(v) for k, v in times.items()}
    wrapper, autograd = t["module"] - t["bare"], t["bare + empty Function"] - t["bare"]
    return {"T": x.shape[0], "N": x.shape[1], "H": module.hidden_size, "samples": samples,
            "rounds_s": {k: [float(v) for v in vs] for k, vs in t.items()},
            "median_s": {k: float(np.median(v)) for k, v in t.items()},
            "min_s": {k: float(np.min(v)) for k, v in t.items()},
            "step_s": float(np.median(t["step"])), "overhead_s": float(np.median(wrapper)),
            "overhead_iqr_s": [float(np.percentile(wrapper, 25)), float(np.percentile(wrapper, 75))],
            "fraction_of_step": float(np.median(wrapper / t["step"])),
            "autograd_s": float(np.median(autograd)),
            "autograd_fraction_of_step": float(np.median(autograd / t["step"]))}


def _machine(torch):
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {"logical_cpus": os.cpu_count(), "usable_cpus": usable, "platform": platform.platform(),
            "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "rnncore": rnncore.__version__, "rnncore_blas": rnncore.blas_info(), "torch": torch.__version__,
            "env": {k: os.environ.get(k, "unset") for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def to_text(result):
    lines = [f"{result['what']}; {result['dtype']}, {result['threads']} threads each, medians of "
             f"{result['rounds']} interleaved rounds; rnncore on "
             f"{'PyTorch' if result.get('openmp_shared') else 'its own'} OpenMP threads",
             f"{'T':>4} {'N':>4} {'H':>4}  {'rnncore.torch ms':>16} {'torch.nn ms':>12} {'speedup':>8}  "
             f"{'(of minima)':>11}  {'rest ms':>7} {'floor ms':>8} {'max speedup':>11}  max rel diff"]
    for r in result["shapes"]:
        m = r["median_s"]
        floor = (f"{r['floor_s'] * 1e3:>8.2f} {r['max_speedup']:>10.2f}x" if "floor_s" in r else f"{'-':>8} {'-':>11}")
        lines.append(f"{r['T']:>4} {r['N']:>4} {r['H']:>4}  {m['rnncore.torch.LSTM'] * 1e3:>16.2f} "
                     f"{m['torch.nn.LSTM'] * 1e3:>12.2f} {r['speedup']:>7.2f}x  {r['speedup_min']:>10.2f}x  "
                     f"{r['rest_s'] * 1e3:>7.2f} {floor}  {r['max_rel_diff']:.2g}")
    lines.append("rest: the same step with a Function that computes nothing in place of the LSTM and gradients of "
                 "zeros set once (loss, autograd, Adam): what any module's step adds to its LSTM's products, at the least")
    p = result.get("peak")
    if p:
        lines.append(f"floor: the LSTM's five GEMM-shaped products a step needs when its input needs no gradient "
                     f"(2 * 5 * T * N * 4H * H FLOPs) at the best "
                     f"{p['size']}^3 SGEMM measured here (before and after the steps: "
                     f"{', '.join(f'{g:.0f}' for g in p.get('measured_gflops', []))}), {p['gflops']:.0f} GFLOP/s "
                     f"({p['source']}); max speedup: "
                     f"torch.nn's step over floor + rest, the most any replacement could reach")
    o = result.get("overhead")
    if o:
        lines.append(f"wrapper overhead at (T, N, H) = ({o['T']}, {o['N']}, {o['H']}), {o['samples']} rounds: "
                     f"forward + backward {o['median_s']['module'] * 1e3:.2f} ms through the module, "
                     f"{o['median_s']['bare'] * 1e3:.2f} ms on rnncore.LSTM directly; their difference within a "
                     f"round {o['overhead_s'] * 1e3:.3f} ms (quartiles {o['overhead_iqr_s'][0] * 1e3:.3f} to "
                     f"{o['overhead_iqr_s'][1] * 1e3:.3f}), {100 * o['fraction_of_step']:.1f} % of the round's "
                     f"full step ({o['step_s'] * 1e3:.2f} ms) (medians over the rounds)")
        lines.append(f"  of which PyTorch's autograd machinery alone (a Function with the same inputs and outputs "
                     f"that computes nothing, run after the bare calls): {o['autograd_s'] * 1e3:.3f} ms, "
                     f"{100 * o['autograd_fraction_of_step']:.1f} % of the step")
    rows = {(r["T"], r["N"], r["H"]): r for r in result["shapes"]}
    if rows:
        n8 = [r for r in rows.values() if r["N"] == 8]
        met = (all(r["speedup"] >= TARGET_SPEEDUP_N8 for r in n8) and all(r["speedup"] >= 1 for r in rows.values())
               and (not o or o["fraction_of_step"] <= TARGET_OVERHEAD))
        lines.append(f"targets: {TARGET_SPEEDUP_N8}x at N = 8, no slower elsewhere, wrapper at most "
                     f"{100 * TARGET_OVERHEAD:.0f} % of the step: {'met' if met else 'not met'} in this run (medians)")
    m = result["machine"]
    lines.append(f"machine: {m['usable_cpus']} usable CPUs, load average at start {m['loadavg_start']}, "
                 f"torch {m['torch']}, rnncore BLAS core {m['rnncore_blas']['corename']}, "
                 + ", ".join(f"{k}={v}" for k, v in m["env"].items()))
    return "\n".join(lines)


def to_markdown(result):
    rows = ["| T | N | H | rnncore.torch.LSTM (ms) | torch.nn.LSTM (ms) | speedup | speedup of minima "
            "| rest of the step (ms) | GEMM floor (ms) | max speedup |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["shapes"]:
        m = r["median_s"]
        floor = f"{r['floor_s'] * 1e3:.2f} | {r['max_speedup']:.2f}x" if "floor_s" in r else "- | -"
        rows.append(f"| {r['T']} | {r['N']} | {r['H']} | {m['rnncore.torch.LSTM'] * 1e3:.2f} | "
                    f"{m['torch.nn.LSTM'] * 1e3:.2f} | {r['speedup']:.2f}x | {r['speedup_min']:.2f}x | "
                    f"{r['rest_s'] * 1e3:.2f} | {floor} |")
    text = "\n".join(rows)
    text += ("\n\nRest of the step: the same step with a Function that computes nothing in place of the LSTM and "
             "gradients of zeros set once (the loss, PyTorch's autograd, Adam), what any module's step adds to its "
             "LSTM's products at the least.")
    p = result.get("peak")
    if p:
        text += (f" GEMM floor: the FLOPs of the LSTM's forward and backward without the input's gradient "
                 f"(2 * 5 * T * N * 4H * H) at the best "
                 f"{p['size']}^3 SGEMM measured in the same run (before and after the steps, the best of both), "
                 f"{p['gflops']:.0f} GFLOP/s ({p['source']}). Max "
                 f"speedup: torch.nn.LSTM's step over the floor plus the rest, the most any replacement could reach.")
    o = result.get("overhead")
    if o:
        text += (f"\n\nWrapper overhead at ({o['T']}, {o['N']}, {o['H']}): {o['overhead_s'] * 1e3:.3f} ms per forward + "
                 f"backward (quartiles {o['overhead_iqr_s'][0] * 1e3:.3f} to {o['overhead_iqr_s'][1] * 1e3:.3f} ms), "
                 f"{100 * o['fraction_of_step']:.1f} % of the full step: medians over {o['samples']} rounds of the "
                 f"module's forward and backward less the bare calls' in the same round, over that round's step."
                 f" Of that, PyTorch's autograd machinery alone (a Function with the same inputs and outputs that "
                 f"computes nothing, run after the bare calls): {o['autograd_s'] * 1e3:.3f} ms, "
                 f"{100 * o['autograd_fraction_of_step']:.1f} % of the step.")
    where = "PyTorch's OpenMP threads" if result.get("openmp_shared") else "its own threads"
    return (f"## {result['what']}\n\n{result['dtype']}, {result['threads']} threads each; rnncore's team on "
            f"{where}.\n\n{text}\n")


def main_from_cli(args, progress=None):
    """``rnncore-bench --torch-step``: run, print, and write torch_step.json and torch_step.md into --out."""
    import json

    try:
        import torch  # noqa: F401
    except ImportError:
        print("rnncore-bench --torch-step needs PyTorch (pip install \"rnncore[torch]\")")
        return 2
    threads = max(args.threads[-1]) if args.threads else 2
    shapes = [(s[0], s[1], s[3]) for s in args.shape] if args.shape else SHAPES
    bad = [s for s in (args.shape or ()) if s[2] != s[3]]
    if bad:
        print(f"--torch-step: shapes have D = H (T,N,H); got {bad[0]}")
        return 2
    rounds = args.rounds or (3 if args.quick else 5)
    gemm = args.gemm_size if args.gemm_size is not None else (1024 if args.quick else 2048)
    result = run(shapes, threads=threads, rounds=rounds, budget_s=0.6 if args.quick else 1.5, seed=args.seed,
                 progress=progress.note if progress is not None else None, gemm_size=gemm,
                 overhead_samples=20 if args.quick else 60)
    if progress is not None and hasattr(progress, "done"):
        progress.done()
    os.makedirs(args.out, exist_ok=True)
    jpath, mpath = os.path.join(args.out, "torch_step.json"), os.path.join(args.out, "torch_step.md")
    with open(jpath, "w") as f:
        json.dump(result, f, indent=1)
    with open(mpath, "w") as f:
        f.write(to_markdown(result))
    print(to_text(result))
    print(f"\nwrote {jpath} and {mpath}")
    return 0
