"""The 3D Swin-Unet family: :class:`SwinUnet3D` and its attention/fusion modules.

Presets (``swinunet3d``, ``swinunet3d_lgt``, ``swinunet3d_ag``, ``swinunet3d_pamcam``, ``swinunet3d_transfuse``) are
registered by :mod:`pipeline.networks.swin3d.presets`; build them with
``pipeline.networks.create_network(name, roi_size=(x, y, z), **overrides)``.
"""

from pipeline.networks.swin3d.attention import LocalGlobalAttention3D, SwinAttention3D, WindowAttention3D
from pipeline.networks.swin3d.blocks import SwinBlock3D, SwinStage3D
from pipeline.networks.swin3d.cnn_branch import CNNBranch3D
from pipeline.networks.swin3d.fusion import (
    AttentionGate3D,
    BiFusion3D,
    CNNTokenAdd,
    ConcatLinearFusion,
    SpatialAttentionFusion3D,
)
from pipeline.networks.swin3d.guided import ChannelAttention3D, GuidedAttentionBottleneck, PositionAttention3D
from pipeline.networks.swin3d.sampling import FinalExpand3D, PatchEmbed3D, PatchExpand3D, PatchMerging3D
from pipeline.networks.swin3d.swin_unet import SwinUnet3D

__all__ = [
    "AttentionGate3D",
    "BiFusion3D",
    "CNNBranch3D",
    "ChannelAttention3D",
    "CNNTokenAdd",
    "ConcatLinearFusion",
    "FinalExpand3D",
    "GuidedAttentionBottleneck",
    "LocalGlobalAttention3D",
    "PatchEmbed3D",
    "PatchExpand3D",
    "PatchMerging3D",
    "PositionAttention3D",
    "SpatialAttentionFusion3D",
    "SwinAttention3D",
    "SwinBlock3D",
    "SwinStage3D",
    "SwinUnet3D",
    "WindowAttention3D",
]
