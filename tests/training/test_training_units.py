"""Unit tests of the training pieces: loss, optimizer presets, poly LR, resumable checkpoints, overrides,
bundle_root."""

from __future__ import annotations

import json
import os

import pytest
import torch
from ignite.engine import Engine, Events

from pipeline.errors import ModelError, UsageError
from pipeline.training import (
    DiceCEDeepSupervisionLoss,
    EpochSeeder,
    ResumableCheckpoint,
    build_optimizer,
    build_poly_scheduler,
    deep_supervision_weights,
    poly_lr,
)
from pipeline.training.bundle import bundle_root
from pipeline.training.checkpoint import load_training_state
from pipeline.training.cli import parse_overrides


def test_deep_supervision_weights_and_loss():
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    loss = DiceCEDeepSupervisionLoss()
    label = torch.zeros(1, 1, 8, 8, 8)
    label[:, :, 2:6, 2:6, 2:6] = 1
    perfect = torch.cat([10 * (1 - label), 10 * label], 1)
    bad = -perfect
    assert loss(perfect, label) < 0.01 < loss(bad, label)
    # coarse heads get nearest-resized targets; a list is the weighted sum of the per-scale losses
    coarse = torch.nn.functional.interpolate(perfect, size=(4, 4, 4), mode="nearest")
    ds = loss([bad, coarse], label)
    expected = 2 / 3 * loss(bad, label) + 1 / 3 * loss(coarse, torch.nn.functional.interpolate(label, size=(4, 4, 4)))
    assert ds == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="label map"):
        loss(perfect, torch.zeros(1, 2, 8, 8, 8))


def test_optimizer_presets_and_poly_lr():
    net = torch.nn.Linear(3, 1)
    sgd = build_optimizer(net, "sgd_nnunet")
    assert sgd.defaults["momentum"] == 0.99 and sgd.defaults["nesterov"] and sgd.defaults["lr"] == 0.01
    adamw = build_optimizer(net.parameters(), "adamw", lr=3e-4)
    assert type(adamw).__name__ == "AdamW" and adamw.defaults["lr"] == 3e-4
    with pytest.raises(ValueError, match="unknown optimizer preset"):
        build_optimizer(net, "lion")
    sched = build_poly_scheduler(sgd, max_epochs=10)
    for epoch in range(1, 10):
        sgd.step()
        sched.step()
        assert sgd.param_groups[0]["lr"] == pytest.approx(poly_lr(epoch, 10, 0.01))


def _engine(net, opt, sched):
    def step(engine, batch):
        opt.zero_grad()
        loss = net(torch.randn(4, 3)).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    engine = Engine(step)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
    return engine


def test_checkpoint_roundtrip_keeps_previous_and_resumes(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = build_optimizer(net, "sgd_nnunet")
    sched = build_poly_scheduler(opt, 4)
    engine = _engine(net, opt, sched)
    ResumableCheckpoint(tmp_path, {"model": net, "optimizer": opt, "lr_scheduler": sched}).attach(engine)
    EpochSeeder(seed=3).attach(engine)
    engine.run(range(5), max_epochs=2)
    ckpt, path = load_training_state(tmp_path)
    assert path.name == "checkpoint.pt" and ckpt["trainer"]["epoch"] == 2 and ckpt["trainer"]["iteration"] == 10
    prev = torch.load(tmp_path / "checkpoint_prev.pt", weights_only=True)
    assert prev["trainer"]["epoch"] == 1
    # a fresh process state resumes and continues with epochs 3-4
    net2 = torch.nn.Linear(3, 1)
    opt2 = build_optimizer(net2, "sgd_nnunet")
    sched2 = build_poly_scheduler(opt2, 4)
    engine2 = _engine(net2, opt2, sched2)
    ck = ResumableCheckpoint(tmp_path, {"model": net2, "optimizer": opt2, "lr_scheduler": sched2}, resume=True)
    ck.attach(engine2)
    started = []
    engine2.add_event_handler(Events.EPOCH_STARTED, lambda e: started.append(e.state.epoch))
    engine2.run(range(5), max_epochs=4)
    assert ck.loaded_from is not None and started == [3, 4]
    assert sched2.last_epoch == 4
    # a truncated newest checkpoint falls back to the previous one
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    assert load_training_state(tmp_path)[1].name == "checkpoint_prev.pt"
    (tmp_path / "checkpoint_prev.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot read the training checkpoint"):
        load_training_state(tmp_path)


def test_checkpoint_that_does_not_fit_is_a_model_error(tmp_path):
    net = torch.nn.Linear(3, 1)
    engine = Engine(lambda e, b: None)
    ResumableCheckpoint(tmp_path, {"model": net}).attach(engine)
    engine.run([0], max_epochs=1)
    other = torch.nn.Linear(4, 1)
    engine2 = Engine(lambda e, b: None)
    ResumableCheckpoint(tmp_path, {"model": other}, resume=True).attach(engine2)
    with pytest.raises(ModelError, match="does not fit"):
        engine2.run([0], max_epochs=2)


def test_parse_overrides():
    assert parse_overrides(["a#b=2", "c=[1, 2]", "d=text", "e=$torch.device('cpu')"]) == {
        "a#b": 2,
        "c": [1, 2],
        "d": "text",
        "e": "$torch.device('cpu')",
    }
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def test_bundle_root_follows_the_config_file(tmp_path):
    """``python -m monai.bundle run`` from another folder, with the CLI's list form and a relative path: the root is
    the config's bundle, read from the command line (no call-stack inspection)."""
    import subprocess
    import sys

    bundle = tmp_path / "my_bundle"
    (bundle / "configs").mkdir(parents=True)
    cfg = {
        "imports": ["$import pipeline", "$import pipeline.training.bundle"],
        "bundle_root": "$pipeline.training.bundle.bundle_root('unknown_name')",
        "run": ["$print('BUNDLE_ROOT=' + @bundle_root)"],
    }
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "['my_bundle/configs/inference.json']"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"BUNDLE_ROOT={bundle.resolve()}" in res.stdout.splitlines()
    # outside a monai.bundle process: the project's bundle of that name, else the working directory
    assert bundle_root("unetrpp_hippocampus_mri_segmentation").endswith("unetrpp_hippocampus_mri_segmentation")
    assert bundle_root("no_such_bundle") == os.getcwd()


@pytest.mark.parametrize(
    "setting, env, shown",
    [(True, None, True), (False, None, False), (None, None, False), (None, "1", True), (True, "0", False)],
)
def test_progress_bar_shows_the_loss_only_when_enabled(setting, env, shown, capsys, monkeypatch):
    from pipeline.training import ProgressBar

    if env is None:
        monkeypatch.delenv("MEDSEG_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("MEDSEG_PROGRESS", env)
    engine = Engine(lambda e, batch: {"loss": torch.tensor(0.125 * batch)})
    ProgressBar(enabled=setting, desc="train").attach(engine)  # None: auto, and pytest's stderr is not a terminal
    engine.run([1, 2, 3], max_epochs=1)
    err = capsys.readouterr().err
    assert ("loss=0.375" in err and "train" in err) if shown else err == ""


def test_learning_curve_from_a_resumed_log(tmp_path):
    from pipeline.training.curve import epoch_table, main, read_epochs

    log = tmp_path / "training_log.jsonl"
    records = [
        {"epoch": 1, "iteration": 2, "epoch_loss": 0.9, "seconds": 5.0},
        {"epoch": 2, "iteration": 3, "loss": 0.7, "lr": 0.01},  # killed mid-epoch 2 ...
        {"epoch": 2, "iteration": 4, "epoch_loss": 0.6, "seconds": 4.0, "val_mean_dice": 0.71},  # ... and resumed
        {"epoch": 3, "iteration": 6, "epoch_loss": 0.5, "seconds": 4.0},
    ]
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    epochs = read_epochs(log)
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    table = epoch_table(epochs).splitlines()
    assert table[0].startswith("| epoch | iterations |") and "mean_dice" in table[0]
    assert table[3] == "| 2 | 4 | 0.6000 | 0.7100 | 4 |" and table[4] == "| 3 | 6 | 0.5000 | - | 4 |"
    png = tmp_path / "curve.png"
    assert main([str(log), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log.write_text('{"epoch": 1, "epoch_loss": 0.9}\nnot json\n')
    assert main([str(log)]) == 3


def test_gradient_clip_handler_clips_and_disabled_leaves_gradients():
    """``max_norm`` clips the global gradient norm; ``None``/``<= 0`` disables clipping even when the handler is
    called directly (it used to raise for None, zero the gradients for 0 and flip their sign for a negative value)."""
    from types import SimpleNamespace

    from pipeline.training.handlers import GradientClipHandler

    def engine_with_grads() -> SimpleNamespace:
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 3)
        net(torch.full((2, 4), 50.0)).square().sum().backward()
        return SimpleNamespace(optimizer=torch.optim.SGD(net.parameters(), lr=0.1), amp=False)

    def grads(engine: SimpleNamespace) -> list[torch.Tensor]:
        return [p.grad.clone() for g in engine.optimizer.param_groups for p in g["params"]]

    engine = engine_with_grads()
    assert torch.linalg.vector_norm(torch.cat([g.ravel() for g in grads(engine)])) > 1.0
    GradientClipHandler(1.0)(engine)
    assert torch.linalg.vector_norm(torch.cat([g.ravel() for g in grads(engine)])) == pytest.approx(1.0, rel=1e-4)
    for disabled in (None, 0.0, -1.0):
        engine = engine_with_grads()
        before = grads(engine)
        GradientClipHandler(disabled)(engine)
        assert all(torch.equal(a, b) for a, b in zip(before, grads(engine))), disabled
