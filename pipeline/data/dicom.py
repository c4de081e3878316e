"""DICOM series folders: list the series a folder holds, choose one, and check its slice spacing.

Choosing a series. A folder can hold several series (a scout and the CT, or two reconstructions). The rule:

1. a folder holding one series: that series (the UID is recorded, whatever was requested, so one ``--series-uid``
   can pick a series in one folder of a batch without failing the single-series folders);
2. with requested series UIDs (``medseg infer --series-uid UID``, or :func:`preferred_dicom_series`), the series with
   one of those UIDs; a folder of several series holding none (or more than one) of them is an error that lists the
   series it holds;
3. otherwise the series with the most slices (the first in GDCM's order on a tie), with a warning naming it and the
   series that were not read.

Checking the slices. GDCM sorts the files along the slice normal; ITK then stacks them with one uniform spacing,
``(last - first) / (n - 1)``, and prints its own warning when the gaps differ (a missing slice). This module measures
the gaps from each file's ``ImagePositionPatient`` instead and describes what is wrong (median gap, largest gap and
where it is, duplicated positions, mixed orientations), so the message can name the folder and the series.

Examples:
    >>> from pipeline.data.dicom import choose_dicom_series
    >>> choice = choose_dicom_series("../shared/data/BTCV_like/dicom/ct_series")  # doctest: +SKIP
    >>> choice.series.n_slices, choice.selected_by, choice.report()["slice_spacing_mm"]["median"]  # doctest: +SKIP
    (20, 'only series', 2.0)
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputDataError

__all__ = [
    "DicomSeries",
    "SeriesChoice",
    "choose_dicom_series",
    "list_dicom_series",
    "preferred_dicom_series",
    "preferred_series_uids",
    "slice_spacing",
]

#: gaps differing from the median by more than this fraction of it (or 0.01 mm) make the spacing uneven
GAP_TOLERANCE = 0.01

_PREFERRED: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("medseg_dicom_series", default=())


@contextlib.contextmanager
def preferred_dicom_series(uids: Sequence[str] | None) -> Iterator[None]:
    """Within this block, every DICOM folder is read as the series whose UID is in ``uids`` (none: the default rule).

    Examples:
        >>> with preferred_dicom_series(["1.2.840.1"]):
        ...     preferred_series_uids()
        ('1.2.840.1',)
    """
    token = _PREFERRED.set(tuple(str(u) for u in uids or ()))
    try:
        yield
    finally:
        _PREFERRED.reset(token)


def preferred_series_uids() -> tuple[str, ...]:
    """The series UIDs requested by the enclosing :func:`preferred_dicom_series` block (empty: none)."""
    return _PREFERRED.get()


@dataclass(frozen=True)
class DicomSeries:
    """One series of a folder: its UID, its files in GDCM's slice order, and two descriptive tags."""

    uid: str
    files: tuple[str, ...]
    description: str = ""
    modality: str = ""

    @property
    def n_slices(self) -> int:
        return len(self.files)

    def label(self) -> str:
        """``<uid> (20 slices, "CT Body 3.0")`` for messages; an empty UID is shown as such."""
        uid = self.uid if self.uid else "(empty SeriesInstanceUID)"
        desc = f', "{self.description}"' if self.description else ""
        return f"{uid} ({self.n_slices} slice{'s' if self.n_slices != 1 else ''}{desc})"


def _read_tags(path: str, tags: Sequence[str]) -> Any | None:
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(tags), force=True)
    except Exception:  # noqa: BLE001 - a slice GDCM listed but pydicom cannot parse: no tags from it
        return None


def _special_entries(folder: Path) -> dict[str, str]:
    """Entries of ``folder`` that are neither regular files nor folders (name -> kind: a named pipe, a link loop...)."""
    from pipeline.data.io import file_kind

    out = {}
    for c in folder.iterdir():
        if not c.name.startswith("."):
            kind = file_kind(c)
            if kind not in ("file", "folder"):
                out[c.name] = kind
    return out


@contextlib.contextmanager
def _scannable(folder: Path) -> Iterator[Path]:
    """``folder``, or, when it holds a named pipe, a device or a broken/looping link, a temporary folder of links to
    its regular files only: GDCM's directory scan silently drops most of a series' slices after such an entry."""
    if not _special_entries(folder):
        yield folder
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medseg_dicom_") as tmp:
        for c in folder.iterdir():
            if not c.name.startswith(".") and c.is_file():
                os.symlink(c.resolve(), Path(tmp) / c.name)
        yield Path(tmp)


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """Every DICOM series in ``folder`` (not its sub-folders), in GDCM's order, each with its files sorted by GDCM.

    Named pipes, device files and broken or looping links in the folder are left out of GDCM's scan (they would make
    it drop slices); :func:`choose_dicom_series` reports them.

    Examples:
        >>> [s.n_slices for s in list_dicom_series("../shared/data/BTCV_like/dicom/ct_series")]  # doctest: +SKIP
        [20]
    """
    import SimpleITK as sitk

    p = Path(folder)
    shown = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # GDCM's own lines do not name the folder
    try:
        with _scannable(p) as scan:
            ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(scan)))
            out = []
            for sid in ids:
                files = tuple(
                    str(p / Path(f).name) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(scan), sid)
                )
                ds = _read_tags(files[0], ["SeriesDescription", "Modality"]) if files else None
                out.append(
                    DicomSeries(
                        sid,
                        files,
                        str(getattr(ds, "SeriesDescription", "") or "").strip(),
                        str(getattr(ds, "Modality", "") or "").strip(),
                    )
                )
        return out
    except (RuntimeError, OSError):
        return []
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(shown)


def slice_spacing(files: Sequence[str]) -> dict[str, Any]:
    """Measure the gaps between consecutive slices along the slice normal (from ``ImagePositionPatient``).

    Returns:
        ``{"median", "min", "max", "uniform_as_read"}`` in mm (``uniform_as_read``: the single spacing ITK stacks
        the slices with), ``"uniform"`` (bool) and ``"warning"``: one phrase describing what is wrong, or None.
        For a single slice or slices without positions, the gaps are None and ``uniform`` is None.
    """
    out: dict[str, Any] = {
        "median": None,
        "min": None,
        "max": None,
        "uniform_as_read": None,
        "uniform": None,
        "warning": None,
    }
    if len(files) < 2:
        return out
    positions, orientations, missing = [], [], 0
    for f in files:
        ds = _read_tags(f, ["ImagePositionPatient", "ImageOrientationPatient"])
        ipp = getattr(ds, "ImagePositionPatient", None) if ds is not None else None
        iop = getattr(ds, "ImageOrientationPatient", None) if ds is not None else None
        if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
            missing += 1
            continue
        positions.append([float(v) for v in ipp])
        orientations.append([float(v) for v in iop])
    if missing:
        out["warning"] = (
            f"{missing} of {len(files)} slices have no ImagePositionPatient/ImageOrientationPatient: "
            "the slice spacing cannot be checked"
        )
        return out
    iop = np.asarray(orientations)
    normal = np.cross(iop[0, :3], iop[0, 3:])
    problems = []
    if np.abs(iop - iop[0]).max() > 1e-3:
        problems.append("the slices do not all have the same orientation (ImageOrientationPatient differs)")
    pos = np.sort(np.asarray(positions) @ normal)
    gaps = np.diff(pos)
    median = float(np.median(gaps))
    as_read = float((pos[-1] - pos[0]) / (len(pos) - 1))
    out.update(
        median=round(median, 6),
        min=round(float(gaps.min()), 6),
        max=round(float(gaps.max()), 6),
        uniform_as_read=round(as_read, 6),
    )
    tol = max(0.01, GAP_TOLERANCE * abs(median))
    dup = int((gaps < 1e-3).sum())
    if dup:
        problems.append(f"{dup} slice(s) at the same position as another (duplicated slices?)")
    odd = np.flatnonzero(np.abs(gaps - median) > tol)
    odd = odd[gaps[odd] >= 1e-3]
    if odd.size:
        i = int(odd[np.argmax(np.abs(gaps[odd] - median))])
        ratio = gaps[i] / median if median > 0 else 0.0
        hint = ""
        if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
            n_miss = int(round(ratio)) - 1
            hint = f": {n_miss} missing slice{'s' if n_miss > 1 else ''}?"
        problems.append(
            f"uneven slice spacing: median gap {median:.4g} mm, {odd.size} gap(s) differ, the largest "
            f"{gaps[i]:.4g} mm between slices {i + 1} and {i + 2} (at {pos[i]:.4g} and {pos[i + 1]:.4g} mm "
            f"along the slice normal){hint}; read with one uniform spacing of {as_read:.4g} mm, so "
            "slices are misplaced by up to "
            f"{float(np.max(np.abs(pos - (pos[0] + as_read * np.arange(len(pos)))))):.3g} mm"
        )
    out["uniform"] = not problems
    out["warning"] = "; ".join(problems) or None
    return out


@dataclass
class SeriesChoice:
    """The series chosen in a folder, why, and the others it holds."""

    folder: str
    series: DicomSeries
    all_series: list[DicomSeries]
    selected_by: str  # "only series", "--series-uid" or "most slices"
    spacing: dict[str, Any] = field(default_factory=dict)
    stray_files: list[str] = field(default_factory=list)  # files of the folder that belong to no series

    @property
    def warnings(self) -> list[str]:
        """One phrase per problem: several series (and which one was read), uneven slices."""
        out = []
        if self.selected_by == "most slices":
            others = "; ".join(s.label() for s in self.all_series if s is not self.series)
            out.append(
                f"{len(self.all_series)} DICOM series in this folder: read {self.series.label()}, the one with "
                f"the most slices; not read: {others}; choose one with --series-uid UID"
            )
        if self.spacing.get("warning"):
            out.append(f"DICOM series {self.series.label()}: {self.spacing['warning']}")
        if self.stray_files:
            names = ", ".join(self.stray_files[:3]) + (" ..." if len(self.stray_files) > 3 else "")
            out.append(
                f"{len(self.stray_files)} file(s) in this folder belong to no DICOM series (not DICOM, "
                f"unreadable: a truncated slice?, or not regular files) and are not read: {names}"
            )
        return out

    def report(self) -> dict[str, Any]:
        """JSON-serialisable description, for the inference sidecar and the check report."""
        return {
            "format": "dicom",
            "series_uid": self.series.uid,
            "series_description": self.series.description,
            "modality": self.series.modality,
            "slices": self.series.n_slices,
            "selected_by": self.selected_by,
            "slice_spacing_mm": {k: self.spacing.get(k) for k in ("median", "min", "max", "uniform_as_read")},
            "uniform_slice_spacing": self.spacing.get("uniform"),
            "series_in_folder": [
                {"series_uid": s.uid, "slices": s.n_slices, "description": s.description} for s in self.all_series
            ],
            "files_in_no_series": list(self.stray_files),
            "warnings": self.warnings,
        }


def choose_dicom_series(folder: str | os.PathLike, uids: Sequence[str] | None = None) -> SeriesChoice:
    """Pick the series of ``folder`` to read (see the module docstring) and measure its slice spacing.

    Args:
        folder: a DICOM series folder.
        uids: requested SeriesInstanceUIDs; None uses :func:`preferred_series_uids` (empty: the default rule).

    Raises:
        InputDataError: naming the folder, when it holds no series, or several series but none (or more than one)
            of the requested ones.
    """
    p = Path(folder)
    series = list_dicom_series(p)
    if not series:
        raise InputDataError("no DICOM series in this folder", path=p)
    wanted = tuple(uids) if uids is not None else preferred_series_uids()
    if len(series) == 1:
        chosen, how = series[0], "only series"
    elif wanted:
        matched = [s for s in series if s.uid in wanted]
        held = "; ".join(s.label() for s in series)
        if not matched:
            raise InputDataError(
                f"DICOM series {', '.join(repr(u) for u in wanted)} (--series-uid) not in this "
                f"folder of {len(series)} series: {held}",
                path=p,
            )
        if len(matched) > 1:
            raise InputDataError(
                f"several requested DICOM series are in this folder: {held}; give one --series-uid per folder", path=p
            )
        chosen, how = matched[0], "--series-uid"
    else:
        chosen, how = max(series, key=lambda s: s.n_slices), "most slices"  # max keeps the first on a tie
    listed = {Path(f).name for s in series for f in s.files}
    stray = sorted(c.name for c in p.iterdir() if not c.name.startswith(".") and c.is_file() and c.name not in listed)
    stray += [f"{name} ({kind})" for name, kind in sorted(_special_entries(p).items())]
    return SeriesChoice(str(p), chosen, series, how, slice_spacing(chosen.files), stray)
