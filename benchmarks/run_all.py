#!/usr/bin/env python
"""Run every benchmark script side by side and regenerate ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/run_all.py                      # all scripts, median of 3 repeats, writes benchmarks/RESULTS.md
    python benchmarks/run_all.py --only eval_speed    # one script; the other sections are re-assembled as they are
    python benchmarks/run_all.py --quick              # smoke run into outputs/bench_quick/ (published ones untouched)
    python benchmarks/run_all.py --no-run             # only re-assemble RESULTS.md (results/ + notes/)

Hand-written notes go in ``benchmarks/notes/<script>.md``; every script writes its section with the harness of
:mod:`pipeline.benchmark.harness`. See :mod:`pipeline.benchmark.suite`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.benchmark.suite import main as _suite_main
from pipeline.errors import PipelineError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 a script failed, 2 bad options)."""
    try:
        return _suite_main(argv)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
