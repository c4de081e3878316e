"""Skip fusions and fusion modules of the 3D Swin-Unet family, on channels-last token grids unless stated.

Two interfaces, one per role, so :class:`~pipeline.networks.swin3d.SwinUnet3D` calls every module the same way:

* **skip fusion** ``fusion(x, skip, coarse=None) -> tokens``: ``x`` the decoder feature expanded to the skip's grid,
  ``skip`` the encoder skip, ``coarse`` the decoder feature before expanding (used by the ``oktay`` gate, ignored
  by the others). :class:`ConcatLinearFusion`, :class:`AttentionGate3D`, :class:`SpatialAttentionFusion3D`.
* **CNN fusion** ``fusion(g, t) -> tokens``: ``g`` a channels-first CNN feature ``(B, C_g, S0, S1, S2)``, ``t``
  channels-last tokens ``(B, S0, S1, S2, C)`` on the same grid. :class:`CNNTokenAdd`, :class:`BiFusion3D` with
  ``token_layout=True``.

Modules:

* :class:`ConcatLinearFusion` -- Swin-Unet: ``Linear(2C, C)(cat[x, skip])``.
* :class:`AttentionGate3D` -- Attention U-Net gate (Oktay et al., MIDL 2018) in token form. ``same_res`` mode: the
  gating signal is the decoder feature already expanded to the skip's grid (as in MONAI's ``AttentionBlock``);
  ``oktay`` mode: the coarse decoder feature gates, alpha is upsampled. 1x1x1 conv -> Linear and BN -> LN,
  F_int = C/2. The 1-channel psi has no norm (a LayerNorm over one channel is
  identically 0) and the sigmoid is applied once (the seed note's double sigmoid is a bug).
* :class:`SpatialAttentionFusion3D` -- Med-Former's SAF **[reconstruction]** (Chowdary & Yin, MICCAI 2024; no code):
  CBAM-style spatial maps from both inputs' channel mean/max (4 channels) -> Conv3d(4 -> 2, k) -> sigmoid, then
  ``cur + Linear(2C, C)(cat[cur * a_cur, prev * a_prev])`` (``fusion="concat_linear"``, default) or the notes'
  ``cur * a_cur + prev * a_prev`` (``fusion="sum"``).
* :class:`CNNTokenAdd` -- ``t + Linear(C_g, C)(g)``: CNN features projected and added to the tokens.
* :class:`BiFusion3D` -- TransFuse's BiFusion (Zhang et al., MICCAI 2021) in 3D **[reconstruction]**, channels-first:
  SE channel attention on the transformer feature, CBAM spatial attention on the CNN feature, a Hadamard bilinear
  term, and a pre-activation residual fuse. BN -> a MONAI norm spec, GroupNorm by default (3D batches are 1-2; see
  :mod:`pipeline.networks.swin3d.layers`); the spatial-attention conv has no
  norm (a norm over one channel of a 1-voxel grid is degenerate); ``depthwise=True`` makes the 3^3 convs depthwise
  (the literal widths reach 22-87 M parameters).

Examples:
    >>> import torch
    >>> x, skip = torch.randn(1, 4, 4, 4, 16), torch.randn(1, 4, 4, 4, 16)
    >>> tuple(AttentionGate3D(16)(x, skip).shape), tuple(SpatialAttentionFusion3D(16)(x, skip).shape)
    ((1, 4, 4, 4, 16), (1, 4, 4, 4, 16))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import get_act_layer

from pipeline.networks.shapes import shape_text
from pipeline.networks.swin3d.layers import DEFAULT_FUSION_ACT, DEFAULT_NORM, conv_norm
from pipeline.networks.swin3d.windows import as_triple


class ConcatLinearFusion(nn.Module):
    """Swin-Unet skip: ``Linear(2C, C)(cat[x, skip])`` (with bias); ``coarse`` is not used."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, coarse: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(torch.cat([x, skip], dim=-1))


GATE_MODES = ("same_res", "oktay")


class AttentionGate3D(nn.Module):
    """Gate the skip with attention coefficients ``alpha``, then ``Linear(2C, C)(cat[x, skip * alpha])``.

    * ``mode="same_res"`` (MONAI ``AttentionBlock`` form): ``alpha = sigmoid(psi(ReLU(LN(W_g x) + LN(W_x skip))))``
      with the gating signal ``x`` = the decoder feature already expanded to the skip's grid.
    * ``mode="oktay"`` (Oktay et al. original): the gating signal stays coarse (``coarse``, the decoder feature before
      expanding, ``coarse_dim`` channels); ``theta_x`` is a strided 2x2x2 conv of the skip, ``alpha`` is computed on the
      coarse grid and trilinearly upsampled x2.

    Args:
        dim: channels of the decoder feature ``x`` and of the skip.
        inter_dim: F_int (default ``dim // 2``).
        mode: ``"same_res"`` or ``"oktay"``.
        coarse_dim: channels of the coarse gating signal (``mode="oktay"``; default ``2 * dim``).
    """

    def __init__(
        self, dim: int, inter_dim: int | None = None, mode: str = "same_res", coarse_dim: int | None = None
    ) -> None:
        super().__init__()
        if mode not in GATE_MODES:
            raise ValueError(f"gate_mode must be one of {GATE_MODES}, got {mode!r}")
        self.mode = mode
        f_int = inter_dim or max(dim // 2, 1)
        g_dim = dim if mode == "same_res" else (coarse_dim or 2 * dim)
        self.w_g = nn.Sequential(nn.Linear(g_dim, f_int), nn.LayerNorm(f_int))
        self.w_x = nn.Sequential(
            nn.Linear(dim, f_int) if mode == "same_res" else _StridedTokenConv(dim, f_int), nn.LayerNorm(f_int)
        )
        self.psi = nn.Linear(f_int, 1)
        self.merge = ConcatLinearFusion(dim)

    def gate(self, x: torch.Tensor, skip: torch.Tensor, coarse: torch.Tensor | None = None) -> torch.Tensor:
        """The attention coefficients ``alpha`` in [0, 1], shape ``(B, S0, S1, S2, 1)`` on the skip's grid."""
        if self.mode == "same_res":
            return torch.sigmoid(self.psi(torch.relu(self.w_g(x) + self.w_x(skip))))
        if coarse is None:
            raise ValueError("AttentionGate3D(mode='oktay') needs the coarse gating signal: gate(x, skip, coarse=...)")
        alpha = torch.sigmoid(self.psi(torch.relu(self.w_g(coarse) + self.w_x(skip))))  # coarse grid
        alpha = F.interpolate(alpha.permute(0, 4, 1, 2, 3), size=skip.shape[1:4], mode="trilinear", align_corners=False)
        return alpha.permute(0, 2, 3, 4, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, coarse: torch.Tensor | None = None) -> torch.Tensor:
        """Gate ``skip`` (the ``oktay`` mode with the ``coarse`` decoder feature) and merge it with ``x``."""
        return self.merge(x, skip * self.gate(x, skip, coarse))


class _StridedTokenConv(nn.Module):
    """Conv3d(k = s = 2) on channels-last tokens: Oktay's theta_x."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_dim, out_dim, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)


SAF_FUSIONS = ("concat_linear", "sum")


class SpatialAttentionFusion3D(nn.Module):
    """Med-Former SAF in 3D: fuse ``cur`` (current feature) with ``prev`` (earlier feature on the same grid).

    As a skip fusion ``cur`` is the decoder feature and ``prev`` the skip; ``coarse`` is not used.

    Args:
        dim: channels of both inputs.
        kernel_size: spatial-attention conv kernel (int or 3 ints; e.g. ``(7, 7, 3)`` for thick slices).
        fusion: ``"concat_linear"`` (default) or ``"sum"``.
    """

    def __init__(self, dim: int, kernel_size: int | Sequence[int] = 7, fusion: str = "concat_linear") -> None:
        super().__init__()
        if fusion not in SAF_FUSIONS:
            raise ValueError(f"saf_fusion must be one of {SAF_FUSIONS}, got {fusion!r}")
        k = as_triple(kernel_size, "saf_kernel_size")
        self.conv = nn.Conv3d(4, 2, kernel_size=k, padding=(k[0] // 2, k[1] // 2, k[2] // 2))
        self.fusion = fusion
        self.proj = nn.Linear(2 * dim, dim) if fusion == "concat_linear" else None

    def maps(self, cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Spatial attention maps ``(B, S0, S1, S2, 2)`` for (cur, prev)."""
        stats = [cur.mean(-1), cur.amax(-1), prev.mean(-1), prev.amax(-1)]
        return torch.sigmoid(self.conv(torch.stack(stats, dim=1))).permute(0, 2, 3, 4, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, coarse: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse ``x`` (``cur``, the current feature) with ``skip`` (``prev``, the earlier one); ``coarse`` is not
        used. The names are the skip-fusion interface's (:class:`~pipeline.networks.swin3d.interfaces.SkipFusion`)."""
        cur, prev = x, skip
        if cur.shape != prev.shape:
            raise ValueError(
                f"SAF inputs must have the same shape, got {shape_text(list(cur.shape))} and "
                f"{shape_text(list(prev.shape))}"
            )
        a = self.maps(cur, prev)
        cur_a, prev_a = cur * a[..., :1], prev * a[..., 1:]
        if self.proj is not None:
            return cur + self.proj(torch.cat([cur_a, prev_a], dim=-1))
        return cur_a + prev_a


class CNNTokenAdd(nn.Linear):
    """CNN fusion without BiFusion: ``t + Linear(C_g, C)(g)``, the CNN feature projected onto the tokens.

    A ``Linear`` (its state dict is ``weight``/``bias``) whose forward takes the CNN-fusion pair.

    Examples:
        >>> add = CNNTokenAdd(6, 4)
        >>> tuple(add(torch.randn(1, 6, 2, 2, 2), torch.randn(1, 2, 2, 2, 4)).shape)
        (1, 2, 2, 2, 4)
    """

    def forward(self, g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``g`` channels-first ``(B, C_g, S0, S1, S2)``, ``t`` tokens ``(B, S0, S1, S2, C)``; returns tokens."""
        return t + F.linear(g.permute(0, 2, 3, 4, 1), self.weight, self.bias)


class _PreActResidual3D(nn.Module):
    """TransFuse ``Residual``: norm-act-Conv1(-> out/2), norm-act-Conv3, norm-act-Conv1(-> out), + 1x1 skip."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        depthwise: bool,
        norm_name: tuple | str = DEFAULT_NORM,
        act_name: tuple | str = DEFAULT_FUSION_ACT,
    ) -> None:
        super().__init__()
        mid = max(out_ch // 2, 1)
        groups = mid if depthwise else 1
        self.body = nn.Sequential(
            conv_norm(norm_name, in_ch), get_act_layer(act_name), nn.Conv3d(in_ch, mid, 1, bias=False),
            conv_norm(norm_name, mid), get_act_layer(act_name),
            nn.Conv3d(mid, mid, 3, padding=1, groups=groups, bias=False),
            conv_norm(norm_name, mid), get_act_layer(act_name), nn.Conv3d(mid, out_ch, 1, bias=False),
        )  # fmt: skip
        self.skip = nn.Conv3d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class BiFusion3D(nn.Module):
    """TransFuse BiFusion in 3D (channels-first): fuse a CNN feature ``g`` with a transformer feature ``t``.

    Args:
        cnn_channels: channels of ``g``.
        trans_channels: channels of ``t``.
        inter_channels: width of the bilinear (Hadamard) term.
        out_channels: output channels.
        se_ratio: SE reduction on ``t``.
        depthwise: depthwise 3^3 convs (bilinear term and residual).
        dropout: Dropout3d on the output.
        norm_name: MONAI norm spec of the convs (a group norm is fitted to each width).
        act_name: MONAI activation spec (bilinear term and residual fuse).
        token_layout: take ``t`` as channels-last tokens ``(B, S0, S1, S2, C)`` and return tokens (the CNN-fusion
            interface of :class:`~pipeline.networks.swin3d.SwinUnet3D`); ``False``: ``t`` and the output are
            channels-first.
        residual: add ``t`` to the output (the bottleneck fusion; needs ``out_channels == trans_channels``).
    """

    def __init__(
        self,
        cnn_channels: int,
        trans_channels: int,
        inter_channels: int,
        out_channels: int,
        se_ratio: int = 4,
        depthwise: bool = True,
        dropout: float = 0.0,
        norm_name: tuple | str = DEFAULT_NORM,
        act_name: tuple | str = DEFAULT_FUSION_ACT,
        token_layout: bool = False,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if residual and out_channels != trans_channels:
            raise ValueError(
                f"residual=True needs out_channels == trans_channels, got {out_channels} and {trans_channels}"
            )
        self.token_layout, self.residual = token_layout, residual
        ci = inter_channels
        self.w_g = nn.Sequential(nn.Conv3d(cnn_channels, ci, 1, bias=False), conv_norm(norm_name, ci))
        self.w_x = nn.Sequential(nn.Conv3d(trans_channels, ci, 1, bias=False), conv_norm(norm_name, ci))
        conv = nn.Conv3d(ci, ci, 3, padding=1, groups=ci if depthwise else 1, bias=False)
        self.bilinear = nn.Sequential(conv, conv_norm(norm_name, ci), get_act_layer(act_name))
        self.spatial = nn.Conv3d(2, 1, 7, padding=3)
        hidden = max(trans_channels // se_ratio, 1)
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Conv3d(trans_channels, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv3d(hidden, trans_channels, 1), nn.Sigmoid(),
        )  # fmt: skip
        self.fuse = _PreActResidual3D(cnn_channels + trans_channels + ci, out_channels, depthwise, norm_name, act_name)
        self.drop = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tokens = t
        if self.token_layout:
            t = t.permute(0, 4, 1, 2, 3)
        if g.shape[2:] != t.shape[2:]:
            raise ValueError(
                f"BiFusion3D inputs must share the grid, got {shape_text(list(g.shape))} and "
                f"{shape_text(list(t.shape))}"
            )
        bp = self.bilinear(self.w_g(g) * self.w_x(t))
        g_hat = g * torch.sigmoid(self.spatial(torch.cat([g.amax(1, keepdim=True), g.mean(1, keepdim=True)], dim=1)))
        t_hat = t * self.se(t)
        out = self.drop(self.fuse(torch.cat([g_hat, t_hat, bp], dim=1)))
        if self.token_layout:
            out = out.permute(0, 2, 3, 4, 1)
        return tokens + out if self.residual else out
