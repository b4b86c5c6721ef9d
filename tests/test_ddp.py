"""DistributedDataParallel over rnncore.torch modules: examples/ddp_train.py run by torchrun with 2
processes (gloo, one machine, 1 thread each) ends with the parameters of one process trained on
the same global batches, in float64 to 1e-10 of the largest parameter."""

import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnncore  # noqa: E402

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "ddp_train.py"
ARGS = ["--steps", "12", "--batch", "8", "--seq-len", "30", "--hidden", "24", "--threads", "1", "--dtype", "float64"]


def _example():
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import ddp_train
    finally:
        sys.path.pop(0)
    return ddp_train


def test_ddp_two_processes_match_one(tmp_path):
    import torch.distributed
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    single, ddp = tmp_path / "single.npz", tmp_path / "ddp.npz"
    example = _example()
    threads, torch_threads = rnncore.get_num_threads(), torch.get_num_threads()
    try:                                   # one process, in this one (no WORLD_SIZE: no process group)
        env = {k: os.environ.pop(k) for k in ("WORLD_SIZE",) if k in os.environ}
        assert example.main(ARGS + ["--out", str(single)]) == 0
    finally:
        os.environ.update(env)
        rnncore.set_num_threads(threads)
        torch.set_num_threads(torch_threads)
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(EXAMPLE), *ARGS,
           "--out", str(ddp), "--check", str(single)]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)        # its own process group: a timeout ends the workers too
    try:
        out, err = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"torchrun did not finish in 240 s:\n{out}\n{err}")
    assert p.returncode == 0, out + err
    assert "2 process(es) x 1 thread(s)" in out
    with np.load(single) as a, np.load(ddp) as b:
        assert sorted(a.files) == sorted(b.files) and "rnn.weight_ih_l0" in a.files
        scale = max(float(np.max(np.abs(a[k]))) for k in a.files)     # the largest parameter value
        for k in a.files:
            assert np.max(np.abs(b[k] - a[k])) <= 1e-10 * scale, k
        torch.manual_seed(0)               # training moved the weights away from their initial values
        init = example.Model(24, 2, torch.float64).state_dict()
        assert not np.allclose(a["rnn.weight_hh_l0"], init["rnn.weight_hh_l0"].numpy())
