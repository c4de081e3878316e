"""The benchmark report: a plain data model and its Markdown, JSON and CSV writers.

A :class:`BenchmarkReport` holds per-case, per-class scores (DSC as a fraction, HD95 in the protocol's unit), per-case
stage timings, peak memory, the hardware/software stamp and, when the dataset has one, the published table whose rows
are printed beside ours "as published". A report made from untrained (random) weights is marked UNTRAINED in every
Markdown section, in a JSON field and in a CSV column plus a leading comment line.

Examples:
    >>> from pipeline.benchmark.report import BenchmarkReport, BenchmarkCaseResult
    >>> from pipeline.benchmark.published import ClassColumn
    >>> r = BenchmarkReport(bundle="demo", dataset="/data/x", split="test", protocol="strict",
    ...                     classes=[ClassColumn(1, "A", "anterior")],
    ...                     cases=[BenchmarkCaseResult("c1", dice={1: 0.5}, hd95={1: 2.0}, timings={"network": 1.0})])
    >>> r.class_means()[1]["dice"]
    0.5
    >>> "| c1 |" in r.to_markdown()
    True
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.benchmark.published import COMPARABLE_PRESET, PUBLISHED_PROTOCOLS, ClassColumn, PublishedTable
from pipeline.utils.atomic import atomic_path, save_json_atomic
from pipeline.utils.environment import stamp_line
from pipeline.utils.tables import markdown_table

#: timing stages in report order; inference sidecars provide the first four, the benchmark times ``metrics``
STAGES: tuple[str, ...] = ("preprocessing", "network", "stitching", "postprocessing", "metrics")

UNTRAINED_BANNER = (
    "UNTRAINED: this report was made with randomly initialised weights (--allow-untrained). The scores are "
    "meaningless; it only shows that the pipeline runs."
)

REPORT_FORMAT_VERSION = 1


def _num(x: Any) -> float | None:
    """A finite float, or None for None/NaN (inf is kept: it means an unbounded distance)."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


@dataclass
class BenchmarkCaseResult:
    """Scores and timings of one case.

    Attributes:
        case: case id (file name without extension).
        dice: label id -> DSC as a fraction (None when the protocol excludes the pair, e.g. both masks empty).
        hd95: label id -> HD95 in the report's unit (None when excluded).
        timings: stage -> seconds (keys from :data:`STAGES`, plus any extra stage the inference recorded).
        image, label, prediction: file paths.
        status: ``"ok"`` or ``"failed"``; ``error`` holds the one-line reason.
    """

    case: str
    dice: dict[int, float | None] = field(default_factory=dict)
    hd95: dict[int, float | None] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    image: str = ""
    label: str = ""
    prediction: str = ""
    status: str = "ok"
    error: str | None = None

    @property
    def total_seconds(self) -> float:
        return float(sum(self.timings.values()))


@dataclass
class BenchmarkReport:
    """Everything a benchmark run produced; :meth:`write` saves ``report.md``, ``report.json`` and the CSVs."""

    bundle: str
    dataset: str
    split: str
    protocol: str
    classes: list[ClassColumn]
    cases: list[BenchmarkCaseResult] = field(default_factory=list)
    untrained: bool = False
    model: str = ""
    weights: str | None = None
    layout: str = ""
    split_note: str = ""
    protocol_description: str = ""
    hd95_unit: str = "mm"
    published: PublishedTable | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    inference_settings: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    wall_seconds: float | None = None

    # --- aggregation ------------------------------------------------------------------------------------------------
    @property
    def ok_cases(self) -> list[BenchmarkCaseResult]:
        return [c for c in self.cases if c.status == "ok"]

    def class_means(self) -> dict[int, dict[str, Any]]:
        """Per class: mean DSC and HD95 over the evaluated cases, with the number of cases that counted.

        Cases the protocol excluded for a class (None/NaN) are left out of that class's mean and counted in
        ``excluded_*``; an infinite HD95 makes the class mean infinite (it is reported, never hidden).
        """
        out: dict[int, dict[str, Any]] = {}
        ok = self.ok_cases
        for col in self.classes:
            d = [_num(c.dice.get(col.label)) for c in ok]
            h = [_num(c.hd95.get(col.label)) for c in ok]
            out[col.label] = {
                "dice": _mean(d),
                "hd95": _mean(h),
                "n_dice": sum(v is not None for v in d),
                "n_hd95": sum(v is not None for v in h),
                "excluded_dice": sum(v is None for v in d),
                "excluded_hd95": sum(v is None for v in h),
            }
        return out

    def mean_scores(self) -> dict[str, float | None]:
        """Mean over classes of the per-class means (the paper's aggregation)."""
        means = self.class_means()
        return {
            "dice": _mean([m["dice"] for m in means.values()]),
            "hd95": _mean([m["hd95"] for m in means.values()]),
        }

    def stage_names(self) -> list[str]:
        extra = sorted({k for c in self.cases for k in c.timings} - set(STAGES))
        return list(STAGES) + extra

    def timing_summary(self) -> dict[str, dict[str, float | None]]:
        """Per stage: median, mean and total seconds over the successful cases."""
        out: dict[str, dict[str, float | None]] = {}
        ok = self.ok_cases
        for stage in [*self.stage_names(), "total"]:
            raw = [c.total_seconds if stage == "total" else c.timings.get(stage) for c in ok]
            vals = [float(v) for v in raw if v is not None]
            out[stage] = {
                "median": statistics.median(vals) if vals else None,
                "mean": statistics.fmean(vals) if vals else None,
                "total": sum(vals) if vals else None,
            }
        return out

    # --- JSON -------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        means = self.class_means()
        mean = self.mean_scores()
        d: dict[str, Any] = {
            "format_version": REPORT_FORMAT_VERSION,
            "untrained": self.untrained,
            "warning": UNTRAINED_BANNER if self.untrained else None,
            "bundle": self.bundle,
            "model": self.model,
            "weights": self.weights,
            "dataset": self.dataset,
            "layout": self.layout,
            "split": self.split,
            "split_note": self.split_note,
            "cases_used": [c.case for c in self.cases],
            "protocol": self.protocol,
            "protocol_description": self.protocol_description,
            "units": {
                "dice": "fraction (0..1); the Markdown table shows percent",
                "hd95": self.hd95_unit,
                "timings": "seconds",
                "memory": "MiB",
            },
            "classes": [asdict(c) for c in self.classes],
            "summary": {
                "mean_dice": mean["dice"],
                "mean_hd95": mean["hd95"],
                "per_class": [{"label": c.label, "class": c.short, **means[c.label]} for c in self.classes],
                "n_cases": len(self.cases),
                "n_failed": len(self.cases) - len(self.ok_cases),
            },
            "cases": [
                {
                    "case": c.case,
                    "status": c.status,
                    "error": c.error,
                    "image": c.image,
                    "label": c.label,
                    "prediction": c.prediction,
                    "dice": {str(k): _num(v) for k, v in c.dice.items()},
                    "hd95": {str(k): _num(v) for k, v in c.hd95.items()},
                    "timings": dict(c.timings),
                    "total_seconds": c.total_seconds,
                }
                for c in self.cases
            ],
            "timings": self.timing_summary(),
            "memory": self.memory,
            "environment": self.environment,
            "inference_settings": self.inference_settings,
            "command": self.command,
            "wall_seconds": self.wall_seconds,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "published": None,
        }
        if self.published is not None:
            t = self.published
            d["published"] = {
                "label": "as published",
                "table": t.key,
                "dataset": t.dataset,
                "source": t.source,
                "split": t.split,
                "hd95_unit": t.hd95_unit,
                "note": t.note,
                "rows": [
                    {
                        "method": r.method,
                        "dsc_percent": {str(k): v for k, v in r.dsc.items()},
                        "mean_dsc_percent": r.mean_dsc,
                        "mean_hd95": r.mean_hd95,
                        "params_m": r.params_m,
                        "flops_g": r.flops_g,
                        "protocol": r.protocol,
                        "protocol_description": PUBLISHED_PROTOCOLS.get(r.protocol, ""),
                        "comparable_preset": COMPARABLE_PRESET.get(r.protocol),
                        "note": r.note,
                    }
                    for r in t.rows
                ],
            }
        return d

    # --- Markdown ---------------------------------------------------------------------------------------------------
    def _mark(self, heading: str) -> str:
        return f"{heading} (UNTRAINED)" if self.untrained else heading

    def to_markdown(self) -> str:
        cols = self.classes
        means = self.class_means()
        mean = self.mean_scores()
        out = io.StringIO()
        w = out.write
        title = f"Benchmark: {self.bundle} on {Path(self.dataset).name or self.dataset} ({self.split} split)"
        w(f"# {self._mark(title)}\n\n")
        if self.untrained:
            w(f"> **{UNTRAINED_BANNER}**\n\n")
        for warning in self.warnings:
            w(f"> {warning}\n\n")
        w(f"- command: `{self.command}`\n" if self.command else "")
        w(f"- date: {self.environment.get('date', '')}\n")
        w(f"- model: {self.model or self.bundle}; weights: {self.weights or 'none (random initialisation)'}\n")
        w(f"- dataset: `{self.dataset}` (layout {self.layout or 'unknown'})\n")
        w(f"- split: **{self.split}**, {len(self.cases)} case(s) used: {', '.join(c.case for c in self.cases)}\n")
        if self.split_note:
            w(f"- split note: {self.split_note}\n")
        w(f"- protocol: **{self.protocol}**{': ' + self.protocol_description if self.protocol_description else ''}\n")
        w(f"- units: DSC in %, HD95 in {self.hd95_unit}, times in seconds\n")
        if self.inference_settings:
            w("- inference: " + ", ".join(f"{k}={v}" for k, v in self.inference_settings.items()) + "\n")
        w("\n")

        # per-class table, paper column order, published rows beside ours
        order = "paper column order" if self.published is not None else "dataset label order"
        w(f"## {self._mark(f'Per-class results ({order})')}\n\n")
        head = ["Method", "Source", "Protocol", *[c.short for c in cols], f"HD95 ({self.hd95_unit})", "DSC"]
        ours = "ours" + (" (UNTRAINED)" if self.untrained else "")
        rows = [
            [
                f"**{ours}**",
                f"this run, {self.split}",
                self.protocol,
                *[_pct(means[c.label]["dice"]) for c in cols],
                _fmt(mean["hd95"]),
                f"**{_pct(mean['dice'])}**",
            ]
        ]
        if self.published is not None:
            for r in self.published.rows:
                cells = [_fmt(r.dsc.get(c.label)) for c in cols]
                rows.append([r.method, "as published", r.protocol, *cells, _fmt(r.mean_hd95), _fmt(r.mean_dsc)])
        w(markdown_table(head, rows) + "\n\n")
        w(
            "Per class, cases counted (DSC/HD95): "
            + ", ".join(f"{c.short} {means[c.label]['n_dice']}/{means[c.label]['n_hd95']}" for c in cols)
            + ".\n"
        )
        excluded = [
            (c.short, means[c.label]["excluded_dice"], means[c.label]["excluded_hd95"])
            for c in cols
            if means[c.label]["excluded_dice"] or means[c.label]["excluded_hd95"]
        ]
        if excluded:
            w("Excluded by the protocol (DSC/HD95): " + ", ".join(f"{s} {a}/{b}" for s, a, b in excluded) + ".\n")
        if self.published is not None:
            t = self.published
            w(f"\nPublished rows: {t.source}; split {t.split}; HD95 unit {t.hd95_unit or 'not reported'}. {t.note}\n")
            used = sorted({r.protocol for r in t.rows})
            for p in used:
                comp = COMPARABLE_PRESET.get(p)
                same = f" (our preset `{comp}`)" if comp else " (no matching preset of ours)"
                w(f"- `{p}`{same}: {PUBLISHED_PROTOCOLS.get(p, '')}\n")
            presets = sorted({our_preset for p in used if (our_preset := COMPARABLE_PRESET.get(p))})
            if self.protocol not in presets:
                hint = f" (`--protocol {' / '.join(presets)}` matches some rows)" if presets else ""
                w(
                    f"- Our row uses `{self.protocol}`, which none of the published rows used: compare with care"
                    f"{hint}.\n"
                )
        w("\n")

        # per case
        w(f"## {self._mark('Per-case results')}\n\n")
        head = ["Case", "Status", *[f"{c.short} DSC" for c in cols], "mean DSC", f"mean HD95 ({self.hd95_unit})"]
        rows = []
        for c in self.cases:
            if c.status != "ok":
                rows.append([c.case, f"failed: {c.error or ''}".replace("|", "/"), *[""] * (len(cols) + 2)])
                continue
            d = [_num(c.dice.get(k.label)) for k in cols]
            h = [_num(c.hd95.get(k.label)) for k in cols]
            rows.append([c.case, "ok", *[_pct(v) for v in d], _pct(_mean(d)), _fmt(_mean(h))])
        w(markdown_table(head, rows) + "\n\n")

        # timings
        stages = self.stage_names()
        w(f"## {self._mark('Timings per case and stage (s)')}\n\n")
        rows = [[c.case, *[_fmt(c.timings.get(s), 3) for s in stages], _fmt(c.total_seconds, 3)] for c in self.ok_cases]
        summ = self.timing_summary()
        rows += [[f"*{stat}*", *[_fmt(summ[s][stat], 3) for s in [*stages, "total"]]] for stat in ("median", "mean")]
        w(markdown_table(["Case", *stages, "total"], rows) + "\n\n")
        if self.wall_seconds is not None:
            w(f"Wall time of the whole benchmark: {self.wall_seconds:.1f} s.\n\n")

        # memory and environment
        w(f"## {self._mark('Peak memory')}\n\n")
        if self.memory:
            for k, v in self.memory.items():
                w(f"- {k}: {v}\n")
        else:
            w("- not measured\n")
        w("\n")
        w(f"## {self._mark('Hardware and software')}\n\n")
        if self.environment:
            w(f"{stamp_line(self.environment)}\n\n")
            w(markdown_table(["key", "value"], [[k, str(v)] for k, v in self.environment.items()]) + "\n")
        w("\n")
        if self.notes:
            w(f"## {self._mark('Notes')}\n\n")
            for n in self.notes:
                w(f"- {n}\n")
            w("\n")
        return out.getvalue()

    # --- CSV --------------------------------------------------------------------------------------------------------
    def _csv_header(self) -> str:
        lines = [
            f"# medseg benchmark report: bundle {self.bundle}, split {self.split}, protocol {self.protocol}, "
            f"HD95 unit {self.hd95_unit}"
        ]
        if self.untrained:
            lines.insert(0, f"# {UNTRAINED_BANNER}")
        return "".join(line + "\n" for line in lines)

    def to_csv(self) -> str:
        """Long table: one row per case and class (DSC fraction, HD95), plus ``untrained`` and ``protocol`` columns."""
        buf = io.StringIO()
        buf.write(self._csv_header())
        wr = csv.writer(buf, lineterminator="\n")
        wr.writerow(["case", "status", "label", "class", "dice", "hd95", "hd95_unit", "protocol", "split", "untrained"])
        for c in self.cases:
            for col in self.classes:
                wr.writerow(
                    [
                        c.case,
                        c.status,
                        col.label,
                        col.short,
                        _csvnum(c.dice.get(col.label)),
                        _csvnum(c.hd95.get(col.label)),
                        self.hd95_unit,
                        self.protocol,
                        self.split,
                        int(self.untrained),
                    ]
                )
        return buf.getvalue()

    def timings_csv(self) -> str:
        """One row per case: seconds per stage and total, plus the ``untrained`` column."""
        buf = io.StringIO()
        buf.write(self._csv_header())
        stages = self.stage_names()
        wr = csv.writer(buf, lineterminator="\n")
        wr.writerow(["case", "status", *stages, "total", "untrained"])
        for c in self.cases:
            wr.writerow(
                [
                    c.case,
                    c.status,
                    *[_csvnum(c.timings.get(s)) for s in stages],
                    f"{c.total_seconds:.6g}",
                    int(self.untrained),
                ]
            )
        return buf.getvalue()

    # --- files ------------------------------------------------------------------------------------------------------
    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``report.md``, ``report.json``, ``report.csv`` and ``timings.csv`` atomically into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "markdown": out / "report.md",
            "json": out / "report.json",
            "csv": out / "report.csv",
            "timings_csv": out / "timings.csv",
        }
        save_json_atomic(self.to_dict(), paths["json"])
        for key, text in (
            ("markdown", self.to_markdown()),
            ("csv", self.to_csv()),
            ("timings_csv", self.timings_csv()),
        ):
            with atomic_path(paths[key]) as tmp:
                tmp.write_text(text, encoding="utf-8")
        return paths


def _fmt(x: Any, digits: int = 2) -> str:
    v = _num(x)
    if v is None:
        return "–"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def _pct(x: Any) -> str:
    v = _num(x)
    return "–" if v is None else f"{100.0 * v:.2f}"


def _csvnum(x: Any) -> str:
    v = _num(x)
    return "" if v is None else f"{v:.6g}"
