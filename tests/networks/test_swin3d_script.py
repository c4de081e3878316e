"""SwinUnet3D under TorchScript: MONAI's ckpt_export scripts bundle networks (``torch.jit.script`` by default).

Every preset and option compiles; the scripted network keeps the state dict and, after a save/load, gives the eager
outputs and errors. The scripted calls skip TorchScript's optimisation passes (seconds per graph);
``test_bundle_modelzoo.py`` runs exported networks with the default executor.
"""

from __future__ import annotations

import pytest
import torch
from monai.networks.layers import DropPath as MonaiDropPath

from pipeline.networks import create_network
from pipeline.networks.swin3d.layers import DropPath

from helpers.swin3d import PRESET_NAMES, SMALL, SMALL_ROI

#: non-preset options, each compiled in a network of its own
VARIANTS = {
    "naive_saf_cnn": dict(
        attn_impl="naive",
        skip_fusion="saf",
        encoder_saf=True,
        saf_fusion="sum",
        cnn_branch=True,
        final_upsample="expand_to_logits",
        skip_source="stage_output",
    ),
    "lgt_head_split": dict(block="lgt", lgt_mode="head_split", lgt_share_qkv=False, num_heads=(2, 2, 4, 8)),
    "oktay_gates": dict(skip_fusion="attention_gate", gate_mode="oktay"),
    "checkpointed": dict(use_checkpoint=True),
}
CASES = [(name, {}) for name in PRESET_NAMES] + [("swinunet3d", kwargs) for kwargs in VARIANTS.values()]
IDS = list(PRESET_NAMES) + list(VARIANTS)


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_torch_jit_script_presets_and_options(name, options, tmp_path):
    torch.manual_seed(0)
    net = create_network(name, **{**SMALL, **options}).eval()
    scripted = torch.jit.script(net)
    eager_state, scripted_state = net.state_dict(), scripted.state_dict()
    assert all(torch.equal(scripted_state[k], v) for k, v in eager_state.items())
    # TorchScript also lists the non-persistent buffers (window gather orders, shift masks); the weights are the same
    non_persistent = {f"{m}.{b}" for m, module in net.named_modules() for b in module._non_persistent_buffers_set}
    assert set(scripted_state) - set(eager_state) == non_persistent
    path = tmp_path / "net.ts"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    # batch 2: the shifted-window attention runs one sample at a time
    x = torch.randn(2, 1, *SMALL_ROI, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        ref = net(x)
        assert torch.allclose(loaded(x), ref, atol=1e-5, rtol=1e-4), float((loaded(x) - ref).abs().max())
        assert loaded.train()(x).shape == ref.shape  # stochastic depth and dropout in training mode
        with pytest.raises(torch.jit.Error, match=r"ValueError: SwinUnet3D expects input \(B, 1, 32, 32, 16\)"):
            loaded.eval()(torch.zeros(1, 1, 32, 32, 32))


def test_scripting_keeps_the_eager_training_api():
    """The guided auxiliary losses are eager-only state: scripting leaves them out and the eager network keeps them."""
    torch.manual_seed(0)
    net = create_network("swinunet3d_pamcam", **SMALL).train()
    scripted = torch.jit.script(net)
    assert not hasattr(scripted, "aux_losses")
    with torch.no_grad():
        net(torch.randn(1, 1, *SMALL_ROI))
    assert set(net.aux_losses) == {"guided", "reconstruction"} and float(net.auxiliary_loss()) > 0


def test_drop_path_matches_monai_and_compiles():
    """The scriptable DropPath draws the same random mask as MONAI's (same seed, same output), eager or scripted."""
    x = torch.randn(6, 4, 3, 3, 2)
    outs = []
    for module in (MonaiDropPath(0.4), DropPath(0.4), torch.jit.script(DropPath(0.4))):
        torch.manual_seed(0)
        outs.append(module.train()(x))
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    kept = outs[0].flatten(1).abs().sum(1) > 0
    assert 0 < int(kept.sum()) < 6  # some samples dropped, some kept (scaled by 1 / 0.6)
    assert torch.allclose(outs[0][kept], x[kept] / 0.6)
    assert torch.equal(DropPath(0.4).eval()(x), x)
