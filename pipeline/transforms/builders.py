"""Build MONAI dictionary-transform pipelines from the presets in :mod:`pipeline.transforms.presets`.

Every geometric step (Orientationd, Spacingd, CropForegroundd) records itself in ``applied_operations``, so a
prediction can be mapped back to the original image grid with
``Invertd(keys="pred", transform=<the Compose>, orig_keys="image")``.

Examples:
    >>> from pipeline.transforms import build_preprocessing
    >>> pre = build_preprocessing("ct_abdomen")
    >>> out = pre({"image": "img0001.nii.gz", "label": "label0001.nii.gz"})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import (
    ClipIntensityPercentilesd,
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from pipeline.errors import InputDataError, UsageError
from pipeline.transforms.checks import CheckedCompose, CheckImaged
from pipeline.transforms.presets import get_preprocessing_preset

#: keys whose data are label maps (nearest-neighbour resampling, no intensity transform)
LABEL_KEYS = ("label", "seg", "mask", "pred")


class AboveThreshold:
    """Picklable ``select_fn`` for ``CropForegroundd``: voxels strictly greater than ``threshold``."""

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = float(threshold)

    def __call__(self, x: Any) -> Any:
        return x > self.threshold

    def __repr__(self) -> str:
        return f"AboveThreshold({self.threshold})"


def load_fingerprint(fingerprint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read a fingerprint JSON written by ``medseg datasets fingerprint`` (or pass a dict through)."""
    if isinstance(fingerprint, Mapping):
        return dict(fingerprint)
    path = Path(fingerprint)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputDataError("fingerprint file not found", path=path) from None
    except (OSError, ValueError) as exc:
        raise InputDataError(f"unreadable fingerprint JSON ({exc})", path=path) from exc


def resolve_preset(
    preset: str | Mapping[str, Any],
    *,
    fingerprint: str | os.PathLike | Mapping[str, Any] | None = None,
    intensity: Mapping[str, Any] | None = None,
    spacing: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Return the complete preset dict: named/dict preset, then fingerprint numbers, then explicit overrides.

    Args:
        preset: a name in ``PREPROCESSING_PRESETS`` or a preset dict.
        fingerprint: fingerprint JSON path or dict; fills ``spacing: "fingerprint"`` (median spacing) and the
            ``nnunet_ct`` numbers (foreground 0.5/99.5 percentiles, mean, std of channel 0).
        intensity: overrides merged into the intensity spec (e.g. ``{"mean": 60.0, "std": 150.0}``).
        spacing: overrides the target spacing (x, y, z).

    Raises:
        UsageError: when a number the preset needs is still missing (the message says which and how to provide it).
    """
    spec = get_preprocessing_preset(preset)
    fp = load_fingerprint(fingerprint) if fingerprint is not None else None
    name = preset if isinstance(preset, str) else "<custom>"
    if spacing is not None:
        spec["spacing"] = [float(s) for s in spacing]
    if spec.get("spacing") == "fingerprint":
        if fp is None or "median_spacing" not in fp:
            raise UsageError(
                f"preset {name}: the target spacing comes from a fingerprint; pass fingerprint= "
                "(medseg datasets fingerprint PATH --out FILE) or spacing="
            )
        spec["spacing"] = [float(s) for s in fp["median_spacing"]]
    inten = dict(spec["intensity"])
    if inten["type"] == "nnunet_ct" and fp is not None:
        stats = (fp.get("foreground_intensity") or {}).get("0")
        if stats is None:
            raise InputDataError("fingerprint has no foreground_intensity for channel 0")
        for key, src in (("lower", "percentile_00_5"), ("upper", "percentile_99_5"), ("mean", "mean"), ("std", "std")):
            if inten.get(key) is None:
                inten[key] = float(stats[src])
    if intensity:
        inten.update(intensity)
    if inten["type"] == "nnunet_ct":
        missing = [k for k in ("lower", "upper", "mean", "std") if inten.get(k) is None]
        if missing:
            raise UsageError(
                f"preset {name}: nnU-Net CT normalisation needs {missing}; pass fingerprint= or "
                "intensity={'lower':..., 'upper':..., 'mean':..., 'std':...}"
            )
        if float(inten["std"]) <= 0 or float(inten["upper"]) <= float(inten["lower"]):
            raise UsageError(f"preset {name}: nnU-Net CT numbers need std > 0 and upper > lower, got {inten}")
    spec["intensity"] = inten
    return spec


def _intensity_transforms(spec: Mapping[str, Any], key: str) -> list:
    t = spec["type"]
    if t == "window":
        return [
            ScaleIntensityRanged(
                keys=key,
                a_min=float(spec["a_min"]),
                a_max=float(spec["a_max"]),
                b_min=float(spec.get("b_min", 0.0)),
                b_max=float(spec.get("b_max", 1.0)),
                clip=bool(spec.get("clip", True)),
            )
        ]
    if t == "nnunet_ct":
        # clip to [lower, upper] then (x - mean) / std, written as one linear map with clipping
        lo, hi, mean, std = (float(spec[k]) for k in ("lower", "upper", "mean", "std"))
        return [
            ScaleIntensityRanged(
                keys=key, a_min=lo, a_max=hi, b_min=(lo - mean) / std, b_max=(hi - mean) / std, clip=True
            )
        ]
    if t == "zscore":
        out: list = []
        pct = spec.get("clip_percentiles")
        if pct:
            out.append(ClipIntensityPercentilesd(keys=key, lower=float(pct[0]), upper=float(pct[1]), channel_wise=True))
        out.append(NormalizeIntensityd(keys=key, nonzero=bool(spec.get("nonzero", True)), channel_wise=True))
        return out
    raise UsageError(f"unknown intensity type {t!r}")


def build_preprocessing(
    preset: str | Mapping[str, Any],
    keys: Sequence[str] = ("image", "label"),
    *,
    load: bool = True,
    fingerprint: str | os.PathLike | Mapping[str, Any] | None = None,
    intensity: Mapping[str, Any] | None = None,
    spacing: Sequence[float] | None = None,
    allow_missing_keys: bool = False,
    channels: int | None = None,
    allow_nonfinite: bool = False,
) -> Compose:
    """Deterministic, invertible preprocessing: LoadImaged -> EnsureChannelFirstd -> checks -> Orientationd ->
    Spacingd -> intensity -> optional CropForegroundd.

    The checks (:class:`pipeline.transforms.checks.CheckImaged`) refuse, with one line naming the file, a volume that
    is not 3D, an image whose channel count differs from ``channels`` (default: the preset's), and NaN/Inf voxels.

    The first key is the image (bilinear resampling, intensity normalisation, foreground source); the other keys are
    label maps (nearest). NIfTI is read by nibabel, NRRD/MHA/DICOM series folders by
    :class:`pipeline.data.io.SimpleITKReader`.

    Args:
        preset: a name in ``PREPROCESSING_PRESETS`` or a preset dict (see :mod:`pipeline.transforms.presets`).
        keys: dictionary keys, image first (e.g. ``("image",)`` for inference).
        load: include LoadImaged + EnsureChannelFirstd (False when the dict already holds channel-first MetaTensors).
        fingerprint, intensity, spacing: see :func:`resolve_preset`.
        allow_missing_keys: let label keys be absent from some dicts.
        channels: required image channels (default: the preset's ``channels``; None there accepts any).
        allow_nonfinite: accept NaN/Inf voxels.

    Returns:
        a ``monai.transforms.Compose``; invert geometry with ``Invertd(keys="pred", transform=it, orig_keys="image")``.

    Examples:
        >>> import torch
        >>> from monai.data import MetaTensor
        >>> pre = build_preprocessing("mri_hippocampus", keys=("image",), load=False)
        >>> out = pre({"image": MetaTensor(torch.rand(1, 8, 9, 10) + 1)})
        >>> tuple(out["image"].shape)
        (1, 8, 9, 10)
    """
    from pipeline.data.io import make_load_imaged

    keys = tuple(keys)
    if not keys:
        raise UsageError("build_preprocessing: keys must name at least the image key")
    spec = resolve_preset(preset, fingerprint=fingerprint, intensity=intensity, spacing=spacing)
    image_key = keys[0]
    modes = ["bilinear" if k == image_key else "nearest" for k in keys]
    amk = allow_missing_keys
    xforms: list = []
    if load:
        xforms += [
            make_load_imaged(keys, allow_missing_keys=amk),
            EnsureChannelFirstd(keys=keys, allow_missing_keys=amk),
        ]
    xforms.append(
        CheckImaged(
            keys,
            channels=spec.get("channels") if channels is None else channels,
            allow_nonfinite=allow_nonfinite,
            allow_missing_keys=amk,
        )
    )
    if spec.get("orientation"):
        xforms.append(Orientationd(keys=keys, axcodes=spec["orientation"], labels=None, allow_missing_keys=amk))
    if spec.get("spacing") is not None:
        xforms.append(
            Spacingd(
                keys=keys,
                pixdim=[float(s) for s in spec["spacing"]],
                mode=modes,
                dtype=np.float32,
                allow_missing_keys=amk,
            )
        )
    xforms += _intensity_transforms(spec["intensity"], image_key)
    crop = spec.get("crop_foreground")
    if crop:
        crop = crop if isinstance(crop, Mapping) else {}
        xforms.append(
            CropForegroundd(
                keys=keys,
                source_key=image_key,
                select_fn=AboveThreshold(crop.get("threshold", 0.0)),
                margin=int(crop.get("margin", 0)),
                allow_missing_keys=amk,
            )
        )
    return CheckedCompose(xforms)  # lets PipelineError through unwrapped


def build_inference_transforms(preset: str | Mapping[str, Any], *, image_key: str = "image", **kwargs: Any) -> Compose:
    """Preprocessing for inference: image key only (same geometry and intensity steps as training)."""
    return build_preprocessing(preset, keys=(image_key,), **kwargs)


def build_train_transforms(
    preset: str | Mapping[str, Any],
    *,
    roi_size: Sequence[int],
    num_samples: int = 2,
    crop: str = "pos_neg",
    pos: float = 1.0,
    neg: float = 1.0,
    num_classes: int | None = None,
    ratios: Sequence[float] | None = None,
    flip_prob: float = 0.2,
    rot90_prob: float = 0.2,
    intensity_prob: float = 0.5,
    scale_factor: float = 0.1,
    shift_offset: float = 0.1,
    affine_prob: float = 0.0,
    keys: Sequence[str] = ("image", "label"),
    load: bool = True,
    fingerprint: str | os.PathLike | Mapping[str, Any] | None = None,
    intensity: Mapping[str, Any] | None = None,
    spacing: Sequence[float] | None = None,
) -> Compose:
    """Preprocessing followed by padding to ``roi_size``, random patches and augmentation.

    Args:
        preset: preprocessing preset name or dict.
        roi_size: patch size in MONAI (x, y, z) order.
        num_samples: patches drawn per volume (the dataset yields a list of ``num_samples`` dicts).
        crop: ``"pos_neg"`` (``RandCropByPosNegLabeld`` with ``pos``/``neg``) or ``"class_balanced"``
            (``RandCropByLabelClassesd`` with ``num_classes`` and optional ``ratios``).
        flip_prob: probability of a flip along each spatial axis.
        rot90_prob: probability of a random 90-degree rotation in the first two spatial axes (x, y).
        intensity_prob: probability of each of the random intensity scale (``scale_factor``) and shift
            (``shift_offset``) transforms, applied to the image only.
        affine_prob: probability of a small random affine (rotation +-0.26 rad, scale +-0.1); 0 disables it.
        keys, load, fingerprint, intensity, spacing: as :func:`build_preprocessing`; ``keys`` must hold image and label.

    Examples:
        >>> t = build_train_transforms("mri_hippocampus", roi_size=(32, 32, 32), num_samples=2)
        >>> isinstance(t, Compose)
        True
    """
    keys = tuple(keys)
    if len(keys) < 2:
        raise UsageError("build_train_transforms: keys must hold the image key and the label key")
    roi = [int(r) for r in roi_size]
    if len(roi) != 3 or min(roi) < 1:
        raise UsageError(f"roi_size must be 3 positive ints (x, y, z), got {roi_size}")
    image_key, label_key = keys[0], keys[1]
    pre = build_preprocessing(preset, keys, load=load, fingerprint=fingerprint, intensity=intensity, spacing=spacing)
    xforms = list(pre.transforms)
    xforms.append(SpatialPadd(keys=keys, spatial_size=roi))
    if crop == "pos_neg":
        xforms.append(
            RandCropByPosNegLabeld(
                keys=keys,
                label_key=label_key,
                spatial_size=roi,
                pos=pos,
                neg=neg,
                num_samples=num_samples,
                image_key=image_key,
                image_threshold=-np.inf,
            )
        )
    elif crop == "class_balanced":
        if num_classes is None and ratios is None:
            raise UsageError("crop='class_balanced' needs num_classes (or ratios)")
        xforms.append(
            RandCropByLabelClassesd(
                keys=keys,
                label_key=label_key,
                spatial_size=roi,
                num_classes=num_classes,
                ratios=list(ratios) if ratios else None,
                num_samples=num_samples,
                image_key=image_key,
                image_threshold=-np.inf,
                warn=False,
            )
        )
    else:
        raise UsageError(f"crop must be 'pos_neg' or 'class_balanced', got {crop!r}")
    if affine_prob > 0:
        xforms.append(
            RandAffined(
                keys=keys,
                prob=affine_prob,
                rotate_range=(0.26, 0.26, 0.26),
                scale_range=(0.1, 0.1, 0.1),
                mode=["bilinear" if k == image_key else "nearest" for k in keys],
                padding_mode="border",
            )
        )
    if flip_prob > 0:
        xforms += [RandFlipd(keys=keys, prob=flip_prob, spatial_axis=axis) for axis in (0, 1, 2)]
    if rot90_prob > 0 and roi[0] == roi[1]:
        xforms.append(RandRotate90d(keys=keys, prob=rot90_prob, max_k=3, spatial_axes=(0, 1)))
    if intensity_prob > 0:
        xforms += [
            RandScaleIntensityd(keys=image_key, factors=scale_factor, prob=intensity_prob),
            RandShiftIntensityd(keys=image_key, offsets=shift_offset, prob=intensity_prob),
        ]
    return CheckedCompose(xforms)  # lets PipelineError through unwrapped
