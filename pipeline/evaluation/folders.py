"""Evaluate a folder of predictions against a folder of labels, in parallel processes, into a :class:`Summary`."""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

import numpy as np

from pipeline.errors import InputDataError, PipelineError, UsageError
from pipeline.evaluation.classes import ClassSet, resolve_classes
from pipeline.evaluation.io import list_label_files, pair_cases, read_label_map
from pipeline.evaluation.metrics import as_label_map, evaluate_case, image_diagonal
from pipeline.evaluation.protocols import EXCLUDE, PENALTY_DIAGONAL, Protocol, get_protocol
from pipeline.evaluation.space import SPACES, TargetSpacing, to_target_space

__all__ = ["Summary", "evaluate_folders", "find_dataset_json", "AFFINE_TOLERANCE_MM"]

#: largest difference (mm) tolerated between the prediction's and the label's affine entries
AFFINE_TOLERANCE_MM = 1e-3
#: metrics aggregated in the summary, in report order
SUMMARY_METRICS = ("dice", "hd95", "assd", "nsd")


def find_dataset_json(label_dir: str | os.PathLike) -> Path | None:
    """A ``dataset.json``/``dataset_0.json`` in the label folder or its parent (where MSD/BTCV keep it), else None."""
    d = Path(label_dir)
    for folder in (d, d.parent):
        for name in ("dataset.json", "dataset_0.json"):
            if (folder / name).is_file():
                return folder / name
    return None


def _present_ids(*arrays: np.ndarray) -> list[int]:
    ids: set[int] = set()
    for a in arrays:
        if a.dtype.itemsize <= 2 and a.dtype.kind in "ub":
            counts = np.bincount(a.ravel().astype(np.int64, copy=False) if a.dtype.kind == "b" else a.ravel())
            ids.update(int(i) for i in np.flatnonzero(counts))
        else:
            ids.update(int(i) for i in np.unique(a))
    ids.discard(0)
    return sorted(ids)


class _DeclaredIds(frozenset[int]):
    """The label ids a dataset.json declares, with the file they come from (picklable for worker processes)."""

    source: str

    def __new__(cls, ids: Iterable[int], source: str = "") -> _DeclaredIds:
        obj = super().__new__(cls, (int(i) for i in ids))
        obj.source = str(source)
        return obj

    def __reduce__(self) -> tuple[type[_DeclaredIds], tuple[tuple[int, ...], str]]:
        return (_DeclaredIds, (tuple(self), self.source))


def _evaluate_pair(job: tuple) -> tuple[str, list[dict] | None, str | None, float, dict | None]:
    """Worker: read, check and score one (prediction, label) pair. Never raises: errors come back as one line.

    Returns ``(case, rows, error, image diagonal, grid scored on {"shape", "spacing"})``.
    """
    case, pred_path, label_path, classes, protocol, metrics, nsd_tol, check_affine, declared, target = job
    try:
        label, aff_l, spacing = read_label_map(label_path)
        pred, aff_p, _ = read_label_map(pred_path)
        if target is None:  # original space: the prediction must be on the label's grid
            if pred.shape != label.shape:
                raise InputDataError(
                    f"shape {pred.shape} differs from the label's {label.shape} ({label_path})", path=pred_path
                )
            if check_affine and not np.allclose(aff_p, aff_l, rtol=0, atol=AFFINE_TOLERANCE_MM):
                diff = float(np.max(np.abs(aff_p - aff_l)))
                raise InputDataError(
                    f"affine differs from the label's ({label_path}) by up to {diff:.4g} mm: not on the same grid "
                    "(resample/invert the prediction, or pass --no-affine-check to compare voxel by voxel)",
                    path=pred_path,
                )
        try:
            label = as_label_map(label, "label")
        except ValueError as exc:
            raise InputDataError(str(exc), path=label_path) from exc
        try:
            pred = as_label_map(pred, "prediction")
        except ValueError as exc:
            raise InputDataError(str(exc), path=pred_path) from exc
        if declared is not None:  # classes from a dataset.json: every id must be one it declares
            ids, source = set(declared) | {0}, declared.source
            for arr, path, role in ((label, label_path, "label"), (pred, pred_path, "prediction")):
                bad = sorted(set(_present_ids(arr)) - ids)
                if bad:
                    raise InputDataError(
                        f"{role} values {bad} are not in the declared label set {sorted(ids)} ({source})", path=path
                    )
        if target is not None:  # resampled space: both onto the label's extent at the target spacing
            pred, label, spacing, _ = to_target_space(
                pred, aff_p, label, aff_l, target, check=check_affine, pred_path=pred_path, label_path=label_path
            )
        cls = classes if classes is not None else {i: f"class_{i}" for i in _present_ids(pred, label)}
        grid = {"shape": [int(n) for n in label.shape], "spacing": [float(v) for v in spacing]}
        if not cls:
            return case, [], None, image_diagonal(label.shape, spacing), grid
        units_spacing = None if protocol.units == "voxel" else spacing
        rows = evaluate_case(pred, label, spacing, cls, protocol, metrics=metrics, nsd_tolerance=nsd_tol)
        for row in rows:
            row["case"] = case
        return case, rows, None, image_diagonal(label.shape, units_spacing), grid
    except PipelineError as exc:
        return case, None, str(exc), math.nan, None
    except MemoryError:
        return case, None, f"{pred_path}: out of memory while scoring", math.nan, None
    except Exception as exc:  # noqa: BLE001 - one line per failed case, the batch carries on
        msg = " ".join(str(exc).split()) or type(exc).__name__
        return case, None, f"{pred_path}: {type(exc).__name__}: {msg}", math.nan, None


def _fill_value(rule: float | str, diagonal: float) -> float | None:
    if rule == EXCLUDE:
        return None
    if rule == PENALTY_DIAGONAL:
        return diagonal
    return float(rule)


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


def evaluate_folders(
    pred_dir: str | os.PathLike,
    label_dir: str | os.PathLike,
    protocol: str | Protocol = "strict",
    classes: str | ClassSet | Sequence[int] | None = None,
    out_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    *,
    metrics: Sequence[str] = ("dice", "hd95"),
    nsd_tolerance: float = 1.0,
    check_affine: bool = True,
    progress: bool = False,
    split: str | None = None,
    space: str = "original",
    target_spacing: TargetSpacing | Sequence[float] | float | None = None,
) -> Summary:
    """Score every prediction in ``pred_dir`` against its label in ``label_dir`` (paired by case id).

    Args:
        pred_dir: folder of predicted label maps (NIfTI/NRRD/MHA).
        label_dir: folder of ground-truth label maps; spacing (mm) comes from these headers.
        protocol: protocol name or :class:`~pipeline.evaluation.protocols.Protocol` (see that module).
        classes: class set name, dataset.json path, ids, or None: ``synapse8`` for the legacy protocols, else the
            dataset.json next to the labels if there is one, else every id found in the labels or predictions.
        out_dir: when given, the CSV, JSON and Markdown reports are written there (atomically).
        workers: processes (default: up to 4, one per core); 1 runs in this process.
        metrics: ``dice`` and ``hd95`` plus optionally ``assd`` and ``nsd``.
        nsd_tolerance: NSD tolerance in the protocol's units.
        check_affine: refuse a case whose prediction and label affines differ (not the same grid).
        progress: show a progress bar on stderr.
        split: name of the split the cases come from, stated in the report header.
        space: ``"original"``: score on each label's grid with its header spacing; ``"resampled"``: resample the
            label and the prediction (nearest neighbour, each through its own affine) onto a grid with
            ``target_spacing`` covering the label's extent (see :mod:`pipeline.evaluation.space`), and score there.
            With ``check_affine``, a prediction whose direction differs from the label's or that does not overlap
            it fails (one line); without it, a prediction of the label's shape is taken voxel by voxel.
        target_spacing: required for ``"resampled"`` (a :class:`~pipeline.evaluation.space.TargetSpacing`, or mm
            per label array axis, one number for isotropic); must be None for ``"original"``.

    Returns:
        A :class:`Summary`. Per-case failures are recorded in it, not raised.

    Raises:
        InputDataError: a folder is missing or holds no image, or no prediction pairs with a label.
        UsageError: an unknown ``space``, or ``target_spacing`` missing (resampled) or given (original).

    Examples:
        >>> s = evaluate_folders("preds/", "../shared/data/BTCV_like/labelsTr", classes="btcv13")  # doctest: +SKIP
        >>> s.means()["dice"]  # doctest: +SKIP
    """
    proto = get_protocol(protocol)
    if space not in SPACES:
        raise UsageError(f"--space {space!r}: expected one of {', '.join(SPACES)}")
    if space == "resampled" and target_spacing is None:
        raise UsageError("--space resampled needs --target-spacing X,Y,Z (mm) or --preprocessing PRESET")
    if space == "original" and target_spacing is not None:
        raise UsageError("--target-spacing/--preprocessing apply only with --space resampled")
    target = None
    if target_spacing is not None:
        try:
            target = (
                target_spacing
                if isinstance(target_spacing, TargetSpacing)
                else TargetSpacing(tuple(np.broadcast_to(np.asarray(target_spacing, float), (3,))))
            )
        except ValueError as exc:
            raise UsageError(f"--target-spacing: {exc}") from None
    metrics = tuple(dict.fromkeys(("dice", "hd95", *metrics)))
    if classes is None:
        found = find_dataset_json(label_dir)
        if proto.legacy:  # the published scripts score the 8 Synapse organs
            cset: ClassSet | None = resolve_classes("synapse8")
        elif found is not None:
            cset = resolve_classes(found)
        else:
            cset = None
    else:
        cset = resolve_classes(classes)
    preds = list_label_files(pred_dir, "prediction")
    labels = list_label_files(label_dir, "label")
    pairing = pair_cases(preds, labels)
    if not pairing.pairs:
        raise InputDataError(
            f"no prediction pairs with a label in {label_dir} (predictions: {', '.join(pairing.extra[:3])}...)",
            path=pred_dir,
        )
    cls_arg = None if cset is None else dict(cset.labels)
    declared = (
        _DeclaredIds(cset.labels, cset.description[len("labels of ") :])
        if cset is not None and cset.description.startswith("labels of ")
        else None
    )
    jobs = [
        (case, p, lab, cls_arg, proto, metrics, nsd_tolerance, check_affine, declared, target)
        for case, p, lab in pairing.pairs
    ]
    n_workers = min(len(jobs), workers if workers else min(4, os.cpu_count() or 1))
    if n_workers < 1:
        raise UsageError(f"--workers {workers}: must be >= 1")
    results = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="evaluate", unit="case", file=sys.stderr)
    try:
        if n_workers == 1:
            for job in jobs:
                results.append(_evaluate_pair(job))
                if bar:
                    bar.update(1)
        else:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with cf.ProcessPoolExecutor(n_workers, mp_context=mp.get_context(method)) as pool:
                for fut in cf.as_completed([pool.submit(_evaluate_pair, j) for j in jobs]):
                    results.append(fut.result())
                    if bar:
                        bar.update(1)
    finally:
        if bar:
            bar.close()
    results.sort(key=lambda r: r[0])

    if cset is None:  # auto: every id seen anywhere; cases lacking one get a both-empty row
        ids = sorted({r["class"] for _, rows, _, _, _ in results if rows for r in rows})
        cset = ClassSet("auto", {i: f"class_{i}" for i in ids}, "every label id found in the labels or predictions")
    summary = Summary(
        proto,
        cset,
        metrics=metrics,
        nsd_tolerance=nsd_tolerance,
        split=split,
        missing=pairing.missing,
        extra=pairing.extra,
        ambiguous=pairing.ambiguous,
        pred_dir=str(pred_dir),
        label_dir=str(label_dir),
        space=space,
        target_spacing=target,
    )
    for case, rows, error, diagonal, grid in results:
        if error is not None:
            summary.failures.append((case, error))
            continue
        assert rows is not None and grid is not None  # a worker without an error returns both
        summary.grids[case] = grid
        have = {r["class"] for r in rows}
        for cid, cname in cset.labels.items():
            if cid not in have:
                row = {
                    "class": cid,
                    "dice": _fill_value(proto.dice_both_empty, diagonal),
                    "hd95": _fill_value(proto.hd95_both_empty, diagonal),
                    "class_name": cname,
                    "n_gt": 0,
                    "n_pred": 0,
                    "tp": 0,
                    "fp": 0,
                    "fn": 0,
                    "empty_gt": True,
                    "empty_pred": True,
                    "situation": "both_empty",
                    "case": case,
                }
                if "assd" in metrics:
                    row["assd"] = row["hd95"]
                if "nsd" in metrics:
                    row["nsd"] = row["dice"]
                rows.append(row)
        order = {cid: i for i, cid in enumerate(cset.labels)}
        summary.rows.extend(sorted(rows, key=lambda r: order[r["class"]]))
    if out_dir is not None:
        from pipeline.evaluation.report import write_reports

        write_reports(summary, out_dir)
    return summary
