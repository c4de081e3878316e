"""Reading label maps for scoring (:func:`read_label_map`: ``evaluate``, ``benchmark`` and ``demo``) and listing the
prediction/label files of a folder (:func:`list_label_files`).

Case names and the rule that pairs a prediction with its label by case id are in :mod:`pipeline.data.naming`
(:func:`~pipeline.data.naming.pair_cases`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np

from pipeline.data.geometry import nifti_geometry_of_file, quiet_nibabel, spacing_from_affine
from pipeline.data.naming import LABEL_SUFFIXES, NIFTI_SUFFIXES, image_suffix
from pipeline.errors import InputDataError

__all__ = ["list_label_files", "read_label_map"]


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
    files = sorted(p for p in d.iterdir() if not p.name.startswith(".") and image_suffix(p, LABEL_SUFFIXES))
    if not files:
        raise InputDataError(f"{role} folder holds no image file ({', '.join(LABEL_SUFFIXES)})", path=d)
    return files


def read_label_map(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Read a label map: ``(array in (x, y, z) order, 4x4 RAS affine, spacing in mm per array axis)``.

    NIfTI is read with nibabel directly (stored dtype kept); NRRD/MHA go through
    :func:`pipeline.data.io.load_volume` (SimpleITK, converted to the same (x, y, z)/RAS convention). The NIfTI
    geometry follows :func:`pipeline.data.geometry.resolve_nifti_geometry`, as in ``infer`` and ``datasets check``:
    a header without a usable sform/qform is read with its ``pixdim`` voxel size and a ``warning: <file>: ...`` line
    on stderr; a header whose voxel size is unknown is refused. The spacing is
    :func:`~pipeline.data.geometry.spacing_from_affine` of the returned affine: for NIfTI the voxel size of the
    transform the geometry rule chose, which equals ``pixdim`` whenever the header is consistent.

    Raises:
        InputDataError: naming the file, when it is missing, unreadable, not 3D, or its voxel size is unknown.
    """
    from pipeline.data.io import describe_read_error, file_kind

    p = Path(path)
    if file_kind(p) != "file":  # also before opening: a named pipe would block the reader
        raise InputDataError(describe_read_error(p), path=p)
    suffix = image_suffix(p, LABEL_SUFFIXES)
    try:
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            from pipeline.data.input_report import print_warnings

            geo = nifti_geometry_of_file(p)
            with quiet_nibabel():
                img = cast(nib.Nifti1Image, nib.load(str(p)))  # (a NIfTI-2 image is a subclass)
                arr = np.asanyarray(img.dataobj)
            affine = np.asarray(img.affine if geo is None else geo.affine, float)
            if geo is not None and geo.warning:
                print_warnings(p, [geo.warning])
        else:
            from pipeline.data.io import load_volume

            vol = load_volume(p, dtype=None, ensure_channel_first=False)
            arr = np.asarray(vol.detach().cpu().numpy())
            affine = np.asarray(vol.affine, float)
    except InputDataError:
        raise
    except Exception as exc:  # nibabel/zlib raise many types on corrupt files
        from pipeline.data.io import describe_read_error

        raise InputDataError(describe_read_error(p, exc), path=p) from exc
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputDataError(f"expected a 3D label map, got shape {tuple(arr.shape)}", path=p)
    return arr, affine, tuple(float(s) for s in spacing_from_affine(affine))
