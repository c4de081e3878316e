"""SwinUnet3D: construction-time validation, every preset forward/backward/training, bundle-JSON instantiation."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigParser

from pipeline.networks import create_network, get_preset, list_networks
from pipeline.networks.swin3d import SwinUnet3D
from pipeline.networks.swin3d.presets import BTCV_ROI, SYNAPSE_ROI, preset_kwargs

from helpers.swin3d import PRESET_NAMES, SMALL, SMALL_ROI


def test_presets_are_registered_with_xyz_axes():
    for name in PRESET_NAMES:
        assert name in list_networks()
        preset = get_preset(name)
        assert preset.axes == "xyz" and preset.roi_size == BTCV_ROI and preset.description


@pytest.mark.parametrize("roi, patch, grids", [(BTCV_ROI, (4, 4, 4), (3, 3, 3)), (SYNAPSE_ROI, (4, 4, 2), (4, 4, 4))])
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_build_at_both_reference_rois(name, roi, patch, grids):
    net = create_network(name, roi_size=roi)
    assert net.patch_size == patch and net.grids[-1] == grids
    if roi == BTCV_ROI:
        assert net.window_sizes == [(4, 4, 4), (4, 4, 4), (6, 6, 6), (3, 3, 3)]
    else:
        assert net.window_sizes == [(4, 4, 4), (4, 4, 4), (8, 8, 8), (4, 4, 4)]
    if name == "swinunet3d_lgt":
        pair = ((6, 6, 6), (3, 3, 3)) if roi == BTCV_ROI else ((8, 8, 8), (4, 4, 4))
        assert net.lgt_windows[:3] == [pair] * 3
    n_params = sum(p.numel() for p in net.parameters())
    assert 7e6 < n_params < 15e6


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_forward_backward_small_roi(name):
    torch.manual_seed(0)
    net = create_network(name, **SMALL).train()
    x = torch.randn(2, 1, *SMALL_ROI)
    y = net(x)
    assert y.shape == (2, 3, *SMALL_ROI)
    loss = y.square().mean() + net.auxiliary_loss()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    if name == "swinunet3d_pamcam":
        assert set(net.aux_losses) == {"guided", "reconstruction"}
    else:
        assert net.aux_losses == {} and net.auxiliary_loss() == 0.0
    net.eval()
    with torch.no_grad():
        out = net(x[:1])
    assert out.shape == (1, 3, *SMALL_ROI) and torch.isfinite(out).all()


def _toy_volume(roi):
    g = torch.Generator().manual_seed(0)
    coords = torch.stack(torch.meshgrid(*(torch.linspace(-1, 1, r) for r in roi), indexing="ij"))
    label = ((coords**2).sum(0) < 0.4).long()  # a ball
    label[(coords[0] > 0.3) & (label == 1)] = 2
    image = label.float() + 0.3 * torch.randn(roi, generator=g)
    return image[None, None], label[None]


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_short_training_lowers_the_loss(name):
    torch.manual_seed(0)
    net = create_network(name, drop_path_rate=0.0, **SMALL).train()
    image, label = _toy_volume(SMALL_ROI)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        logits = net(image)
        seg = torch.nn.functional.cross_entropy(logits, label)
        (seg + net.auxiliary_loss()).backward()
        opt.step()
        losses.append(float(seg.detach()))
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize(
    "target, kwargs",
    [
        ("pipeline.networks.swin3d.SwinUnet3D", "class"),
        ("pipeline.networks.swin3d.presets.{name}", "function"),
        ("pipeline.networks.create_network", "registry"),
    ],
)
def test_every_preset_from_bundle_json(target, kwargs):
    for name in PRESET_NAMES:
        if kwargs == "class":
            args = preset_kwargs(name, **SMALL)
        elif kwargs == "function":
            args = dict(SMALL)
        else:
            args = {"name": name, **SMALL}
        config = json.loads(json.dumps({"network_def": {"_target_": target.format(name=name), **args}}))
        net = ConfigParser(config).get_parsed_content("network_def")
        ref = create_network(name, **SMALL)
        assert isinstance(net, SwinUnet3D)
        assert net.state_dict().keys() == ref.state_dict().keys()
        assert [p.shape for p in net.parameters()] == [p.shape for p in ref.parameters()]


def test_skip_source_and_final_upsample_options():
    torch.manual_seed(0)
    a = SwinUnet3D(**SMALL)
    b = SwinUnet3D(**SMALL, skip_source="stage_output")
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, *SMALL_ROI)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
    c = SwinUnet3D(**SMALL, final_upsample="expand_to_logits", attn_impl="naive", use_checkpoint=True,
                   skip_fusion="attention_gate", gate_mode="oktay")  # fmt: skip
    y = c(x.requires_grad_(True))
    y.sum().backward()
    assert y.shape == (1, 3, *SMALL_ROI) and x.grad is not None
    assert all(p.grad is not None for p in c.skip_fusions.parameters())


def test_sdpa_and_naive_networks_agree():
    torch.manual_seed(0)
    cfg = {**SMALL, "num_heads": (2, 2, 4, 8), "block": "lgt", "lgt_mode": "head_split"}
    fast = SwinUnet3D(**cfg).double().eval()
    slow = SwinUnet3D(**cfg, attn_impl="naive").double().eval()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(1, 1, *SMALL_ROI, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), slow(x), rtol=0, atol=1e-10)


def test_per_stage_windows():
    net = SwinUnet3D(**SMALL, window_size=[(8, 8, 4), 4, (2, 2, 2), 2])
    assert net.window_sizes == [(8, 8, 4), (4, 4, 4), (2, 2, 2), (2, 2, 1)]
    assert net(torch.randn(1, 1, *SMALL_ROI)).shape == (1, 3, *SMALL_ROI)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"window_size": [6, 4, 4, 2]}, r"stage 0: window .* does not tile"),
        ({"window_size": [4, 4, 3, 2]}, r"stage 2: window .* does not tile"),
        ({"window_size": [4, 4]}, "one entry per stage"),
        ({"roi_size": (32, 32, 12)}, "not divisible by the total stride"),
        ({"roi_size": (40, 32, 16)}, r"axis 0"),
        ({"num_heads": (1, 2, 5, 8)}, r"stage 2: num_heads 5 does not divide the width 48"),
        ({"skip_fusion": "bifusion"}, "requires cnn_branch"),
        ({"skip_fusion": "sum"}, "skip_fusion must be one of"),
        ({"block": "lgt", "lgt_windows": [(4, 3), None, None, None]}, r"stage 0: LGT local window"),
        ({"guided_aux": True}, "requires bottleneck_attn"),
        ({"spatial_dims": 2}, "3D only"),
    ],
)
def test_construction_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        SwinUnet3D(**{**SMALL, **overrides})


def test_pam_cam_refused_on_large_bottleneck():
    common = {"embed_dim": 8, "depths": (1, 1), "num_heads": (1, 1), "window_size": 4, "bottleneck_attn": "pam_cam"}
    with pytest.raises(ValueError, match="4096"):
        SwinUnet3D(1, 2, roi_size=(64, 64, 72), patch_size=2, **common)  # 16 x 16 x 18 tokens
    net = SwinUnet3D(1, 2, roi_size=(64, 64, 64), patch_size=2, **common)  # 16^3 = 4096 tokens is allowed
    assert net.bottleneck_attn is not None


def test_wrong_input_shape_is_a_clear_error():
    net = SwinUnet3D(**SMALL)
    with pytest.raises(ValueError, match="roi_size must equal"):
        net(torch.randn(1, 1, 32, 32, 32))


def test_sliding_window_on_a_volume_that_is_not_a_multiple_of_the_roi():
    from monai.data import MetaTensor
    from monai.inferers import SlidingWindowInferer

    torch.manual_seed(0)
    net = create_network("swinunet3d_lgt", **SMALL).eval()
    image = MetaTensor(torch.randn(1, 1, 40, 37, 20))
    inferer = SlidingWindowInferer(roi_size=SMALL_ROI, sw_batch_size=2, overlap=0.5, mode="gaussian")
    with torch.no_grad():
        out = inferer(image, net)
    assert out.shape == (1, 3, 40, 37, 20) and torch.isfinite(out).all()
