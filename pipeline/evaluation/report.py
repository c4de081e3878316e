"""Report writers: the per-case long CSV, the summary JSON and a Markdown table laid out like the papers'.

Every header states the protocol (and any overridden rule), the HD95 definition and units, the scoring space and
spacing, the class set, the empty-mask penalties and the split; legacy protocols carry a warning banner. Files are
written atomically: ``per_case.csv``, ``summary.json``, ``summary.md``.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import os
from pathlib import Path

from pipeline.evaluation.summary import Summary
from pipeline.utils.atomic import atomic_path, save_json_atomic
from pipeline.utils.tables import markdown_table

__all__ = [
    "write_reports",
    "summary_to_json",
    "summary_to_markdown",
    "rows_to_csv",
    "header_lines",
    "space_text",
    "REPORT_FILES",
    "CSV_COLUMNS",
]

#: the files :func:`write_reports` writes into the output folder
REPORT_FILES = ("per_case.csv", "summary.json", "summary.md")
#: CSV columns; ``assd``/``nsd`` follow when computed
CSV_COLUMNS = (
    "case",
    "class",
    "dice",
    "hd95",
    "class_name",
    "n_gt",
    "n_pred",
    "tp",
    "fp",
    "fn",
    "empty_gt",
    "empty_pred",
    "situation",
)

_HD95_TEXT = {
    "max_directed": "max of the two directed 95th percentiles (MONAI / DeepMind)",
    "pooled": "95th percentile of the pooled directed distances (medpy hd95)",
}


def _cell(value: object) -> str:
    if value is None:
        return ""  # excluded by the protocol
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.10g}"
    return str(value)


def rows_to_csv(summary: Summary) -> str:
    """The long-format CSV text: one line per (case, class); excluded values empty, NaN as ``nan``."""
    cols = list(CSV_COLUMNS) + [m for m in ("assd", "nsd") if m in summary.metrics]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in summary.rows:
        w.writerow([_cell(r.get(c)) for c in cols])
    return buf.getvalue()


def _units(summary: Summary) -> str:
    return "mm" if summary.protocol.units == "mm" else "voxels"


def space_text(summary: Summary) -> str:
    """The scoring space and the spacing used, for report headers."""
    if summary.space == "resampled" and summary.target_spacing is not None:
        return (
            f"resampled: label and prediction resampled (nearest neighbour, each through its own affine) onto "
            f"a grid of {summary.target_spacing.describe()} covering the label's extent"
        )
    return "original: each label's own grid, spacing from its header"


def header_lines(summary: Summary) -> list[str]:
    """The facts every report states: protocol, HD95 definition and units, space, classes, penalties, split, cases."""
    p = summary.protocol
    grid = "the resampled grid" if summary.space == "resampled" else "the label grid"
    if p.units == "voxel":
        spacing = f"no spacing: VOXEL units of {grid}"
    elif summary.space == "resampled":
        spacing = "target spacing of the resampled grid"
    else:
        spacing = "spacing from the label headers"
    ids = ", ".join(f"{k} {v}" for k, v in summary.classes.labels.items())
    lines = [
        f"protocol: {p.name}" + (f" (overridden: {', '.join(p.overrides)})" if p.overrides else "") + f": {p.summary}",
        f"HD95: {_HD95_TEXT[p.hd95_definition]}, in {_units(summary)} ({spacing})",
        f"space: {space_text(summary)}",
        f"empty masks: {p.penalty_text()}",
        f"classes: {summary.classes.name}, {len(summary.classes.labels)} classes ({ids})",
        f"split: {summary.split or 'not stated (pass --split NAME)'}",
        f"cases: {len(summary.cases)} scored, {len(summary.failures)} failed, "
        f"{len(summary.missing)} labels without prediction, {len(summary.extra)} predictions without label",
        "aggregation: mean over cases per class (excluded/NaN entries left out and counted), then mean over classes",
    ]
    if "nsd" in summary.metrics:
        lines.append(f"NSD tolerance: {summary.nsd_tolerance:g} {_units(summary)}")
    return lines


def summary_to_json(summary: Summary) -> dict:
    """The summary as a JSON-ready dict."""
    pc = summary.per_class()

    def clean(v: object) -> object:
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        return v

    return {
        "protocol": summary.protocol.to_dict(),
        "units": _units(summary),
        "hd95_definition": summary.protocol.hd95_definition,
        "classes": summary.classes.to_dict(),
        "split": summary.split,
        "metrics": list(summary.metrics),
        "space": summary.space,
        "target_spacing": summary.target_spacing.to_dict() if summary.target_spacing is not None else None,
        "grids": summary.grids,
        "header": header_lines(summary),
        "warning": summary.protocol.warning,
        "mean": summary.means(pc),
        "per_class": {str(k): {kk: clean(vv) for kk, vv in v.items()} for k, v in pc.items()},
        "n_cases": len(summary.cases),
        "cases": summary.cases,
        "failed": [{"case": c, "error": e} for c, e in summary.failures],
        "missing_predictions": summary.missing,
        "extra_predictions": summary.extra,
        "ambiguous": summary.ambiguous,
        "pred_dir": summary.pred_dir,
        "label_dir": summary.label_dir,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


#: the columns of the per-class counts table: title -> key of :meth:`Summary.per_class`
_COUNT_COLUMNS = {
    "cases": "n_cases",
    "both present": "n_present",
    "missed": "n_missed",
    "spurious": "n_spurious",
    "both empty": "n_both_empty",
    "Dice excluded": "n_dice_excluded",
    "Dice NaN": "n_dice_nan",
    "HD95 excluded": "n_hd95_excluded",
    "HD95 NaN": "n_hd95_nan",
}


def _num(v: float | None, scale: float = 1.0) -> str:
    return "n/a" if v is None else f"{v * scale:.2f}"


def summary_to_markdown(summary: Summary) -> str:
    """A Markdown section: header facts, the paper-style table (mean + per class), then the counts per class."""
    pc = summary.per_class()
    means = summary.means(pc)
    p = summary.protocol
    out = [
        f"## Evaluation: protocol `{p.name}`, {summary.classes.name}, HD95 in {_units(summary)}, {summary.space} space",
        "",
    ]
    if p.warning:
        out += [f"> **{p.warning}**", ""]
    out += [f"- {line}" for line in header_lines(summary)] + [""]
    names = [e["name"] for e in pc.values()]
    units = _units(summary)
    labels = {
        "dice": ("DSC (%)", 100.0),
        "hd95": (f"HD95 ({units})", 1.0),
        "assd": (f"ASSD ({units})", 1.0),
        "nsd": ("NSD (%)", 100.0),
    }
    rows = []
    for m in summary.metrics:
        title, scale = labels[m]
        rows.append([title, _num(means[m], scale), *(_num(e[m], scale) for e in pc.values())])
    out.append(markdown_table(["metric", "mean", *names], rows, align=["", *["right"] * (len(names) + 1)]))
    rows = [[f"{cid} {e['name']}", *(e[k] for k in _COUNT_COLUMNS.values())] for cid, e in pc.items()]
    out += ["", markdown_table(["class", *_COUNT_COLUMNS], rows, align=["", *["right"] * len(_COUNT_COLUMNS)])]
    if p.name == "monai":
        out += [
            "",
            f"MONAI's own reduction (nan-mean over every case x class entry): DSC "
            f"{_num(means.get('dice_mean_over_entries'), 100.0)} %, HD95 "
            f"{_num(means.get('hd95_mean_over_entries'))} {units}. NaN entries (MONAI #9095) are dropped from "
            "these means; they are counted above.",
        ]
    problems = [f"- failed: {c}: {e}" for c, e in summary.failures]
    problems += [f"- label without prediction: {m}" for m in summary.missing]
    problems += [f"- prediction without label: {x}" for x in summary.extra]
    problems += [f"- ambiguous: {a}" for a in summary.ambiguous]
    if problems:
        out += ["", "Problems:", ""] + problems
    return "\n".join(out) + "\n"


def write_reports(summary: Summary, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``per_case.csv``, ``summary.json`` and ``summary.md`` into ``out_dir`` atomically; return the paths."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / name for name in REPORT_FILES]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(rows_to_csv(summary))
    save_json_atomic(summary_to_json(summary), paths[1])
    with atomic_path(paths[2]) as tmp:
        tmp.write_text(summary_to_markdown(summary))
    return paths
