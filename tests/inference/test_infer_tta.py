"""``medseg infer --tta``: the mirror axes come from the bundle (the axes flipped in training), can be overridden, and
are recorded in the sidecar; the trained hippocampus model keeps its accuracy with TTA."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.evaluation import evaluate_case
from pipeline.inference import load_model
from pipeline.paths import BUNDLES_DIR

HIPPO = BUNDLES_DIR / "unetrpp_hippocampus_mri_segmentation"


def test_bundle_declares_its_training_flip_axes():
    # the hippocampus recipe flips left-right only (RandFlipd spatial_axis 0): TTA must not flip other axes
    train = json.loads((HIPPO / "configs" / "train.json").read_text())
    flips = [t for t in train["train"]["random_transforms"] if t["_target_"] == "RandFlipd"]
    assert [f["spatial_axis"] for f in flips] == [0]
    if (HIPPO / "models" / "model.pt").is_file():
        assert load_model(HIPPO).mirror_axes == (0,)


def test_bad_mirror_axes_in_bundle_is_one_line_model_error(tmp_path, capsys):
    bundle = tmp_path / "b"
    shutil.copytree(HIPPO / "configs", bundle / "configs")
    cfg = json.loads((bundle / "configs" / "inference.json").read_text())
    cfg["tta_mirror_axes"] = [0, 5]
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").symlink_to(HIPPO / "models" / "model.pt")
    if not (HIPPO / "models" / "model.pt").is_file():
        pytest.skip("the hippocampus weights are absent")
    rc = main(
        [
            "infer",
            "--model",
            str(bundle),
            "--input",
            str(tmp_path / "none.nii.gz"),
            "--output",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc in (3, 4) and len(err) == 1 and err[0].startswith("error:")
    assert rc == 3 or "tta_mirror_axes" in err[0]


@pytest.mark.parametrize("value", ["3", "x", ""])
def test_bad_tta_axes_option_exits_2(tmp_path, value, capsys):
    img = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), img)
    argv = [
        "infer",
        "--model",
        str(HIPPO),
        "--input",
        str(img),
        "--output",
        str(tmp_path / "o"),
        "--tta",
        "--tta-axes",
        value,
    ]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    assert rc == 2
    assert "--tta-axes" in capsys.readouterr().err
    assert not (tmp_path / "o" / "img.nii.gz").exists()


def test_tta_on_the_trained_hippocampus_model(tmp_path, shared_data):
    if not (HIPPO / "models" / "model.pt").is_file():
        pytest.skip("the hippocampus weights are absent")
    case = "hippocampus_008"  # a validation case of the bundle's datalist
    image = shared_data / "Task04_Hippocampus" / "imagesTr" / f"{case}.nii.gz"
    label_img = nib.load(shared_data / "Task04_Hippocampus" / "labelsTr" / f"{case}.nii.gz")
    label = np.asarray(label_img.dataobj).astype(np.uint8)
    spacing = tuple(float(s) for s in label_img.header.get_zooms()[:3])

    def run(name: str, *extra: str) -> tuple[float, dict]:
        out = tmp_path / name
        assert (
            main(["infer", "--model", str(HIPPO), "--input", str(image), "--output", str(out), "--quiet", *extra]) == 0
        )
        pred = np.asarray(nib.load(out / f"{case}.nii.gz").dataobj).astype(np.uint8)
        rows = evaluate_case(pred, label, spacing, {1: "anterior", 2: "posterior"}, protocol="strict")
        return float(np.mean([r["dice"] for r in rows])), json.loads((out / f"{case}.json").read_text())

    plain, side_plain = run("plain")
    tta, side_tta = run("tta", "--tta")
    assert side_plain["settings"]["tta_axes"] is None
    assert side_tta["settings"]["tta_axes"] == [0] and side_tta["model"]["mirror_axes"] == [0]
    assert tta > 0.85 and abs(tta - plain) < 0.02, (plain, tta)
    _, side_all = run("all", "--tta", "--tta-axes", "0,1,2")
    assert side_all["settings"]["tta_axes"] == [0, 1, 2]
