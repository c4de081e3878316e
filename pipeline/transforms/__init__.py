"""MONAI preprocessing built from presets that are data: CT HU windows, nnU-Net CT normalisation, MRI z-score.

Public API: :data:`PREPROCESSING_PRESETS`, :func:`build_preprocessing`, :func:`build_train_transforms`,
:func:`build_inference_transforms`, :func:`resolve_preset`, :func:`get_preprocessing_preset`, :func:`load_fingerprint`,
:func:`summarise_preprocessing` / :func:`format_preprocessing_summary` (what a preset did to a few cases).
"""

from pipeline.transforms.builders import (
    AboveThreshold,
    build_inference_transforms,
    build_preprocessing,
    build_train_transforms,
    load_fingerprint,
    resolve_preset,
)
from pipeline.transforms.presets import PREPROCESSING_PRESETS, get_preprocessing_preset, validate_preset
from pipeline.transforms.summary import format_preprocessing_summary, summarise_preprocessing

__all__ = [
    "PREPROCESSING_PRESETS",
    "AboveThreshold",
    "build_inference_transforms",
    "build_preprocessing",
    "build_train_transforms",
    "format_preprocessing_summary",
    "get_preprocessing_preset",
    "load_fingerprint",
    "resolve_preset",
    "summarise_preprocessing",
    "validate_preset",
]
