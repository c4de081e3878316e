"""``medseg datasets check``: validate every case of a dataset and report ALL problems, not just the first.

Per case it looks for: missing or unreadable image/label files, unexpected dimensionality or channel count, NaN/Inf
intensities, image/label shape mismatch, image/label grid (affine) mismatch, non-integer label values and label values
outside the declared label set. It also records what a summary table needs: shape, spacing, orientation, intensity
range and label voxel counts.

:func:`check_dataset` returns a structured :class:`CheckReport`; other commands reuse :func:`check_case` /
:func:`check_items` to validate their inputs. TransUNet's npz/h5 items (arrays without geometry) are checked by
:func:`check_transunet_item`.

Examples:
    >>> from pipeline.data.check import check_dataset
    >>> report = check_dataset("../shared/data/STS_CT")  # doctest: +SKIP
    >>> report.ok, report.n_cases  # doctest: +SKIP
    (True, 24)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from pipeline.data.geometry import spacing_from_affine
from pipeline.data.input_report import input_warnings
from pipeline.data.transunet import TRANSUNET_NUM_CLASSES, load_transunet_item
from pipeline.errors import InputDataError, PipelineError
from pipeline.utils.tables import markdown_table

if TYPE_CHECKING:
    from monai.data import MetaTensor

#: maximum difference (mm) between the image and label grids, after bringing both to a canonical orientation
GRID_TOLERANCE_MM = 1e-3


@dataclass
class CaseReport:
    """The result of checking one case. ``problems`` make the case broken; ``warnings`` say what had to be assumed
    to read a file (e.g. a NIfTI without orientation, a DICOM folder with several series, uneven DICOM slices: the
    same facts ``medseg infer`` prints and records in its sidecar) and do not; ``notes`` are informational."""

    case: str
    split: str = ""
    image: str | list[str] = ""
    label: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shape: list[int] | None = None
    channels: int | None = None
    spacing: list[float] | None = None
    orientation: str | None = None
    dtype: str | None = None
    intensity_min: float | None = None
    intensity_max: float | None = None
    label_counts: dict[int, int] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class CheckReport:
    """All case reports of one dataset, plus dataset-level problems (e.g. duplicate case names)."""

    path: str
    layout: str
    labels: dict[int, str]
    cases: list[CaseReport]
    problems: list[str] = field(default_factory=list)
    axis_order: str = "xyz"

    @property
    def n_cases(self) -> int:
        return len(self.cases)

    @property
    def broken(self) -> list[CaseReport]:
        return [c for c in self.cases if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.broken

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (``medseg datasets check --json``)."""
        return {
            "path": self.path,
            "layout": self.layout,
            "axis_order": self.axis_order,
            "labels": {str(k): v for k, v in self.labels.items()},
            "ok": self.ok,
            "n_cases": self.n_cases,
            "n_broken": len(self.broken),
            "problems": list(self.problems),
            "cases": [
                {
                    **asdict(c),
                    "ok": c.ok,
                    "label_counts": None if c.label_counts is None else {str(k): v for k, v in c.label_counts.items()},
                }
                for c in self.cases
            ],
        }


# ------------------------------------------------------------------------------------------------------------ geometry
def orientation_code(affine: npt.ArrayLike) -> str:
    """Axis codes such as ``RAS`` / ``LPS`` of a RAS-world affine (nibabel convention)."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))


def canonical_grid(shape: Sequence[int], affine: npt.ArrayLike) -> tuple[tuple[int, ...], np.ndarray]:
    """The same voxel grid re-indexed to the closest canonical (RAS) axis order: (shape, affine)."""
    from nibabel.orientations import inv_ornt_aff, io_orientation

    aff = np.asarray(affine, dtype=np.float64)
    ornt = io_orientation(aff)
    new_aff = aff @ inv_ornt_aff(ornt, tuple(int(s) for s in shape))
    new_shape = [0] * len(shape)
    for i, (axis, _flip) in enumerate(ornt):
        new_shape[int(axis)] = int(shape[i])
    return tuple(new_shape), new_aff


def grid_difference(
    shape_a: Sequence[int], aff_a: npt.ArrayLike, shape_b: Sequence[int], aff_b: npt.ArrayLike
) -> tuple[bool, float]:
    """(same shape after canonical reorientation, max |affine difference| in mm) of two voxel grids.

    Two grids that cover the same voxels with different axis orders/flips (a DICOM series and a NIfTI label written in
    another orientation) compare equal.
    """
    sa, ca = canonical_grid(shape_a, aff_a)
    sb, cb = canonical_grid(shape_b, aff_b)
    return sa == sb, float(np.abs(ca - cb).max())


# ------------------------------------------------------------------------------------------------------------ checking
def _load(path: str, what: str, problems: list[str]) -> MetaTensor | None:
    from pipeline.data.io import file_kind, load_volume

    if file_kind(path) == "missing":  # a broken link, a link loop or a FIFO is described by load_volume
        problems.append(f"{what} file missing: {path}")
        return None
    try:
        return load_volume(path, dtype=None)
    except InputDataError as exc:
        problems.append(f"{what} unreadable: {exc}")
        return None
    except PipelineError as exc:  # e.g. ResourceError: too large to load here
        problems.append(f"{what} not loaded: {exc}")
        return None


def _load_image(image: str | list[str], problems: list[str]) -> MetaTensor | None:
    if isinstance(image, (list, tuple)):
        loaded = [_load(p, f"image channel {i}", problems) for i, p in enumerate(image)]
        vols = [v for v in loaded if v is not None]
        if len(vols) != len(loaded):
            return None
        shapes = {tuple(v.shape[1:]) for v in vols}
        if len(shapes) > 1:
            problems.append(f"image channel files differ in shape: {sorted(shapes)}")
            return None
        import torch

        out = vols[0].clone()
        out.set_array(torch.cat([v.as_tensor() for v in vols], dim=0))
        return out
    return _load(image, "image", problems)


def check_case(
    item: dict,
    *,
    label_ids: Iterable[int] | None = None,
    expected_channels: int | None = None,
    split: str = "",
) -> CaseReport:
    """Check one datalist item (``{"image": ..., "label": ..., "case": ...}``) and return every problem found.

    Args:
        item: the datalist item; ``label`` is optional (unlabelled cases only check the image).
        label_ids: the declared label values; values outside it are problems. None skips that check.
        expected_channels: declared number of image channels (MSD ``modality`` entries); None accepts any.
        split: split name, for the report.
    """
    image = item.get("image", "")
    label = item.get("label") or None
    rep = CaseReport(case=str(item.get("case") or Path(str(image)).name), split=split, image=image, label=label)
    if item.get("error"):  # found while listing the files (e.g. two files for one case name)
        rep.problems.append(str(item["error"]))
        return rep
    img = _load_image(image, rep.problems)
    lab = _load(label, "label", rep.problems) if label else None
    for vol, role, path in ((img, "image", image), (lab, "label", label)):
        if vol is not None:
            rep.warnings += [f"{role} {path}: {w}" for w in input_warnings(getattr(vol, "meta", None))]
    if img is not None:
        arr = img.as_tensor().numpy() if hasattr(img, "as_tensor") else np.asarray(img)
        rep.channels = int(arr.shape[0])
        rep.shape = [int(s) for s in arr.shape[1:]]
        rep.dtype = str(arr.dtype)
        aff = np.asarray(img.affine, dtype=np.float64)
        rep.spacing = [round(float(s), 4) for s in spacing_from_affine(aff)]
        rep.orientation = orientation_code(aff)
        if arr.ndim != 4:
            rep.problems.append(f"image has {arr.ndim - 1} spatial dimensions {rep.shape}, expected 3")
        if expected_channels is not None and rep.channels != expected_channels:
            rep.problems.append(f"image has {rep.channels} channel(s), the dataset declares {expected_channels}")
        if np.issubdtype(arr.dtype, np.floating):
            finite = np.isfinite(arr)
            if not finite.all():
                n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
                rep.problems.append(f"image has {n_nan} NaN and {n_inf} Inf voxels")
            vals = arr[finite] if not finite.all() else arr
        else:
            vals = arr
        if vals.size:
            rep.intensity_min, rep.intensity_max = float(vals.min()), float(vals.max())
    if lab is not None:
        larr = lab.as_tensor().numpy()
        lshape = [int(s) for s in larr.shape[1:]]
        if larr.shape[0] != 1 or larr.ndim != 4:
            rep.problems.append(
                f"label has shape {list(larr.shape[1:])} with {larr.shape[0]} channel(s), expected one 3D label map"
            )
        if img is not None and larr.ndim == 4 and rep.shape is not None:
            same_shape, diff = (
                grid_difference(lshape, lab.affine, rep.shape, img.affine)
                if len(lshape) == len(rep.shape) == 3
                else (lshape == rep.shape, 0.0)
            )
            if lshape != rep.shape and not same_shape:
                rep.problems.append(f"label shape {lshape} != image shape {rep.shape}")
            elif diff > GRID_TOLERANCE_MM * max(1.0, min(rep.spacing or [1.0])):
                rep.problems.append(f"label affine differs from the image affine by up to {diff:.4g} mm")
            elif lshape != rep.shape or orientation_code(lab.affine) != rep.orientation:
                rep.notes.append(
                    f"label stored as {orientation_code(lab.affine)} {lshape}, image as "
                    f"{rep.orientation} {rep.shape}: same grid"
                )
        if np.issubdtype(larr.dtype, np.floating):
            if not np.isfinite(larr).all():
                rep.problems.append("label has NaN/Inf voxels")
                larr = np.nan_to_num(larr, nan=0.0, posinf=0.0, neginf=0.0)
            if not np.array_equal(larr, np.round(larr)):
                rep.problems.append("label has non-integer values (a probability map or an interpolated label?)")
        values, counts = np.unique(np.round(larr).astype(np.int64), return_counts=True)
        rep.label_counts = {int(v): int(c) for v, c in zip(values, counts)}
        if label_ids is not None:
            declared = {int(i) for i in label_ids}
            bad = sorted(set(rep.label_counts) - declared)
            if bad:
                rep.problems.append(f"label values {bad} are not in the declared label set {sorted(declared)}")
        if set(rep.label_counts) <= {0}:
            rep.notes.append("label is empty (background only)")
    return rep


def check_transunet_item(item: dict, *, label_ids: Any = None, split: str = "") -> CaseReport:
    """Check one TransUNet npz/h5 item: readable, 2D slice or 3D volume, same image/label shape, finite image,
    integer labels within ``label_ids`` (default 0..8). Spacing and orientation are not stored in these files."""
    rep = CaseReport(case=str(item.get("case")), split=split, image=str(item["image"]), label=item.get("label"))
    try:
        img, lab = load_transunet_item(item["image"])
    except InputDataError as exc:
        rep.problems.append(f"unreadable: {exc}")
        return rep
    rep.shape, rep.channels, rep.dtype, rep.orientation = [int(s) for s in img.shape], 1, str(img.dtype), "zyx"
    expected_nd = 2 if str(item["image"]).endswith(".npz") else 3
    if img.ndim != expected_nd:
        rep.problems.append(f"image has {img.ndim} dimensions {list(img.shape)}, expected {expected_nd}")
    if lab.shape != img.shape:
        rep.problems.append(f"label shape {list(lab.shape)} != image shape {list(img.shape)}")
    if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
        rep.problems.append(f"image has {int((~np.isfinite(img)).sum())} NaN/Inf voxels")
    finite = img[np.isfinite(img)] if np.issubdtype(img.dtype, np.floating) else img
    if finite.size:
        rep.intensity_min, rep.intensity_max = float(finite.min()), float(finite.max())
    if np.issubdtype(lab.dtype, np.floating) and not np.array_equal(lab, np.round(lab)):
        rep.problems.append("label has non-integer values")
    values, counts = np.unique(np.round(np.nan_to_num(lab)).astype(np.int64), return_counts=True)
    rep.label_counts = {int(v): int(c) for v, c in zip(values, counts)}
    declared = set(range(TRANSUNET_NUM_CLASSES)) if label_ids is None else {int(i) for i in label_ids}
    bad = sorted(set(rep.label_counts) - declared)
    if bad:
        rep.problems.append(f"label values {bad} are not in the declared label set {sorted(declared)}")
    return rep


def _check_job(args: tuple) -> CaseReport:
    item, label_ids, channels, split, axis_order = args
    if axis_order == "zyx":
        return check_transunet_item(item, label_ids=label_ids, split=split)
    return check_case(item, label_ids=label_ids, expected_channels=channels, split=split)


def check_items(
    items: Sequence[tuple[str, dict]],
    *,
    label_ids: Iterable[int] | None = None,
    expected_channels: int | None = None,
    axis_order: str = "xyz",
    workers: int = 1,
    progress: Callable[[CaseReport], None] | None = None,
) -> list[CaseReport]:
    """Check ``(split, item)`` pairs, in order, optionally in ``workers`` processes; ``progress`` sees each report."""
    ids = None if label_ids is None else sorted(int(i) for i in label_ids)
    jobs = [(item, ids, expected_channels, split, axis_order) for split, item in items]
    reports: list[CaseReport] = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for rep in pool.map(_check_job, jobs, chunksize=4):
                reports.append(rep)
                if progress:
                    progress(rep)
    else:
        for job in jobs:
            rep = _check_job(job)
            reports.append(rep)
            if progress:
                progress(rep)
    return reports


def check_dataset(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    workers: int = 1,
    progress: Callable[[CaseReport], None] | None = None,
) -> CheckReport:
    """Detect the layout of ``path``, check every case of every split and return the full report.

    Args:
        path: dataset folder (any layout :func:`pipeline.data.readers.read_dataset` understands).
        split: restrict to one split (or an official split file), as in ``read_dataset``.
        workers: worker processes (1 = in this process).
        progress: called with each :class:`CaseReport` as soon as it is ready.

    Raises:
        InputDataError: when the folder itself cannot be read (no layout, unreadable dataset JSON).
    """
    from pipeline.data.readers import read_dataset

    info = read_dataset(path, split=split, report_problems=True)
    problems: list[str] = []
    pairs: list[tuple[str, dict]] = []
    seen: dict[tuple[str, str], str] = {}
    for split_name, items in info.splits.items():
        if split_name.startswith("fold"):  # folds repeat training cases
            continue
        for it in items:
            key = (str(it["image"]), str(it.get("case")))
            if key in seen:
                continue  # the same case listed in two splits (e.g. Synapse "all" and "test")
            seen[key] = split_name
            pairs.append((split_name, it))
    cases = [str(it.get("case")) for _, it in pairs]
    dups = sorted({c for c in cases if cases.count(c) > 1})
    if dups:
        problems.append(f"duplicate case names: {', '.join(dups)}")
    if not pairs:
        problems.append("no cases found")
    channels = len(info.channels) if info.channels else None
    label_ids = info.label_ids or None
    reports = check_items(
        pairs,
        label_ids=label_ids,
        expected_channels=channels,
        axis_order=info.axis_order,
        workers=workers,
        progress=progress,
    )
    return CheckReport(
        path=str(path),
        layout=info.layout,
        labels=dict(info.labels),
        cases=reports,
        problems=problems,
        axis_order=info.axis_order,
    )


# ------------------------------------------------------------------------------------------------------------ output
def _fmt_num(v: float | None) -> str:
    if v is None:
        return "-"
    if float(v).is_integer() and abs(v) < 1e7:
        return str(int(v))
    return f"{v:.4g}"


def format_table(report: CheckReport, *, max_rows: int | None = None) -> str:
    """The summary table (Markdown, columns padded to read as plain text): case, split, status, shape, spacing,
    orientation, intensity range, label counts."""
    head = ["case", "split", "status", "shape", "spacing (mm)", "orient.", "intensity", "label voxels"]
    rows = []
    cases = report.cases if max_rows is None else report.cases[:max_rows]
    for c in cases:
        shape = "x".join(map(str, c.shape)) if c.shape else "-"
        if c.channels and c.channels > 1:
            shape = f"{c.channels}ch {shape}"
        spacing = "x".join(f"{s:g}" for s in c.spacing) if c.spacing else "-"
        inten = f"{_fmt_num(c.intensity_min)}..{_fmt_num(c.intensity_max)}" if c.intensity_min is not None else "-"
        counts = " ".join(f"{k}:{v}" for k, v in sorted(c.label_counts.items()) if k != 0) if c.label_counts else "-"
        rows.append(
            [
                c.case,
                c.split,
                "OK" if c.ok else "BROKEN",
                shape,
                spacing,
                c.orientation or "-",
                inten,
                counts or "(empty)",
            ]
        )
    lines = [markdown_table(head, rows, pad=True)]
    if max_rows is not None and len(report.cases) > max_rows:
        lines.append(f"... {len(report.cases) - max_rows} more cases")
    return "\n".join(lines)


def format_summary(report: CheckReport) -> str:
    """Aggregate lines: counts, shape/spacing ranges, orientations, intensity range, total label voxels."""
    good = [c for c in report.cases if c.shape]
    lines = [
        f"dataset: {report.path}",
        f"layout: {report.layout} (array axis order {report.axis_order})",
        "labels: " + (", ".join(f"{k}={v}" for k, v in report.labels.items()) or "(not declared)"),
        f"cases: {report.n_cases}, OK: {report.n_cases - len(report.broken)}, broken: {len(report.broken)}"
        + (f", with warnings: {n_warn}" if (n_warn := sum(bool(c.warnings) for c in report.cases)) else ""),
    ]
    if good:
        shapes3 = [c.shape for c in good if c.shape and len(c.shape) == 3]
        shapes = np.array(shapes3) if shapes3 else None
        if shapes is not None and len(shapes):
            lines.append(
                "shape min/median/max: "
                + " / ".join("x".join(str(int(v)) for v in f(shapes, axis=0)) for f in (np.min, np.median, np.max))
            )
        sp = np.array([c.spacing for c in good if c.spacing and len(c.spacing) == 3])
        if len(sp):
            lines.append(
                "spacing min/median/max (mm): "
                + " / ".join("x".join(f"{v:.3g}" for v in f(sp, axis=0)) for f in (np.min, np.median, np.max))
            )
        orients: dict[str, int] = {}
        for c in good:
            orients[c.orientation or "-"] = orients.get(c.orientation or "-", 0) + 1
        lines.append("orientations: " + ", ".join(f"{k} x{v}" for k, v in sorted(orients.items())))
        mins = [c.intensity_min for c in good if c.intensity_min is not None]
        maxs = [c.intensity_max for c in good if c.intensity_max is not None]
        if mins:
            lines.append(
                f"intensity: min {_fmt_num(min(mins))}, max {_fmt_num(max(maxs))}, per-case max from "
                f"{_fmt_num(min(maxs))} to {_fmt_num(max(maxs))}"
            )
        total: dict[int, int] = {}
        for c in good:
            for k, v in (c.label_counts or {}).items():
                total[k] = total.get(k, 0) + v
        if total:
            lines.append("label voxels: " + ", ".join(f"{k}:{v}" for k, v in sorted(total.items())))
            declared = set(report.labels)
            absent = sorted(declared - set(total) - {0})
            if absent:
                lines.append(f"declared labels never present: {absent}")
    return "\n".join(lines)


def format_problems(report: CheckReport) -> str:
    """One line per problem: ``<case>: <problem>`` (dataset-level problems first)."""
    lines = [f"dataset: {p}" for p in report.problems]
    for c in report.cases:
        lines += [f"{c.case}: {p}" for p in c.problems]
    return "\n".join(lines)
