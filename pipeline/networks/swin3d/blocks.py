"""Pre-norm transformer blocks on 3D token grids: the Swin block (W-MSA/SW-MSA) and the Med-Former LGT block.

Each block is ``x + DropPath(Attn(LN x))`` then ``x + DropPath(MLP(LN x))`` (MLP ratio 4, GELU), as in Swin-Unet
(Cao et al., "Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation", ECCV-W 2022).
A :class:`SwinStage3D` alternates plain (even blocks) and shifted (odd blocks) windows.

Examples:
    >>> import torch
    >>> stage = SwinStage3D(dim=24, depth=2, num_heads=3, grid=(8, 8, 8), window_size=4)
    >>> tuple(stage(torch.randn(1, 8, 8, 8, 24)).shape)
    (1, 8, 8, 8, 24)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from monai.networks.blocks import MLPBlock

from pipeline.networks.swin3d.attention import LocalGlobalAttention3D, SwinAttention3D
from pipeline.networks.swin3d.layers import DropPath
from pipeline.networks.swin3d.windows import as_triple

BLOCK_TYPES = ("swin", "lgt")


class SwinBlock3D(nn.Module):
    """One pre-norm Swin (or LGT) block.

    Args:
        dim: token channels.
        num_heads: attention heads.
        grid: token grid ``(S0, S1, S2)``.
        window_size: Swin window (``block="swin"``).
        shifted: SW-MSA (shift ``window // 2``) instead of W-MSA.
        block: ``"swin"`` or ``"lgt"`` (Med-Former Local-Global attention, see
            :class:`~pipeline.networks.swin3d.attention.LocalGlobalAttention3D`).
        lgt_windows: ``(global, local)`` windows for ``block="lgt"``.
        lgt_share_qkv: one qkv for both LGT paths.
        lgt_mode: ``"sum"`` or ``"head_split"``.
        mlp_ratio: MLP hidden width / dim.
        qkv_bias: bias in qkv.
        drop_path: stochastic depth rate of this block.
        attn_impl: ``"sdpa"`` or ``"naive"``.
        act: MONAI activation spec of the MLP (as ``MLPBlock``'s ``act``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: Sequence[int],
        window_size: int | Sequence[int] = 4,
        shifted: bool = False,
        block: str = "swin",
        lgt_windows: Sequence[int | Sequence[int]] | None = None,
        lgt_share_qkv: bool = True,
        lgt_mode: str = "sum",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        attn_impl: str = "sdpa",
        act: tuple | str = "GELU",
    ) -> None:
        super().__init__()
        if block not in BLOCK_TYPES:
            raise ValueError(f"block must be one of {BLOCK_TYPES}, got {block!r}")
        self.norm1 = nn.LayerNorm(dim)
        if block == "swin":
            window = as_triple(window_size, "window_size")
            shift = tuple(w // 2 for w in window) if shifted else (0, 0, 0)
            self.attn: nn.Module = SwinAttention3D(dim, num_heads, grid, window, shift, qkv_bias, attn_impl)
        else:
            if lgt_windows is None:
                raise ValueError("block='lgt' needs lgt_windows=(global_window, local_window)")
            self.attn = LocalGlobalAttention3D(
                dim, num_heads, grid, lgt_windows, shifted, lgt_share_qkv, lgt_mode, qkv_bias, attn_impl
            )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), 0.0, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage3D(nn.Module):
    """``depth`` blocks on one grid, alternating W-MSA and SW-MSA (or the LGT plain/shifted pair).

    Args:
        dim, num_heads, grid, window_size, block, lgt_windows, lgt_share_qkv, lgt_mode, mlp_ratio, qkv_bias,
            attn_impl, act: as in :class:`SwinBlock3D`.
        depth: number of blocks.
        drop_path: one rate for all blocks, or one per block.
        use_checkpoint: gradient checkpointing per block (saves memory in training).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        grid: Sequence[int],
        window_size: int | Sequence[int] = 4,
        block: str = "swin",
        lgt_windows: Sequence[int | Sequence[int]] | None = None,
        lgt_share_qkv: bool = True,
        lgt_mode: str = "sum",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float | Sequence[float] = 0.0,
        attn_impl: str = "sdpa",
        use_checkpoint: bool = False,
        act: tuple | str = "GELU",
    ) -> None:
        super().__init__()
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else [float(r) for r in drop_path]
        if len(rates) != depth:
            raise ValueError(f"drop_path has {len(rates)} rates for {depth} blocks")
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock3D(
                dim,
                num_heads,
                grid,
                window_size,
                bool(i % 2),
                block,
                lgt_windows,
                lgt_share_qkv,
                lgt_mode,
                mlp_ratio,
                qkv_bias,
                rates[i],
                attn_impl,
                act,
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if not torch.jit.is_scripting():  # TorchScript leaves this branch out: a scripted model never checkpoints
                if self.use_checkpoint and x.requires_grad:
                    x = cp.checkpoint(blk, x, use_reentrant=False)
                    continue
            x = blk(x)
        return x
