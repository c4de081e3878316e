"""UNETR++ building blocks: the hybrid transformer block (EPA + conv) and the decoder up-block.

Module and parameter names follow the official release (``Amshaker/unetr_plus_plus``) so that official checkpoints
load with ``strict=True``. The residual conv blocks are MONAI's ``UnetResBlock``; every ``forward`` here is plain
PyTorch. The CPU kernels (folded BatchNorm, oneDNN convs) are an opt-in: :func:`pipeline.networks.optimize_for_cpu`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetResBlock, get_conv_layer

from pipeline.networks.unetrpp.epa import EPABlock

__all__ = ["TransformerBlock", "UnetrPPUpBlock", "interpolate_pos_embed"]


def interpolate_pos_embed(pos_embed: torch.Tensor, src_grid: list[int], dst_grid: list[int]) -> torch.Tensor:
    """Resample a (1, N, C) token positional embedding from ``src_grid`` to ``dst_grid`` (trilinear).

    The grids are lists (tuples work in eager mode) so that the function compiles with TorchScript.

    Examples:
        >>> interpolate_pos_embed(torch.zeros(1, 8, 4), [2, 2, 2], [4, 2, 6]).shape
        torch.Size([1, 48, 4])
    """
    if list(src_grid) == list(dst_grid):
        return pos_embed
    c = pos_embed.shape[-1]
    grid = pos_embed.transpose(1, 2).reshape([1, c] + list(src_grid))
    grid = F.interpolate(grid, size=list(dst_grid), mode="trilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


class TransformerBlock(nn.Module):
    """The UNETR++ hybrid block: EPA on tokens (with layer scale), then residual 3x3x3 conv block(s) and a 1x1x1 conv.

    For x of shape (B, C, D, H, W), with tokens t = flatten(x) (C-order, n = (d*H + h)*W + w)::

        t = t + P                               # learned positional embedding (zero-init)
        a = t + gamma * EPA(LayerNorm(t))       # gamma: layer scale, init 1e-6
        s = a as (B, C, D, H, W)
        r = conv51(s) [-> conv52]               # MONAI UnetResBlock with BatchNorm (conv52: ACDC/Lung)
        out = s + conv8(r)                      # Dropout3d(0.1) then Conv3d 1x1x1 with bias

    Args:
        input_size: number of tokens N of the reference grid (``prod(grid)``).
        hidden_size: channels C.
        proj_size: EPA projection size p.
        num_heads: EPA heads.
        dropout_rate: EPA attention-map dropout.
        pos_embed: add a learned positional embedding (official: always).
        grid: reference token grid (D, H, W). When given and ``ef_mode="pool"``, the positional embedding is
            trilinearly interpolated to other grids, so the block runs at any resolution.
        ef_mode, fusion, permute_quirk: see :class:`EPABlock`.
        n_conv_blocks: 1 (``conv51``) or 2 (``conv51`` + ``conv52``, ACDC/Lung).
        conv_dropout: Dropout3d rate in ``conv8``.
        spatial_dims: 3 (the official network is 3D only).
        fast: run the channels-last token path (same maths: tokens are a view, ``conv8`` is one matmul, and the
            EPA fast path of :class:`EPABlock`); ``False`` runs the official op sequence. Both are plain PyTorch.

    Examples:
        >>> blk = TransformerBlock(4 * 4 * 4, 32, 16, 4, grid=(4, 4, 4))
        >>> blk(torch.randn(1, 32, 4, 4, 4)).shape
        torch.Size([1, 32, 4, 4, 4])
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        proj_size: int,
        num_heads: int,
        dropout_rate: float = 0.0,
        pos_embed: bool = True,
        grid: Sequence[int] | None = None,
        ef_mode: str = "shared",
        fusion: str = "concat",
        permute_quirk: bool = True,
        n_conv_blocks: int = 1,
        conv_dropout: float = 0.1,
        spatial_dims: int = 3,
        fast: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout_rate <= 1.0:
            raise ValueError(f"dropout_rate should be between 0 and 1, got {dropout_rate}")
        if n_conv_blocks not in (1, 2):
            raise ValueError(f"n_conv_blocks must be 1 or 2, got {n_conv_blocks}")
        self.input_size = input_size
        self.grid = [int(g) for g in grid] if grid is not None else None
        self.resolution_agnostic = ef_mode == "pool"
        self.norm = nn.LayerNorm(hidden_size)
        self.gamma = nn.Parameter(1e-6 * torch.ones(hidden_size))
        self.epa_block = EPABlock(
            input_size=input_size,
            hidden_size=hidden_size,
            proj_size=proj_size,
            num_heads=num_heads,
            channel_attn_drop=dropout_rate,
            spatial_attn_drop=dropout_rate,
            ef_mode=ef_mode,
            fusion=fusion,
            permute_quirk=permute_quirk,
        )
        self.conv51 = UnetResBlock(spatial_dims, hidden_size, hidden_size, kernel_size=3, stride=1, norm_name="batch")
        if n_conv_blocks == 2:
            self.conv52 = UnetResBlock(
                spatial_dims, hidden_size, hidden_size, kernel_size=3, stride=1, norm_name="batch"
            )
        self.conv8 = nn.Sequential(nn.Dropout3d(conv_dropout, False), nn.Conv3d(hidden_size, hidden_size, 1))
        self.pos_embed = nn.Parameter(torch.zeros(1, input_size, hidden_size)) if pos_embed else None
        self.fast = fast
        self.set_fast(fast)

    def _positional(self, spatial: list[int]) -> torch.Tensor | None:
        if self.pos_embed is None:
            return None
        grid = self.grid
        if self.resolution_agnostic and grid is not None:
            return interpolate_pos_embed(self.pos_embed, grid, spatial)
        return self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return self._forward_fast(x)
        b, c, spatial = x.shape[0], x.shape[1], list(x.shape[2:])
        t = x.flatten(2).transpose(1, 2)  # (B, N, C), a view
        pos = self._positional(spatial)
        if pos is not None:
            t = t + pos
        attn = t + self.gamma * self.epa_block(self.norm(t), spatial_shape=spatial)
        skip = attn.transpose(1, 2).reshape([b, c] + spatial)
        r = self.conv51(skip)
        if hasattr(self, "conv52"):
            r = self.conv52(r)
        return skip + self.conv8(r)

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Same maths in channels-last layout: tokens are a free view, the 1x1x1 conv8 is a linear on tokens."""
        b, c, spatial = x.shape[0], x.shape[1], list(x.shape[2:])
        x = x.contiguous(memory_format=torch.channels_last_3d)
        t = x.permute(0, 2, 3, 4, 1).reshape(b, -1, c)  # (B, N, C), a view of the channels-last tensor
        pos = self._positional(spatial)
        if pos is not None:
            t = t + pos
        attn = torch.addcmul(t, self.gamma, self.epa_block(self.norm(t), spatial_shape=spatial))
        skip = attn.view([b] + spatial + [c]).permute(0, 4, 1, 2, 3)  # channels-last view
        r = self.conv51(skip)
        if hasattr(self, "conv52"):
            r = self.conv52(r)
        r = self.conv8[0](r).contiguous(memory_format=torch.channels_last_3d)
        conv = self.conv8[1]
        weight, bias = conv.weight, conv.bias
        assert isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)  # a Conv3d with a bias
        out = torch.addmm(attn.reshape(-1, c), r.permute(0, 2, 3, 4, 1).reshape(-1, c), weight.view(c, c).t())
        # skip + W r + b, all on (B*N, C) rows of the channels-last tensors
        out = out.add_(bias)
        return out.view([b] + spatial + [c]).permute(0, 4, 1, 2, 3)

    def set_fast(self, fast: bool) -> TransformerBlock:
        """Choose the channels-last token path (``True``) or the official op sequence; returns ``self``."""
        self.fast = fast
        self.epa_block.fast = fast
        return self


class UnetrPPUpBlock(nn.Module):
    """Decoder level: bias-free transposed conv (k = s), add the skip, then EPA blocks or one residual conv block.

    Args:
        spatial_dims: 3.
        in_channels: channels of the coarser input.
        out_channels: channels after upsampling (= skip channels).
        kernel_size: kernel of the residual conv block (``conv_decoder``).
        upsample_kernel_size: transposed-conv kernel = stride.
        norm_name: norm of the residual conv block (official: instance).
        proj_size, num_heads, out_size, depth, dropout_rate, grid, ef_mode, fusion, permute_quirk, n_conv_blocks:
            forwarded to :class:`TransformerBlock` (``out_size`` = tokens at this level).
        conv_decoder: use one ``UnetResBlock`` instead of transformer blocks (the last, full-resolution level).

    Examples:
        >>> up = UnetrPPUpBlock(3, 64, 32, 3, 2, "instance", out_size=4 * 4 * 4, grid=(4, 4, 4), proj_size=16)
        >>> up(torch.randn(1, 64, 2, 2, 2), torch.randn(1, 32, 4, 4, 4)).shape
        torch.Size([1, 32, 4, 4, 4])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int,
        upsample_kernel_size: Sequence[int] | int,
        norm_name: tuple | str,
        proj_size: int = 64,
        num_heads: int = 4,
        out_size: int = 0,
        depth: int = 3,
        conv_decoder: bool = False,
        dropout_rate: float = 0.15,
        grid: Sequence[int] | None = None,
        ef_mode: str = "shared",
        fusion: str = "concat",
        permute_quirk: bool = True,
        n_conv_blocks: int = 1,
    ) -> None:
        super().__init__()
        self.transp_conv = get_conv_layer(
            spatial_dims,
            in_channels,
            out_channels,
            kernel_size=upsample_kernel_size,
            stride=upsample_kernel_size,
            conv_only=True,
            is_transposed=True,
        )
        self.decoder_block = nn.ModuleList()
        if conv_decoder:
            self.decoder_block.append(
                UnetResBlock(
                    spatial_dims, out_channels, out_channels, kernel_size=kernel_size, stride=1, norm_name=norm_name
                )
            )
        else:
            self.decoder_block.append(
                nn.Sequential(
                    *[
                        TransformerBlock(
                            input_size=out_size,
                            hidden_size=out_channels,
                            proj_size=proj_size,
                            num_heads=num_heads,
                            dropout_rate=dropout_rate,
                            pos_embed=True,
                            grid=grid,
                            ef_mode=ef_mode,
                            fusion=fusion,
                            permute_quirk=permute_quirk,
                            n_conv_blocks=n_conv_blocks,
                            spatial_dims=spatial_dims,
                        )
                        for _ in range(depth)
                    ]
                )
            )

    def forward(self, inp: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out = self.transp_conv(inp) + skip
        return self.decoder_block[0](out)
