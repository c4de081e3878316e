"""Helpers for tests/deploy: a small configuration of every network preset (widths and window) that exports fast."""

from __future__ import annotations

from typing import Any

from pipeline.networks import get_preset

from helpers.swin3d import SMALL, SMALL_ROI

#: UNETR++ at small widths (one block per stage); the window is 8 x the preset's stem stride
_UNETRPP = {
    "feature_size": 8,
    "dims": (16, 32, 64, 128),
    "depths": (1, 1, 1, 1),
    "decoder_depth": 1,
    "proj_size": (16, 16, 16, 8),
    "decoder_proj_size": 16,
}
#: Swin-Unet 3D at small widths; stage 1 keeps its W-MSA/SW-MSA pair so the shifted-window mask is exported
_SWIN = {k: v for k, v in SMALL.items() if k != "roi_size"} | {"depths": (2, 1, 1, 1)}

SMALL_EXPORTS = (
    "swinunet3d",
    "swinunet3d_ag",
    "swinunet3d_lgt",
    "swinunet3d_pamcam",
    "swinunet3d_transfuse",
    "unetrpp_acdc",
    "unetrpp_btcv",
    "unetrpp_hippocampus",
    "unetrpp_lung",
    "unetrpp_sts",
    "unetrpp_synapse",
    "unetrpp_tumor",
)


def small_export(name: str) -> tuple[dict[str, Any], tuple[int, int, int]]:
    """``(overrides, roi (x, y, z))`` for preset ``name``: arguments in MONAI (x, y, z) order."""
    if name.startswith("swinunet3d"):
        return {**_SWIN, "roi_size": SMALL_ROI}, SMALL_ROI
    preset = get_preset(name)
    stem = tuple(preset.kwargs["stem_stride"])
    stem = stem if preset.axes == "xyz" else stem[::-1]
    roi = (8 * stem[0], 8 * stem[1], 8 * stem[2])
    return {**_UNETRPP, "img_size": roi}, roi
