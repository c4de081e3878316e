"""Preprocessing presets: pure data (JSON-serialisable dicts), turned into MONAI transforms by
:func:`pipeline.transforms.build_preprocessing`.

Schema of one preset (every key optional except ``intensity``):

- ``description``: one line; ``source``: where the numbers come from.
- ``modality``: ``"CT"`` or ``"MRI"`` (informational).
- ``channels``: number of image channels the preset is for (checked right after loading); absent/None accepts any.
- ``orientation``: axcodes for ``Orientationd`` (``"RAS"``), or None to keep the stored orientation (nnU-Net style).
- ``spacing``: target pixdim in MONAI (x, y, z) order (mm), None to keep the native spacing, or ``"fingerprint"`` to use
  the dataset fingerprint's median spacing.
- ``intensity``: one of
    - ``{"type": "window", "a_min", "a_max", "b_min", "b_max", "clip"}``: a HU window (``ScaleIntensityRanged``);
    - ``{"type": "nnunet_ct", "lower", "upper", "mean", "std"}``: clip to [lower, upper] (the foreground 0.5/99.5
      percentiles), then z-score with the foreground mean/std. Values left as None are filled from a fingerprint JSON
      (``pipeline.data.fingerprint``) or from explicit arguments;
    - ``{"type": "zscore", "nonzero", "clip_percentiles": [lo, hi] | None}``: per-image, per-channel: clip to the
      image's own [lo, hi] percentiles first, then z-score over the non-zero voxels (MRI).
- ``crop_foreground``: False, or ``{"threshold": t, "margin": m}``: crop to the box of ``image > t`` (after intensity
  normalisation), with ``m`` voxels of margin. Invertible with ``Invertd``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pipeline.errors import UsageError

#: single-channel CT, reoriented to RAS
_CT_RAS = {"modality": "CT", "channels": 1, "orientation": "RAS"}


def _hu_window(a_min: float, a_max: float) -> dict[str, Any]:
    """The ``window`` intensity spec mapping HU ``a_min..a_max`` to 0..1, clipped."""
    return {"type": "window", "a_min": a_min, "a_max": a_max, "b_min": 0.0, "b_max": 1.0, "clip": True}


PREPROCESSING_PRESETS: dict[str, dict[str, Any]] = {
    "ct_abdomen": {
        "description": "abdominal CT as in MONAI's BTCV/Swin-UNETR recipes: RAS, 1.5x1.5x2.0 mm, HU -175..250 -> 0..1",
        "source": "MONAI model zoo swin_unetr_btcv_segmentation / research-contributions SwinUNETR/BTCV",
        **_CT_RAS,
        "spacing": [1.5, 1.5, 2.0],
        "intensity": _hu_window(-175.0, 250.0),
        "crop_foreground": {"threshold": 0.0, "margin": 0},
    },
    "ct_nnunet": {
        "description": "nnU-Net CT normalisation (UNETR++ official weights): native orientation, median spacing, "
        "clip to the foreground 0.5/99.5 percentiles then z-score with the foreground mean/std",
        "source": "nnU-Net v1 ExperimentPlanner3D_v21 / CTNormalization, as used by UNETR++ and nnFormer",
        "modality": "CT",
        "channels": 1,
        "orientation": None,
        "spacing": "fingerprint",
        "intensity": {"type": "nnunet_ct", "lower": None, "upper": None, "mean": None, "std": None},
        "crop_foreground": False,
    },
    "mri_zscore": {
        "description": "MRI: RAS, native spacing, per-image 0.5/99.5 percentile clip then z-score on non-zero voxels",
        "source": "nnU-Net ZScoreNormalization (per case, non-zero mask) with a robust percentile clip",
        "modality": "MRI",
        "orientation": "RAS",
        "spacing": None,
        "intensity": {"type": "zscore", "nonzero": True, "clip_percentiles": [0.5, 99.5]},
        "crop_foreground": False,
    },
    "mri_hippocampus": {
        "description": "MSD Task04 hippocampus MRI: RAS, 1 mm isotropic, per-image percentile clip + non-zero z-score "
        "(intensity scales differ by 4 orders of magnitude between cases)",
        "source": "MSD Task04 (1 mm crops); nnU-Net per-case z-score",
        "modality": "MRI",
        "channels": 1,
        "orientation": "RAS",
        "spacing": [1.0, 1.0, 1.0],
        "intensity": {"type": "zscore", "nonzero": True, "clip_percentiles": [0.5, 99.5]},
        "crop_foreground": False,
    },
    "ct_sts": {
        "description": "soft-tissue sarcoma CT crops: RAS, 2.0x2.0x3.0 mm, nnU-Net CT normalisation with the STS_CT "
        "training-split statistics (clip -96..107 HU, z-score mean 29.44, std 46.41)",
        "source": "medseg fingerprint of the 19 training cases of bundles/unetrpp_sts_ct_segmentation/configs/"
        "datalist.json (foreground 0.5/99.5 percentiles, mean, std; native 0.98x0.98x3.27 mm); 2 mm in-plane because "
        "the tumours are large (1-6 % of each crop) and a 64x64x32 patch then covers 128x128x96 mm on a 2-core CPU",
        **_CT_RAS,
        "spacing": [2.0, 2.0, 3.0],
        "intensity": {"type": "nnunet_ct", "lower": -96.0, "upper": 107.0, "mean": 29.44, "std": 46.41},
        "crop_foreground": False,
    },
    "ct_lung": {
        "description": "lung tumour CT (MSD Task06): RAS, 0.79x0.79x1.24 mm (nnU-Net's Task06 median), "
        "HU -1000..400 -> 0..1, crop to the body",
        "source": "nnU-Net Task006_Lung plans (target spacing 1.24x0.79x0.79 mm z,y,x); lung window",
        **_CT_RAS,
        "spacing": [0.79, 0.79, 1.24],
        "intensity": _hu_window(-1000.0, 400.0),
        "crop_foreground": {"threshold": 0.0, "margin": 0},
    },
}

_INTENSITY_KEYS = {
    "window": {"a_min", "a_max", "b_min", "b_max", "clip"},
    "nnunet_ct": {"lower", "upper", "mean", "std"},
    "zscore": {"nonzero", "clip_percentiles"},
}
_TOP_KEYS = {"description", "source", "modality", "channels", "orientation", "spacing", "intensity", "crop_foreground"}


def get_preprocessing_preset(preset: str | Mapping[str, Any]) -> dict[str, Any]:
    """Return a deep copy of a named preset (or of a preset dict), with its schema validated.

    Raises:
        UsageError: unknown name, unknown keys or a malformed value (the message names the preset and the key).
    """
    if isinstance(preset, str):
        if preset not in PREPROCESSING_PRESETS:
            raise UsageError(f"unknown preprocessing preset {preset!r}; known: {', '.join(PREPROCESSING_PRESETS)}")
        name, spec = preset, copy.deepcopy(PREPROCESSING_PRESETS[preset])
    elif isinstance(preset, Mapping):
        name, spec = str(preset.get("name", "<custom>")), copy.deepcopy(dict(preset))
        spec.pop("name", None)
    else:
        raise UsageError(f"preprocessing preset must be a name or a dict, got {type(preset).__name__}")
    validate_preset(spec, name)
    return spec


def validate_preset(spec: Mapping[str, Any], name: str = "<custom>") -> None:
    """Check the schema described in this module's docstring; raise :class:`UsageError` naming the problem."""
    unknown = set(spec) - _TOP_KEYS
    if unknown:
        raise UsageError(f"preset {name}: unknown keys {sorted(unknown)} (allowed: {sorted(_TOP_KEYS)})")
    spacing = spec.get("spacing")
    if spacing is not None and spacing != "fingerprint":
        if not (isinstance(spacing, (list, tuple)) and len(spacing) == 3 and all(float(s) > 0 for s in spacing)):
            raise UsageError(f"preset {name}: spacing must be 3 positive numbers (x, y, z), None or 'fingerprint'")
    orientation = spec.get("orientation")
    if orientation is not None and not (isinstance(orientation, str) and len(orientation) == 3):
        raise UsageError(f"preset {name}: orientation must be 3 axcodes such as 'RAS', or None")
    intensity = spec.get("intensity")
    if not isinstance(intensity, Mapping) or intensity.get("type") not in _INTENSITY_KEYS:
        raise UsageError(f"preset {name}: intensity.type must be one of {sorted(_INTENSITY_KEYS)}")
    extra = set(intensity) - _INTENSITY_KEYS[intensity["type"]] - {"type"}
    if extra:
        raise UsageError(f"preset {name}: unknown intensity keys {sorted(extra)} for type {intensity['type']!r}")
    channels = spec.get("channels")
    if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool) or channels < 1):
        raise UsageError(f"preset {name}: channels must be a positive integer or None, got {channels!r}")
    crop = spec.get("crop_foreground", False)
    if crop not in (False, None, True) and not (isinstance(crop, Mapping) and set(crop) <= {"threshold", "margin"}):
        raise UsageError(f"preset {name}: crop_foreground must be false or {{'threshold': t, 'margin': m}}")
