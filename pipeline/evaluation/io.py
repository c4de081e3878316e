"""Reading label maps for evaluation and pairing prediction files with label files by case id.

Pairing rule (never by sort order):

1. a file's **case name** is its name without the image extension (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``,
   ``.mha``, ``.mhd``); hidden files (``.name``, e.g. unfinished atomic writes) are ignored;
2. a prediction and a label with the same case name are paired;
3. the remaining files are paired by **case id**: the case name, lower-cased, with a trailing nnU-Net channel suffix
   (``_0000``; only when a digit remains, so ``case_0001`` keeps its number), then a trailing role suffix
   (``_seg``, ``_pred``, ``_prediction``, ``_label``, ``_gt``, ``_mask``), then a leading role prefix (``img``,
   ``image``, ``label``, ``labels``, ``seg``, ``pred``, ``prediction``, ``gt``, ``mask``, when followed by a digit,
   ``_`` or ``-``) removed: ``img0001``, ``label0001`` and ``pred_0001_0000`` all have id ``0001``;
4. several files with the same id on one side are reported as ambiguous and not scored; labels without a prediction
   are reported as missing, predictions without a label as extra.

The reported ``case`` is the prediction's case name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from pipeline.errors import InputDataError

__all__ = ["LABEL_SUFFIXES", "case_name", "case_id", "list_label_files", "pair_cases", "Pairing", "read_label_map"]

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_CHANNEL = re.compile(r"_\d{4}$")
_ROLE_SUFFIX = re.compile(r"[_-](seg|pred|prediction|label|labels|gt|mask)$")
_ROLE_PREFIX = re.compile(r"^(img|image|images|label|labels|seg|pred|prediction|gt|mask)(?=[0-9_-])[_-]?")


def _suffix(name: str) -> str | None:
    low = name.lower()
    return next((s for s in LABEL_SUFFIXES if low.endswith(s)), None)


def case_name(path: str | os.PathLike) -> str:
    """The file name without its image extension (``img0001.nii.gz`` -> ``img0001``)."""
    name = Path(path).name
    suffix = _suffix(name)
    return name[: -len(suffix)] if suffix else name


def case_id(name: str) -> str:
    """The case id used to pair files named differently (see the module docstring).

    Examples:
        >>> [case_id(n) for n in ("img0001", "label0001", "lung_001_0000", "sts_001_seg", "pred-12", "case_0001")]
        ['0001', '0001', 'lung_001', 'sts_001', '12', 'case_0001']
    """
    key = name.lower()
    rest = _CHANNEL.sub("", key)
    if any(ch.isdigit() for ch in rest):  # "lung_001_0000" -> "lung_001", but "case_0001" keeps its number
        key = rest
    key = _ROLE_SUFFIX.sub("", key)
    stripped = _ROLE_PREFIX.sub("", key)
    return stripped or key


def list_label_files(folder: str | os.PathLike, role: str = "label") -> list[Path]:
    """The image files directly inside ``folder`` (sorted; hidden files skipped; entries named like an image that
    cannot be read, e.g. a broken symbolic link, are included so that scoring reports them).

    Raises:
        InputDataError: if ``folder`` is not a folder or holds no image file.
    """
    d = Path(folder)
    if not d.is_dir():
        raise InputDataError(f"{role} folder does not exist or is not a folder", path=d)
    # not only regular files: a broken link, a link loop, a named pipe or a folder named like an image is listed too,
    # so it fails with one line naming it instead of silently turning its case into a "missing" one
    files = sorted(p for p in d.iterdir() if not p.name.startswith(".") and _suffix(p.name))
    if not files:
        raise InputDataError(f"{role} folder holds no image file ({', '.join(LABEL_SUFFIXES)})", path=d)
    return files


@dataclass
class Pairing:
    """Result of :func:`pair_cases`."""

    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)  # (case, pred, label)
    missing: list[str] = field(default_factory=list)  # label files without a prediction
    extra: list[str] = field(default_factory=list)  # prediction files without a label
    ambiguous: list[str] = field(default_factory=list)  # one line per ambiguous id


def pair_cases(pred_files: list[Path], label_files: list[Path]) -> Pairing:
    """Pair predictions with labels by case name, then by :func:`case_id`; never by order.

    Examples:
        >>> from pathlib import Path
        >>> r = pair_cases([Path("img0001.nii.gz"), Path("img0003.nii.gz")],
        ...                [Path("label0001.nii.gz"), Path("label0002.nii.gz")])
        >>> [(c, l.name) for c, _, l in r.pairs], r.missing, r.extra
        ([('img0001', 'label0001.nii.gz')], ['label0002.nii.gz'], ['img0003.nii.gz'])
    """
    out = Pairing()

    def unique_names(files: list[Path], role: str) -> list[Path]:
        groups: dict[str, list[Path]] = {}
        for f in files:
            groups.setdefault(case_name(f), []).append(f)
        for name, group in groups.items():
            if len(group) > 1:
                out.ambiguous.append(f"{role} files {', '.join(g.name for g in group)} share the case name {name!r}")
        return [g[0] for g in groups.values() if len(g) == 1]

    pred_files = unique_names(pred_files, "prediction")
    label_files = unique_names(label_files, "label")
    labels_by_name = {case_name(p): p for p in label_files}
    rest_pred, used_labels = [], set()
    for p in pred_files:
        lab = labels_by_name.get(case_name(p))
        if lab is not None and lab not in used_labels:
            out.pairs.append((case_name(p), p, lab))
            used_labels.add(lab)
        else:
            rest_pred.append(p)
    rest_labels = [p for p in label_files if p not in used_labels]

    def by_id(files: list[Path], role: str) -> dict[str, Path]:
        groups: dict[str, list[Path]] = {}
        for f in files:
            groups.setdefault(case_id(case_name(f)), []).append(f)
        result = {}
        for key, group in groups.items():
            if len(group) > 1:
                out.ambiguous.append(f"{role} files {', '.join(g.name for g in group)} share the case id {key!r}")
            else:
                result[key] = group[0]
        return result

    preds, labs = by_id(rest_pred, "prediction"), by_id(rest_labels, "label")
    for key, p in preds.items():
        if key in labs:
            out.pairs.append((case_name(p), p, labs.pop(key)))
        else:
            out.extra.append(p.name)
    out.missing.extend(p.name for p in labs.values())
    out.pairs.sort(key=lambda t: t[0])
    out.missing.sort()
    out.extra.sort()
    return out


def read_label_map(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Read a label map: ``(array in (x, y, z) order, 4x4 RAS affine, spacing in mm per array axis)``.

    NIfTI is read with nibabel directly (stored dtype kept, spacing from the header's ``pixdim``); NRRD/MHA go
    through :func:`pipeline.data.io.load_volume` (SimpleITK, converted to the same (x, y, z)/RAS convention).
    The NIfTI geometry follows :func:`pipeline.data.geometry.resolve_nifti_geometry`, as in ``infer`` and
    ``datasets check``: a header without a usable sform/qform is read with its ``pixdim`` voxel size and a
    ``warning: <file>: ...`` line on stderr; a header whose voxel size is unknown is refused.

    Raises:
        InputDataError: naming the file, when it is missing, unreadable, not 3D, or its voxel size is unknown.
    """
    from pipeline.data.io import describe_read_error, file_kind

    p = Path(path)
    if file_kind(p) != "file":  # also before opening: a named pipe would block the reader
        raise InputDataError(describe_read_error(p), path=p)
    suffix = _suffix(p.name)
    try:
        if suffix in (".nii.gz", ".nii"):
            import nibabel as nib

            from pipeline.data.geometry import nifti_geometry_of_file, quiet_nibabel, read_nifti_header
            from pipeline.data.input_report import print_warnings

            geo = nifti_geometry_of_file(p)
            with quiet_nibabel():
                img = cast(nib.Nifti1Image, nib.load(str(p)))  # (a NIfTI-2 image is a subclass)
                arr = np.asanyarray(img.dataobj)
            affine = np.asarray(img.affine if geo is None else geo.affine, float)
            raw = read_nifti_header(p)
            pixdim = np.asarray(raw["pixdim"] if raw is not None else img.header["pixdim"], float)[1:4]
            if geo is not None and not (np.isfinite(pixdim).all() and (pixdim > 0).all()):
                spacing = tuple(float(z) for z in geo.spacing)  # pixdim unusable: the voxel size of the sform/qform
            else:
                spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
            if geo is not None and geo.warning:
                print_warnings(p, [geo.warning])
        else:
            from pipeline.data.io import load_volume

            vol = load_volume(p, dtype=None, ensure_channel_first=False)
            arr = np.asarray(vol.detach().cpu().numpy())
            affine = np.asarray(vol.affine, float)
            spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    except InputDataError:
        raise
    except Exception as exc:  # nibabel/zlib raise many types on corrupt files
        from pipeline.data.io import describe_read_error

        raise InputDataError(describe_read_error(p, exc), path=p) from exc
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputDataError(f"expected a 3D label map, got shape {tuple(arr.shape)}", path=p)
    return arr, affine, spacing[:3]
