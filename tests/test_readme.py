"""Every Python example in README.md runs as written (frameworks it needs permitting)."""

import importlib.util
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
OPTIONAL = ("torch", "keras", "onnx", "onnxruntime")


def test_readme_has_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i, tmp_path, monkeypatch):
    code = BLOCKS[i]
    for mod in OPTIONAL:
        if re.search(rf"\bimport\b[^\n]*\b{mod}\b", code) and importlib.util.find_spec(mod) is None:
            pytest.skip(f"needs {mod}")
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    exec(compile(code, f"README.md example {i}", "exec"), {"__name__": "__readme__"})
