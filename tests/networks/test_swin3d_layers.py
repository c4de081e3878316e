"""MONAI-style norm/activation specs of the 3D Swin-Unet family and its one fusion interface."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from monai.bundle import ConfigParser

from pipeline.networks.swin3d import (
    AttentionGate3D,
    BiFusion3D,
    ConcatLinearFusion,
    SpatialAttentionFusion3D,
    SwinUnet3D,
)
from pipeline.networks.swin3d.fusion import CNNTokenAdd
from pipeline.networks.swin3d.layers import conv_norm, fit_norm

from helpers.swin3d import SMALL, SMALL_ROI

TRANSFUSE = {**SMALL, "cnn_branch": True, "skip_fusion": "bifusion"}


def test_fit_norm_fits_group_norms_to_the_width():
    assert fit_norm(("group", {"num_groups": 8}), 12) == ("group", {"num_groups": 4})
    assert fit_norm(["group", {"num_groups": 8, "eps": 1e-3}], 16) == ("group", {"num_groups": 8, "eps": 1e-3})
    assert fit_norm("group", 6) == ("group", {"num_groups": 2})  # no num_groups: up to 8
    assert fit_norm("instance", 12) == "instance"
    assert fit_norm(("batch", {"momentum": 0.2}), 12) == ("batch", {"momentum": 0.2})
    gn = conv_norm(["group", {"num_groups": 8}], 12)
    assert isinstance(gn, nn.GroupNorm) and (gn.num_groups, gn.num_channels) == (4, 12)
    assert isinstance(conv_norm("instance", 5), nn.InstanceNorm3d)
    with pytest.raises(TypeError):
        fit_norm(("group", 8), 12)


def test_default_specs_give_the_same_modules_and_state_dict_keys():
    """The defaults equal the explicit specs, every GroupNorm has gcd(8, C) groups, and the state-dict layout of the
    CNN branch and fusions (what bundled and ablation checkpoints hold) is the pinned one."""
    torch.manual_seed(0)
    default = SwinUnet3D(**TRANSFUSE).eval()
    torch.manual_seed(0)
    explicit = SwinUnet3D(
        **TRANSFUSE,
        norm_name=("group", {"num_groups": 8}),
        act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        mlp_act="GELU",
    ).eval()
    a, b = default.state_dict(), explicit.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 1, *SMALL_ROI)
    with torch.no_grad():
        assert torch.equal(default(x), explicit(x))
    norms = [m for m in default.modules() if isinstance(m, nn.GroupNorm)]
    # CNN branch: stem 1, stage 0: 2, stages 1-3 (downsampling): 3 each; BiFusion: w_g, w_x, bilinear, 3 in fuse
    assert len(norms) == 1 + 2 + 3 * 3 + 4 * 6
    assert all(m.num_groups == math.gcd(8, m.num_channels) for m in norms)
    for key in (
        "cnn.stem.1.weight",
        "cnn.stages.1.norm3.bias",
        "cnn_fusion.0.w_g.1.weight",
        "cnn_fusion.3.bilinear.1.bias",
        "cnn_fusion.3.fuse.body.6.weight",
        "skip_fusions.0.merge.proj.weight",
    ):
        assert key in a, key
    linear = SwinUnet3D(**SMALL, cnn_branch=True).state_dict()  # CNN fusion without BiFusion: a plain Linear each
    assert [k for k in linear if k.startswith("cnn_fusion.0.")] == ["cnn_fusion.0.weight", "cnn_fusion.0.bias"]


def test_norm_and_act_specs_change_the_convolutional_layers():
    net = SwinUnet3D(**TRANSFUSE, norm_name="batch", act_name=("relu", {"inplace": True}), mlp_act="relu").eval()
    assert not any(isinstance(m, nn.GroupNorm) for m in net.modules())
    assert isinstance(net.cnn.stem[1], nn.BatchNorm3d) and isinstance(net.cnn.stem[2], nn.ReLU)
    assert all(isinstance(s.norm1, nn.BatchNorm3d) and isinstance(s.lrelu, nn.ReLU) for s in net.cnn.stages)
    assert isinstance(net.cnn_fusion[0].bilinear[1], nn.BatchNorm3d)
    assert isinstance(net.encoder[0].blocks[0].mlp.fn, nn.ReLU)
    assert all(isinstance(m, nn.LayerNorm) for m in (net.norm, net.norm_up))  # token norms stay LayerNorm
    with torch.no_grad():
        assert tuple(net(torch.randn(1, 1, *SMALL_ROI)).shape) == (1, 3, *SMALL_ROI)
    # bundle JSON gives lists: ["group", {"num_groups": 4}]
    parser = ConfigParser(
        {
            "net": {
                "_target_": "pipeline.networks.swin3d.SwinUnet3D",
                **{k: list(v) if isinstance(v, tuple) else v for k, v in TRANSFUSE.items()},
                "norm_name": ["group", {"num_groups": 4}],
            }
        }
    )
    built = parser.get_parsed_content("net")
    assert {m.num_groups for m in built.modules() if isinstance(m, nn.GroupNorm)} <= {1, 2, 4}


def test_skip_fusions_share_one_signature():
    torch.manual_seed(0)
    x, skip, coarse = torch.randn(1, 4, 4, 2, 8), torch.randn(1, 4, 4, 2, 8), torch.randn(1, 2, 2, 1, 16)
    for fusion in (ConcatLinearFusion(8), SpatialAttentionFusion3D(8, kernel_size=3), AttentionGate3D(8)):
        torch.testing.assert_close(fusion(x, skip, coarse), fusion(x, skip))  # coarse is not used by these
    oktay = AttentionGate3D(8, mode="oktay", coarse_dim=16)
    torch.testing.assert_close(oktay(x, skip, coarse), oktay.merge(x, skip * oktay.gate(x, skip, coarse)))


def test_cnn_fusions_share_one_signature():
    """``fusion(cnn feature (channels-first), tokens (channels-last)) -> tokens`` for both CNN fusions."""
    torch.manual_seed(0)
    g, t = torch.randn(1, 6, 4, 4, 2), torch.randn(1, 4, 4, 2, 8)
    add = CNNTokenAdd(6, 8)
    torch.testing.assert_close(add(g, t), t + nn.functional.linear(g.permute(0, 2, 3, 4, 1), add.weight, add.bias))
    plain = BiFusion3D(6, 8, 4, 8).eval()  # channels-first in and out
    for residual in (False, True):
        tokens = BiFusion3D(6, 8, 4, 8, token_layout=True, residual=residual).eval()
        tokens.load_state_dict(plain.state_dict())
        ref = plain(g, t.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        torch.testing.assert_close(tokens(g, t), t + ref if residual else ref)
    with pytest.raises(ValueError, match="out_channels == trans_channels"):
        BiFusion3D(6, 8, 4, 16, residual=True)


def test_forward_calls_any_fusion_through_the_interface():
    """A module with the skip-fusion signature plugs into SwinUnet3D: it gets (x, skip, coarse) on every level."""

    class Recorder(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner, self.shapes = inner, []

        def forward(self, x, skip, coarse=None):
            self.shapes.append((tuple(x.shape), tuple(skip.shape), None if coarse is None else tuple(coarse.shape)))
            return self.inner(x, skip, coarse)

    torch.manual_seed(0)
    net = SwinUnet3D(**SMALL, skip_fusion="attention_gate", gate_mode="oktay").eval()
    x = torch.randn(1, 1, *SMALL_ROI)
    with torch.no_grad():
        ref = net(x)
        net.skip_fusions = nn.ModuleList(Recorder(f) for f in net.skip_fusions)
        got = net(x)
    assert torch.equal(got, ref)
    assert [r.shapes for r in net.skip_fusions] == [
        [((1, 16, 16, 8, 12), (1, 16, 16, 8, 12), (1, 8, 8, 4, 24))],
        [((1, 8, 8, 4, 24), (1, 8, 8, 4, 24), (1, 4, 4, 2, 48))],
        [((1, 4, 4, 2, 48), (1, 4, 4, 2, 48), (1, 2, 2, 1, 96))],
    ]
