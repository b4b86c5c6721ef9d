"""python -m rnncore.bench: the benchmark suite (same as the rnncore-bench command)."""

from .cli import main

raise SystemExit(main())
