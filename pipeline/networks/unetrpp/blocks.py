"""UNETR++ building blocks: the hybrid transformer block (EPA + conv) and the decoder up-block.

Module and parameter names follow the official release (``Amshaker/unetr_plus_plus``) so that official checkpoints
load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetResBlock, get_conv_layer

from pipeline.networks.unetrpp.epa import EPABlock

__all__ = ["ResConvBlock", "TransformerBlock", "UnetrPPUpBlock", "interpolate_pos_embed"]


def interpolate_pos_embed(pos_embed: torch.Tensor, src_grid: Sequence[int], dst_grid: Sequence[int]) -> torch.Tensor:
    """Resample a (1, N, C) token positional embedding from ``src_grid`` to ``dst_grid`` (trilinear).

    Examples:
        >>> interpolate_pos_embed(torch.zeros(1, 8, 4), (2, 2, 2), (4, 2, 6)).shape
        torch.Size([1, 48, 4])
    """
    if tuple(src_grid) == tuple(dst_grid):
        return pos_embed
    c = pos_embed.shape[-1]
    grid = pos_embed.transpose(1, 2).reshape(1, c, *src_grid)
    grid = F.interpolate(grid, size=tuple(dst_grid), mode="trilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


_CL = torch.channels_last_3d


def _conv_weight_bias(conv: nn.Conv3d, norm: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """The conv's weight/bias, with an eval-mode BatchNorm folded in. Returns (weight, bias, norm_folded)."""
    w, b = conv.weight, conv.bias
    if (
        isinstance(norm, nn.modules.batchnorm._BatchNorm)
        and not norm.training
        and norm.running_mean is not None
        and norm.running_var is not None  # both are None together (track_running_stats=False)
    ):
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        if b is not None:
            shift = shift + b * scale
        return w * scale.view(-1, *([1] * (w.ndim - 1))), shift, True
    return w, b, False


def _conv_norm(conv: nn.Conv3d, norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """conv then norm with channels-last conv kernels; an eval-mode BatchNorm is folded into the conv."""
    w, b, folded = _conv_weight_bias(conv, norm)
    w = w.contiguous(memory_format=_CL)
    if not isinstance(conv.padding, str) and _use_onednn(x, w):  # padding='same' has no oneDNN form
        # PyTorch's heuristic sends batch-1 3D convs on small grids (C*D*H <= 20480) to its slow im2col kernel;
        # oneDNN is 1.5-2x faster there and keeps the channels-last layout
        y = torch.mkldnn_convolution(
            x.contiguous(memory_format=_CL), w, b, conv.padding, conv.stride, conv.dilation, conv.groups
        )
    else:
        y = F.conv3d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    return y if folded or norm is None else norm(y)


def _use_onednn(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.ndim == 5
        and torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
        and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    )


class ResConvBlock(UnetResBlock):
    """MONAI's ``UnetResBlock`` (same parameters and state_dict names) with an optional fast forward.

    ``fast=True`` (BatchNorm blocks) computes the same maths with channels-last oneDNN convs, eval-mode BatchNorm
    folded into the convs and in-place activations; ``fast=False`` runs MONAI's forward (the official op sequence).

    Examples:
        >>> blk = ResConvBlock(3, 8, 8, kernel_size=3, stride=1, norm_name="batch").eval()
        >>> x = torch.randn(1, 8, 6, 6, 6)
        >>> ref = blk.set_fast(False)(x); fast = blk.set_fast(True)(x)
        >>> bool(torch.allclose(ref, fast, atol=1e-5))
        True
    """

    def __init__(self, *args: Any, fast: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast = fast
        self.negative_slope = float(getattr(self.lrelu, "negative_slope", 0.01))
        # instance-norm blocks (the full-resolution encoder1/decoder2) keep MONAI's contiguous path: PyTorch's
        # channels-last instance/group norm kernels accumulate 1M-voxel statistics with ~1e-3 error (breaks
        # parity), and converting layouts around the norm costs more than the channels-last conv saves
        self._fastable = (
            isinstance(self.lrelu, nn.LeakyReLU)
            and self.conv1.conv.groups == 1
            and isinstance(self.norm1, nn.modules.batchnorm._BatchNorm)
        )

    def set_fast(self, fast: bool) -> ResConvBlock:
        self.fast = fast
        return self

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        if not (self.fast and self._fastable) or inp.ndim != 5:
            return super().forward(inp)
        out = F.leaky_relu_(_conv_norm(self.conv1.conv, self.norm1, inp), self.negative_slope)
        out = _conv_norm(self.conv2.conv, self.norm2, out)
        residual = _conv_norm(self.conv3.conv, getattr(self, "norm3", None), inp) if hasattr(self, "conv3") else inp
        return F.leaky_relu_(out.add_(residual), self.negative_slope)  # in place, as MONAI's forward


class TransformerBlock(nn.Module):
    """The UNETR++ hybrid block: EPA on tokens (with layer scale), then residual 3x3x3 conv block(s) and a 1x1x1 conv.

    For x of shape (B, C, D, H, W), with tokens t = flatten(x) (C-order, n = (d*H + h)*W + w)::

        t = t + P                               # learned positional embedding (zero-init)
        a = t + gamma * EPA(LayerNorm(t))       # gamma: layer scale, init 1e-6
        s = a as (B, C, D, H, W)
        r = conv51(s) [-> conv52]               # UnetResBlock with BatchNorm (conv52: ACDC/Lung)
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
        fast: run the channels-last fast path (same maths; see :class:`ResConvBlock`, :class:`EPABlock`); ``False``
            runs the official op sequence.

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
        self.grid = tuple(grid) if grid is not None else None
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
        self.conv51 = ResConvBlock(spatial_dims, hidden_size, hidden_size, kernel_size=3, stride=1, norm_name="batch")
        if n_conv_blocks == 2:
            self.conv52 = ResConvBlock(
                spatial_dims, hidden_size, hidden_size, kernel_size=3, stride=1, norm_name="batch"
            )
        self.conv8 = nn.Sequential(nn.Dropout3d(conv_dropout, False), nn.Conv3d(hidden_size, hidden_size, 1))
        self.pos_embed = nn.Parameter(torch.zeros(1, input_size, hidden_size)) if pos_embed else None
        self.fast = fast
        self.set_fast(fast)

    def _positional(self, spatial: tuple[int, ...]) -> torch.Tensor | None:
        if self.pos_embed is None:
            return None
        if self.resolution_agnostic and self.grid is not None:
            return interpolate_pos_embed(self.pos_embed, self.grid, spatial)
        return self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return self._forward_fast(x)
        b, c, *spatial = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C), a view
        pos = self._positional(tuple(spatial))
        if pos is not None:
            t = t + pos
        attn = t + self.gamma * self.epa_block(self.norm(t), spatial_shape=spatial)
        skip = attn.transpose(1, 2).reshape(b, c, *spatial)
        r = self.conv51(skip)
        if hasattr(self, "conv52"):
            r = self.conv52(r)
        return skip + self.conv8(r)

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Same maths in channels-last layout: tokens are a free view, the 1x1x1 conv8 is a linear on tokens."""
        b, c, *spatial = x.shape
        x = x.contiguous(memory_format=torch.channels_last_3d)
        t = x.permute(0, 2, 3, 4, 1).reshape(b, -1, c)  # (B, N, C), a view of the channels-last tensor
        pos = self._positional(tuple(spatial))
        if pos is not None:
            t = t + pos
        attn = torch.addcmul(t, self.gamma, self.epa_block(self.norm(t), spatial_shape=spatial))
        skip = attn.view(b, *spatial, c).permute(0, 4, 1, 2, 3)  # channels-last view
        r = self.conv51(skip)
        if hasattr(self, "conv52"):
            r = self.conv52(r)
        r = self.conv8[0](r).contiguous(memory_format=torch.channels_last_3d)
        conv = cast(nn.Conv3d, self.conv8[1])
        out = torch.addmm(attn.reshape(-1, c), r.permute(0, 2, 3, 4, 1).reshape(-1, c), conv.weight.view(c, c).t())
        # skip + W r + b (conv8[1] has a bias), all on (B*N, C) rows of the channels-last tensors
        out = out.add_(cast(torch.Tensor, conv.bias))
        return out.view(b, *spatial, c).permute(0, 4, 1, 2, 3)

    def set_fast(self, fast: bool) -> TransformerBlock:
        self.fast = fast
        self.epa_block.fast = fast
        for m in (self.conv51, getattr(self, "conv52", None)):
            if m is not None:
                m.set_fast(fast)
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
                ResConvBlock(
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
