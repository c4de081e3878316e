"""The result of one evaluation: a :class:`Summary` of per-(case, class) rows with its per-class and overall means.

:func:`pipeline.evaluation.folders.evaluate_folders` fills it; :mod:`pipeline.evaluation.report` writes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeGuard

import numpy as np

from pipeline.evaluation.classes import ClassSet
from pipeline.evaluation.protocols import Protocol
from pipeline.evaluation.space import TargetSpacing

__all__ = ["Summary"]


def _valid(v: object) -> TypeGuard[float]:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


@dataclass
class Summary:
    """Everything one evaluation produced; written by :mod:`pipeline.evaluation.report`.

    Attributes:
        protocol: the protocol used.
        classes: the class set scored.
        rows: one dict per (case, class), columns as in the CSV.
        failures: ``(case, one-line error)`` for cases that could not be scored.
        missing / extra / ambiguous: pairing problems (label without prediction, prediction without label, ...).
        metrics: the metrics computed.
        split: free text naming the split the cases come from (stated in the report header).
        pred_dir / label_dir: the inputs.
        space: ``"original"`` (each label's own grid) or ``"resampled"`` (label extent at ``target_spacing``).
        target_spacing: the resampled grid's spacing and its source; None in original space.
        grids: per scored case, the grid the metrics were computed on: ``{"shape": [...], "spacing": [...]}``.
    """

    protocol: Protocol
    classes: ClassSet
    rows: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    metrics: tuple[str, ...] = ("dice", "hd95")
    nsd_tolerance: float = 1.0
    split: str | None = None
    pred_dir: str = ""
    label_dir: str = ""
    space: str = "original"
    target_spacing: TargetSpacing | None = None
    grids: dict[str, dict] = field(default_factory=dict)

    @property
    def cases(self) -> list[str]:
        return sorted({r["case"] for r in self.rows})

    def per_class(self) -> dict[int, dict]:
        """Per class: the mean of each metric over its valid cases, and the counts behind it."""
        out: dict[int, dict] = {}
        for cid, cname in self.classes.labels.items():
            rows = [r for r in self.rows if r["class"] == cid]
            entry: dict = {"name": cname, "n_cases": len(rows)}
            for sit in ("present", "missed", "spurious", "both_empty"):
                entry[f"n_{sit}"] = sum(r["situation"] == sit for r in rows)
            for m in self.metrics:
                vals = [r.get(m) for r in rows]
                good = [float(v) for v in vals if _valid(v)]
                entry[m] = float(np.mean(good)) if good else None
                entry[f"n_{m}"] = len(good)
                entry[f"n_{m}_excluded"] = sum(v is None for v in vals)
                entry[f"n_{m}_nan"] = sum(isinstance(v, float) and math.isnan(v) for v in vals)
            out[cid] = entry
        return out

    def means(self, per_class: dict[int, dict] | None = None) -> dict[str, float | None]:
        """Mean over classes of the per-class means (the papers' "average" column); classes without a valid case
        are left out (and listed under ``classes_without_value``)."""
        pc = self.per_class() if per_class is None else per_class
        out: dict = {}
        for m in self.metrics:
            vals = [e[m] for e in pc.values() if e[m] is not None]
            out[m] = float(np.mean(vals)) if vals else None
            out[f"{m}_classes_without_value"] = [cid for cid, e in pc.items() if e[m] is None]
        if self.protocol.name == "monai":  # MONAI's own reduction="mean": nan-mean over every (case, class) entry
            for m in self.metrics:
                vals = [float(r[m]) for r in self.rows if _valid(r.get(m))]
                out[f"{m}_mean_over_entries"] = float(np.mean(vals)) if vals else None
        return out

    @property
    def ok(self) -> bool:
        """True when every paired case was scored and nothing was ambiguous."""
        return not self.failures and not self.ambiguous
