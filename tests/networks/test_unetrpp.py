"""UNETR++: official parity, presets, checkpoint loading/import, shapes, export, resolution-agnostic mode, training."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import InputDataError, ModelError
from pipeline.networks import create_network, get_preset, list_networks
from pipeline.networks.unetrpp import (
    UNETRPP,
    EPABlock,
    InputSizeError,
    fit_state_dict,
    import_official_checkpoint,
    load_official_checkpoint,
    load_official_weights,
    read_nnunet_plans,
)
from pipeline.networks.unetrpp.presets import TINY_UNETRPP

from helpers.unetrpp import fill_by_rule, fixture_input, load_fixture, sampled_errors

OFFICIAL_PARAMS = {
    "unetrpp_synapse": 42_952_850,
    "unetrpp_btcv": 42_952_850,
    "unetrpp_acdc": 66_796_404,
    "unetrpp_lung": 121_174_798,
    "unetrpp_tumor": 42_647_604,
}

#: a small configuration (what a CPU training run can afford): patch 16x32x32, strides 16
SMALL = dict(TINY_UNETRPP)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())  # parameters() counts a tied tensor once


# ------------------------------------------------------------------------------------------------ presets and parity
@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_preset_parameter_count_and_registry(name):
    net = create_network(name)
    assert isinstance(net, UNETRPP)
    assert n_params(net) == OFFICIAL_PARAMS[name]
    preset = get_preset(name)
    assert preset.axes == "zyx" and tuple(preset.roi_size) == net.img_size


@pytest.mark.parametrize("config", ["synapse", "acdc", "lung", "tumor"])
def test_official_parity(shared_dir, config):
    """State dict keys/shapes equal the official ones; after the fill rule the sampled outputs match within 1e-4."""
    manifest = load_fixture(shared_dir, config)
    net = create_network(f"unetrpp_{config}").eval()
    state = net.state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == [(e["key"], e["shape"]) for e in manifest["state_dict"]]
    assert n_params(net) == manifest["params"]
    for entry in manifest["state_dict"]:  # the Synapse E=F tie is one tensor
        if "tied_to" in entry:
            assert state[entry["key"]].data_ptr() == state[entry["tied_to"]].data_ptr()
    fill_by_rule(net, manifest)
    with torch.inference_mode():
        outs = net.forward_all(fixture_input(manifest))
    errors = sampled_errors(outs, manifest)
    assert max(errors) < 1e-4, errors
    for out, ref in zip(outs, manifest["outputs"]):
        mean = out.double().mean(dim=(0, 2, 3, 4))
        assert torch.allclose(mean, torch.tensor(ref["channel_mean"], dtype=torch.float64), atol=1e-5)


def test_permute_quirk_matches_documented_index_formula():
    """Quirk layout: out[n', c'] = Y[hh, n, dd], f = n'C + c', dd = f // (hN), hh = (f // N) % h, n = f % N."""
    torch.manual_seed(0)
    n, c, h = 12, 8, 2
    epa = EPABlock(n, c, 4, num_heads=h, ef_mode="separate", fusion="sum", fast=False).eval()
    x = torch.randn(1, n, c)
    with torch.no_grad():
        quirk = epa(x)
        epa.permute_quirk = False
        natural = epa(x)
        # rebuild the spatial branch output Y by the equations and compare with (quirk - channel branch)
        q, k, v_ca, v_sa = epa.qkvv(x).reshape(1, n, 4, h, c // h).permute(2, 0, 3, 4, 1)
        k_p, v_p = epa.E(k), epa.F(v_sa)
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        y = ((qn.transpose(-2, -1) @ k_p) * epa.temperature2).softmax(-1) @ v_p.transpose(-2, -1)  # (1, h, N, d)
        x_ca = (((qn @ kn.transpose(-2, -1)) * epa.temperature).softmax(-1) @ v_ca).permute(0, 3, 1, 2).reshape(1, n, c)
    d = c // h
    expected = torch.empty(1, n, c)
    for n2 in range(n):
        for c2 in range(c):
            f = n2 * c + c2
            expected[0, n2, c2] = y[0, (f // n) % h, f % n, f // (h * n)]
    assert torch.allclose(quirk - x_ca, expected, atol=1e-6)
    assert torch.allclose(natural - x_ca, y.transpose(1, 2).reshape(1, n, c), atol=1e-6)
    assert not torch.allclose(quirk, natural, atol=1e-3)
    assert d * h == c


@pytest.mark.parametrize(
    "ef_mode,fusion", [("shared", "concat"), ("separate", "concat"), ("param", "sum"), ("pool", "concat")]
)
@pytest.mark.parametrize("quirk", [True, False])
def test_fast_path_equals_official_op_sequence(ef_mode, fusion, quirk):
    torch.manual_seed(1)
    net = UNETRPP(**{**SMALL, "ef_mode": ef_mode, "fusion": fusion, "permute_quirk": quirk}).eval()
    with torch.no_grad():
        for p in net.parameters():  # non-trivial gammas / BN so every branch shows in the output
            p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(2, 1, 16, 32, 32)
        fast = net.set_fast(True).forward_all(x)
        ref = net.set_fast(False).forward_all(x)
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


# ------------------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_output_shapes_train_and_eval(deep_supervision):
    net = UNETRPP(**SMALL, deep_supervision=deep_supervision)
    x = torch.randn(2, 1, 16, 32, 32)
    out = net.train()(x)
    if deep_supervision:
        assert [tuple(o.shape) for o in out] == [(2, 3, 16, 32, 32), (2, 3, 8, 16, 16), (2, 3, 4, 8, 8)]
    else:
        assert tuple(out.shape) == (2, 3, 16, 32, 32)
    with torch.no_grad():
        assert tuple(net.eval()(x).shape) == (2, 3, 16, 32, 32)
    assert ("out2.conv.conv.weight" in net.state_dict()) == deep_supervision


def test_xyz_is_the_default_and_a_pure_axis_permutation_of_the_official_order():
    """The default takes MONAI (x, y, z) tensors with img_size/stem_stride in (x, y, z); with the same state dict it
    equals the official (z, y, x) network on the permuted input (non-cubic patch, anisotropic stem)."""
    torch.manual_seed(0)
    xyz_args = {**SMALL, "img_size": (32, 48, 16), "stem_stride": (2, 2, 1)}
    xyz = UNETRPP(**xyz_args).eval()
    zyx = UNETRPP(**{**xyz_args, "img_size": (16, 48, 32), "stem_stride": (1, 2, 2), "input_order": "zyx"}).eval()
    assert xyz.input_order == "xyz" and xyz.expected_input_size() == (32, 48, 16)
    assert [(k, v.shape) for k, v in xyz.state_dict().items()] == [(k, v.shape) for k, v in zyx.state_dict().items()]
    zyx.load_state_dict(xyz.state_dict(), strict=True)
    x = torch.randn(1, 1, 32, 48, 16)
    with torch.no_grad():
        got = xyz.forward_all(x)
        ref = zyx.forward_all(x.permute(0, 1, 4, 3, 2))
    assert tuple(got[0].shape) == (1, 3, 32, 48, 16)
    for a, b in zip(got, ref):
        assert torch.equal(a, b.permute(0, 1, 4, 3, 2))
    with pytest.raises(InputSizeError, match=r"\(32, 48, 16\) \(xyz\), got \(16, 48, 32\)"):
        xyz(x.permute(0, 1, 4, 3, 2))


def test_registry_builds_official_presets_in_either_order():
    """``input_order="xyz"`` on an official (z, y, x) preset reverses its per-axis arguments; overrides are xyz."""
    official = create_network("unetrpp_lung")
    monai = create_network("unetrpp_lung", input_order="xyz")
    assert (official.img_size, official.stem_stride) == ((32, 192, 192), (1, 4, 4))
    assert (monai.img_size, monai.stem_stride) == ((192, 192, 32), (4, 4, 1))
    assert get_preset("unetrpp_lung").roi_size_in("xyz") == (192, 192, 32)
    assert [(k, v.shape) for k, v in monai.state_dict().items()] == [
        (k, v.shape) for k, v in official.state_dict().items()
    ]
    small = create_network("unetrpp_lung", input_order="xyz", img_size=(64, 64, 16), dims=(16, 16, 32, 32))
    assert small.expected_input_size() == (64, 64, 16) and small.grids[0] == (16, 16, 16)
    with pytest.raises(ValueError, match="axes must be one of"):
        create_network("unetrpp_lung", input_order="yxz")


def test_wrong_input_size_names_expected_size():
    net = create_network("unetrpp_synapse", input_order="xyz").eval()
    with pytest.raises(InputSizeError, match=r"\(128, 128, 64\)"):
        net(torch.zeros(1, 1, 96, 96, 96))
    with pytest.raises(ValueError, match="1 input channel"):
        net(torch.zeros(1, 2, 128, 128, 64))
    with pytest.raises(ValueError, match="divisible"):
        UNETRPP(**{**SMALL, "img_size": (20, 32, 32)})


def test_bundle_style_dotted_target():
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {
            "direct": {
                "_target_": "pipeline.networks.unetrpp.UNETRPP",
                **{k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()},
            },
            "named": {"_target_": "pipeline.networks.create_network", "name": "unetrpp_synapse", "input_order": "xyz"},
        }
    )
    assert tuple(parser.get_parsed_content("direct").img_size) == (16, 32, 32)
    assert parser.get_parsed_content("named").expected_input_size() == (128, 128, 64)


# ------------------------------------------------------------------------------------------------------------- export
def test_torchscript_trace_and_torch_export():
    torch.manual_seed(0)
    net = UNETRPP(**{**SMALL, "img_size": (32, 32, 16)}).eval()  # default (x, y, z): permutes inside forward
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        ref = net(x)
        traced = torch.jit.trace(net, x, check_trace=False)
        assert torch.allclose(traced(x), ref, atol=1e-5)
        exported = torch.export.export(net, (x,))
        assert torch.allclose(exported.module()(x), ref, atol=1e-5)


#: small widths for the scripting tests; every other option is the preset's
SCRIPT_WIDTHS = dict(
    feature_size=8, dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), proj_size=(16, 16, 16, 8), decoder_proj_size=16
)
UNETRPP_PRESETS = [n for n in list_networks() if n.startswith("unetrpp")]


def _script_case(name: str, **extra) -> tuple[UNETRPP, torch.Tensor]:
    """Preset ``name`` at small widths with a patch of twice its total stride, and a batch-2 input."""
    preset = get_preset(name)
    stem = preset.kwargs.get("stem_stride", (4, 4, 2))
    kwargs = {**SCRIPT_WIDTHS, **extra}
    kwargs["img_size"] = tuple(16 * s for s in (stem if isinstance(stem, (list, tuple)) else (stem,) * 3))
    torch.manual_seed(0)
    net = create_network(name, **kwargs)
    x = torch.randn(2, net.in_channels, *net.img_size, generator=torch.Generator().manual_seed(1))
    return net, x


@pytest.mark.parametrize(
    "name, extra, fast",
    [(name, {}, True) for name in UNETRPP_PRESETS]
    + [
        ("unetrpp_synapse", {}, False),  # the official op sequence
        ("unetrpp_acdc", {"ef_mode": "pool", "fusion": "sum", "permute_quirk": False, "deep_supervision": False}, True),
    ],
)
def test_torch_jit_script_presets(name, extra, fast, tmp_path):
    """MONAI's ckpt_export scripts bundle networks (torch.jit.script, its default): every preset and mode compiles, the
    scripted network keeps the state dict and, after a save/load, reproduces the eager outputs (the deep-supervision
    heads in training mode) and raises the eager network's size error.

    The scripted calls skip TorchScript's optimisation passes (seconds per graph); test_bundle_modelzoo.py runs exported
    networks with the default executor."""
    net, x = _script_case(name, **extra)
    net.set_fast(fast).eval()
    scripted = torch.jit.script(net)
    assert list(scripted.state_dict()) == list(net.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(scripted.state_dict().values(), net.state_dict().values()))
    path = tmp_path / "net.ts"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        assert torch.allclose(loaded(x), net(x), atol=1e-5, rtol=1e-4)
        heads = loaded.train()(x)
        wrong = torch.zeros(1, net.in_channels, *[s * 2 for s in net.img_size])
        if net.resolution_agnostic:  # any multiple of the strides runs; a non-multiple is refused
            wrong = torch.zeros(1, net.in_channels, *[s + 1 for s in net.img_size])
        with pytest.raises(torch.jit.Error, match="InputSizeError: .*" + re.escape(str(tuple(wrong.shape[2:])))):
            loaded.eval()(wrong)
    if net.deep_supervision:
        assert [tuple(h.shape[:2]) for h in heads] == [(2, net.out_channels)] * 3
    else:
        assert isinstance(heads, torch.Tensor) and heads.shape == (2, net.out_channels, *net.img_size)


# -------------------------------------------------------------------------------------------------------- checkpoints
def _official_like_checkpoint(net: torch.nn.Module, path, *, prefix="module."):
    """An nnU-Net v1 style checkpoint: state_dict (DataParallel prefix), optimizer state, numpy training curves."""
    ck = {
        "epoch": 1000,
        "state_dict": {prefix + k: v.clone() for k, v in net.state_dict().items()},
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.99, "params": [0, 1]}]},
        "amp_grad_scaler": None,
        "plot_stuff": ([np.float64(0.9), np.float64(0.8)], [np.float32(0.7)], [np.float64(0.1)], [np.float64(0.5)]),
        "best_stuff": (np.int64(3), np.float64(0.3), np.float64(0.4), np.arange(3.0)),
    }
    torch.save(ck, path)


def test_load_official_checkpoint_strict(tmp_path, shared_dir):
    """A filled Synapse network saved as an official checkpoint loads strictly (E=F tie included) and reproduces."""
    manifest = load_fixture(shared_dir, "synapse")
    src = create_network("unetrpp_synapse")
    fill_by_rule(src, manifest)
    ck = tmp_path / "model_final_checkpoint.model"
    _official_like_checkpoint(src, ck)
    state = load_official_checkpoint(ck)
    assert list(state) == [e["key"] for e in manifest["state_dict"]]  # prefix stripped, official order
    dst = load_official_weights(create_network("unetrpp_synapse"), ck)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k
    assert dst.unetr_pp_encoder.stages[0][0].epa_block.E is dst.unetr_pp_encoder.stages[0][0].epa_block.F
    # the wrong preset: a clear error that lists the mismatched layers
    with pytest.raises(
        ModelError,
        match=r"with another shape: .*downsample_layers.*missing from the checkpoint: .*EF"
        r".*unexpected layer\(s\): .*E.weight",
    ):
        load_official_weights(create_network("unetrpp_tumor"), ck)


def test_checkpoint_safety_and_errors(tmp_path):
    net = UNETRPP(**SMALL)

    class NotAllowed:
        def __reduce__(self):
            return (print, ("executed",))

    evil = tmp_path / "evil.model"
    torch.save({"state_dict": net.state_dict(), "x": NotAllowed()}, evil)
    with pytest.raises(ModelError, match="allow-list.*print.*trust"):
        load_official_checkpoint(evil)
    assert list(load_official_checkpoint(evil, trust=True)) == list(net.state_dict())
    broken = tmp_path / "broken.model"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="broken.model"):
        load_official_checkpoint(broken)
    with pytest.raises(ModelError, match="not found"):
        load_official_checkpoint(tmp_path / "missing.model")
    partial = {k: v for k, v in net.state_dict().items() if "out1" not in k}
    with pytest.raises(ModelError, match="2 layer\\(s\\) missing from the checkpoint: out1.conv.conv.weight"):
        fit_state_dict(UNETRPP(**SMALL), partial)


def _nnunet_v1_plans(patch=(16, 32, 32), spacing=(3.0, 0.8, 0.8)) -> dict:
    """nnU-Net v1 plans as ExperimentPlanner3D_v21 writes them (numpy arrays, OrderedDicts)."""
    from collections import OrderedDict

    stage = {
        "batch_size": 2,
        "num_pool_per_axis": [3, 4, 4],
        "patch_size": np.array(patch),
        "median_patient_size_in_voxels": np.array([148, 512, 512]),
        "current_spacing": np.array(spacing),
        "original_spacing": np.array(spacing),
        "do_dummy_2D_data_aug": True,
        "pool_op_kernel_sizes": [[2, 4, 4], [2, 2, 2], [2, 2, 2]],
        "conv_kernel_sizes": [[3, 3, 3]] * 4,
    }
    intensity = OrderedDict(
        {
            0: OrderedDict(
                median=np.float64(78.0),
                mean=np.float64(80.5),
                sd=np.float64(55.2),
                mn=np.float64(-958.0),
                mx=np.float64(1200.0),
                percentile_99_5=np.float64(295.0),
                percentile_00_5=np.float64(-958.0),
            )
        }
    )
    return {
        "num_stages": 1,
        "num_modalities": 1,
        "modalities": {0: "CT"},
        "normalization_schemes": OrderedDict({0: "CT"}),
        "use_mask_for_norm": OrderedDict({0: False}),
        "dataset_properties": {"intensityproperties": intensity, "modalities": {0: "CT"}},
        "num_classes": 2,
        "all_classes": [1, 2],
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "plans_per_stage": {0: stage},
        "base_num_features": 32,
        "conv_per_stage": 2,
    }


def test_importer_writes_bundle_weights_and_preprocessing(tmp_path, monkeypatch):
    from pipeline.networks import registry

    monkeypatch.setitem(
        registry._PRESETS,
        "unetrpp_small_test",
        registry.Preset(
            "unetrpp_small_test", UNETRPP, dict(SMALL, input_order="zyx"), "", (16, 32, 32), "zyx", ("img_size",)
        ),
    )
    torch.manual_seed(0)
    src = UNETRPP(**SMALL, input_order="zyx")
    ck = tmp_path / "fold_0" / "model_final_checkpoint.model"
    ck.parent.mkdir()
    _official_like_checkpoint(src, ck)
    plans = tmp_path / "nnFormerPlansv2.1_plans_3D.pkl"
    # written by numpy 1.x in the original: rewrite the module path so both spellings are exercised
    raw = pickle.dumps(_nnunet_v1_plans(), protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    plans.write_bytes(raw)
    wrapped = ck.with_name(ck.name + ".pkl")  # the .model.pkl next to a checkpoint wraps the plans
    wrapped.write_bytes(
        pickle.dumps({"init": (), "name": "nnFormerTrainerV2_unetr_pp", "plans": _nnunet_v1_plans()}, protocol=4)
    )
    assert read_nnunet_plans(wrapped)["num_classes"] == 2

    written = import_official_checkpoint(ck, plans, tmp_path / "bundle", preset="unetrpp_small_test")
    state = torch.load(written["weights"], weights_only=True)
    assert list(state) == list(src.state_dict())
    assert all(torch.equal(state[k], v) for k, v in src.state_dict().items())
    info = json.loads(written["preprocessing"].read_text())
    assert info["target_spacing_zyx"] == [3.0, 0.8, 0.8]
    assert info["target_spacing_xyz"] == [0.8, 0.8, 3.0] == info["preprocessing"]["spacing"]
    assert info["patch_size_zyx"] == [16, 32, 32] and info["roi_size_xyz"] == [32, 32, 16]
    assert info["preprocessing"]["intensity"] == {
        "type": "nnunet_ct",
        "lower": -958.0,
        "upper": 295.0,
        "mean": 80.5,
        "std": 55.2,
    }
    assert info["network_overrides"] == {"input_order": "xyz"} and info["num_classes"] == 3
    with pytest.raises(FileExistsError):
        import_official_checkpoint(ck, plans, tmp_path / "bundle", preset="unetrpp_small_test")
    # the preprocessing settings feed the project's transforms unchanged
    transforms = pytest.importorskip("pipeline.transforms")
    spec = transforms.resolve_preset(info["preprocessing"])
    assert spec["spacing"] == [0.8, 0.8, 3.0]

    # plans with arbitrary objects are refused; a plans/network mismatch names both sizes
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(InputDataError, match="refusing"):
        read_nnunet_plans(evil)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps(_nnunet_v1_plans(patch=(32, 64, 64))))
    with pytest.raises(ModelError, match=r"\[32, 64, 64\].*\[16, 32, 32\]"):
        import_official_checkpoint(ck, other, tmp_path / "b2", preset="unetrpp_small_test")

    # the command-line entry point: exit codes of the project's error classes
    from pipeline.networks.unetrpp.checkpoint import main as importer_main

    common = ["--preset", "unetrpp_small_test", "--out"]
    assert importer_main([str(ck), str(wrapped), *common, str(tmp_path / "b3")]) == 0
    assert (tmp_path / "b3" / "models" / "model.pt").is_file()
    assert importer_main([str(ck), str(tmp_path / "missing.pkl"), *common, str(tmp_path / "b4")]) == 3
    assert importer_main([str(ck), str(other), *common, str(tmp_path / "b4")]) == 4


# ---------------------------------------------------------------------------------------------------------- training
def _toy_batch(gen: torch.Generator, shape, n: int = 2):
    """A bright box on noise; label 1 inside the box, 2 in its upper half."""
    x = torch.randn(n, 1, *shape, generator=gen) * 0.3
    y = torch.zeros(n, 1, *shape, dtype=torch.long)
    for i in range(n):
        lo = [int(torch.randint(1, s // 2, (1,), generator=gen)) for s in shape]
        sl = tuple(slice(a, a + s // 3) for a, s in zip(lo, shape))
        x[(i, 0, *sl)] += 1.5
        y[(i, 0, *sl)] = 1
        sl2 = (slice(sl[0].start, sl[0].start + shape[0] // 6), *sl[1:])
        y[(i, 0, *sl2)] = 2
    return x, y


def _train(net, shapes, steps, lr=3e-3):
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    net.train()
    for step in range(steps):
        x, y = _toy_batch(gen, shapes[step % len(shapes)])
        outs = net(x)
        outs = outs if isinstance(outs, list) else [outs]
        weights = [4 / 7, 2 / 7, 1 / 7][: len(outs)]
        loss = sum(
            w * F.cross_entropy(o, F.interpolate(y.float(), size=o.shape[2:], mode="nearest")[:, 0].long())
            for w, o in zip(weights, outs)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def test_few_optimisation_steps_reduce_loss():
    torch.manual_seed(0)
    net = UNETRPP(**SMALL)
    losses = _train(net, [(16, 32, 32)], steps=12)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


def test_resolution_agnostic_mode_runs_at_two_sizes_and_learns():
    torch.manual_seed(0)
    net = UNETRPP(**{**SMALL, "ef_mode": "pool"})
    # only the positional embeddings (interpolated) depend on the reference grid; E/F are p x p
    assert all(p.shape == (8, 8) for k, p in net.named_parameters() if k.endswith("E.weight"))
    with torch.no_grad():
        for shape in [(16, 32, 32), (32, 48, 16), (16, 16, 64)]:
            assert tuple(net.eval()(torch.randn(1, 1, *shape)).shape) == (1, 3, *shape)
    with pytest.raises(InputSizeError, match="divisible"):
        net(torch.randn(1, 1, 16, 24, 32))
    losses = _train(net, [(16, 32, 32), (32, 32, 16)], steps=16)
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4]), losses
    # it learned the task, not the patch: evaluate at a size never seen in training
    gen = torch.Generator().manual_seed(5)
    x, y = _toy_batch(gen, (16, 48, 48), n=2)
    with torch.no_grad():
        pred = net.eval()(x).argmax(1)
    fg = y[:, 0] > 0
    assert ((pred > 0) == fg).float().mean() > 0.9
    assert (pred[fg] > 0).float().mean() > 0.5


def test_benchmark_quick_smoke(tmp_path):
    import importlib.util

    from pipeline.paths import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location("unetrpp_forward", PROJECT_ROOT / "benchmarks" / "unetrpp_forward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "section.md"
    assert module.main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("## UNETR++ forward") and "--quick" in text and "| `small_param_sum` |" in text
