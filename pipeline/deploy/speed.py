"""Whether an exported network runs faster than torch on this CPU: timed once, remembered in its cache entry.

``--backend auto`` uses it to keep its promise of the fastest backend: a runtime that is faster on large windows can
be slower than our torch path on small ones (``benchmarks/results/backends_amx.md``: the Swin hippocampus bundle,
32x48x32 windows, 43.8 s of network time in OpenVINO fp32 against 37.0 s in torch). Both paths run the same seeded
window batch of the export's shape (one warm-up call each, then :data:`REPEATS` rounds in turn, medians). The
result goes into ``<entry>/speed.json`` under this CPU's model name and thread count, so later runs on the same CPU
read it instead of timing again; an unreadable file is measured again and rewritten (atomically), and a cache folder
that cannot be written only costs the timing next time.

Examples:
    >>> import tempfile
    >>> import torch
    >>> net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    >>> entry = Path(tempfile.mkdtemp())
    >>> first = runtime_speed(entry, net, net, (1, 1, 8, 8, 8), threads=1)
    >>> first["measured"], sorted(k for k in first if k.endswith("_s"))
    (True, ['runtime_s', 'torch_s'])
    >>> runtime_speed(entry, net, net, (1, 1, 8, 8, 8), threads=1)["measured"]
    False
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.benchmark.harness import time_paths
from pipeline.utils.atomic import save_json_atomic
from pipeline.utils.environment import cpu_model

__all__ = ["REPEATS", "SPEED_FILE", "runtime_speed", "speed_key", "time_against_torch"]

logger = logging.getLogger(__name__)

SPEED_FILE = "speed.json"
#: timed rounds per path (after one warm-up call of each)
REPEATS = 3


def speed_key(threads: int) -> str:
    """The entry of ``speed.json`` for this CPU and thread count."""
    return f"{cpu_model()}; {int(threads)} threads"


def time_against_torch(
    runtime: Callable[[torch.Tensor], Any], network: Callable[[torch.Tensor], Any], shape: Sequence[int]
) -> dict[str, float]:
    """Median seconds per call of ``runtime`` and of ``network`` on one seeded batch of ``shape``."""
    x = torch.randn(tuple(int(s) for s in shape), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        t = time_paths({"runtime": lambda: runtime(x), "torch": lambda: network(x)}, repeats=REPEATS, warmup=1)
    return {"runtime_s": float(t["runtime"]), "torch_s": float(t["torch"])}


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.info("%s unreadable (%s): timing again", path, type(exc).__name__)
        return {}
    return data if isinstance(data, dict) else {}


def _valid(record: Any) -> bool:
    return isinstance(record, dict) and all(
        isinstance(record.get(k), (int, float)) and record[k] > 0 for k in ("runtime_s", "torch_s")
    )


def runtime_speed(
    entry: str | Path,
    runtime: Callable[[torch.Tensor], Any],
    network: Callable[[torch.Tensor], Any],
    shape: Sequence[int],
    threads: int,
) -> dict[str, Any]:
    """Seconds per window batch of the exported ``runtime`` and of the torch ``network`` on this CPU.

    Args:
        entry: the export's cache folder (holds ``speed.json``).
        runtime: the loaded export (e.g. :class:`pipeline.deploy.backend.ExportedNetwork`).
        network: the torch network it would replace, in the same precision.
        shape: one window batch, ``(batch, C, x, y, z)``.
        threads: the thread count both run with (part of the key).

    Returns:
        ``runtime_s``, ``torch_s``, ``cpu`` (the key) and ``measured`` (False when read from ``speed.json``).
    """
    path = Path(entry) / SPEED_FILE
    key = speed_key(threads)
    known = _read(path)
    if _valid(known.get(key)):
        return {**{k: float(known[key][k]) for k in ("runtime_s", "torch_s")}, "cpu": key, "measured": False}
    timed = time_against_torch(runtime, network, shape)
    try:
        save_json_atomic({**known, key: timed}, path)
    except OSError as exc:
        logger.info("could not record the timing in %s (%s)", path, exc)
    return {**timed, "cpu": key, "measured": True}
