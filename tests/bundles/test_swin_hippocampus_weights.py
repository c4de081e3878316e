"""The shipped 3D Swin-Unet hippocampus weights (``swinunet3d_transfuse``, from the ablation) segment real validation
cases through ``medseg demo --bundle`` and ``python -m monai.bundle run``."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch

from pipeline import demo
from pipeline.networks.swin3d import SwinUnet3D
from pipeline.paths import BUNDLES_DIR

from helpers.bundles import run_bundle_inference

BUNDLE = BUNDLES_DIR / "swinunet3d_hippocampus_mri_segmentation"


def test_shipped_weights_reach_dsc_08_on_three_validation_cases(tmp_path, shared_data):
    weights = BUNDLE / "models" / "model.pt"
    assert weights.is_file(), f"{weights} is shipped with the project"
    summary = demo.run_demo(
        tmp_path / "d", data_root=str(shared_data), download=False, limit=3, overlays=1, bundle=BUNDLE
    )
    datalist = json.loads((BUNDLE / "configs" / "datalist.json").read_text())
    first = [d["image"].split("/")[-1].split(".")[0] for d in datalist["validation"][:3]]
    assert [r["case"] for r in summary["per_case"]] == first
    # hippocampus_008, _038, _045 scored 0.910, 0.867 and 0.900 (mean of the two classes) when the weights were shipped
    assert summary["mean_dice"]["mean"] >= 0.8, summary["per_case"]
    for row in summary["per_case"]:
        assert min(v for k, v in row.items() if k.startswith("dice_")) >= 0.75, row
        assert max(v for k, v in row.items() if k.startswith("hd95_")) < 5.0, row  # mm


def test_weights_are_the_transfuse_variant_of_the_config(tmp_path):
    """The config's default ``network_preset`` builds the network the weights fit (strict load), with the fusion
    branch; the plain variant does not fit them."""
    from monai.bundle import ConfigParser

    state = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    assert parser["network_preset"] == "swinunet3d_transfuse"
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, SwinUnet3D) and net.load_state_dict(state, strict=True).missing_keys == []
    assert sum(p.numel() for p in net.parameters()) == 12_703_623
    parser["network_preset"] = "swinunet3d"
    plain = parser.get_parsed_content("network_def", lazy=False)
    assert set(plain.state_dict()) != set(state)


def test_monai_bundle_run_from_another_folder(tmp_path, shared_data):
    """``python -m monai.bundle run`` with the shipped weights, run from an unrelated working directory, writes a
    label map for a real case."""
    image = shared_data / "Task04_Hippocampus" / "imagesTr" / "hippocampus_008.nii.gz"
    proc = run_bundle_inference(BUNDLE / "configs" / "inference.json", image, tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = list((tmp_path / "out").rglob("*.nii.gz"))
    assert len(written) == 1
    labels = nib.load(str(written[0]))
    assert labels.shape == nib.load(str(image)).shape
    assert set(np.unique(np.asarray(labels.dataobj)).tolist()) == {0, 1, 2}
