"""Scoring in resampled space: put a label and its prediction on one grid of a chosen spacing, nearest neighbour.

``medseg evaluate --space resampled --target-spacing X,Y,Z`` scores on a grid that covers the label's physical extent
(same origin and direction) with the target spacing, as papers that report metrics at the training pixdim do
(``../shared/docs/data_and_evaluation.md`` section 6: "when scoring in resampled space, use the target pixdim"):

* the target grid: ``shape = max(1, round(label_shape * label_spacing / target_spacing))`` per axis, origin (the
  centre of voxel 0) and direction cosines of the label (:func:`target_grid`);
* the label and the prediction are resampled onto it with SimpleITK ``Resample`` and ``sitkNearestNeighbor``, each
  through its own affine (:func:`resample_nearest`), so a prediction on the original grid and one already on the
  target grid both land on the same voxels; label ids and dtype are kept exactly; voxels outside the source image are
  background (0); exact half-voxel ties go to the higher source index;
* a prediction whose direction differs from the label's, or whose physical extent does not overlap the target grid,
  is refused with one line naming the file (:func:`check_prediction_geometry`).

Examples:
    >>> import numpy as np
    >>> from pipeline.evaluation.space import target_grid, resample_nearest
    >>> aff = np.diag([0.8, 0.8, 3.0, 1.0])
    >>> lab = np.zeros((40, 40, 10), np.uint8); lab[10:30, 10:30, 3:7] = 2
    >>> t_aff, t_shape = target_grid(aff, lab.shape, (1.6, 1.6, 1.0))
    >>> t_shape, np.diag(t_aff).tolist()
    ((20, 20, 30), [1.6, 1.6, 1.0, 1.0])
    >>> out = resample_nearest(lab, aff, t_aff, t_shape)
    >>> out.dtype, int(out.max()), int((out == 2).sum())
    (dtype('uint8'), 2, 1200)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.data.geometry import spacing_from_affine
from pipeline.errors import InputDataError, UsageError

if TYPE_CHECKING:
    import SimpleITK as sitk

__all__ = [
    "SPACES",
    "TargetSpacing",
    "parse_target_spacing",
    "spacing_from_preset",
    "target_grid",
    "resample_nearest",
    "check_prediction_geometry",
    "to_target_space",
    "DIRECTION_TOLERANCE",
    "TIE_BREAK_VOXELS",
]

#: the values of ``--space``
SPACES = ("original", "resampled")
#: largest difference tolerated between the prediction's and the label's direction cosines
DIRECTION_TOLERANCE = 1e-3
#: offset (source voxels) that makes nearest-neighbour ties go to the higher source index, deterministically
TIE_BREAK_VOXELS = 1e-3
_LPS = np.diag([-1.0, -1.0, 1.0])  # nibabel RAS world <-> ITK LPS world


@dataclass(frozen=True)
class TargetSpacing:
    """The spacing of the resampled scoring grid and where it comes from.

    Attributes:
        spacing: three spacings in mm.
        frame: ``"array"``: one spacing per label array axis, as nibabel loads the label (``--target-spacing``);
            ``"RAS"``: one spacing per world axis (left-right, posterior-anterior, inferior-superior), as a
            preprocessing preset with ``orientation: RAS`` applies it; mapped onto each label's array axes with
            :func:`nibabel.orientations.io_orientation`.
        source: where the numbers come from, stated in the reports (``--target-spacing`` or ``--preprocessing X``).

    Examples:
        >>> import numpy as np
        >>> t = TargetSpacing((1.5, 1.5, 2.0), frame="RAS", source="--preprocessing ct_abdomen")
        >>> t.for_affine(np.array([[0, 0, 2.5, 0], [0, -0.7, 0, 0], [-0.7, 0, 0, 0], [0, 0, 0, 1]]))
        (2.0, 1.5, 1.5)
    """

    spacing: tuple[float, float, float]
    frame: str = "array"
    source: str = "--target-spacing"

    def __post_init__(self) -> None:
        if self.frame not in ("array", "RAS"):
            raise ValueError(f"frame {self.frame!r}: expected 'array' or 'RAS'")
        s = tuple(float(v) for v in self.spacing)
        if len(s) != 3 or not all(math.isfinite(v) and v > 0 for v in s):
            raise ValueError(f"target spacing {self.spacing!r}: expected 3 positive numbers (mm)")
        object.__setattr__(self, "spacing", s)

    def for_affine(self, affine: np.ndarray) -> tuple[float, float, float]:
        """The spacing per array axis of an image with this 4x4 RAS ``affine``."""
        if self.frame == "array":
            return self.spacing
        from nibabel.orientations import io_orientation

        world_axis = io_orientation(np.asarray(affine, float))[:, 0].astype(int)  # array axis i -> world axis
        return tuple(self.spacing[w] for w in world_axis)  # type: ignore[return-value]

    def describe(self) -> str:
        """One line for report headers."""
        mm = " x ".join(f"{v:g}" for v in self.spacing)
        axes = "per label array axis" if self.frame == "array" else "per RAS world axis, mapped to each label's axes"
        return f"{mm} mm ({axes}; from {self.source})"

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "frame": self.frame, "source": self.source}


def parse_target_spacing(text: str) -> tuple[float, float, float]:
    """Parse ``"X,Y,Z"`` or one number (isotropic) into three positive spacings in mm.

    Raises:
        UsageError: naming ``--target-spacing`` and the bad text.

    Examples:
        >>> parse_target_spacing("1.5,1.5,2"), parse_target_spacing("1")
        ((1.5, 1.5, 2.0), (1.0, 1.0, 1.0))
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"--target-spacing {text!r}: expected X,Y,Z or one number (mm)") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise UsageError(f"--target-spacing {text!r}: expected one or three positive numbers (mm)")
    return tuple(values)  # type: ignore[return-value]


def spacing_from_preset(name: str) -> TargetSpacing:
    """The target pixdim of a preprocessing preset (:mod:`pipeline.transforms.presets`).

    A preset that reorients (``orientation: "RAS"``) gives its spacing per RAS world axis; one that keeps the stored
    orientation gives it per array axis, as MONAI ``Spacingd`` applies it.

    Raises:
        UsageError: unknown preset, or a preset without a fixed pixdim (native spacing or ``"fingerprint"``).

    Examples:
        >>> spacing_from_preset("ct_abdomen").spacing
        (1.5, 1.5, 2.0)
    """
    from pipeline.transforms.presets import get_preprocessing_preset

    spec = get_preprocessing_preset(name)
    spacing = spec.get("spacing")
    if not isinstance(spacing, (list, tuple)):
        why = "the dataset fingerprint's median" if spacing == "fingerprint" else "the native spacing"
        raise UsageError(
            f"--preprocessing {name}: the preset has no fixed target pixdim (it uses {why}); "
            "pass --target-spacing X,Y,Z instead"
        )
    frame = "array" if spec.get("orientation") is None else "RAS"
    if frame == "RAS" and str(spec["orientation"]).upper() != "RAS":
        raise UsageError(
            f"--preprocessing {name}: orientation {spec['orientation']!r} is not supported for "
            "--space resampled; pass --target-spacing X,Y,Z instead"
        )
    return TargetSpacing(tuple(spacing), frame=frame, source=f"--preprocessing {name}")


def _direction(affine: np.ndarray) -> np.ndarray:
    a = np.asarray(affine, float)[:3, :3]
    return a / spacing_from_affine(affine)


def target_grid(
    affine: np.ndarray, shape: Sequence[int], spacing: Sequence[float] | float
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The grid with ``spacing`` covering the same physical extent as (``affine``, ``shape``).

    Same origin (centre of voxel 0) and direction cosines; ``shape = max(1, round(shape * old_spacing / spacing))``.

    Args:
        affine: 4x4 voxel-to-world (RAS, mm) matrix of the source grid, as nibabel gives it.
        shape: the source grid's three sizes.
        spacing: target spacing in mm per array axis (one number: isotropic).

    Returns:
        ``(target_affine, target_shape)``.

    Examples:
        >>> import numpy as np
        >>> aff, shape = target_grid(np.diag([0.75, 0.75, 3.0, 1.0]), (64, 64, 12), (1.0, 1.0, 2.0))
        >>> shape, aff[:3, :3].diagonal().tolist()
        ((48, 48, 18), [1.0, 1.0, 2.0])
    """
    aff = np.asarray(affine, float)
    if aff.shape != (4, 4) or len(shape) != 3:
        raise ValueError(f"expected a 4x4 affine and a 3D shape, got {aff.shape} and {tuple(shape)}")
    new = np.broadcast_to(np.asarray(spacing, float), (3,))
    old = spacing_from_affine(aff)
    new_shape = tuple(max(1, int(round(n * o / s))) for n, o, s in zip(shape, old, new))
    out = np.eye(4)
    out[:3, :3] = _direction(aff) * new
    out[:3, 3] = aff[:3, 3]
    return out, new_shape  # type: ignore[return-value]


def _to_sitk(array: np.ndarray, affine: np.ndarray, index_offset: float = 0.0) -> sitk.Image:
    """A SimpleITK image of ``array`` (nibabel (i, j, k) order) at ``affine``; ``index_offset`` shifts the origin so
    that every physical point maps to ``index + index_offset``."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))  # index (i, j, k)
    a = np.asarray(affine, float)
    lps = _LPS @ a[:3, :3]
    origin = _LPS @ (a[:3, 3] - a[:3, :3] @ np.full(3, index_offset))
    img.SetSpacing(tuple(float(v) for v in spacing_from_affine(a)))
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetDirection(tuple(float(v) for v in (lps / spacing_from_affine(a)).ravel()))
    return img


def resample_nearest(
    array: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, target_shape: Sequence[int]
) -> np.ndarray:
    """Resample a 3D label map onto another grid (nearest neighbour, SimpleITK), through both affines.

    Args:
        array: integer label map in nibabel (i, j, k) order (bool is resampled as uint8).
        affine: its 4x4 RAS voxel-to-world matrix.
        target_affine / target_shape: the grid to resample onto (e.g. from :func:`target_grid`).

    Returns:
        The label map on the target grid, same dtype and ids; voxels whose centre falls outside ``array`` are 0.
        A target centre exactly half-way between two source centres (every other voxel when upsampling 3 mm to
        1.5 mm) takes the higher source index: the source index is offset by :data:`TIE_BREAK_VOXELS` so that
        floating-point noise in the affines cannot break such ties one way here and the other way there.

    Examples:
        >>> import numpy as np
        >>> a = np.arange(27, dtype=np.int16).reshape(3, 3, 3)
        >>> out = resample_nearest(a, np.eye(4), np.diag([2.0, 1, 1, 1]), (2, 3, 3))
        >>> out.dtype, out[:, 0, 0].tolist()
        (dtype('int16'), [0, 18])
    """
    import SimpleITK as sitk

    a = np.asarray(array)
    if a.ndim != 3:
        raise ValueError(f"expected a 3D label map, got shape {a.shape}")
    if a.dtype == bool:
        a = a.view(np.uint8)
    if a.dtype.kind not in "iu":
        raise ValueError(f"expected an integer label map, got dtype {a.dtype}")
    taff = np.asarray(target_affine, float)
    if a.shape == tuple(target_shape) and np.allclose(np.asarray(affine, float), taff, rtol=0, atol=1e-6):
        return a.copy()  # already on the target grid
    ref = _to_sitk(np.zeros((1, 1, 1), np.uint8), taff)
    f = sitk.ResampleImageFilter()
    f.SetSize([int(n) for n in target_shape])
    f.SetOutputSpacing(ref.GetSpacing())
    f.SetOutputOrigin(ref.GetOrigin())
    f.SetOutputDirection(ref.GetDirection())
    f.SetInterpolator(sitk.sitkNearestNeighbor)
    f.SetDefaultPixelValue(0)
    out = sitk.GetArrayFromImage(f.Execute(_to_sitk(a, affine, TIE_BREAK_VOXELS))).transpose(2, 1, 0)
    return np.ascontiguousarray(out.astype(a.dtype, copy=False))


def check_prediction_geometry(
    pred_affine: np.ndarray,
    pred_shape: Sequence[int],
    target_affine: np.ndarray,
    target_shape: Sequence[int],
    pred_path: str | os.PathLike = "",
    label_path: str | os.PathLike = "",
) -> None:
    """Refuse a prediction that cannot be put on the target grid: other direction cosines, or no physical overlap.

    Raises:
        InputDataError: one line naming ``pred_path`` and the problem.

    Examples:
        >>> import numpy as np
        >>> moved = np.diag([1.0, 1, 1, 1]); moved[0, 3] = 500.0
        >>> check_prediction_geometry(moved, (10, 10, 10), np.eye(4), (10, 10, 10), "p.nii.gz")
        Traceback (most recent call last):
        ...
        pipeline.errors.InputDataError: p.nii.gz: lies outside the label's physical extent ...
    """
    where = f" ({label_path})" if label_path else ""
    d_pred, d_target = _direction(pred_affine), _direction(target_affine)
    diff = float(np.max(np.abs(d_pred - d_target)))
    if diff > DIRECTION_TOLERANCE:
        raise InputDataError(
            f"direction cosines differ from the label's{where} by up to {diff:.3g}: not in the same orientation "
            "(reorient or invert the prediction to the label's axes)",
            path=pred_path or None,
        )
    # the prediction's voxel extent [-0.5, n - 0.5] per axis, in the target grid's index coordinates
    corners = np.array(
        [
            [i, j, k, 1.0]
            for i in (-0.5, pred_shape[0] - 0.5)
            for j in (-0.5, pred_shape[1] - 0.5)
            for k in (-0.5, pred_shape[2] - 0.5)
        ]
    ).T
    idx = (np.linalg.inv(np.asarray(target_affine, float)) @ np.asarray(pred_affine, float) @ corners)[:3]
    lo, hi = idx.min(axis=1), idx.max(axis=1)
    eps = 1e-6
    if np.any(hi <= -0.5 + eps) or np.any(lo >= np.asarray(target_shape, float) - 0.5 - eps):
        raise InputDataError(
            f"lies outside the label's physical extent{where} (no overlap): check the prediction's affine/origin",
            path=pred_path or None,
        )


def to_target_space(
    pred: np.ndarray,
    pred_affine: np.ndarray,
    label: np.ndarray,
    label_affine: np.ndarray,
    spacing: TargetSpacing | Sequence[float] | float,
    *,
    check: bool = True,
    pred_path: str | os.PathLike = "",
    label_path: str | os.PathLike = "",
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], np.ndarray]:
    """Put a prediction and its label on the label's extent at the target spacing (nearest neighbour).

    Args:
        pred / pred_affine: predicted label map and its 4x4 RAS affine (any grid with the label's direction).
        label / label_affine: ground-truth label map and its affine; defines origin, direction and extent.
        spacing: a :class:`TargetSpacing`, or mm per label array axis (one number: isotropic).
        check: refuse a prediction with other direction cosines or no overlap (:func:`check_prediction_geometry`).
            With ``check=False`` a prediction of the label's shape is taken to lie on the label's grid (voxel by
            voxel, its affine ignored, like ``--no-affine-check`` in original space); one of another shape can
            only be placed through its own affine, so it is still checked.
        pred_path / label_path: named in error messages.

    Returns:
        ``(pred_t, label_t, spacing_t, affine_t)``: both label maps on the target grid, its spacing per array axis
        and its affine.

    Raises:
        InputDataError: when the prediction cannot be put on the target grid.

    Examples:
        >>> import numpy as np
        >>> lab = np.zeros((40, 40, 8), np.uint8); lab[8:32, 8:32, 2:6] = 1
        >>> aff = np.diag([0.75, 0.75, 3.0, 1.0])
        >>> p, l, s, _ = to_target_space(lab, aff, lab, aff, (1.5, 1.5, 1.5))
        >>> p.shape, s, bool((p == l).all())
        ((20, 20, 16), (1.5, 1.5, 1.5), True)
    """
    ts = (
        spacing
        if isinstance(spacing, TargetSpacing)
        else TargetSpacing(tuple(np.broadcast_to(np.asarray(spacing, float), (3,))))
    )
    laff = np.asarray(label_affine, float)
    paff = np.asarray(pred_affine, float)
    voxel_by_voxel = not check and tuple(pred.shape) == tuple(label.shape)
    if voxel_by_voxel:
        paff = laff
    per_axis = ts.for_affine(laff)
    taff, tshape = target_grid(laff, label.shape, per_axis)
    if not voxel_by_voxel:
        check_prediction_geometry(paff, pred.shape, taff, tshape, pred_path, label_path)
    label_t = resample_nearest(label, laff, taff, tshape)
    pred_t = resample_nearest(pred, paff, taff, tshape)
    return pred_t, label_t, tuple(float(v) for v in per_axis), taff  # type: ignore[return-value]
