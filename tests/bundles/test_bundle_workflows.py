"""ConfigWorkflow smoke runs of every bundle, as the model zoo's CI does: train (1 tiny epoch), evaluate, infer.

Each run uses small synthetic NIfTI volumes, a small ROI and (for the large presets) reduced network widths, asserts
``check_properties() == []`` and checks what the run wrote.
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from helpers.bundles import BUNDLES, SMOKE, bundle_dir, write_cases


def _run(workflow: ConfigWorkflow) -> None:
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()


@pytest.mark.parametrize("name", BUNDLES)
def test_train_evaluate_infer(name, tmp_path):
    root, spec = bundle_dir(name), SMOKE[name]
    items = write_cases(tmp_path / "data", spec, n=3)
    common = {
        **spec.overrides(),
        "dataset_dir": str(tmp_path / "data"),
        "train_datalist": items[:2],
        "val_datalist": items[2:],
        "ckpt_dir": str(tmp_path / "models"),
        "train_dir": str(tmp_path / "runs"),
        "output_dir": str(tmp_path / "eval"),
        "train#trainer#max_epochs": 1,
        "val_interval": 1,
        "device": "$torch.device('cpu')",
    }
    configs = root / "configs"

    # train: one epoch, validation, best-metric weights and a resumable checkpoint
    _run(ConfigWorkflow(config_file=str(configs / "train.json"), workflow_type="train", **common))
    weights = tmp_path / "models" / "model.pt"
    assert weights.is_file()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values()), "model.pt must be a plain state dict"
    ckpt = torch.load(tmp_path / "runs" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "rng"} <= set(ckpt)
    assert ckpt["trainer"]["epoch"] == 1
    log = [json.loads(line) for line in (tmp_path / "runs" / "training_log.jsonl").read_text().splitlines()]
    assert any("val_mean_dice" in r for r in log)
    assert all(np.isfinite(r.get("loss", r.get("epoch_loss"))) for r in log)

    # evaluate: [train.json, evaluate.json], metrics in the original image space, predictions saved
    _run(
        ConfigWorkflow(
            config_file=[str(configs / "train.json"), str(configs / "evaluate.json")],
            workflow_type="train",
            save_predictions=True,
            **common,
        )
    )
    with open(tmp_path / "eval" / "metrics.csv") as f:
        rows = dict(csv.reader(f))
    assert 0.0 <= float(rows["val_mean_dice"]) <= 1.0
    saved = nib.load(str(tmp_path / "eval" / "case002_img.nii.gz"))
    assert saved.shape == spec.shape

    # infer: sliding window, inverted to the input grid, uint8 labels
    infer = {
        **spec.overrides(),
        "dataset_dir": str(tmp_path / "data"),
        "datalist": [{"image": items[2]["image"]}],
        "output_dir": str(tmp_path / "infer"),
        "ckpt_path": str(weights),
        "device": "$torch.device('cpu')",
    }
    _run(ConfigWorkflow(config_file=str(configs / "inference.json"), workflow_type="infer", **infer))
    out = nib.load(str(tmp_path / "infer" / "case002_img.nii.gz"))
    src = nib.load(items[2]["image"])
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    assert out.get_data_dtype() == np.uint8
    assert int(np.asarray(out.dataobj).max()) < spec.num_classes
