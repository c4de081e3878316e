"""Token-grid resampling for the 3D Swin-Unet: patch embedding, 8-neighbour merging, linear expanding, final expand.

All modules after :class:`PatchEmbed3D` work on channels-last token grids ``(B, S0, S1, S2, C)``.

* :class:`PatchMerging3D` concatenates **all 8** neighbours of each 2x2x2 group (MONAI's pre-#8285 ordering saw only 6)
  -> LN(8C) -> Linear(8C, 2C, no bias).
* :class:`PatchExpand3D` is Linear(C, 4C, no bias) -> 2x2x2 sub-voxels of C/2 -> LN(C/2). It equals
  ``ConvTranspose3d(C, C/2, 2, stride=2, bias=False)`` with
  ``W_ct[i, c, p0, p1, p2] = W_lin[(4 p0 + 2 p1 + p2) C/2 + c, i]``
  (see :meth:`PatchExpand3D.as_conv_transpose_weight`).
* :class:`FinalExpand3D` is Swin-Unet's final xP expand (``mode="expand"``: Linear(C, prod(P) C) -> LN(C) ->
  Linear(C, classes, no bias)) or the cheap variant (``mode="expand_to_logits"``: Linear(C, prod(P) classes)).

Examples:
    >>> import torch
    >>> x = torch.randn(1, 4, 4, 4, 8)
    >>> tuple(PatchMerging3D(8)(x).shape), tuple(PatchExpand3D(8)(x).shape)
    ((1, 2, 2, 2, 16), (1, 8, 8, 8, 4))
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn as nn

from pipeline.networks.shapes import shape_text
from pipeline.networks.swin3d.windows import Int3, as_triple


def pixel_shuffle_3d(x: torch.Tensor, factors: Int3) -> torch.Tensor:
    """``(B, S0, S1, S2, f0 f1 f2 C) -> (B, f0 S0, f1 S1, f2 S2, C)``.

    Input channel ``((p0 f1 + p1) f2 + p2) C + c`` becomes channel ``c`` of sub-voxel ``(p0, p1, p2)``.
    """
    b, s0, s1, s2, ch = x.shape
    f0, f1, f2 = factors
    c = ch // (f0 * f1 * f2)
    x = x.view(b, s0, s1, s2, f0, f1, f2, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, s0 * f0, s1 * f1, s2 * f2, c)


class PatchEmbed3D(nn.Module):
    """``Conv3d(in, C, kernel=stride=patch)`` -> channels-last -> LN(C). No absolute position embedding (Swin-Unet).

    Input ``(B, in_channels, X, Y, Z)``, output ``(B, X/p0, Y/p1, Z/p2, C)``.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int | Sequence[int] = 4) -> None:
        super().__init__()
        self.patch_size = as_triple(patch_size, "patch_size")
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class PatchMerging3D(nn.Module):
    """Concatenate the 8 neighbours of every 2x2x2 group (offset order ``(i, j, k)`` in ``itertools.product``) ->
    LN(8C) -> Linear(8C, 2C, no bias). Halves each spatial axis."""

    #: neighbour offsets in channel-block order
    OFFSETS = tuple(itertools.product((0, 1), repeat=3))
    __constants__ = ["OFFSETS"]  # a TorchScript constant (a class attribute is not seen otherwise)

    def __init__(self, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8 * dim)
        self.reduction = nn.Linear(8 * dim, out_dim or 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] % 2 != 0 or x.shape[2] % 2 != 0 or x.shape[3] % 2 != 0:
            raise ValueError(f"PatchMerging3D needs (B, S0, S1, S2, C) with even S, got {shape_text(list(x.shape))}")
        parts = []
        for i, j, k in self.OFFSETS:
            parts.append(x[:, i::2, j::2, k::2])
        x = torch.cat(parts, dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand3D(nn.Module):
    """Linear(C, 4C, no bias) -> 2x2x2 sub-voxels of C/2 -> LN(C/2). Doubles each spatial axis, halves channels."""

    def __init__(self, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.out_dim = out_dim or dim // 2
        self.expand = nn.Linear(dim, 8 * self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_3d(self.expand(x), (2, 2, 2)))

    def as_conv_transpose_weight(self) -> torch.Tensor:
        """The ``(C, C/2, 2, 2, 2)`` weight of the equivalent ``ConvTranspose3d(C, C/2, 2, stride=2, bias=False)``."""
        w = self.expand.weight  # (8 * out, C), row = (4 p0 + 2 p1 + p2) * out + c
        return w.view(2, 2, 2, self.out_dim, -1).permute(4, 3, 0, 1, 2).contiguous()


FINAL_MODES = ("expand", "expand_to_logits")


class FinalExpand3D(nn.Module):
    """Back from the patch grid to voxels, producing channels-first logits ``(B, classes, X, Y, Z)``.

    Args:
        dim: token channels ``C`` at the first stage.
        out_channels: classes.
        patch_size: the patch embedding's patch (the expansion factor per axis).
        mode: ``"expand"`` (Swin-Unet: Linear(C, prod(P) C, no bias) -> LN(C) -> Linear(C, classes, no bias)) or
            ``"expand_to_logits"`` (Linear(C, prod(P) classes): no full-resolution C-channel tensor).
    """

    def __init__(self, dim: int, out_channels: int, patch_size: int | Sequence[int], mode: str = "expand") -> None:
        super().__init__()
        if mode not in FINAL_MODES:
            raise ValueError(f"final_upsample must be one of {FINAL_MODES}, got {mode!r}")
        self.patch_size = as_triple(patch_size, "patch_size")
        self.mode = mode
        vol = self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        if mode == "expand":
            self.expand = nn.Linear(dim, vol * dim, bias=False)
            self.norm: nn.Module = nn.LayerNorm(dim)
            self.head: nn.Module = nn.Linear(dim, out_channels, bias=False)
        else:
            self.expand = nn.Linear(dim, vol * out_channels)
            self.norm = nn.Identity()
            self.head = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # LN and the head act per sub-voxel, so they run before the shuffle (same maths, the full-resolution
        # C-channel tensor is never permuted); one copy moves the logits to channels-first at full resolution
        b, s0, s1, s2, _ = x.shape
        f0, f1, f2 = self.patch_size
        x = self.expand(x)
        x = self.head(self.norm(x.view(b, s0, s1, s2, f0 * f1 * f2, -1)))
        x = x.view(b, s0, s1, s2, f0, f1, f2, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, -1, s0 * f0, s1 * f1, s2 * f2)
