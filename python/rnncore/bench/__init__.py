"""rnncore's benchmark suite: rnncore against PyTorch, ONNX Runtime and its NumPy reference.

Command line: ``rnncore-bench`` or ``python -m rnncore.bench`` (``--help``). From Python::

    from rnncore import bench
    cfg = bench.make_config("quick", cells=("lstm",))
    results = bench.run(cfg)                 # plain dicts, JSON-ready
    print(bench.to_text(results))
    bench.write_all(results, "rnncore-bench-results")
"""

from .report import to_json, to_markdown, to_text, write_all
from .config import Config, make_config
from .suite import run

__all__ = ["Config", "make_config", "run", "to_text", "to_markdown", "to_json", "write_all"]
