"""rnncore-bench: command line of the benchmark suite."""

import argparse
import os
import shutil
import sys
import time

from . import config, machine, report, suite

EPILOG = """\
presets:
  (default)  6 shapes + 1 variable-length case, 4 cells, inference and training: a few minutes on 2 cores
  --quick    2 shapes + the variable-length case, fewer repeats: under a minute
  --full     8 shapes, 1 thread and all cores, more repeats, the NumPy reference on every case

cells: rnn_tanh (alias rnn), lstm, gru (reset gate before the matmul, rnncore's default),
       gru_after (alias gru-ra: reset_after=True, PyTorch's GRU), rnn_relu
peers: rnncore (always), torch, onnxruntime, reference (the NumPy oracle); a peer that is not
       importable is listed as skipped with the reason.

--shape replaces the shape list; the variable-length case (N rows with lengths uniform in [1,T],
timed next to the full-length case of the same shape) is then only run for shapes given to --varlen.

outputs (in --out, default ./rnncore-bench-results): results.json (every measurement and the
machine), report.md, and time_*.png / speedup_*.png when matplotlib is importable.
exit status: 0, or 1 when a peer's outputs disagree with rnncore's, 2 on bad arguments.
"""


def _positive_ints(text, count=None):
    parts = [p.strip() for p in text.split("," if "," in text or "x" not in text else "x")]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        return None
    if any(v < 1 for v in vals) or (count is not None and len(vals) not in count):
        return None
    return vals


def parse_shape(text):
    """'T,N,D,H' (or 'T,N,H' for D = H) -> (T, N, D, H)."""
    vals = _positive_ints(text, count=(3, 4))
    if vals is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected T,N,D,H — four positive integers separated by commas (sequence length, "
            f"batch, input size, hidden size), e.g. 100,8,256,256; or T,N,H for D = H")
    if len(vals) == 3:
        vals = [vals[0], vals[1], vals[2], vals[2]]
    return tuple(vals)


def _threads(text):
    vals = _positive_ints(text)
    if vals is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, e.g. 2 or 1,2")
    return vals


def _split(values):
    out = []
    for v in values or ():
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def build_parser():
    p = argparse.ArgumentParser(
        prog="rnncore-bench", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Benchmark rnncore's RNN/LSTM/GRU against PyTorch, ONNX Runtime and its NumPy reference, "
                    "after checking that they compute the same outputs and gradients.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="a small suite, under a minute")
    g.add_argument("--full", action="store_true", help="everything, slow (tens of minutes)")
    p.add_argument("--cell", action="append", metavar="CELL", help="cells, repeatable or comma-separated")
    p.add_argument("--mode", action="append", metavar="MODE", help="inference and/or training")
    p.add_argument("--shape", action="append", type=parse_shape, metavar="T,N,D,H",
                   help="a shape (repeatable): sequence length, batch, input size, hidden size; or T,N,H for "
                        "D = H (e.g. 100,8,256); replaces the preset's shapes")
    p.add_argument("--varlen", action="append", type=parse_shape, metavar="T,N,D,H",
                   help="add a variable-length case for this shape, T,N,D,H or T,N,H (repeatable)")
    p.add_argument("--no-varlen", action="store_true", help="no variable-length case")
    p.add_argument("--dtype", action="append", metavar="DTYPE", help="float32 (default) and/or float64")
    p.add_argument("--no-step-latency", action="store_true",
                   help="skip the cells' one-step latency table (N=1, H=256, against PyTorch's cells)")
    p.add_argument("--no-floors", action="store_true",
                   help="skip the step floor (a bare GEMV time loop), the step-GEMM microbenchmark against "
                        "OpenBLAS and the contention check (rnncore.bench.floors)")
    p.add_argument("--no-variants", action="store_true",
                   help="skip the LSTM variants (projection, peephole, LayerNorm) against the plain LSTM and "
                        "PyTorch (rnncore.bench.variants)")
    p.add_argument("--threads", action="append", type=_threads, metavar="N",
                   help=f"threads for every peer, repeatable or comma-separated (default {os.cpu_count()} = all cores)")
    p.add_argument("--peer", action="append", metavar="PEER", help="peers to compare with (default: all)")
    p.add_argument("--repeats", type=int, metavar="R", help="timed runs per peer and case (default: adaptive)")
    p.add_argument("--warmup", type=int, metavar="W", help="untimed runs per peer and case, the first one checked")
    p.add_argument("--ref-repeats", type=int, metavar="R", help="timed runs of the slow NumPy reference")
    p.add_argument("--gap-ms", type=float, metavar="MS",
                   help="minimum pause before each visit of a peer; the pause then lasts until the previous "
                        "library's spinning worker threads are idle (default 20)")
    p.add_argument("--rounds", type=int, metavar="K",
                   help="visits per peer and case, in a rotating order (default 3; quick 2; full 5)")
    p.add_argument("--gemm-size", type=int, metavar="S",
                   help="size of the S^3 GEMM that measures the machine's peak (default 2048; 0: skip)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and lengths (default 0)")
    p.add_argument("--out", default="rnncore-bench-results", metavar="DIR",
                   help="output directory, created (default ./rnncore-bench-results)")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    p.add_argument("--no-isolation-check", action="store_true",
                   help="skip the check of interleaved against alone timings")
    p.add_argument("--list", action="store_true", help="print the scenarios and the peers' status, run nothing")
    p.add_argument("--seed-table", action="store_true",
                   help="run the seed-notes comparison table (rnncore.bench.seed_table) instead of the timing suite")
    p.add_argument("--torch-step", action="store_true",
                   help="time a PyTorch training step with rnncore.torch.LSTM against torch.nn.LSTM instead of the "
                        "timing suite (rnncore.bench.torch_step; --shape T,N,H and --threads apply, default 2 threads)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args, parser):
    preset = "quick" if args.quick else "full" if args.full else "default"
    kw = {}
    try:
        if args.cell:
            kw["cells"] = tuple(dict.fromkeys(config.normalize_cell(c) for c in _split(args.cell)))
        if args.peer:
            kw["peers"] = tuple(dict.fromkeys(config.normalize_peer(c) for c in _split(args.peer)))
    except ValueError as e:
        parser.error(str(e))
    if args.mode:
        modes = _split(args.mode)
        bad = [m for m in modes if m not in config.MODES]
        if bad:
            parser.error(f"--mode: expected inference or training, got {bad[0]!r}")
        kw["modes"] = tuple(dict.fromkeys(modes))
    if args.dtype:
        dts = _split(args.dtype)
        bad = [d for d in dts if d not in ("float32", "float64")]
        if bad:
            parser.error(f"--dtype: expected float32 or float64, got {bad[0]!r}")
        kw["dtypes"] = tuple(dict.fromkeys(dts))
    if args.threads:
        kw["threads"] = tuple(dict.fromkeys(n for group in args.threads for n in group))
    if args.shape:
        kw["shapes"] = list(dict.fromkeys(args.shape))
        kw["varlen"] = []
    if args.varlen:
        kw["varlen"] = list(dict.fromkeys(args.varlen))
    if args.no_varlen:
        kw["varlen"] = []
    for name in ("repeats", "ref_repeats", "rounds"):
        v = getattr(args, name)
        if v is not None and v < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive integer, got {v}")
    if args.warmup is not None:
        kw["warmup"] = max(1, args.warmup)   # the first run is the agreement check, always made
    if args.gap_ms is not None and args.gap_ms < 0:
        parser.error(f"--gap-ms: expected a non-negative number, got {args.gap_ms}")
    if args.gemm_size is not None and args.gemm_size < 0:
        parser.error(f"--gemm-size: expected a non-negative integer, got {args.gemm_size}")
    kw.update(rounds=args.rounds, gemm_size=args.gemm_size, repeats=args.repeats, ref_repeats=args.ref_repeats,
              gap_ms=args.gap_ms, seed=args.seed, isolation_check=False if args.no_isolation_check else None)
    return config.make_config(preset, **kw)


class ProgressBar:
    """One line on stderr: rewritten in place on a terminal, one line per scenario otherwise."""

    def __init__(self, stream=None, width=24):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width
        self.cols = max(40, shutil.get_terminal_size().columns - 1)
        self.t0 = time.time()
        self.last_i = None

    def __call__(self, i, total, label):
        if not self.tty and i == self.last_i:
            return
        self.last_i = i
        filled = int(self.width * i / max(1, total))
        el = int(time.time() - self.t0)
        line = f"[{i}/{total}] {'#' * filled}{'.' * (self.width - filled)} {label}  {el // 60}m{el % 60:02d}s"
        if self.tty:
            self.stream.write("\r" + line[:self.cols].ljust(self.cols))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, text):
        if self.tty:
            self.stream.write("\r" + text[:self.cols].ljust(self.cols))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self):
        if self.tty:
            self.stream.write("\r" + " " * self.cols + "\r")
            self.stream.flush()


def _list(cfg):
    scs = suite.scenario_list(cfg)
    peers = suite.make_peers(cfg.peers)
    print(f"preset {cfg.preset}: {len(scs)} scenarios")
    for name, p in peers.items():
        why = p.skip_reason()
        print(f"  peer {name:<12} {'available' if why is None else 'skipped: ' + why}")
    for sc in scs:
        print(f"  {sc['id']}  ({sc['flops'] / 1e9:.2f} GFLOP)")
    return 0


def _seed_table(args, out_dir, progress):
    from . import seed_table   # written separately; only needed here
    budget = "quick" if args.quick else "full" if args.full else "default"
    bar = progress

    def prog(*a, **k):   # whatever seed_table reports, shown as one line
        if bar is not None:
            bar.note("seed table: " + " ".join(str(v) for v in a) + "".join(f" {n}={v}" for n, v in k.items()))

    result = seed_table.run(budget=budget, seed=args.seed, progress=prog)
    if bar:
        bar.done()
    print(seed_table.to_text(result))
    md = seed_table.to_markdown(result)
    rblas, nblas = machine.rnncore_blas(), machine.numpy_blas()
    peers = suite.make_peers(["torch"], nblas)
    res = {"schema": config.SCHEMA, "machine": machine.describe_machine(peers, rblas, nblas), "scenarios": None,
           "seed_table": {"budget": budget, "seed": args.seed, "text": seed_table.to_text(result), "markdown": md,
                          "result": result}}
    return res, {"markdown": md}


def _terminal_width():
    """Columns of the terminal stdout is, or COLUMNS when set; None (full tables) for a pipe or file."""
    if os.environ.get("COLUMNS", "").isdigit():
        return max(40, int(os.environ["COLUMNS"]))
    if sys.stdout is not None and hasattr(sys.stdout, "isatty") and sys.stdout.isatty():
        return max(40, shutil.get_terminal_size().columns)
    return None


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args, parser)
    if args.list:
        return _list(cfg)
    progress = None if args.quiet else ProgressBar()
    out_dir = args.out  # as given: the paths printed (and kept in terminal records) hold no machine's layout
    if args.torch_step:
        from . import torch_step
        return torch_step.main_from_cli(args, progress)
    if args.seed_table:
        results, st = _seed_table(args, out_dir, progress)
        written = report.write_all(results, out_dir, plots=False, seed_table=st)
        print(f"\nwrote {written['json']} and {written['markdown']}")
        return 0
    results = suite.run(cfg, progress=progress)
    if not args.no_step_latency:
        from . import step_latency
        note = (lambda msg: progress.note(msg)) if progress else None
        results["step_latency"] = step_latency.run(threads=max(cfg.threads), progress=note,
                                                   rounds=3 if args.quick else 7)
    if not args.no_floors:
        from . import floors
        note = (lambda msg: progress.note(msg)) if progress else None
        results["floors"] = floors.run(threads=max(cfg.threads), quick=args.quick, progress=note)
    if not args.no_variants and "lstm" in cfg.cells:
        from . import variants
        note = (lambda msg: progress.note(msg)) if progress else None
        results["variants"] = variants.run(threads=max(cfg.threads), quick=args.quick, progress=note,
                                           shapes=variants.shapes_of(cfg.shapes))
    if progress:
        progress.done()
    # files first: a closed pipe on stdout loses nothing
    written = report.write_all(results, out_dir, plots=not args.no_plots)
    try:
        print(report.to_text(results, _terminal_width()))
        print(f"\nwrote {written['json']}, {written['markdown']}"
              + (f" and {len(written['plots'])} plots" if written.get("plots") else f"; {written.get('plot_note')}"))
        print(f"total {results['duration_s']:.0f} s")
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stdout = None
    flagged = any(r["status"] == "flagged" for sc in results["scenarios"] for r in sc["peers"].values())
    return 1 if flagged else 0


if __name__ == "__main__":
    raise SystemExit(main())
