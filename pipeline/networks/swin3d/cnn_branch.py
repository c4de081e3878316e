"""TransFuse-style parallel CNN branch producing channels-first features on the Swin stage grids.

Zhang et al., "TransFuse: Fusing Transformers and CNNs for Medical Image Segmentation", MICCAI 2021, use a ResNet;
our 3D branch **[reconstruction]** is a patch stem ``Conv3d(k = s = patch)`` + norm + activation followed by one
MONAI ``UnetResBlock`` per stage (stride 2 from the second stage on), with widths ``min(C * 2^i, cap * C)``. The norm
and activation are MONAI specs (default GroupNorm with up to 8 groups and LeakyReLU 0.01, see
:mod:`pipeline.networks.swin3d.layers`).

Examples:
    >>> import torch
    >>> cnn = CNNBranch3D(1, embed_dim=8, num_stages=3, patch_size=2)
    >>> [tuple(f.shape) for f in cnn(torch.randn(1, 1, 16, 16, 16))]
    [(1, 8, 8, 8, 8), (1, 16, 4, 4, 4), (1, 32, 2, 2, 2)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UnetResBlock
from monai.networks.layers import get_act_layer

from pipeline.networks.swin3d.layers import DEFAULT_CNN_ACT, DEFAULT_NORM, conv_norm, fit_norm
from pipeline.networks.swin3d.windows import as_triple


class CNNBranch3D(nn.Module):
    """Convolutional encoder with one feature map per Swin stage.

    Args:
        in_channels: image channels.
        embed_dim: Swin embedding width ``C``.
        num_stages: number of stages (features returned).
        patch_size: the Swin patch (stem kernel and stride).
        channels_cap: widths are capped at ``channels_cap * C``.
        norm_name: MONAI norm spec of the stem and blocks (a group norm is fitted to each width, see
            :func:`~pipeline.networks.swin3d.layers.fit_norm`).
        act_name: MONAI activation spec of the stem and blocks.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        num_stages: int,
        patch_size: int | Sequence[int],
        channels_cap: int = 4,
        norm_name: tuple | str = DEFAULT_NORM,
        act_name: tuple | str = DEFAULT_CNN_ACT,
    ) -> None:
        super().__init__()
        self.channels = [min(embed_dim * 2**i, channels_cap * embed_dim) for i in range(num_stages)]
        patch = as_triple(patch_size, "patch_size")
        c0 = self.channels[0]
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, c0, patch, stride=patch), conv_norm(norm_name, c0), get_act_layer(act_name)
        )
        blocks = []
        for i, ch in enumerate(self.channels):
            prev = self.channels[max(i - 1, 0)]
            blocks.append(
                UnetResBlock(
                    3,
                    prev,
                    ch,
                    kernel_size=3,
                    stride=1 if i == 0 else 2,
                    norm_name=fit_norm(norm_name, ch),
                    act_name=act_name,
                )
            )
        self.stages = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats
