"""Train a small sequence model holding an rnncore LSTM with PyTorch's DistributedDataParallel.

The model reads a window of a series and predicts its next values: a linear input layer,
``rnncore.torch.LSTM`` (PyTorch's module API, rnncore's core) and a linear head. The series is
generated deterministically (a sum of sines with a slow drift and seeded noise), so every process,
and a single-process run, sees the same data. Each step takes one global batch; under DDP each
of the W processes takes its W-th of it and DDP averages the gradients, which is the gradient of
the mean loss over the global batch: the parameters follow those of one process trained on the
same global batches, to rounding.

One machine, 2 processes, 1 rnncore thread each (processes x threads should not exceed the cores):

    python -m torch.distributed.run --standalone --nproc_per_node=2 examples/ddp_train.py --threads 1

Several machines (run on each; host:port is one reachable machine, e.g. the first):

    python -m torch.distributed.run --nnodes=2 --nproc_per_node=4 --rdzv-backend=c10d \
        --rdzv-endpoint=host:29500 --rdzv-id=job1 examples/ddp_train.py --threads 2

Without torchrun (no WORLD_SIZE in the environment) it trains in one process. ``--out`` writes
the final parameters (rank 0) to an .npz file; ``--check`` compares them with another such file.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

import rnncore
import rnncore.torch


def series(length, seed=0):
    """A deterministic series of ``length`` values: sines of three periods, a drift and noise."""
    t = np.arange(length, dtype=np.float64)
    noise = np.random.default_rng(seed).standard_normal(length)
    return (np.sin(2 * np.pi * t / 50) + 0.5 * np.sin(2 * np.pi * t / 17 + 1.0) + 0.25 * np.sin(2 * np.pi * t / 7)
            + 0.0005 * t * np.sin(2 * np.pi * t / 400) + 0.05 * noise)


def windows(values, steps, batch, seq_len, seed=0):
    """``steps`` global batches of (input (batch, seq_len, 1), target (batch, seq_len)): random windows."""
    rng = np.random.default_rng(seed + 1)
    starts = rng.integers(0, len(values) - seq_len - 1, size=(steps, batch))
    idx = starts[..., None] + np.arange(seq_len)
    return values[idx][..., None], values[idx + 1]


class Model(torch.nn.Module):
    def __init__(self, hidden, layers, dtype):
        super().__init__()
        self.inp = torch.nn.Linear(1, hidden, dtype=dtype)
        self.rnn = rnncore.torch.LSTM(hidden, hidden, num_layers=layers, batch_first=True, dtype=dtype)
        self.head = torch.nn.Linear(hidden, 1, dtype=dtype)

    def forward(self, x):
        y, _ = self.rnn(torch.tanh(self.inp(x)))
        return self.head(y).squeeze(-1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    p.add_argument("--batch", type=int, default=16, help="global batch size, split over the processes (default 16)")
    p.add_argument("--seq-len", type=int, default=40, help="window length (default 40)")
    p.add_argument("--hidden", type=int, default=32, help="LSTM hidden size (default 32)")
    p.add_argument("--layers", type=int, default=2, help="LSTM layers (default 2)")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default 0.01)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--threads", type=int, default=1, help="rnncore and torch threads per process (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the final parameters here (.npz, rank 0 only)")
    p.add_argument("--check", help="an .npz of parameters to compare the final ones with; prints the differences")
    args = p.parse_args(argv)

    rnncore.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        torch.distributed.init_process_group("gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = 0, 1
    if args.batch % world:
        p.error(f"--batch: {args.batch} does not split evenly over {world} processes")

    torch.manual_seed(args.seed)                     # the same initial weights everywhere (DDP broadcasts rank 0's)
    model = Model(args.hidden, args.layers, dtype)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    xs, ys = windows(series(4000, args.seed), args.steps, args.batch, args.seq_len, args.seed)
    share = args.batch // world
    mine = slice(rank * share, (rank + 1) * share)   # this process's part of every global batch
    t0 = time.perf_counter()
    for step in range(args.steps):
        x = torch.from_numpy(xs[step, mine]).to(dtype)
        y = torch.from_numpy(ys[step, mine]).to(dtype)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss (rank 0's share) {loss.item():.6f}", flush=True)
    if rank == 0:
        print(f"{world} process(es) x {args.threads} thread(s): {args.steps} steps in "
              f"{time.perf_counter() - t0:.2f} s", flush=True)
        params = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        if args.out:
            np.savez(args.out, **params)
        if args.check:
            with np.load(args.check) as ref:
                abs_err = max(float(np.max(np.abs(params[k] - ref[k]))) for k in params)
                rel_err = max(float(np.max(np.abs(params[k] - ref[k])) / max(np.max(np.abs(ref[k])), 1e-300))
                              for k in params)
            print(f"max abs difference {abs_err:.3g}, max relative difference {rel_err:.3g}")
    if distributed:
        # A barrier before the teardown: PyTorch's gloo process group may otherwise deadlock when it is
        # destroyed right after a backward (its worker thread, still releasing the backward's last
        # all-reduce, waits for the GIL that the destroying thread holds). While the barrier waits,
        # the GIL is free and that release completes.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
