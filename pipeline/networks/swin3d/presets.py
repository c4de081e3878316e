"""Named presets of the 3D Swin-Unet family, registered in :mod:`pipeline.networks.registry`.

Every preset takes MONAI (x, y, z) tensors and ``roi_size=`` (x, y, z); the patch size is derived from the ROI
(4^3 for :data:`BTCV_ROI` 96^3, (4, 4, 2) for the Synapse-style :data:`SYNAPSE_ROI` 128x128x64, i.e. nnFormer's
64x128x128 z-y-x crop) and the windows default to the design tables (``swin_unet3d.md`` section 5).

=========================  ==========================================================================================
preset                     options
=========================  ==========================================================================================
``swinunet3d``             faithful Swin-Unet: stage-input skips, concat + Linear, linear expanding, final expand
``swinunet3d_lgt``         Med-Former: LGT blocks (shared qkv, summed paths) + encoder SAF + SAF skips
``swinunet3d_ag``          Attention U-Net gates on the skips
``swinunet3d_pamcam``      PAM + CAM bottleneck with the guided auxiliary losses (``net.auxiliary_loss()``)
``swinunet3d_transfuse``   CNN branch + BiFusion (reduced widths: CNN <= 4C, ch_int = C_i / 2, depthwise 3^3)
=========================  ==========================================================================================

Each is also a plain function (``pipeline.networks.swin3d.presets.swinunet3d_lgt(roi_size=..., **overrides)``) so a
bundle can use it as a dotted ``_target_``; ``"_target_": "pipeline.networks.swin3d.SwinUnet3D"`` with
:func:`preset_kwargs` works as well.

Examples:
    >>> from pipeline.networks import create_network
    >>> net = create_network("swinunet3d", roi_size=(128, 128, 64), out_channels=9)
    >>> net.patch_size, net.grids[-1]
    ((4, 4, 2), (4, 4, 4))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from pipeline.networks.registry import register_preset
from pipeline.networks.swin3d.swin_unet import SwinUnet3D

BTCV_ROI = (96, 96, 96)
SYNAPSE_ROI = (128, 128, 64)

_BASE: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": 14,
    "roi_size": BTCV_ROI,
    "embed_dim": 48,
    "depths": (2, 2, 2, 2),
    "num_heads": (3, 6, 12, 24),
    "drop_path_rate": 0.2,
}

PRESETS: dict[str, tuple[dict[str, Any], str]] = {
    "swinunet3d": ({}, "3D Swin-Unet (Cao et al. 2022), literal: stage-input skips, concat+Linear, linear expanding"),
    "swinunet3d_lgt": (
        {"block": "lgt", "encoder_saf": True, "skip_fusion": "saf"},
        "3D Swin-Unet with Med-Former LGT blocks and SAF fusion (reconstruction; Chowdary & Yin 2024 give no code)",
    ),
    "swinunet3d_ag": ({"skip_fusion": "attention_gate"}, "3D Swin-Unet with Attention U-Net gates on the skips"),
    "swinunet3d_pamcam": (
        {"bottleneck_attn": "pam_cam", "guided_aux": True},
        "3D Swin-Unet with a PAM+CAM bottleneck and guided auxiliary losses (Sinha & Dolz 2020)",
    ),
    "swinunet3d_transfuse": (
        {"cnn_branch": True, "skip_fusion": "bifusion", "cnn_channels_cap": 4, "bifusion_depthwise": True},
        "3D Swin-Unet with a TransFuse CNN branch and BiFusion at reduced widths (reconstruction)",
    ),
}


def preset_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of preset ``name`` (JSON-serialisable), with ``overrides`` applied."""
    if name not in PRESETS:
        raise KeyError(f"unknown Swin-Unet 3D preset {name!r}; known: {', '.join(PRESETS)}")
    return {**_BASE, **PRESETS[name][0], **overrides}


def _make(name: str) -> Callable[..., nn.Module]:
    def factory(roi_size: Sequence[int] = BTCV_ROI, **overrides: Any) -> nn.Module:
        return SwinUnet3D(**preset_kwargs(name, roi_size=tuple(roi_size), **overrides))

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"Build the ``{name}`` preset: {PRESETS[name][1]}. ``roi_size`` is (x, y, z)."
    return factory


swinunet3d = _make("swinunet3d")
swinunet3d_lgt = _make("swinunet3d_lgt")
swinunet3d_ag = _make("swinunet3d_ag")
swinunet3d_pamcam = _make("swinunet3d_pamcam")
swinunet3d_transfuse = _make("swinunet3d_transfuse")

for _name, (_options, _description) in PRESETS.items():
    register_preset(_name, SwinUnet3D, {**_BASE, **_options}, description=_description, roi_size=BTCV_ROI, axes="xyz")
