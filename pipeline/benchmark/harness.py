"""The speed-benchmark harness every ``benchmarks/*.py`` script uses.

* timing: :func:`median_time` (warm-up, repeats, median) and :func:`time_paths` (compared code paths, warmed up
  once each, then timed round robin so that a change of machine load hits every path alike);
* thread settings: :func:`torch_threads`;
* the command line the suite (``benchmarks/run_all.py``) relies on: :func:`script_parser` (``--quick``,
  ``--repeats``, ``--out``);
* the output: :func:`publish` prints the tables and writes the script's section with
  :func:`pipeline.benchmark.sections.write_section` (command, date, machine stamp, versions, table, notes).

Examples:
    >>> from pipeline.benchmark.harness import median_time, time_paths
    >>> t = median_time(lambda: sum(range(1000)), repeats=3)
    >>> t["repeats"], t["median_s"] > 0
    (3, True)
    >>> sorted(time_paths({"a": lambda: sum(range(10)), "b": lambda: sum(range(20))}, repeats=2))
    ['a', 'b']
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.benchmark.sections import command_line, write_section
from pipeline.utils.environment import system_stamp


def _no_sync() -> None:
    return None


def median_time(
    fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, sync: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Time ``fn()``: ``warmup`` untimed calls, then the median (and min/max) of ``repeats`` timed calls.

    Args:
        fn: the code to time.
        repeats: timed calls (at least 1).
        warmup: untimed calls first.
        sync: called before and after each timed call (``torch.cuda.synchronize`` for CUDA work).

    Returns:
        ``median_s``, ``min_s``, ``max_s``, ``repeats``, ``times_s`` and ``result`` (the last call's return value).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = sync or _no_sync
    result = None
    for _ in range(max(0, warmup)):
        result = fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
        "times_s": times,
        "result": result,
    }


def time_paths(
    paths: Mapping[str, Callable[[], Any]], repeats: int = 3, warmup: int = 1, sync: Callable[[], None] | None = None
) -> dict[str, float]:
    """Median seconds of each of several compared code paths: ``warmup`` untimed calls of each, then ``repeats``
    rounds that call every path once, in order."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for fn in paths.values():
        median_time(fn, repeats=1, warmup=max(0, warmup - 1), sync=sync)  # warm-up (its one timed call is dropped)
    for _ in range(repeats):
        for name, fn in paths.items():
            times[name].append(median_time(fn, repeats=1, warmup=0, sync=sync)["median_s"])
    return {name: statistics.median(t) for name, t in times.items()}


@contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` torch threads (None: leave the setting alone); restores the previous count."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _repeats(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def script_parser(doc: str | None, quick: str, repeats: int = 3) -> argparse.ArgumentParser:
    """The options every benchmark script takes (the suite passes ``--out``, ``--repeats`` and ``--quick``).

    Args:
        doc: the script's module docstring (its first paragraph is the description).
        quick: what ``--quick`` does (a smoke run whose figures are not published).
        repeats: the default of ``--repeats``.
    """
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--repeats", type=_repeats, default=repeats, help=f"median of N runs (default {repeats})")
    p.add_argument("--out", type=Path, help="write a Markdown section to this file (atomically)")
    return p


def publish(
    text: str,
    *,
    out: str | Path | None,
    title: str,
    script: str | Path,
    argv: Sequence[str] | None,
    details: Sequence[str] = (),
    notes: Sequence[str] = (),
    device: str = "cpu",
) -> None:
    """Print ``text`` (the tables); with ``out``, write the script's section: title, command
    (``python benchmarks/<script>.py <args>``), date, machine stamp, versions, ``details``, the tables, ``notes``."""
    print(text)
    if out:
        name = Path(script).name
        write_section(
            out,
            title,
            text,
            command=command_line(argv, f"benchmarks/{name}"),
            stamp=system_stamp(device),
            details=details,
            notes=notes,
            script=Path(name).stem,
        )
