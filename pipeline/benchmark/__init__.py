"""Benchmarks: the ``medseg benchmark`` command (paper-style reports) and the speed-suite helpers.

* :mod:`pipeline.benchmark.published`: the UNETR++ paper tables as data, with the protocol behind each row.
* :mod:`pipeline.benchmark.report`: :class:`BenchmarkReport` and its Markdown/JSON/CSV writers.
* :mod:`pipeline.benchmark.runner`: :func:`run_benchmark` (inference + evaluation + report).
* :mod:`pipeline.benchmark.environment`: hardware/software stamp and :class:`PeakMemory`.
* :mod:`pipeline.benchmark.sections`: Markdown sections of ``benchmarks/*.py`` and the RESULTS.md assembly.
* :mod:`pipeline.benchmark.suite`: ``benchmarks/run_all.py``.
"""

from pipeline.benchmark.environment import PeakMemory, system_stamp
from pipeline.benchmark.published import PUBLISHED_TABLES, get_table
from pipeline.benchmark.report import BenchmarkReport, CaseResult
from pipeline.benchmark.sections import markdown_table, median_time, write_section

__all__ = [
    "PUBLISHED_TABLES",
    "BenchmarkReport",
    "CaseResult",
    "PeakMemory",
    "get_table",
    "markdown_table",
    "median_time",
    "system_stamp",
    "write_section",
]
