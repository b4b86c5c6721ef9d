"""How soon Ctrl-C stops a long call: SIGINT sent at several moments into an LSTM (64, 512)
forward + backward with T = 2000, N = 64 (several seconds uninterrupted on 2 cores), and the time
from the signal to KeyboardInterrupt.

    python benchmarks/ctrl_c_latency.py [--threads 2] [--delays 0.3,1.5,3,5]
"""

import argparse
import os
import signal
import threading
import time

import numpy as np

import rnncore


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=rnncore.get_num_threads())
    ap.add_argument("--delays", default="0.3,1.5,3,5")
    a = ap.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever this process inherited
    rnncore.set_num_threads(a.threads)
    m = rnncore.LSTM(64, 512, seed=2)
    x = np.random.default_rng(0).standard_normal((2000, 64, 64)).astype(np.float32)
    print(f"LSTM(64, 512), T=2000, N=64, float32, forward + backward, {a.threads} threads, "
          f"BLAS kernel {rnncore.blas_info()['corename']}")
    for delay in (float(d) for d in a.delays.split(",")):
        sent = []
        timer = threading.Timer(delay, lambda: (sent.append(time.perf_counter()), os.kill(os.getpid(), signal.SIGINT)))
        t0 = time.perf_counter()
        timer.start()
        try:
            y, _, tape = m.forward(x, train=True)
            m.backward(tape, y)
            timer.cancel()
            print(f"signal at {delay:.1f} s: the call ended first, after {time.perf_counter() - t0:.2f} s")
        except KeyboardInterrupt:
            print(f"signal at {delay:.1f} s: KeyboardInterrupt {time.perf_counter() - sent[0]:.3f} s later")


if __name__ == "__main__":
    main()
