"""What a user of the installed package relies on: the version, the type information, and the
choice of kernels at import."""

import os
import platform
import re

import pytest

import rnncore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_is_written_once():
    """__version__ comes from _version.py, the file pyproject.toml reads the version from."""
    from rnncore import _version
    assert rnncore.__version__ == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([abrc]+\d+|\.dev\d+)?", rnncore.__version__)
    pyproject = os.path.join(ROOT, "pyproject.toml")
    if os.path.exists(pyproject):
        text = open(pyproject).read()
        assert 'dynamic = ["version"]' in text and "python/rnncore/_version.py" in text
    try:
        from importlib.metadata import version
        assert version("rnncore") == rnncore.__version__
    except ImportError:
        pass


def test_typed_package():
    """py.typed marks the package as typed (PEP 561) and the extension has its stub."""
    here = os.path.dirname(rnncore.__file__)
    assert os.path.exists(os.path.join(here, "py.typed"))
    assert os.path.exists(os.path.join(here, "_core.pyi"))


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 kernels only")
def test_kernels_chosen_from_the_cpu():
    """The kernel build chosen at import (CPUID in csrc/dispatch.h) is the best one the CPU runs,
    as the kernel reports its features in /proc/cpuinfo."""
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    v4 = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}
    v3 = {"avx2", "fma", "bmi2"}
    want = "avx512" if (v3 | v4) <= flags else ("avx2" if v3 <= flags else "baseline")
    assert rnncore.blas_info()["kernels"] == want
