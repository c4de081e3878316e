"""SwinUnet3D: the literal Swin-Unet in 3D, with the seed attention modules as switchable options.

Cao et al., "Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation", ECCV Workshops 2022, in 3D:
patch embedding -> encoder Swin stages with 8-neighbour patch merging -> bottleneck stage + LN -> symmetric decoder
with linear 3D patch expanding and skip fusion -> LN -> final expand to full resolution -> classes.

Input and output are MONAI channels-first tensors ``(B, C, X, Y, Z)``; ``roi_size``, ``patch_size`` and the windows
are in the same (x, y, z) order. The network is built for one ROI (the sliding-window ROI must equal it): the windows,
shift masks and tiling are fixed and validated at construction.

Options (all constructor arguments, usable from bundle JSON):

* ``block``: ``"swin"`` (W-MSA/SW-MSA) | ``"lgt"`` (Med-Former Local-Global attention, see
  :class:`~pipeline.networks.swin3d.attention.LocalGlobalAttention3D`; ``lgt_windows``, ``lgt_share_qkv``,
  ``lgt_mode``).
* ``skip_fusion``: ``"concat_linear"`` (Swin-Unet) | ``"attention_gate"`` (Attention U-Net) | ``"saf"`` (Med-Former
  SAF, decoder feature = cur, skip = prev) | ``"bifusion"`` (TransFuse: every skip becomes
  ``BiFusion3D(cnn_i, skip_i)``, the deepest BiFusion output is added to the bottleneck, the decoder fuses with an
  attention gate; requires ``cnn_branch=True``).
* ``gate_mode``: ``"same_res"`` | ``"oktay"`` for the attention gates.
* ``skip_source``: ``"stage_input"`` (Swin-Unet literal: patch embedding / merged tensors) | ``"stage_output"``.
* ``encoder_saf``: after each encoder stage but the bottleneck, ``x = SAF(cur=stage output, prev=stage input)``.
* ``cnn_branch``: a parallel CNN encoder (:class:`~pipeline.networks.swin3d.cnn_branch.CNNBranch3D`). Without
  ``bifusion`` its features are projected (Linear) and added to the skips and to the bottleneck.
* ``bottleneck_attn``: ``"none"`` | ``"pam_cam"`` (position + channel attention, Sinha & Dolz; only where the bottleneck
  has <= 4096 tokens); ``guided_aux=True`` adds the guided auto-encoder whose losses are returned by
  :meth:`SwinUnet3D.auxiliary_loss` after a training-mode forward.
* ``final_upsample``: ``"expand"`` | ``"expand_to_logits"``.
* ``window_size``: ``None`` (auto: window 4 clamped to the grid, adjusted to tile it, on all but the last two stages;
  those are global), an int for all stages, or one entry (int or 3 ints) per stage.
* ``attn_impl``: ``"sdpa"`` | ``"naive"`` (the readable oracle).
* ``norm_name`` / ``act_name``: MONAI norm/activation specs (``get_norm_layer`` / ``get_act_layer``) of the
  convolutional parts (CNN branch, BiFusion norms); ``mlp_act``: the transformer MLPs' activation. The token norms
  are LayerNorms, as in MONAI's ``SwinUNETR``.

Every skip fusion is called as ``fusion(x, skip, coarse)`` and every CNN fusion as ``fusion(cnn_feature, tokens)``
(see :mod:`pipeline.networks.swin3d.fusion`).

Training with the guided auxiliary losses::

    net.train()
    logits = net(image)
    loss = seg_loss(logits, label) + net.auxiliary_loss()   # 0 when the network has no auxiliary losses

Examples:
    >>> import torch
    >>> net = SwinUnet3D(1, 3, roi_size=(32, 32, 32), patch_size=2, embed_dim=12, num_heads=(1, 2, 2, 4))
    >>> tuple(net(torch.randn(1, 1, 32, 32, 32)).shape)
    (1, 3, 32, 32, 32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn as nn

from pipeline.networks.shapes import shape_text
from pipeline.networks.swin3d.blocks import BLOCK_TYPES, SwinStage3D
from pipeline.networks.swin3d.cnn_branch import CNNBranch3D
from pipeline.networks.swin3d.fusion import (
    GATE_MODES,
    AttentionGate3D,
    BiFusion3D,
    CNNTokenAdd,
    ConcatLinearFusion,
    SpatialAttentionFusion3D,
)
from pipeline.networks.swin3d.guided import GuidedAttentionBottleneck
from pipeline.networks.swin3d.interfaces import SkipFusion, TokenModule
from pipeline.networks.swin3d.layers import DEFAULT_CNN_ACT, DEFAULT_NORM
from pipeline.networks.swin3d.sampling import FINAL_MODES, FinalExpand3D, PatchEmbed3D, PatchExpand3D, PatchMerging3D
from pipeline.networks.swin3d.windows import Int3, as_triple, clamp_window

SKIP_FUSIONS = ("concat_linear", "attention_gate", "saf", "bifusion")
SKIP_SOURCES = ("stage_input", "stage_output")
BOTTLENECK_ATTNS = ("none", "pam_cam")
#: PAM is O(N^2) in the tokens: refused above this many
MAX_PAM_TOKENS = 4096


def _choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def _largest_divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def _per_stage(value: Any, num_stages: int, name: str) -> list[Any]:
    """An int (same for every stage) or a sequence with one entry per stage."""
    if value is None or isinstance(value, int):
        return [value] * num_stages
    value = list(value)
    if len(value) != num_stages:
        raise ValueError(f"{name} needs one entry per stage ({num_stages}), got {len(value)}: {value!r}")
    return value


def _tiles(grid: Int3, window: Int3) -> bool:
    return all(g % w == 0 for g, w in zip(grid, window))


class SwinUnet3D(nn.Module):
    """3D Swin-Unet (pure transformer U-shape) with switchable seed modules.

    Args:
        in_channels: image channels.
        out_channels: classes.
        roi_size: input patch (x, y, z); divisible by ``patch_size * 2^(stages - 1)`` on every axis.
        spatial_dims: must be 3.
        patch_size: patch embedding size (int or 3 ints). ``None`` (auto): ``round(4 * roi / max(roi))`` per axis, i.e.
            4^3 for a 96^3 ROI and (4, 4, 2) for the Synapse-style 128x128x64 (x, y, z) ROI.
        embed_dim: width ``C`` of the first stage; stage ``i`` has ``C * 2^i``.
        depths: blocks per encoder stage (the last stage is the bottleneck; the decoder mirrors the others).
        num_heads: heads per stage; each must divide its stage width.
        window_size: see the module docstring.
        block: ``"swin"`` or ``"lgt"``.
        lgt_windows: per stage ``(global, local)`` windows, or ``None`` (auto: global = the grid of the second-to-last
            stage, local = half of it, on all stages but the last, which is plain global attention).
        lgt_share_qkv: one qkv for both LGT paths.
        lgt_mode: ``"sum"`` or ``"head_split"``.
        skip_fusion: ``"concat_linear" | "attention_gate" | "saf" | "bifusion"``.
        gate_mode: attention gates (``attention_gate``, ``bifusion``): ``"same_res"`` (gating signal = the expanded
            decoder feature) or ``"oktay"`` (gating signal = the coarse decoder feature before expanding).
        skip_source: ``"stage_input" | "stage_output"``.
        encoder_saf: SAF after every encoder stage except the bottleneck (a choice: Med-Former has no decoder).
        saf_kernel_size: SAF conv kernel.
        saf_fusion: ``"concat_linear"`` or ``"sum"``.
        cnn_branch: add the parallel CNN branch.
        cnn_channels_cap: CNN widths capped at ``cap * embed_dim``.
        bifusion_depthwise: depthwise 3^3 convs inside BiFusion.
        bottleneck_attn: ``"none"`` or ``"pam_cam"``.
        guided_aux: guided auto-encoder with auxiliary losses (``pam_cam`` only).
        final_upsample: ``"expand"`` or ``"expand_to_logits"``.
        mlp_ratio: MLP width ratio.
        qkv_bias: bias in qkv projections.
        drop_path_rate: stochastic depth, rising linearly over the encoder blocks; decoder stages reuse their
            encoder stage's rates (as Swin-Unet).
        attn_impl: ``"sdpa"`` or ``"naive"``.
        use_checkpoint: gradient checkpointing in every stage.
        norm_name: MONAI norm spec of the CNN branch and of BiFusion (default GroupNorm with up to 8 groups, fitted
            to each width by :func:`~pipeline.networks.swin3d.layers.fit_norm`).
        act_name: MONAI activation spec of the CNN branch (default LeakyReLU 0.01).
        mlp_act: MONAI activation spec of the transformer MLPs (default GELU).

    Examples:
        >>> import torch
        >>> net = SwinUnet3D(1, 2, roi_size=(16, 16, 16), patch_size=2, embed_dim=8, num_heads=(1, 2, 2, 4),
        ...                  cnn_branch=True, skip_fusion="bifusion", norm_name="batch", act_name="relu")
        >>> type(net.cnn.stem[1]).__name__, type(net.cnn.stem[2]).__name__
        ('BatchNorm3d', 'ReLU')
        >>> tuple(net.eval()(torch.randn(1, 1, 16, 16, 16)).shape)
        (1, 2, 16, 16, 16)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        roi_size: Sequence[int] = (96, 96, 96),
        spatial_dims: int = 3,
        patch_size: int | Sequence[int] | None = None,
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int | Sequence[int]] | None = None,
        block: str = "swin",
        lgt_windows: Sequence[Sequence[int | Sequence[int]] | None] | None = None,
        lgt_share_qkv: bool = True,
        lgt_mode: str = "sum",
        skip_fusion: str = "concat_linear",
        gate_mode: str = "same_res",
        skip_source: str = "stage_input",
        encoder_saf: bool = False,
        saf_kernel_size: int | Sequence[int] = 7,
        saf_fusion: str = "concat_linear",
        cnn_branch: bool = False,
        cnn_channels_cap: int = 4,
        bifusion_depthwise: bool = True,
        bottleneck_attn: str = "none",
        guided_aux: bool = False,
        final_upsample: str = "expand",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        attn_impl: str = "sdpa",
        use_checkpoint: bool = False,
        norm_name: tuple | str = DEFAULT_NORM,
        act_name: tuple | str = DEFAULT_CNN_ACT,
        mlp_act: tuple | str = "GELU",
    ) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"SwinUnet3D is 3D only, got spatial_dims={spatial_dims}")
        _choice("block", block, BLOCK_TYPES)
        _choice("skip_fusion", skip_fusion, SKIP_FUSIONS)
        _choice("skip_source", skip_source, SKIP_SOURCES)
        _choice("bottleneck_attn", bottleneck_attn, BOTTLENECK_ATTNS)
        _choice("final_upsample", final_upsample, FINAL_MODES)
        _choice("gate_mode", gate_mode, GATE_MODES)
        if skip_fusion == "bifusion" and not cnn_branch:
            raise ValueError(
                "skip_fusion='bifusion' requires cnn_branch=True (BiFusion fuses CNN and transformer features)"
            )
        if guided_aux and bottleneck_attn != "pam_cam":
            raise ValueError("guided_aux=True requires bottleneck_attn='pam_cam'")
        depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
        num_stages = len(depths)
        if num_stages < 2 or len(num_heads) != num_stages:
            raise ValueError(f"depths and num_heads need the same length >= 2, got {depths} and {num_heads}")
        self.roi_size = as_triple(roi_size, "roi_size")
        if patch_size is None:
            patch_size = tuple(max(1, round(4 * r / max(self.roi_size))) for r in self.roi_size)
        self.patch_size = as_triple(patch_size, "patch_size")
        stride = tuple(p * 2 ** (num_stages - 1) for p in self.patch_size)
        for axis, (r, s) in enumerate(zip(self.roi_size, stride)):
            if r % s:
                raise ValueError(
                    f"roi_size {self.roi_size} is not divisible by the total stride {stride} "
                    f"(patch {self.patch_size} x 2^{num_stages - 1}) on axis {axis}"
                )
        base = tuple(r // p for r, p in zip(self.roi_size, self.patch_size))
        self.grids = [cast(Int3, tuple(g // 2**i for g in base)) for i in range(num_stages)]
        self.dims = [embed_dim * 2**i for i in range(num_stages)]
        for i, (dim, heads) in enumerate(zip(self.dims, num_heads)):
            if heads < 1 or dim % heads:
                raise ValueError(f"stage {i}: num_heads {heads} does not divide the width {dim}")
        if bottleneck_attn == "pam_cam":
            tokens = self.grids[-1][0] * self.grids[-1][1] * self.grids[-1][2]
            if tokens > MAX_PAM_TOKENS:
                raise ValueError(
                    f"bottleneck_attn='pam_cam': the bottleneck stage has {tokens} tokens (grid {self.grids[-1]}), "
                    f"PAM is O(N^2) and allowed only up to {MAX_PAM_TOKENS}"
                )
        self.window_sizes = self._resolve_windows(window_size, num_stages)
        self.lgt_windows = self._resolve_lgt(lgt_windows, num_stages) if block == "lgt" else [None] * num_stages
        self.in_channels, self.out_channels = in_channels, out_channels
        self.skip_fusion, self.skip_source = skip_fusion, skip_source

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stage_rates = [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(num_stages)]

        def stage(i: int) -> SwinStage3D:
            return SwinStage3D(
                self.dims[i], depths[i], num_heads[i], self.grids[i], self.window_sizes[i], block, self.lgt_windows[i],
                lgt_share_qkv, lgt_mode, mlp_ratio, qkv_bias, stage_rates[i], attn_impl, use_checkpoint, mlp_act,
            )  # fmt: skip

        self.patch_embed = PatchEmbed3D(in_channels, embed_dim, self.patch_size)
        self.encoder = nn.ModuleList(stage(i) for i in range(num_stages))
        self.merges = nn.ModuleList(PatchMerging3D(self.dims[i]) for i in range(num_stages - 1))
        self.encoder_saf = (
            nn.ModuleList(SpatialAttentionFusion3D(d, saf_kernel_size, saf_fusion) for d in self.dims[:-1])
            if encoder_saf
            else None
        )
        self.norm = nn.LayerNorm(self.dims[-1])
        self.bottleneck_attn = (
            GuidedAttentionBottleneck(self.dims[-1], guided_aux) if bottleneck_attn == "pam_cam" else None
        )
        self.cnn = (
            CNNBranch3D(in_channels, embed_dim, num_stages, self.patch_size, cnn_channels_cap, norm_name, act_name)
            if cnn_branch
            else None
        )
        # CNN fusions: fusion(cnn feature, tokens) -> tokens; the bottleneck one (the last) adds to the tokens
        if self.cnn is None:
            self.cnn_fusion = None
        elif skip_fusion == "bifusion":
            self.cnn_fusion = nn.ModuleList(
                BiFusion3D(
                    c,
                    d,
                    max(d // 2, 1),
                    d,
                    depthwise=bifusion_depthwise,
                    norm_name=norm_name,
                    token_layout=True,
                    residual=i == num_stages - 1,
                )
                for i, (c, d) in enumerate(zip(self.cnn.channels, self.dims))
            )
        else:
            self.cnn_fusion = nn.ModuleList(CNNTokenAdd(c, d) for c, d in zip(self.cnn.channels, self.dims))

        self.expands = nn.ModuleList(PatchExpand3D(self.dims[i + 1], self.dims[i]) for i in range(num_stages - 1))
        self.gate_mode = gate_mode
        self.skip_fusions = nn.ModuleList(self._skip_fusion(d, saf_kernel_size, saf_fusion) for d in self.dims[:-1])
        self.decoder = nn.ModuleList(stage(i) for i in range(num_stages - 1))
        self.norm_up = nn.LayerNorm(embed_dim)
        self.final = FinalExpand3D(embed_dim, out_channels, self.patch_size, final_upsample)
        self.apply(self._init_weights)

    # ----------------------------------------------------------------------------------------------------- set-up
    def _resolve_windows(self, window_size: Any, num_stages: int) -> list[Int3]:
        out = []
        for i, w in enumerate(_per_stage(window_size, num_stages, "window_size")):
            grid = self.grids[i]
            if w is None:
                if i >= num_stages - 2:
                    win = grid
                else:
                    win = cast(Int3, tuple(_largest_divisor_at_most(g, 4) if g > 4 else g for g in grid))
            else:
                win, _ = clamp_window(grid, as_triple(w, f"window_size[{i}]"), (0, 0, 0))
            if not _tiles(grid, win):
                raise ValueError(f"stage {i}: window {as_triple(w, 'window')} does not tile the token grid {grid}")
            out.append(win)
        return out

    def _resolve_lgt(self, lgt_windows: Any, num_stages: int) -> list[tuple[Int3, Int3]]:
        if lgt_windows is None:
            ref = self.grids[-2]
            local = tuple(_largest_divisor_at_most(g, g // 2) if g > 1 else 1 for g in ref)
            lgt_windows = [(ref, local)] * (num_stages - 1) + [(self.grids[-1], self.grids[-1])]
        entries = _per_stage(lgt_windows, num_stages, "lgt_windows")
        out = []
        for i, pair in enumerate(entries):
            if pair is None:
                pair = (self.grids[i], self.grids[i])
            if len(pair) != 2:
                raise ValueError(f"stage {i}: lgt_windows entry must be (global, local), got {pair!r}")
            resolved = []
            for name, w in zip(("global", "local"), pair):
                win, _ = clamp_window(self.grids[i], as_triple(w, "lgt window"), (0, 0, 0))
                if not _tiles(self.grids[i], win):
                    raise ValueError(
                        f"stage {i}: LGT {name} window {as_triple(w, 'w')} does not tile the grid {self.grids[i]}"
                    )
                resolved.append(win)
            out.append((resolved[0], resolved[1]))
        return out

    def _skip_fusion(self, dim: int, saf_kernel_size: Any, saf_fusion: str) -> nn.Module:
        if self.skip_fusion == "concat_linear":
            return ConcatLinearFusion(dim)
        if self.skip_fusion == "saf":
            return SpatialAttentionFusion3D(dim, saf_kernel_size, saf_fusion)
        return AttentionGate3D(dim, mode=self.gate_mode, coarse_dim=2 * dim)  # attention_gate; decoder side of bifusion

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---------------------------------------------------------------------------------------------------- forward
    #: eager-only (training) API, left out of a TorchScript model
    __jit_unused_properties__ = ["aux_losses"]

    @property
    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Weighted auxiliary losses of the last training-mode forward (empty without ``guided_aux``)."""
        return {} if self.bottleneck_attn is None else dict(self.bottleneck_attn.aux_losses)

    def auxiliary_loss(self) -> torch.Tensor | float:
        """Sum of :attr:`aux_losses` (add it to the segmentation loss); ``0.0`` when there are none."""
        losses = self.aux_losses
        return sum(losses.values()) if losses else 0.0

    def check_input_size(self, spatial: Sequence[int]) -> None:
        """Raise ``ValueError`` unless ``spatial`` (x, y, z) equals the network's ``roi_size``.

        Examples:
            >>> net = SwinUnet3D(1, 2, roi_size=(32, 32, 16), patch_size=2, embed_dim=12, num_heads=(1, 2, 2, 4))
            >>> net.check_input_size((32, 32, 16))
        """
        if tuple(int(s) for s in spatial) != self.roi_size:
            raise ValueError(
                f"SwinUnet3D runs only at its roi_size {self.roi_size} (x, y, z), got {tuple(spatial)}; "
                "the sliding-window roi_size must equal the network's roi_size"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TorchScript: the module lists are indexed with a loop variable through the interfaces of
        # pipeline.networks.swin3d.interfaces, whose modules are called with .forward
        r0, r1, r2 = self.roi_size
        if x.ndim != 5 or list(x.shape[1:]) != [self.in_channels, r0, r1, r2]:
            raise ValueError(
                f"SwinUnet3D expects input (B, {self.in_channels}, {r0}, {r1}, {r2}) [channels, x, y, z], "
                f"got {shape_text(list(x.shape))}; the sliding-window roi_size must equal the network's roi_size"
            )
        cnn_feats: list[torch.Tensor] = []
        if self.cnn is not None:
            cnn_feats = self.cnn(x)
        h = self.patch_embed(x)
        skips: list[torch.Tensor] = []
        last = len(self.encoder) - 1
        for i, stage in enumerate(self.encoder):
            h_in = h
            h = stage(h)
            if i < last:
                if self.encoder_saf is not None:
                    saf: SkipFusion = self.encoder_saf[i]  # type: ignore[assignment]
                    h = saf.forward(h, h_in, None)
                skips.append(h_in if self.skip_source == "stage_input" else h)
                merge: TokenModule = self.merges[i]  # type: ignore[assignment]
                h = merge.forward(h)
        h = self.norm(h)
        if self.bottleneck_attn is not None:
            h = self.bottleneck_attn(h)
        if self.cnn_fusion is not None:  # with the CNN branch
            tokens = skips + [h]
            fused: list[torch.Tensor] = []
            for i, fusion in enumerate(self.cnn_fusion):
                fused.append(fusion(cnn_feats[i], tokens[i]))
            skips, h = fused[:-1], fused[-1]
        for i in range(last - 1, -1, -1):
            expand: TokenModule = self.expands[i]  # type: ignore[assignment]
            skip_fusion: SkipFusion = self.skip_fusions[i]  # type: ignore[assignment]
            stage_up: TokenModule = self.decoder[i]  # type: ignore[assignment]
            coarse, h = h, expand.forward(h)
            h = skip_fusion.forward(h, skips[i], coarse)
            h = stage_up.forward(h)
        return self.final(self.norm_up(h))
