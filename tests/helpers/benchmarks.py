"""Helpers for the tests of the scripts in ``benchmarks/`` (scripts, not a package: loaded by file path)."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from pipeline.paths import PROJECT_ROOT


def load_benchmark_script(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as a module named ``name`` (its ``if __name__ == "__main__"`` block not run).

    Examples:
        >>> load_benchmark_script("run_all").main.__name__
        'main'
    """
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
