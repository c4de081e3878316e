"""Dataset fingerprint: exact statistics on a synthetic dataset, and the ct_nnunet preset driven by it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.fingerprint import compute_fingerprint, write_fingerprint
from pipeline.errors import InputDataError

from helpers.data import write_json, write_nifti


def _dataset(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    root = tmp_path / "Task97_Fp"
    fg_values = []
    entries = []
    for i, z in enumerate((2.0, 3.0, 5.0)):
        img = rng.normal(0, 10, size=(8, 9, 6)).astype(np.float32) - 1000
        lab = np.zeros((8, 9, 6), np.uint8)
        lab[2:5, 2:6, 1:4] = 1
        lab[6, 6, 4] = 2
        img[lab > 0] = rng.normal(40 + 10 * i, 5, size=int((lab > 0).sum()))
        fg_values.append(img[lab > 0])
        aff = np.diag([0.7, 0.7 + 0.1 * i, z, 1.0])
        write_nifti(root / "imagesTr" / f"fp_{i}.nii.gz", img, aff)
        write_nifti(root / "labelsTr" / f"fp_{i}.nii.gz", lab, aff)
        entries.append({"image": f"./imagesTr/fp_{i}.nii.gz", "label": f"./labelsTr/fp_{i}.nii.gz"})
    write_json(
        root / "dataset.json",
        {
            "modality": {"0": "CT"},
            "training": entries,
            "labels": {"0": "background", "1": "organ", "2": "dot", "3": "never"},
        },
    )
    return root, np.concatenate(fg_values)


def test_fingerprint_values(tmp_path: Path, rng: np.random.Generator) -> None:
    root, fg = _dataset(tmp_path, rng)
    fp = compute_fingerprint(root)
    assert fp["num_cases"] == 3 and fp["axis_order"] == "xyz"
    np.testing.assert_allclose(fp["median_spacing"], [0.7, 0.8, 3.0], rtol=1e-6)
    st = fp["foreground_intensity"]["0"]
    assert st["n_voxels"] == fg.size == 3 * (3 * 4 * 3 + 1)
    np.testing.assert_allclose(st["mean"], fg.astype(np.float64).mean(), rtol=1e-6)
    np.testing.assert_allclose(st["std"], fg.astype(np.float64).std(), rtol=1e-5)
    np.testing.assert_allclose(
        [st["percentile_00_5"], st["percentile_99_5"]], np.percentile(fg.astype(np.float64), [0.5, 99.5]), rtol=1e-5
    )
    assert fp["class_voxel_counts"] == {"0": 3 * (8 * 9 * 6 - 37), "1": 108, "2": 3, "3": 0}
    assert fp["class_case_counts"]["2"] == 3 and fp["class_case_counts"]["3"] == 0
    assert fp["normalisation"]["nnunet_ct"]["mean"] == st["mean"]
    out = write_fingerprint(fp, tmp_path / "fp.json")
    with pytest.raises(FileExistsError):
        write_fingerprint(fp, out)
    assert json.loads(out.read_text())["median_spacing"] == fp["median_spacing"]


def test_fingerprint_drives_ct_nnunet(tmp_path: Path, rng: np.random.Generator) -> None:
    from pipeline.transforms import build_preprocessing

    root, fg = _dataset(tmp_path, rng)
    fp = compute_fingerprint(root)
    pre = build_preprocessing("ct_nnunet", fingerprint=fp)
    out = pre({"image": str(root / "imagesTr/fp_1.nii.gz"), "label": str(root / "labelsTr/fp_1.nii.gz")})
    np.testing.assert_allclose(np.abs(np.diag(out["image"].affine.numpy())[:3]), fp["median_spacing"], rtol=1e-5)
    st = fp["foreground_intensity"]["0"]
    lo = (st["percentile_00_5"] - st["mean"]) / st["std"]
    assert float(out["image"].min()) == pytest.approx(lo, rel=1e-4)  # air clipped to the 0.5 percentile


def test_fingerprint_real_lung(shared_data: Path) -> None:
    fp = compute_fingerprint(shared_data / "Task06_Lung_sample")
    st = fp["foreground_intensity"]["0"]
    assert fp["modality"] == {"0": "CT"} and st["n_voxels"] == 837 + 24644
    assert -1024 <= st["percentile_00_5"] < st["mean"] < st["percentile_99_5"] <= 3071
    np.testing.assert_allclose(fp["median_spacing"][2], 5.0, rtol=1e-5)


def test_fingerprint_errors(tmp_path: Path, rng: np.random.Generator) -> None:
    write_nifti(tmp_path / "only" / "a.nii.gz", rng.random((3, 3, 3)).astype(np.float32))
    with pytest.raises(InputDataError, match="no labelled cases"):
        compute_fingerprint(tmp_path / "only")
