"""Shared helpers for the Swin-Unet 3D tests: a small configuration that exercises every stage type quickly."""

from __future__ import annotations

from typing import Any

#: (x, y, z) ROI with an anisotropic grid: stage grids (16,16,8) (8,8,4) (4,4,2) (2,2,1)
SMALL_ROI = (32, 32, 16)
SMALL: dict[str, Any] = {
    "roi_size": SMALL_ROI,
    "patch_size": 2,
    "embed_dim": 12,
    "num_heads": (1, 2, 4, 8),
    "in_channels": 1,
    "out_channels": 3,
}
PRESET_NAMES = ("swinunet3d", "swinunet3d_lgt", "swinunet3d_ag", "swinunet3d_pamcam", "swinunet3d_transfuse")
