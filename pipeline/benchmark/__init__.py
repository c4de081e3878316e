"""Benchmarks: the ``medseg benchmark`` command (paper-style reports) and the speed-suite helpers.

* :mod:`pipeline.benchmark.published`: the UNETR++ paper tables as data, with the protocol behind each row.
* :mod:`pipeline.benchmark.report`: :class:`BenchmarkReport` and its Markdown/JSON/CSV writers.
* :mod:`pipeline.benchmark.runner`: :func:`run_benchmark` (inference + evaluation + report).
* :mod:`pipeline.benchmark.memory`: :class:`PeakMemory` (the hardware/software stamp is
  :mod:`pipeline.utils.environment`).
* :mod:`pipeline.benchmark.harness`: the speed-benchmark harness of ``benchmarks/*.py`` (timing, threads, options,
  the section each script writes).
* :mod:`pipeline.benchmark.sections`: Markdown sections of ``benchmarks/*.py`` and the RESULTS.md assembly.
* :mod:`pipeline.benchmark.suite`: ``benchmarks/run_all.py``.
"""

from pipeline.benchmark.harness import median_time, publish, script_parser, time_paths, torch_threads
from pipeline.benchmark.memory import PeakMemory
from pipeline.benchmark.published import PUBLISHED_TABLES, get_table
from pipeline.benchmark.report import BenchmarkCaseResult, BenchmarkReport
from pipeline.benchmark.sections import command_line, write_section
from pipeline.utils.environment import system_stamp  # re-exported with markdown_table: benchmark scripts use both
from pipeline.utils.tables import markdown_table

__all__ = [
    "PUBLISHED_TABLES",
    "BenchmarkCaseResult",
    "BenchmarkReport",
    "PeakMemory",
    "get_table",
    "command_line",
    "markdown_table",
    "median_time",
    "publish",
    "script_parser",
    "system_stamp",
    "time_paths",
    "torch_threads",
    "write_section",
]
