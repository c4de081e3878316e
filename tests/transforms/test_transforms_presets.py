"""Preprocessing presets (data), builders, intensity maths, train transforms, and Invertd round trips on real CT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from pipeline.errors import UsageError
from pipeline.transforms import (
    PREPROCESSING_PRESETS,
    build_preprocessing,
    build_train_transforms,
    resolve_preset,
)


def _mt(arr: np.ndarray, affine: np.ndarray | None = None) -> MetaTensor:
    return MetaTensor(
        torch.as_tensor(arr, dtype=torch.float32),
        affine=torch.as_tensor(np.eye(4) if affine is None else affine, dtype=torch.float64),
    )


def test_presets_are_json_data_with_required_names() -> None:
    assert {"ct_abdomen", "ct_nnunet", "mri_zscore", "mri_hippocampus", "ct_sts", "ct_lung"} <= set(
        PREPROCESSING_PRESETS
    )
    json.dumps(PREPROCESSING_PRESETS)  # pure data
    ct = PREPROCESSING_PRESETS["ct_abdomen"]
    assert ct["orientation"] == "RAS" and ct["spacing"] == [1.5, 1.5, 2.0]
    assert (ct["intensity"]["a_min"], ct["intensity"]["a_max"], ct["intensity"]["clip"]) == (-175.0, 250.0, True)
    assert PREPROCESSING_PRESETS["mri_hippocampus"]["spacing"] == [1.0, 1.0, 1.0]
    for name in PREPROCESSING_PRESETS:
        if name != "ct_nnunet":
            build_preprocessing(name)  # every preset builds
    with pytest.raises(UsageError, match="unknown preprocessing preset"):
        build_preprocessing("nope")
    with pytest.raises(UsageError, match="unknown keys"):
        build_preprocessing({"intensity": {"type": "window", "a_min": 0, "a_max": 1}, "bogus": 1})


def test_ct_window_values() -> None:
    arr = np.array([-1000.0, -175.0, 37.5, 250.0, 3000.0]).reshape(1, 5, 1, 1)
    pre = build_preprocessing(
        {"orientation": None, "spacing": None, "intensity": PREPROCESSING_PRESETS["ct_abdomen"]["intensity"]},
        keys=("image",),
        load=False,
    )
    np.testing.assert_allclose(pre({"image": _mt(arr)})["image"].numpy().ravel(), [0, 0, 0.5, 1, 1], atol=1e-6)


def test_nnunet_ct_needs_numbers_and_applies_clip_then_zscore(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="fingerprint"):
        build_preprocessing("ct_nnunet")
    fp = {
        "median_spacing": [0.8, 0.8, 3.0],
        "foreground_intensity": {
            "0": {"percentile_00_5": -100.0, "percentile_99_5": 300.0, "mean": 50.0, "std": 100.0}
        },
    }
    path = tmp_path / "fp.json"
    path.write_text(json.dumps(fp))
    spec = resolve_preset("ct_nnunet", fingerprint=path)
    assert spec["spacing"] == [0.8, 0.8, 3.0] and spec["intensity"]["mean"] == 50.0
    pre = build_preprocessing("ct_nnunet", keys=("image",), load=False, fingerprint=path, spacing=(1.0, 1.0, 1.0))
    x = np.array([-1000.0, -100.0, 50.0, 150.0, 300.0, 2000.0]).reshape(1, 6, 1, 1)
    expect = (np.clip(x, -100, 300) - 50) / 100
    np.testing.assert_allclose(pre({"image": _mt(x)})["image"].numpy().ravel(), expect.ravel(), atol=1e-5)
    explicit = resolve_preset("ct_nnunet", intensity={"lower": -1, "upper": 1, "mean": 0, "std": 2}, spacing=[1, 1, 1])
    assert explicit["intensity"]["std"] == 2


def test_mri_presets_normalise_each_image_whatever_its_scale(rng: np.random.Generator) -> None:
    """Hippocampus intensities range from uint8 to 1.7e6: per-image normalisation makes them comparable."""
    base = rng.gamma(2.0, 1.0, size=(1, 12, 12, 12)) + 0.1
    base[:, :2] = 0  # background zeros stay out of the statistics
    pre = build_preprocessing("mri_zscore", keys=("image",), load=False)
    small, huge = (pre({"image": _mt(base * s)})["image"].numpy() for s in (1.0, 1.7e6))
    np.testing.assert_allclose(small, huge, atol=1e-4)
    nz = small[:, 2:]
    assert abs(nz.mean()) < 1e-4 and abs(nz.std() - 1) < 1e-3
    assert np.all(small[:, :2] == 0)


def test_real_hippocampus_cases_end_up_on_one_scale(shared_data: Path) -> None:
    from pipeline.data.readers import read_dataset

    items = read_dataset(shared_data / "Task04_Hippocampus").splits["training"][:6]
    pre = build_preprocessing("mri_hippocampus")
    maxima, stds = [], []
    for it in items:
        out = pre(it)
        img, lab = out["image"].numpy(), out["label"].numpy()
        assert img.shape == lab.shape and set(np.unique(lab)) <= {0, 1, 2}
        maxima.append(float(img.max()))
        stds.append(float(img[img != 0].std()))
    assert max(maxima) < 10 and all(abs(s - 1) < 0.05 for s in stds)


@pytest.mark.parametrize(
    "preset,image,label",
    [
        ("ct_sts", "STS_CT/imagesTr/sts_001.nii.gz", "STS_CT/labelsTr/sts_001.nii.gz"),
        ("ct_abdomen", "BTCV_like/imagesTr/img0002.nii.gz", "BTCV_like/labelsTr/label0002.nii.gz"),
    ],
)
def test_invertd_round_trip_restores_shape_and_affine(shared_data: Path, preset: str, image: str, label: str) -> None:
    """Preprocess (orientation + spacing + crop) then Invertd: the original grid comes back exactly."""
    from pipeline.data.io import load_volume

    pre = build_preprocessing(preset)
    out = pre({"image": str(shared_data / image), "label": str(shared_data / label)})
    orig = load_volume(shared_data / label, dtype=None)
    assert tuple(out["image"].shape) != tuple(orig.shape)  # the preprocessing did change the grid
    out["pred"] = out["label"].clone()
    inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True)(out)["pred"]
    assert tuple(inv.shape) == tuple(orig.shape)
    np.testing.assert_array_equal(inv.affine.numpy(), orig.affine.numpy())
    agree = float((inv.numpy() == orig.numpy()).mean())
    assert agree > 0.99  # nearest resampling there and back keeps the label (exactly for orientation-only steps)


def test_dicom_preprocessing_and_inversion(shared_data: Path) -> None:
    pre = build_preprocessing("ct_abdomen", keys=("image",))
    out = pre({"image": str(shared_data / "BTCV_like/dicom/ct_series")})
    assert out["image"].shape[0] == 1 and 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    np.testing.assert_allclose(np.abs(np.diag(out["image"].affine.numpy())[:3]), [1.5, 1.5, 2.0], atol=1e-6)
    out["pred"] = out["image"].clone()
    inv = Invertd(keys="pred", transform=pre, orig_keys="image")(out)["pred"]
    assert tuple(inv.shape) == (1, 512, 512, 20)


def test_train_transforms_patches(shared_data: Path) -> None:
    item = {
        "image": str(shared_data / "Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz"),
        "label": str(shared_data / "Task04_Hippocampus/labelsTr/hippocampus_001.nii.gz"),
    }
    t = build_train_transforms("mri_hippocampus", roi_size=(64, 64, 32), num_samples=3, affine_prob=1.0)
    t.set_random_state(0)
    samples = t(item)
    assert len(samples) == 3
    for s in samples:
        assert tuple(s["image"].shape) == (1, 64, 64, 32) and tuple(s["label"].shape) == (1, 64, 64, 32)
        assert set(np.unique(s["label"].numpy())) <= {0, 1, 2}
    t2 = build_train_transforms(
        "mri_hippocampus", roi_size=(16, 16, 16), num_samples=4, crop="class_balanced", num_classes=3, ratios=[0, 1, 1]
    )
    t2.set_random_state(1)
    for s in t2(item):  # background ratio 0: every patch is centred on an organ voxel
        assert s["label"].numpy().max() > 0
    with pytest.raises(UsageError, match="roi_size"):
        build_train_transforms("ct_abdomen", roi_size=(64, 64))
    with pytest.raises(UsageError, match="num_classes"):
        build_train_transforms("ct_abdomen", roi_size=(8, 8, 8), crop="class_balanced")


def test_preprocessing_summary_keeps_going_after_a_bad_case(shared_data: Path, tmp_path: Path) -> None:
    from pipeline.data.readers import read_dataset
    from pipeline.transforms import format_preprocessing_summary, summarise_preprocessing

    items = read_dataset(shared_data / "Task04_Hippocampus").splits["training"][:2]
    items.append({"image": str(tmp_path / "gone.nii.gz"), "case": "gone"})
    rows = summarise_preprocessing(items, "mri_hippocampus")
    assert [r["case"] for r in rows] == ["hippocampus_001", "hippocampus_003", "gone"]
    assert rows[0]["shape"] == [35, 51, 35] and abs(rows[0]["std"] - 1) < 0.1 and rows[0]["label_counts"][1] > 0
    assert "gone.nii.gz" in rows[2]["error"] and "preprocessing failed" in rows[2]["error"]
    table = format_preprocessing_summary(rows)
    assert "| hippocampus_001 | 35x51x35 @ 1x1x1 |" in table and "FAILED" in table
