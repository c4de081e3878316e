"""Voxel geometry of NIfTI headers: which transform to trust, and a clear word when none can be trusted.

A NIfTI header holds three descriptions of where its voxels are: the sform (``sform_code > 0``), the qform
(``qform_code > 0``, a rotation plus the ``pixdim`` voxel sizes) and, for files with neither, the bare ``pixdim``
voxel sizes ("method 1" of the NIfTI standard, no orientation). nibabel takes the first that is coded, even when it is
NaN or not invertible, and silently replaces zero voxel sizes with 1 mm (logging a line that does not name the file).
:func:`resolve_nifti_geometry` applies the same order but skips a transform that cannot be used, and says so:

========================================  ============================================================================
header                                    result
========================================  ============================================================================
usable sform                              the sform (no message)
sform unusable (NaN/Inf, not invertible)  the qform, with a warning naming what was wrong
neither usable, ``pixdim`` > 0            ``pixdim`` spacing with NIfTI's default axes, with a warning (orientation
                                          unknown; an inference output keeps qform/sform codes 0 like its input)
neither usable, ``pixdim`` 0/NaN/Inf      refused: :class:`~pipeline.errors.InputDataError` (the spacing is unknown,
                                          so resampling to a model's spacing or distances in mm would be invented)
========================================  ============================================================================

``medseg infer``, ``medseg datasets check`` and ``medseg evaluate`` all read NIfTI through this rule. The voxel size of
any voxel-to-world matrix (NIfTI, NRRD/MHA, DICOM, a resampled grid) is :func:`spacing_from_affine`, the one spacing
rule of the project.

Examples:
    >>> import numpy as np, nibabel as nib
    >>> hdr = nib.Nifti1Header()
    >>> hdr.set_data_shape((4, 4, 4)); hdr.set_zooms((2.0, 2.0, 3.0))
    >>> geo = resolve_nifti_geometry(hdr)
    >>> geo.source, geo.spacing, geo.warning is not None
    ('pixdim', (2.0, 2.0, 3.0), True)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import InputDataError

__all__ = [
    "NiftiGeometry",
    "affine_problem",
    "nifti_geometry_of_file",
    "quiet_nibabel",
    "read_nifti_header",
    "resolve_nifti_geometry",
    "spacing_from_affine",
]


@dataclass(frozen=True)
class NiftiGeometry:
    """The geometry :func:`resolve_nifti_geometry` settled on.

    Attributes:
        affine: 4x4 voxel-to-world (RAS mm) matrix.
        source: ``"sform"``, ``"qform"`` or ``"pixdim"`` (no usable orientation: NIfTI's default axes).
        spacing: voxel size (mm) along each array axis.
        warning: what was wrong with the header and what was used instead; None for a sound header.
    """

    affine: np.ndarray
    source: str
    spacing: tuple[float, ...]
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, for sidecars and reports."""
        return {
            "geometry_source": self.source,
            "spacing_mm": [round(float(s), 6) for s in self.spacing],
            "geometry_warning": self.warning,
        }


@contextlib.contextmanager
def quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's global header-fix log lines (e.g. "pixdim[1,2,3] should be non-zero; setting 0 dims to 1"),
    which do not name the file; :func:`resolve_nifti_geometry` reports the same facts with the file name."""
    import logging

    from nibabel import imageglobals

    nib_logger = imageglobals.logger
    old = nib_logger.level
    nib_logger.setLevel(logging.CRITICAL + 1)  # neither its own handler nor the root logger's (propagation) prints
    try:
        yield
    finally:
        nib_logger.setLevel(old)


def read_nifti_header(path: str | os.PathLike) -> Any | None:
    """The header of a ``.nii``/``.nii.gz`` file exactly as stored (nibabel's automatic fixes not applied).

    Returns:
        a ``Nifti1Header``/``Nifti2Header``, or None when the file does not start with a NIfTI header (the readers
        then report it with their own reason).
    """
    import nibabel as nib
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path), "rb") as f:
            block = f.read(nib.Nifti2Header.sizeof_hdr)
    except Exception:  # noqa: BLE001 - unreadable files are reported by the reader that fails on them
        return None
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        if len(block) >= klass.sizeof_hdr and klass.may_contain_header(block):
            try:
                return klass(block[: klass.sizeof_hdr], check=False)
            except Exception:  # noqa: BLE001
                return None
    return None


def spacing_from_affine(affine: npt.ArrayLike) -> np.ndarray:
    """Voxel size (mm) along each array axis of a voxel-to-world matrix: the norms of the columns of its 3x3 part.

    Every voxel size in the project comes from here (the readers' affine, so a NIfTI follows
    :func:`resolve_nifti_geometry`): dataset checks and fingerprints, preprocessing summaries, the mm of DSC/HD95 in
    ``evaluate``, ``benchmark`` and ``demo``, and the resampled grids of ``evaluate --space resampled``.

    Args:
        affine: a 4x4 (or at least 3x3) matrix, e.g. ``MetaTensor.affine`` or nibabel's ``img.affine``.

    Examples:
        >>> spacing_from_affine(np.diag([-0.8, 0.8, 3.0, 1.0])).tolist()
        [0.8, 0.8, 3.0]
        >>> spacing_from_affine([[0, 0, 2.0, 0], [0, -1.5, 0, 0], [1.5, 0, 0, 0], [0, 0, 0, 1]]).tolist()
        [1.5, 1.5, 2.0]
    """
    a = np.asarray(affine, dtype=np.float64)
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))


def affine_problem(affine: np.ndarray | None) -> str | None:
    """Why a 4x4 voxel-to-world matrix cannot be used (``"has NaN/Inf entries"``, ``"is not invertible ..."``), or None.

    Examples:
        >>> affine_problem(np.diag([1.5, 1.5, 0.0, 1.0]))
        'is not invertible (determinant 0: a zero-length or repeated axis)'
        >>> affine_problem(np.eye(4)) is None
        True
    """
    if affine is None:
        return "is missing"
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        return "has NaN/Inf entries"
    norms = spacing_from_affine(a)
    if (norms <= 0).any() or abs(np.linalg.det(a[:3, :3])) <= 1e-9 * float(np.prod(norms)):
        return "is not invertible (determinant 0: a zero-length or repeated axis)"
    return None


def _fmt(values: Any) -> str:
    return "x".join(f"{float(v):g}" for v in values)


def resolve_nifti_geometry(header: Any) -> NiftiGeometry:
    """Choose the voxel-to-world transform of a NIfTI header (see the module docstring for the rule).

    Args:
        header: a NIfTI header as stored (see :func:`read_nifti_header`); nibabel's loaded ``img.header`` works too,
            but has zero voxel sizes already replaced by 1.

    Raises:
        InputDataError: when neither transform is usable and ``pixdim`` gives no voxel size (zero, NaN or Inf).

    Examples:
        >>> import nibabel as nib
        >>> hdr = nib.Nifti1Header(); hdr.set_data_shape((4, 4, 4))
        >>> hdr["pixdim"][1:4] = 0
        >>> resolve_nifti_geometry(hdr)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        pipeline.errors.InputDataError: no usable voxel geometry: ...
    """
    from nibabel.volumeutils import shape_zoom_affine

    shape = tuple(int(s) for s in header.get_data_shape())
    nsp = min(3, len(shape))
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)[1 : 1 + nsp]
    s_aff, s_code = header.get_sform(coded=True)
    q_code = int(header["qform_code"])
    skipped: list[str] = []
    if int(s_code) > 0:
        why = affine_problem(s_aff)
        if why is None:
            a = np.asarray(s_aff, dtype=np.float64)
            return NiftiGeometry(a, "sform", tuple(float(v) for v in spacing_from_affine(a)[:nsp]))
        skipped.append(f"the sform (sform_code {int(s_code)}) {why}")
    if q_code > 0:
        try:
            q_aff = header.get_qform()
        except Exception:  # noqa: BLE001 - nibabel refuses negative pixdim etc.
            q_aff = None
        why = affine_problem(q_aff)
        if why is None:
            a = np.asarray(q_aff, dtype=np.float64)
            spacing = tuple(float(v) for v in spacing_from_affine(a)[:nsp])
            warning = f"{skipped[0]}; used the qform instead (spacing {_fmt(spacing)} mm)" if skipped else None
            return NiftiGeometry(a, "qform", spacing, warning)
        skipped.append(
            f"the qform (qform_code {q_code}) {why}"
            + (" (its voxel sizes come from pixdim)" if not np.isfinite(pixdim).all() or (pixdim == 0).any() else "")
        )
    what = "; ".join(skipped) if skipped else "no orientation in the header (qform_code = sform_code = 0)"
    usable = pixdim.size == nsp and np.isfinite(pixdim).all() and (pixdim != 0).all()
    if usable:
        zooms = tuple(float(abs(v)) for v in pixdim)
        affine = shape_zoom_affine(shape[:nsp] if nsp else (1,), zooms if nsp else (1.0,), x_flip=True)
        return NiftiGeometry(
            np.asarray(affine, dtype=np.float64),
            "pixdim",
            zooms,
            f"{what}: used the pixdim voxel size {_fmt(zooms)} mm with NIfTI's default axes (orientation unknown)",
        )
    raise InputDataError(
        f"no usable voxel geometry: {what}, and the pixdim voxel size [{', '.join(f'{v:g}' for v in pixdim)}] is "
        "zero/NaN, so the spacing is unknown; write the voxel size (mm) into the header, e.g. with nibabel: "
        "img.header.set_zooms((x, y, z)); nib.save(img, path)"
    )


def nifti_geometry_of_file(path: str | os.PathLike) -> NiftiGeometry | None:
    """:func:`resolve_nifti_geometry` of a file's stored header, or None if it has no readable NIfTI header.

    Raises:
        InputDataError: naming the file, when its geometry is unusable.
    """
    hdr = read_nifti_header(path)
    if hdr is None:
        return None
    try:
        return resolve_nifti_geometry(hdr)
    except InputDataError as exc:
        raise InputDataError(str(exc), path=Path(path)) from None
