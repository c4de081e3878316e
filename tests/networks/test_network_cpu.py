"""The opt-in CPU path (``optimize_for_cpu``) and the loading layer around the networks: same state dict, same
outputs as the plain network, applied by ``load_model`` on CPU; network ValueErrors become one-line CLI errors."""

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks import UnetResBlock

from pipeline.errors import ModelError, UsageError
from pipeline.inference import load_model
from pipeline.networks import optimize_for_cpu
from pipeline.networks.cpu import FoldedResBlock
from pipeline.networks.unetrpp import UNETRPP
from pipeline.networks.unetrpp.presets import TINY_UNETRPP
from pipeline.paths import BUNDLES_DIR

#: small UNETR++ with two BatchNorm conv blocks per transformer block (ACDC/Lung style), MONAI (x, y, z) patch
SMALL = dict(TINY_UNETRPP, img_size=(32, 32, 16), n_conv_blocks=2, ef_mode="separate")
#: the fast path folds BatchNorm into the conv weights and uses oneDNN kernels: float32 rounding only
ATOL, RTOL = 1e-5, 1e-4


def _perturbed(net: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial weights and BatchNorm running statistics, so a wrong fold would show in the output."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return net


def test_optimize_for_cpu_keeps_state_dict_and_outputs():
    torch.manual_seed(0)
    net = _perturbed(UNETRPP(**SMALL)).eval()
    n_bn_blocks = sum(isinstance(m, UnetResBlock) and isinstance(m.norm1, torch.nn.BatchNorm3d) for m in net.modules())
    assert n_bn_blocks == 4 * 2 + 3 * 2  # conv51 + conv52 in 4 encoder and 3 decoder transformer blocks
    assert not any(isinstance(m, FoldedResBlock) for m in net.modules())  # the default forward is the plain one
    before = dict(net.state_dict())
    x = torch.randn(2, 1, 32, 32, 16)
    with torch.no_grad():
        plain = net.forward_all(x)
    assert optimize_for_cpu(net) is net
    assert sum(isinstance(m, FoldedResBlock) for m in net.modules()) == n_bn_blocks
    after = net.state_dict()
    assert list(after) == list(before)  # same keys in the same order, the very same tensors
    assert all(after[k].data_ptr() == v.data_ptr() for k, v in before.items())
    with torch.no_grad():
        fast = net.forward_all(x)
    for a, b in zip(fast, plain):
        assert torch.allclose(a, b, atol=ATOL, rtol=RTOL), (a - b).abs().max()
    assert optimize_for_cpu(net) is net  # idempotent
    assert sum(isinstance(m, FoldedResBlock) for m in net.modules()) == n_bn_blocks


def test_an_optimised_network_scripts_to_the_plain_computation():
    """torch.jit.script of an optimize_for_cpu'd network (load_model optimises on CPU; ckpt_export scripts the plain
    network_def) compiles each FoldedResBlock's plain UnetResBlock sequence: the plain network's output exactly."""
    torch.manual_seed(0)
    net = _perturbed(UNETRPP(**SMALL)).eval()
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        plain = net(x)
        optimize_for_cpu(net)
        scripted = torch.jit.script(net)
        with torch.jit.optimized_execution(False):
            got = scripted(x)
    assert sum(isinstance(m, FoldedResBlock) for m in net.modules()) == 4 * 2 + 3 * 2
    assert torch.equal(got, plain), float((got - plain).abs().max())  # the same ops as the plain eager forward


def test_cpu_kernels_run_only_after_the_opt_in(monkeypatch):
    """The plain forward never calls oneDNN directly; the optimised one does (in eval mode, without gradients)."""
    torch.manual_seed(0)
    net = _perturbed(UNETRPP(**SMALL)).eval()
    calls = []
    real = torch.mkldnn_convolution

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "mkldnn_convolution", spy)
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        net(x)
    assert calls == []
    optimize_for_cpu(net)
    with torch.no_grad():
        net(x)
    if torch.backends.mkldnn.is_available():
        assert len(calls) > 0
    # training mode: BatchNorm uses batch statistics, nothing is folded; gradients reach every parameter
    calls.clear()
    net.train()
    sum(o.square().mean() for o in net(x)).backward()  # all three deep-supervision heads
    assert calls == []
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_load_model_applies_the_cpu_path_with_unchanged_outputs():
    bundle = BUNDLES_DIR / "unetrpp_hippocampus_mri_segmentation"
    if not (bundle / "models" / "model.pt").is_file():
        pytest.skip(f"{bundle}/models/model.pt is absent")
    loaded = load_model(bundle, device="cpu")
    assert any(isinstance(m, FoldedResBlock) for m in loaded.network.modules())
    # the same weights in a plain network (built from the same config) give the same logits
    plain = UNETRPP(
        in_channels=1, out_channels=3, img_size=(32, 48, 32), feature_size=16, dims=(32, 64, 128, 128),
        depths=(2, 2, 2, 2), num_heads=4, proj_size=(32, 32, 32, 16), decoder_proj_size=32, decoder_depth=1,
        stem_stride=(2, 2, 2), attn_dropout=0.1, permute_quirk=False,
    )  # fmt: skip
    plain.load_state_dict(loaded.network.state_dict(), strict=True)
    plain.eval()
    x = torch.randn(1, 1, 32, 48, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = loaded.network(x), plain(x)
    assert torch.allclose(a, b, atol=1e-4, rtol=RTOL), (a - b).abs().max()
    assert a.argmax(1).eq(b.argmax(1)).float().mean() > 0.999


@pytest.fixture
def small_zyx_preset(monkeypatch, tmp_path):
    """A registered official-layout (z, y, x) preset and a checkpoint for it."""
    from pipeline.networks import registry

    kwargs = {**SMALL, "img_size": (16, 32, 32), "input_order": "zyx"}
    monkeypatch.setitem(
        registry._PRESETS,
        "unetrpp_cpu_test",
        registry.Preset("unetrpp_cpu_test", UNETRPP, kwargs, "", (16, 32, 32), "zyx", ("img_size", "stem_stride")),
    )
    ckpt = tmp_path / "w.pt"
    torch.save(UNETRPP(**kwargs).state_dict(), ckpt)
    return "unetrpp_cpu_test", ckpt


def test_preset_loading_uses_monai_order_and_translates_network_errors(small_zyx_preset):
    name, ckpt = small_zyx_preset
    loaded = load_model(name, ckpt, preprocessing="mri_hippocampus")
    assert loaded.roi_size == (32, 32, 16)  # the (z, y, x) preset's patch, in (x, y, z)
    assert loaded.network.input_order == "xyz" and loaded.network.expected_input_size() == (32, 32, 16)
    with torch.no_grad():
        assert tuple(loaded.network(torch.zeros(1, 1, 32, 32, 16)).shape) == (1, 3, 32, 32, 16)
    # a window the fixed-size network cannot run: the network's ValueError becomes one UsageError line
    with pytest.raises(UsageError, match=r"unetrpp_cpu_test.*\(16, 32, 32\).*training patch \(32, 32, 16\)") as exc:
        load_model(name, ckpt, preprocessing="mri_hippocampus", roi_size=(16, 32, 32))
    assert "\n" not in str(exc.value)
    # an argument the network rejects (ValueError at construction): one ModelError line naming the preset
    with pytest.raises(ModelError, match=r"preset unetrpp_cpu_test: .*divisible") as exc:
        load_model(name, ckpt, preprocessing="mri_hippocampus", overrides={"img_size": (20, 32, 32)})
    assert "\n" not in str(exc.value)
