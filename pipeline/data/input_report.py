"""What the readers found out about an input while loading it (geometry source, DICOM series, warnings).

The readers in :mod:`pipeline.data.io` store a small JSON report in the loaded image's metadata under
:data:`INPUT_REPORT_KEY`; it survives MONAI's preprocessing (metadata is copied along), so ``medseg infer`` can put it
in the ``<case>.json`` sidecar and print its warnings, and ``medseg datasets check`` can list them. A JSON string is
stored rather than a dict so MONAI never tries to collate or convert it.

Examples:
    >>> meta = {}
    >>> attach_input_report(meta, {"format": "nifti", "warnings": ["no orientation"]})
    >>> input_report(meta)["format"], input_warnings(meta)
    ('nifti', ['no orientation'])
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

__all__ = ["INPUT_REPORT_KEY", "attach_input_report", "input_report", "input_warnings", "print_warnings"]

#: metadata key holding the JSON report
INPUT_REPORT_KEY = "medseg_input"


def attach_input_report(meta: dict, report: Mapping[str, Any]) -> None:
    """Store ``report`` (JSON-serialisable, with an optional ``warnings`` list) in the metadata dict ``meta``."""
    meta[INPUT_REPORT_KEY] = json.dumps(dict(report), default=str)


def input_report(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The report stored by :func:`attach_input_report` (an empty dict when there is none)."""
    raw = (meta or {}).get(INPUT_REPORT_KEY)
    if isinstance(raw, (list, tuple)) and raw:  # metadata collated by a DataLoader: one entry per item
        raw = raw[0]
    if not isinstance(raw, str):
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def input_warnings(meta: Mapping[str, Any] | None) -> list[str]:
    """The warnings of the stored report, one phrase each (without the file name)."""
    return [str(w) for w in input_report(meta).get("warnings") or []]


def print_warnings(path: object, warnings: Iterable[str], *, prefix: str = "", stream: TextIO | None = None) -> None:
    """Print ``warning: <prefix><path>: <warning>``, one line each, on stderr (default)."""
    out = stream or sys.stderr
    for w in warnings:
        print(f"warning: {prefix}{path}: {' '.join(str(w).split())}", file=out)
