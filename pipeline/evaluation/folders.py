"""Evaluate a folder of predictions against a folder of labels, in parallel processes, into a :class:`Summary`."""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pipeline.data.naming import pair_cases
from pipeline.errors import InputDataError, PipelineError, UsageError
from pipeline.evaluation.classes import ClassSet, resolve_classes
from pipeline.evaluation.io import list_label_files, read_label_map
from pipeline.evaluation.metrics import as_label_map, evaluate_case, image_diagonal
from pipeline.evaluation.protocols import Protocol, get_protocol
from pipeline.evaluation.report import write_reports
from pipeline.evaluation.space import SPACES, TargetSpacing, to_target_space
from pipeline.evaluation.summary import Summary

__all__ = ["evaluate_folders", "find_dataset_json", "AFFINE_TOLERANCE_MM"]

#: largest difference (mm) tolerated between the prediction's and the label's affine entries
AFFINE_TOLERANCE_MM = 1e-3


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


def _timed_pair(job: tuple) -> tuple[tuple, float]:
    """:func:`_evaluate_pair` and its wall time in seconds (reading both files, checks and metrics)."""
    t0 = time.perf_counter()
    result = _evaluate_pair(job)
    return result, time.perf_counter() - t0


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
    case_seconds: dict[str, float] | None = None,
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
        case_seconds: when given, filled with each scored case's seconds (reading both files, checks and metrics;
            the ``metrics`` stage of ``medseg benchmark``).

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
    timed: list[tuple[tuple, float]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="evaluate", unit="case", file=sys.stderr)
    try:
        if n_workers == 1:
            for job in jobs:
                timed.append(_timed_pair(job))
                if bar:
                    bar.update(1)
        else:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with cf.ProcessPoolExecutor(n_workers, mp_context=mp.get_context(method)) as pool:
                for fut in cf.as_completed([pool.submit(_timed_pair, j) for j in jobs]):
                    timed.append(fut.result())
                    if bar:
                        bar.update(1)
    finally:
        if bar:
            bar.close()
    results = sorted((r for r, _ in timed), key=lambda r: r[0])
    if case_seconds is not None:
        case_seconds.update((r[0], seconds) for r, seconds in timed)

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
                    "dice": proto.value("dice", "both_empty", diagonal),
                    "hd95": proto.value("hd95", "both_empty", diagonal),
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
        write_reports(summary, out_dir)
    return summary
