"""UNETR++: one configurable network class for every official variant (Synapse/BTCV, ACDC, Lung, BraTS).

Shaker et al., "UNETR++: Delving into Efficient and Accurate 3D Medical Image Segmentation", IEEE TMI 2024
(arXiv 2212.04497). The module tree and parameter names equal the official release's, so official checkpoints load
with ``strict=True``; the per-dataset files of the release become constructor options (see
``pipeline.networks.unetrpp.presets``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn as nn
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, get_conv_layer
from monai.networks.layers.utils import get_norm_layer
from monai.utils import ensure_tuple_rep

from pipeline.networks.shapes import shape_text
from pipeline.networks.unetrpp.blocks import TransformerBlock, UnetrPPUpBlock

__all__ = ["UNETRPP", "UNETRPPEncoder", "InputSizeError", "INPUT_ORDERS"]

#: spatial orders of the input tensor: MONAI's (x, y, z) (the default) or the official nnU-Net (z, y, x)
INPUT_ORDERS = ("xyz", "zyx")


class InputSizeError(ValueError):
    """The input patch does not fit the network (wrong size for a fixed-size model, or not divisible by strides).

    A plain ``ValueError``: the inference/CLI layer turns it into its one-line error.
    """


def _trunc_normal_init(m: nn.Module) -> None:
    """The official encoder init: truncated normal (std 0.02) Linear weights, zero bias; LayerNorm 1/0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


class UNETRPPEncoder(nn.Module):
    """The UNETR++ encoder: a strided stem + GroupNorm, then 3 strided (k = s = 2) downsamplings, each stage followed
    by ``depths[i]`` :class:`TransformerBlock`\\ s.

    Args:
        grids: token grid (D, H, W) of each of the 4 stages, in the official (z, y, x) layout the encoder runs in.
        dims: channels per stage.
        proj_size: EPA projection size per stage.
        depths: transformer blocks per stage.
        num_heads: EPA heads per stage.
        spatial_dims: 3.
        in_channels: image channels.
        stem_stride: stem kernel = stride, in (z, y, x).
        stem_norm_groups: GroupNorm groups of the stem norm (official: ``in_channels``).
        dropout: conv dropout (unused by the official presets).
        transformer_dropout_rate: EPA attention-map dropout.
        block_kwargs: ``ef_mode``, ``fusion``, ``permute_quirk``, ``n_conv_blocks`` for every block.
    """

    def __init__(
        self,
        grids: Sequence[Sequence[int]],
        dims: Sequence[int],
        proj_size: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        spatial_dims: int = 3,
        in_channels: int = 1,
        stem_stride: Sequence[int] = (2, 4, 4),
        stem_norm_groups: int | None = None,
        dropout: float = 0.0,
        transformer_dropout_rate: float = 0.15,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        stem = nn.Sequential(
            get_conv_layer(
                spatial_dims,
                in_channels,
                dims[0],
                kernel_size=stem_stride,
                stride=stem_stride,
                dropout=dropout,
                conv_only=True,
            ),
            get_norm_layer(name=("group", {"num_groups": stem_norm_groups or in_channels}), channels=dims[0]),
        )
        self.downsample_layers.append(stem)
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(
                    get_conv_layer(
                        spatial_dims, dims[i], dims[i + 1], kernel_size=2, stride=2, dropout=dropout, conv_only=True
                    ),
                    get_norm_layer(name=("group", {"num_groups": dims[i]}), channels=dims[i + 1]),
                )
            )
        self.stages = nn.ModuleList()
        for i in range(4):
            self.stages.append(
                nn.Sequential(
                    *[
                        TransformerBlock(
                            input_size=int(np.prod(grids[i])),
                            hidden_size=dims[i],
                            proj_size=proj_size[i],
                            num_heads=num_heads[i],
                            dropout_rate=transformer_dropout_rate,
                            pos_embed=True,
                            grid=grids[i],
                            spatial_dims=spatial_dims,
                            **block_kwargs,
                        )
                        for _ in range(depths[i])
                    ]
                )
            )
        self.apply(_trunc_normal_init)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the 4 stage outputs (B, C_i, D_i, H_i, W_i)."""
        hidden_states = []
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
            hidden_states.append(x)
        return hidden_states


class UNETRPP(nn.Module):
    """UNETR++ (Shaker et al., IEEE TMI 2024): a hierarchical EPA encoder, EPA decoder with additive skips, and a
    full-resolution residual conv path.

    Every official variant is a set of options (see ``pipeline.networks.unetrpp.presets``): Synapse/BTCV
    (``ef_mode="shared"``, concat fusion), ACDC and Lung (``ef_mode="separate"``, ``n_conv_blocks=2``), BraTS
    (``ef_mode="param"``, ``fusion="sum"``). ``ef_mode="pool"`` is the resolution-agnostic mode: the spatial key/value
    projection pools the token grid to a fixed grid of ``p`` tokens and the positional embeddings are interpolated,
    so one network runs at any patch divisible by ``stem_stride * 8``.

    Args:
        in_channels: image channels.
        out_channels: classes (including background).
        img_size: reference patch, in the order of ``input_order`` (MONAI (x, y, z) by default; the official presets
            give nnU-Net's (z, y, x) with ``input_order="zyx"``). Fixed-size modes accept only this patch;
            ``ef_mode="pool"`` uses it as the reference grid of the positional embeddings and accepts others.
        feature_size: channels of the full-resolution conv path (``encoder1``/``decoder2``).
        dims: channels of the 4 encoder stages (``dims[-1]`` is the bottleneck "hidden size").
        depths: transformer blocks per encoder stage.
        num_heads: EPA heads, one int for all stages or one per stage (decoders use their stage's).
        proj_size: EPA projection size p per encoder stage.
        decoder_proj_size: EPA projection size in the decoder.
        decoder_depth: transformer blocks per decoder level.
        stem_stride: stem conv kernel = stride, and the last up-conv's, in the order of ``input_order`` (e.g.
            (4, 4, 2) in (x, y, z), which is the official (2, 4, 4) in (z, y, x)).
        stem_norm_groups: GroupNorm groups after the stem (default ``in_channels``, as the official code).
        norm_name: norm of ``encoder1``/``decoder2`` (official: instance).
        attn_dropout: EPA attention-map dropout in encoder and decoder (0.15 Synapse, 0.1 others).
        ef_mode: ``"shared"``, ``"separate"``, ``"param"`` or ``"pool"`` (see :class:`EPABlock`).
        fusion: ``"concat"`` or ``"sum"``.
        n_conv_blocks: conv blocks after EPA (1, or 2 for ACDC/Lung).
        permute_quirk: the official spatial-branch layout (issue #62). On for weight compatibility; ``False``
            gives the corrected maths, which cannot load official weights.
        deep_supervision: build the two extra heads ``out2``/``out3``; in training mode ``forward`` then returns
            ``[out1, out2, out3]`` (full resolution first); in eval mode only ``out1``.
        input_order: spatial order of the input tensor and of ``img_size``/``stem_stride``: ``"xyz"`` (default,
            MONAI tensors) or ``"zyx"`` (the official nnU-Net layout, used by the official presets and checkpoints).
            The modules always run in the official (z, y, x) layout: for ``"xyz"`` the spatial axes are reversed at
            the start and end of ``forward``, so both orders build identical state dicts.
        spatial_dims: 3.

    Examples:
        >>> import torch
        >>> net = UNETRPP(1, 3, img_size=(32, 48, 16), feature_size=8, dims=(16, 32, 64, 128), stem_stride=(2, 2, 1),
        ...               proj_size=(16, 16, 16, 8), decoder_proj_size=16, depths=(1, 1, 1, 1), decoder_depth=1)
        >>> net.eval()(torch.randn(1, 1, 32, 48, 16)).shape  # (x, y, z) in and out
        torch.Size([1, 3, 32, 48, 16])
    """

    if TYPE_CHECKING:  # set with setattr in __init__ (one loop for the three EPA decoder stages); hidden from
        # TorchScript, which reads class annotations as attribute types
        decoder5: UnetrPPUpBlock
        decoder4: UnetrPPUpBlock
        decoder3: UnetrPPUpBlock

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int],
        feature_size: int = 16,
        dims: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (3, 3, 3, 3),
        num_heads: Sequence[int] | int = 4,
        proj_size: Sequence[int] = (64, 64, 64, 32),
        decoder_proj_size: int = 64,
        decoder_depth: int = 3,
        stem_stride: Sequence[int] | int = (4, 4, 2),
        stem_norm_groups: int | None = None,
        norm_name: tuple | str = "instance",
        attn_dropout: float = 0.15,
        ef_mode: str = "shared",
        fusion: str = "concat",
        n_conv_blocks: int = 1,
        permute_quirk: bool = True,
        deep_supervision: bool = True,
        input_order: str = "xyz",
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"UNETR++ is 3D only, got spatial_dims={spatial_dims}")
        if input_order not in INPUT_ORDERS:
            raise ValueError(f"input_order must be one of {INPUT_ORDERS}, got {input_order!r}")
        if len(dims) != 4 or len(depths) != 4 or len(proj_size) != 4:
            raise ValueError("dims, depths and proj_size need one entry per stage (4 stages)")
        heads = ensure_tuple_rep(num_heads, 4)
        for c, h in zip(dims, heads):
            if c % h:
                raise ValueError(f"stage channels {c} are not divisible by num_heads {h}")
        if fusion == "concat" and any(c % 2 for c in dims):
            raise ValueError(f"fusion='concat' needs even channels, got dims={tuple(dims)}")
        # img_size, stem_stride and strides are in the input order; grids and the modules use (z, y, x)
        self.stem_stride = tuple(int(s) for s in ensure_tuple_rep(stem_stride, 3))
        self.img_size = tuple(int(s) for s in ensure_tuple_rep(img_size, 3))
        self.strides = tuple(s * 8 for s in self.stem_stride)
        for size, total in zip(self.img_size, self.strides):
            if size % total:
                raise ValueError(f"img_size {self.img_size} must be divisible by stem_stride * 8 = {self.strides}")
        internal_size = self._internal(self.img_size, input_order)
        internal_stem = self._internal(self.stem_stride, input_order)
        self.grids = [tuple(s // st // 2**i for s, st in zip(internal_size, internal_stem)) for i in range(4)]
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution_agnostic = ef_mode == "pool"
        self.deep_supervision = deep_supervision
        self.input_order = input_order
        block_kwargs: dict[str, Any] = dict(
            ef_mode=ef_mode, fusion=fusion, permute_quirk=permute_quirk, n_conv_blocks=n_conv_blocks
        )

        self.unetr_pp_encoder = UNETRPPEncoder(
            grids=self.grids,
            dims=dims,
            proj_size=proj_size,
            depths=depths,
            num_heads=heads,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            stem_stride=internal_stem,
            stem_norm_groups=stem_norm_groups,
            transformer_dropout_rate=attn_dropout,
            **block_kwargs,
        )
        self.encoder1 = UnetResBlock(
            spatial_dims, in_channels, feature_size, kernel_size=3, stride=1, norm_name=norm_name
        )
        up: dict[str, Any] = dict(
            spatial_dims=spatial_dims,
            kernel_size=3,
            norm_name=norm_name,
            proj_size=decoder_proj_size,
            depth=decoder_depth,
            dropout_rate=attn_dropout,
            **block_kwargs,
        )
        for name, level in (("decoder5", 2), ("decoder4", 1), ("decoder3", 0)):
            setattr(
                self,
                name,
                UnetrPPUpBlock(
                    in_channels=dims[level + 1],
                    out_channels=dims[level],
                    upsample_kernel_size=2,
                    num_heads=heads[level],
                    out_size=int(np.prod(self.grids[level])),
                    grid=self.grids[level],
                    **up,
                ),
            )
        self.decoder2 = UnetrPPUpBlock(
            spatial_dims=spatial_dims,
            in_channels=dims[0],
            out_channels=feature_size,
            kernel_size=3,
            upsample_kernel_size=internal_stem,
            norm_name=norm_name,
            conv_decoder=True,
        )
        self.out1 = UnetOutBlock(spatial_dims, feature_size, out_channels)
        if deep_supervision:
            self.out2 = UnetOutBlock(spatial_dims, dims[0], out_channels)
            self.out3 = UnetOutBlock(spatial_dims, dims[1], out_channels)

    @staticmethod
    def _internal(values: tuple[int, ...], input_order: str) -> tuple[int, ...]:
        """Per-axis ``values`` given in ``input_order``, in the modules' (z, y, x) order."""
        return values[::-1] if input_order == "xyz" else values

    def set_fast(self, fast: bool) -> UNETRPP:
        """Switch every block between the fast token path (default) and the official op sequence; returns ``self``.

        Both are plain PyTorch on any device. The CPU-specific kernels are separate: see
        :func:`pipeline.networks.optimize_for_cpu`.
        """
        for m in self.modules():
            if m is not self and hasattr(m, "set_fast"):
                cast(Any, m).set_fast(fast)
        return self

    # ---------------------------------------------------------------------------------------------------------- shapes
    def expected_input_size(self) -> tuple[int, ...]:
        """The reference patch in the order ``forward`` takes (``img_size``, in ``input_order``)."""
        return self.img_size

    def check_input_size(self, spatial: Sequence[int]) -> None:
        """Raise :class:`InputSizeError` (a ``ValueError``) unless a patch of ``spatial`` size (in ``input_order``)
        fits: equal to ``img_size``, or, for ``ef_mode="pool"``, divisible by ``strides``.

        Examples:
            >>> net = UNETRPP(1, 2, img_size=(32, 32, 16), feature_size=8, dims=(16, 16, 32, 32), depths=(1, 1, 1, 1),
            ...               num_heads=2, proj_size=(8, 8, 8, 8), decoder_proj_size=8, decoder_depth=1,
            ...               stem_stride=(2, 2, 2))
            >>> net.check_input_size((32, 32, 16))
            >>> try:
            ...     net.check_input_size((16, 32, 32))
            ... except ValueError as exc:
            ...     print(str(exc)[:60])
            this UNETR++ runs only at its training patch (32, 32, 16) (x
        """
        self._check_spatial([int(s) for s in spatial])

    def _check_spatial(self, spatial: list[int]) -> None:
        """:meth:`check_input_size` in TorchScript form (a list, the tuples read element by element)."""
        expected, strides = self.img_size, self.strides
        if self.resolution_agnostic:
            if (
                len(spatial) != 3
                or spatial[0] % strides[0] != 0
                or spatial[1] % strides[1] != 0
                or spatial[2] % strides[2] != 0
            ):
                raise InputSizeError(
                    f"input spatial size {shape_text(spatial)} ({self.input_order}) must be divisible by {strides}"
                )
        elif spatial != [expected[0], expected[1], expected[2]]:
            raise InputSizeError(
                f"this UNETR++ runs only at its training patch {expected} ({self.input_order}), "
                f"got {shape_text(spatial)}; use a sliding window with roi_size equal to that patch, or a "
                "resolution-agnostic (ef_mode='pool') model"
            )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise InputSizeError(f"UNETR++ expects a 5D tensor (B, C, *spatial), got shape {shape_text(list(x.shape))}")
        if x.shape[1] != self.in_channels:
            raise InputSizeError(f"UNETR++ expects {self.in_channels} input channel(s), got {x.shape[1]}")
        self._check_spatial(list(x.shape[2:]))

    # --------------------------------------------------------------------------------------------------------- forward
    def _to_internal(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 1, 4, 3, 2) if self.input_order == "xyz" else x

    def forward_all(self, x_in: torch.Tensor) -> list[torch.Tensor]:
        """All heads ``[out1, out2, out3]`` (``[out1]`` without deep supervision), whatever the mode."""
        self._check_input(x_in)
        x = self._to_internal(x_in)
        enc1, enc2, enc3, enc4 = self.unetr_pp_encoder(x)
        conv_block = self.encoder1(x)
        dec3 = self.decoder5(enc4, enc3)
        dec2 = self.decoder4(dec3, enc2)
        dec1 = self.decoder3(dec2, enc1)
        out = self.decoder2(dec1, conv_block)
        outs = [self.out1(out)]
        if hasattr(self, "out2"):  # deep_supervision (a test TorchScript resolves when compiling)
            outs += [self.out2(dec1), self.out3(dec2)]
        return [self._to_internal(o) for o in outs]  # the permute is its own inverse

    def forward(self, x_in: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits (B, out_channels, *spatial); in training mode with deep supervision ``[out1, out2, out3]``."""
        if self.deep_supervision and self.training:
            return self.forward_all(x_in)
        # skip the two extra heads in eval mode
        self._check_input(x_in)
        x = self._to_internal(x_in)
        enc1, enc2, enc3, enc4 = self.unetr_pp_encoder(x)
        conv_block = self.encoder1(x)
        dec1 = self.decoder3(self.decoder4(self.decoder5(enc4, enc3), enc2), enc1)
        return self._to_internal(self.out1(self.decoder2(dec1, conv_block)))
