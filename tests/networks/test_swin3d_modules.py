"""Patch merging/expanding, final expand, fusions, PAM/CAM and the CNN branch of the 3D Swin-Unet family."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from pipeline.networks.swin3d import (
    AttentionGate3D,
    BiFusion3D,
    ChannelAttention3D,
    CNNBranch3D,
    FinalExpand3D,
    GuidedAttentionBottleneck,
    PatchEmbed3D,
    PatchExpand3D,
    PatchMerging3D,
    PositionAttention3D,
    SpatialAttentionFusion3D,
)
from pipeline.networks.swin3d.sampling import pixel_shuffle_3d


def test_patch_merging_sees_all_8_neighbours_once():
    grid = (4, 6, 2)
    coords = torch.stack(torch.meshgrid(*(torch.arange(g) for g in grid), indexing="ij"), -1)
    code = (coords[..., 0] * 100 + coords[..., 1] * 10 + coords[..., 2]).double()  # position-coded, 1 channel
    merge = PatchMerging3D(1).double()
    merge.norm = torch.nn.Identity()  # look at the concatenated neighbours
    merge.reduction = torch.nn.Identity()
    out = merge(code[None, ..., None])[0]  # (2, 3, 1, 8)
    assert out.shape == (2, 3, 1, 8)
    for i, j, k in itertools.product(range(2), range(3), range(1)):
        expected = {int(code[2 * i + a, 2 * j + b, 2 * k + c]) for a, b, c in itertools.product((0, 1), repeat=3)}
        got = [int(v) for v in out[i, j, k]]
        assert len(set(got)) == 8 and set(got) == expected


def test_patch_merging_shapes_and_odd_grid_error():
    m = PatchMerging3D(6)
    assert m(torch.randn(2, 4, 4, 2, 6)).shape == (2, 2, 2, 1, 12)
    assert m.reduction.bias is None and m.norm.normalized_shape == (48,)
    with pytest.raises(ValueError, match="even"):
        m(torch.randn(1, 3, 4, 4, 6))


def test_patch_expand_equals_transposed_convolution():
    torch.manual_seed(0)
    c = 8
    expand = PatchExpand3D(c).double()
    x = torch.randn(2, 3, 4, 2, c, dtype=torch.float64)
    conv = torch.nn.ConvTranspose3d(c, c // 2, 2, stride=2, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(expand.as_conv_transpose_weight())
    via_conv = conv(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
    via_linear = pixel_shuffle_3d(expand.expand(x), (2, 2, 2))
    assert via_linear.shape == (2, 6, 8, 4, c // 2)
    torch.testing.assert_close(via_linear, via_conv, rtol=0, atol=1e-12)
    torch.testing.assert_close(expand(x), F.layer_norm(via_conv, (c // 2,), expand.norm.weight, expand.norm.bias))
    assert sum(p.numel() for p in expand.expand.parameters()) == 4 * c * c


@pytest.mark.parametrize("mode", ["expand", "expand_to_logits"])
def test_final_expand_matches_shuffle_then_head(mode):
    torch.manual_seed(0)
    fe = FinalExpand3D(8, 3, (4, 4, 2), mode=mode)
    x = torch.randn(2, 3, 2, 5, 8)
    ref = fe.head(fe.norm(pixel_shuffle_3d(fe.expand(x), (4, 4, 2)))).permute(0, 4, 1, 2, 3)
    out = fe(x)
    assert out.shape == (2, 3, 12, 8, 10)
    torch.testing.assert_close(out, ref)


def test_patch_embed_is_channels_last():
    pe = PatchEmbed3D(2, 12, (4, 4, 2))
    assert pe(torch.randn(1, 2, 16, 8, 8)).shape == (1, 4, 2, 4, 12)


def test_attention_gate_range_and_effect():
    torch.manual_seed(0)
    ag = AttentionGate3D(8)
    with torch.no_grad():
        ag.psi.weight.normal_(0, 20.0)  # a sharp gate
        ag.psi.bias.zero_()  # must reach near 0 and near 1 (a double sigmoid cannot)
    x, skip = torch.randn(1, 4, 4, 4, 8), torch.randn(1, 4, 4, 4, 8)
    alpha = ag.gate(x, skip).detach()
    assert alpha.shape == (1, 4, 4, 4, 1)
    assert float(alpha.min()) < 0.05 and float(alpha.max()) > 0.95
    expected = ag.merge.proj(torch.cat([x, skip * alpha], -1))
    torch.testing.assert_close(ag(x, skip), expected)


@pytest.mark.parametrize("fusion", ["concat_linear", "sum"])
def test_saf_fusion(fusion):
    torch.manual_seed(0)
    saf = SpatialAttentionFusion3D(6, kernel_size=(3, 3, 1), fusion=fusion)
    cur, prev = torch.randn(2, 4, 4, 2, 6), torch.randn(2, 4, 4, 2, 6)
    a = saf.maps(cur, prev).detach()
    assert a.shape == (2, 4, 4, 2, 2) and float(a.min()) > 0 and float(a.max()) < 1
    out = saf(cur, prev)
    if fusion == "sum":
        torch.testing.assert_close(out, cur * a[..., :1] + prev * a[..., 1:])
    else:
        torch.testing.assert_close(out, cur + saf.proj(torch.cat([cur * a[..., :1], prev * a[..., 1:]], -1)))
    with pytest.raises(ValueError, match="same shape"):
        saf(cur, prev[:, :2])


def test_bifusion_shapes_and_grid_check():
    bf = BiFusion3D(8, 12, 6, 12)
    out = bf(torch.randn(1, 8, 4, 4, 2), torch.randn(1, 12, 4, 4, 2))
    assert out.shape == (1, 12, 4, 4, 2)
    out1 = bf(torch.randn(2, 8, 1, 1, 1), torch.randn(2, 12, 1, 1, 1))  # a 1-voxel bottleneck works
    assert torch.isfinite(out1).all()
    with pytest.raises(ValueError, match="grid"):
        bf(torch.randn(1, 8, 4, 4, 2), torch.randn(1, 12, 2, 2, 2))


def test_pam_cam_follow_the_official_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 2, 2, 16, dtype=torch.float64)
    pam, cam = PositionAttention3D(16).double(), ChannelAttention3D().double()
    torch.testing.assert_close(pam(x), x)  # gamma = 0 at init
    torch.testing.assert_close(cam(x), x)
    with torch.no_grad():
        pam.gamma.fill_(0.7)
        cam.gamma.fill_(1.3)
    # official PyTorch (channels-first, N = D*H*W): energy = q^T k, no scaling; out = v attn^T
    xc = x.flatten(1, 3).transpose(1, 2)  # (B, C, N)
    q = torch.einsum("oc,bcn->bon", pam.query.weight, xc) + pam.query.bias[:, None]
    k = torch.einsum("oc,bcn->bon", pam.key.weight, xc) + pam.key.bias[:, None]
    v = torch.einsum("oc,bcn->bon", pam.value.weight, xc) + pam.value.bias[:, None]
    attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)
    pam_ref = 0.7 * (v @ attn.transpose(1, 2)) + xc
    torch.testing.assert_close(pam(x).flatten(1, 3).transpose(1, 2), pam_ref)
    energy = xc @ xc.transpose(1, 2)
    energy_new = energy.max(-1, keepdim=True)[0].expand_as(energy) - energy
    cam_ref = 1.3 * (torch.softmax(energy_new, -1) @ xc) + xc
    torch.testing.assert_close(cam(x).flatten(1, 3).transpose(1, 2), cam_ref)


def test_guided_bottleneck_identity_and_aux_losses():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 2, 2, 16)
    plain = GuidedAttentionBottleneck(16)
    torch.testing.assert_close(plain(x), x)  # PAM + CAM start as the identity
    guided = GuidedAttentionBottleneck(16, guided_aux=True).train()
    y = guided(x)
    assert y.shape == x.shape and set(guided.aux_losses) == {"guided", "reconstruction"}
    total = sum(guided.aux_losses.values())
    assert total > 0
    total.backward()
    assert guided.autoencoders[0].encoder[0].weight.grad.abs().sum() > 0
    guided.eval()
    guided(x)
    assert guided.aux_losses == {}


def test_cnn_branch_grids_and_cap():
    cnn = CNNBranch3D(1, 8, num_stages=4, patch_size=(2, 2, 1), channels_cap=2)
    feats = cnn(torch.randn(1, 1, 32, 32, 16))
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 16, 16, 16), (16, 8, 8, 8), (16, 4, 4, 4), (16, 2, 2, 2)]


def test_attention_gate_oktay_mode_uses_the_coarse_signal():
    torch.manual_seed(0)
    ag = AttentionGate3D(8, mode="oktay", coarse_dim=16)
    x, skip, coarse = torch.randn(1, 4, 4, 2, 8), torch.randn(1, 4, 4, 2, 8), torch.randn(1, 2, 2, 1, 16)
    alpha = ag.gate(x, skip, coarse).detach()
    assert alpha.shape == (1, 4, 4, 2, 1) and float(alpha.min()) >= 0 and float(alpha.max()) <= 1
    other = ag.gate(x, skip, torch.randn(1, 2, 2, 1, 16))
    assert not torch.allclose(alpha, other)
    torch.testing.assert_close(ag.gate(torch.randn_like(x), skip, coarse), alpha)  # x itself does not gate
    assert ag(x, skip, coarse).shape == x.shape
    with pytest.raises(ValueError, match="coarse"):
        ag(x, skip)
    with pytest.raises(ValueError, match="gate_mode"):
        AttentionGate3D(8, mode="upsample")
