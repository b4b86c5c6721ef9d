"""Facts about the machine a run measures on: CPU, memory, the OpenBLAS libraries loaded in this
process (rnncore's and NumPy's, reached through ctypes), the load from other processes, versions and
the environment variables that change what the libraries compute."""

import ctypes
import datetime
import os
import platform
import sys
import time

import numpy as np

import rnncore

from .config import ENV_VARS

# ------------------------------------------------------------------------------------------
# the OpenBLAS libraries loaded in this process (rnncore's and NumPy's), through ctypes
# ------------------------------------------------------------------------------------------

def _loaded_paths(needle):
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if needle in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


class LoadedBlas:
    """An OpenBLAS already loaded in this process; dlopen of the same file returns the same copy."""

    def __init__(self, path, suffix, int_type):
        self.path = path
        self.lib = ctypes.CDLL(path)
        self.int = int_type
        self._suffix = suffix

    def _fn(self, *names):
        for n in names:
            for cand in (n + self._suffix, "scipy_" + n + self._suffix, n):
                f = getattr(self.lib, cand, None)
                if f is not None:
                    return f
        return None

    def corename(self):
        f = self._fn("openblas_get_corename")
        if f is None:
            return None
        f.restype = ctypes.c_char_p
        return f().decode()

    def config(self):
        f = self._fn("openblas_get_config")
        if f is None:
            return None
        f.restype = ctypes.c_char_p
        return f().decode()

    def get_threads(self):
        f = self._fn("openblas_get_num_threads")
        return None if f is None else int(f())

    def set_threads(self, n):
        f = self._fn("openblas_set_num_threads")
        if f is None:
            return False
        f.argtypes = [ctypes.c_int]
        f(n)
        return True

    def gemm(self, a, b, c):
        """c = a @ b, row-major, float32 or float64, through cblas_?gemm."""
        f = self._fn("cblas_sgemm" if a.dtype == np.float32 else "cblas_dgemm")
        if f is None:
            raise RuntimeError("no cblas_?gemm in " + self.path)
        real = ctypes.c_float if a.dtype == np.float32 else ctypes.c_double
        I = self.int
        M, K = a.shape
        N = b.shape[1]
        f.restype = None
        f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, I, I, I, real, ctypes.c_void_p, I,
                      ctypes.c_void_p, I, real, ctypes.c_void_p, I]
        f(101, 111, 111, M, N, K, 1.0, a.ctypes.data, K, b.ctypes.data, N, 0.0, c.ctypes.data, N)


def rnncore_blas():
    """rnncore's OpenBLAS (the scipy-openblas32 wheel: 32-bit ints, ``scipy_`` prefix): the library
    loaded here whose build string is the one rnncore reports."""
    want = rnncore.blas_info().get("config")
    for p in _loaded_paths("openblas"):
        if "numpy" in p or "libscipy_openblas" not in os.path.basename(p):
            continue
        try:
            lib = LoadedBlas(p, "", ctypes.c_int)
        except OSError:
            continue
        if lib.config() == want and lib._fn("cblas_sgemm") is not None:
            return lib
    return None


def numpy_blas():
    """NumPy's own OpenBLAS (numpy.libs/libscipy_openblas64_*, ILP64, suffix 64_), if that is its BLAS."""
    np.ones((2, 2)) @ np.ones((2, 2))
    for p in _loaded_paths("openblas"):
        if "numpy" in p and "openblas" in os.path.basename(p).lower():
            for suffix, it in (("64_", ctypes.c_int64), ("", ctypes.c_int)):
                try:
                    lib = LoadedBlas(p, suffix, it)
                except OSError:
                    break
                if lib._fn("openblas_get_num_threads") is not None and lib._fn("cblas_sgemm") is not None:
                    return lib
    return None


# ------------------------------------------------------------------------------------------
# the CPU, memory, load, versions
# ------------------------------------------------------------------------------------------

def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [x for x in ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile") if x in flags]
    except OSError:
        pass
    return []


def _mem_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def cpu_snapshot():
    """(all CPUs' ticks, idle ticks, this process's ticks) from /proc, or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            mine = f.read().rsplit(")", 1)[1].split()
        return sum(v[:8]), v[3] + v[4], int(mine[11]) + int(mine[12])   # idle+iowait; utime+stime
    except (OSError, ValueError, IndexError):
        return None


def others_share(a, b):
    """Fraction of all CPUs' time used by other processes between two cpu_snapshot()s."""
    if a is None or b is None or b[0] - a[0] <= 0:
        return None
    total = b[0] - a[0]
    return max(0.0, min(1.0, ((total - (b[1] - a[1])) - (b[2] - a[2])) / total))


def others_cpu_share(seconds=0.5):
    """Fraction of all CPUs' time that other processes used over a short idle wait."""
    a = cpu_snapshot()
    time.sleep(seconds)
    return others_share(a, cpu_snapshot())


def loadavg():
    try:
        return [float(v) for v in os.getloadavg()]
    except OSError:
        return None


def _git_commit():
    here = os.path.dirname(os.path.abspath(rnncore.__file__))
    head = os.path.join(here, "..", "..", ".git", "HEAD")
    try:
        with open(head) as f:
            ref = f.read().strip()
        if ref.startswith("ref:"):
            with open(os.path.join(here, "..", "..", ".git", ref[5:])) as f:
                return f.read().strip()
        return ref
    except OSError:
        return None


def _install_kind():
    """Where rnncore runs from, without this machine's paths: a wheel install or a source tree."""
    parts = os.path.dirname(rnncore.__file__).split(os.sep)
    return "site-packages" if "site-packages" in parts else "source tree"


def describe_machine(peers, rblas, nblas):
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    info = {
        "cpu": _cpu_model(), "cpu_flags": _cpu_flags(), "logical_cpus": os.cpu_count(), "usable_cpus": affinity,
        "memory_gib": _mem_gib(), "os": platform.platform(), "python": sys.version.split()[0],
        "numpy": np.__version__, "rnncore": rnncore.__version__, "rnncore_install": _install_kind(),
        "rnncore_git_commit": _git_commit(),
        "rnncore_blas": rnncore.blas_info(),
        "rnncore_blas_library": os.path.basename(rblas.path) if rblas else None,
        "rnncore_openblas_threads": rblas.get_threads() if rblas else None,
        "numpy_blas": ({"library": os.path.basename(nblas.path), "corename": nblas.corename(), "config": nblas.config(),
                        "threads": nblas.get_threads()} if nblas else None),
        "env": {k: os.environ.get(k, "unset") for k in ENV_VARS},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": loadavg(),
        "others_cpu_share_start": others_cpu_share(),
    }
    torch = getattr(peers.get("torch"), "_torch", None)
    if torch is not None:
        info["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads(),
                         "interop_threads": torch.get_num_interop_threads(),
                         "mkl": bool(torch.backends.mkl.is_available()),
                         "mkldnn": bool(torch.backends.mkldnn.is_available()),
                         "cpu_capability": _torch_capability(torch)}
    return info


def _torch_capability(torch):
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:
        return None
