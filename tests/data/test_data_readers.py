"""Dataset readers (every layout), official split files, the TransUNet loaders and the label-map derivation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.readers import (
    case_number,
    detect_layout,
    fold_split,
    load_split_file,
    read_dataset,
)
from pipeline.errors import InputDataError, UsageError

from helpers.bad_inputs import folder
from helpers.data import SAMED_RAW_TO_TU, build_nnunet_v2, build_transunet, link, write_json, write_nifti

# ----------------------------------------------------------------------------------------------------- synthetic MSD


def _msd(tmp_path: Path, rng: np.random.Generator, *, four_d: bool = False) -> Path:
    root = tmp_path / "Task99_Toy"
    shape = (6, 7, 5, 2) if four_d else (6, 7, 5)
    for case in ("toy_001", "toy_002"):
        write_nifti(root / "imagesTr" / f"{case}.nii.gz", rng.random(shape).astype(np.float32))
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", rng.integers(0, 3, shape[:3]).astype(np.uint8))
    write_nifti(root / "imagesTs" / "toy_101.nii.gz", rng.random(shape).astype(np.float32))
    write_json(
        root / "dataset.json",
        {
            "name": "Toy",
            "relase": "1.0 04/05/2018",
            "tensorImageSize": "4D" if four_d else "3D",
            "modality": {"0": "FLAIR", "1": "T1w"} if four_d else {"0": "MRI"},
            "labels": {"0": "background", "1": "a", "2": "b"},
            "numTraining": 2,
            "numTest": 1,
            "training": [
                {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz", "fold": i}
                for i, c in enumerate(("toy_001", "toy_002"))
            ],
            "test": ["./imagesTs/toy_101.nii.gz"],
        },
    )
    return root


def test_msd_quirks(tmp_path: Path, rng: np.random.Generator) -> None:
    root = _msd(tmp_path, rng)
    info = read_dataset(root)
    assert info.layout == "msd" and info.modality == "MRI" and info.axis_order == "xyz"
    assert info.labels == {0: "background", 1: "a", 2: "b"}
    assert [it["case"] for it in info.splits["training"]] == ["toy_001", "toy_002"]
    first = info.splits["training"][0]
    assert first["image"] == str(root / "imagesTr/toy_001.nii.gz")  # './' prefix normalised
    assert first["label"] == str(root / "labelsTr/toy_001.nii.gz")
    assert info.splits["test"] == [{"image": str(root / "imagesTs/toy_101.nii.gz"), "case": "toy_101"}]
    assert [it["case"] for it in info.splits["fold1"]] == ["toy_002"]
    train, val = fold_split(info.splits["training"], 0)
    assert [it["case"] for it in val] == ["toy_001"] and [it["case"] for it in train] == ["toy_002"]
    assert read_dataset(root / "dataset.json").layout == "msd"
    assert list(read_dataset(root, split="test").splits) == ["test"]
    with pytest.raises(UsageError, match="unknown split"):
        read_dataset(root, split="nonexistent")


def test_msd_4d_multimodal_loads_channel_first(tmp_path: Path, rng: np.random.Generator) -> None:
    from pipeline.data.check import check_dataset
    from pipeline.transforms import build_preprocessing

    root = _msd(tmp_path, rng, four_d=True)
    info = read_dataset(root)
    assert info.channels == {0: "FLAIR", 1: "T1w"}
    report = check_dataset(root)
    assert report.ok, report.to_dict()
    assert report.cases[0].channels == 2
    out = build_preprocessing("mri_zscore")(info.splits["training"][0])
    assert tuple(out["image"].shape) == (2, 6, 7, 5) and tuple(out["label"].shape) == (1, 6, 7, 5)


def test_nnunet_v1_channel_files(tmp_path: Path, rng: np.random.Generator) -> None:
    root = tmp_path / "Task098_Two"
    for ch in range(2):
        write_nifti(root / "imagesTr" / f"two_001_{ch:04d}.nii.gz", rng.random((4, 4, 4)).astype(np.float32))
    write_nifti(root / "labelsTr" / "two_001.nii.gz", np.zeros((4, 4, 4), np.uint8))
    write_json(
        root / "dataset.json",
        {
            "modality": {"0": "T1", "1": "T2"},
            "labels": {"0": "background", "1": "x"},
            "training": [{"image": "./imagesTr/two_001.nii.gz", "label": "./labelsTr/two_001.nii.gz"}],
            "test": [],
        },
    )
    info = read_dataset(root)
    assert info.layout == "nnunet_v1"
    assert info.splits["training"][0]["image"] == [str(root / f"imagesTr/two_001_{c:04d}.nii.gz") for c in range(2)]


# ------------------------------------------------------------------------------------------------------- real data


def test_real_layouts(shared_data: Path) -> None:
    expect = {
        "Task04_Hippocampus": ("msd", 200, "MRI"),
        "STS_CT": ("msd", 24, "CT"),
        "BTCV_like": ("btcv", 2, "CT"),
        "Synapse_like": ("synapse_raw", 2, "CT"),
        "Task06_Lung_sample": ("msd", 2, "CT"),
    }
    for name, (layout, n, modality) in expect.items():
        info = read_dataset(shared_data / name)
        assert (info.layout, len(info.labelled_items()), info.modality) == (layout, n, modality), name
        for it in info.labelled_items():
            assert Path(it["image"]).is_file() and Path(it["label"]).is_file()
    btcv = read_dataset(shared_data / "BTCV_like")
    assert {k: [it["case"] for it in v] for k, v in btcv.splits.items()} == {
        "training": ["img0001"],
        "validation": ["img0002"],
    }
    assert btcv.labels[13] == "lad" and len(btcv.labels) == 14
    syn = read_dataset(shared_data / "Synapse_like")
    assert [it["case"] for it in syn.splits["test"]] == ["img0001", "img0002"]  # both are Synapse test cases
    assert syn.splits["train"] == [] and len(syn.missing["train"]) == 18 and len(syn.missing["test"]) == 10
    assert detect_layout(shared_data / "Synapse_like/RawData") == "synapse_raw"
    dicom = read_dataset(shared_data / "BTCV_like/dicom")
    assert dicom.layout == "folder"
    assert dicom.splits["labelled"][0]["label"].endswith("label_series.nii.gz")


def test_official_split_files() -> None:
    syn = load_split_file("synapse")["splits"]
    assert len(syn["train"]) == 18 and len(syn["test"]) == 12 and not set(syn["train"]) & set(syn["test"])
    assert {"0001", "0008", "0038"} <= set(syn["test"]) and "0005" in syn["train"]
    btcv = load_split_file("btcv")["splits"]
    assert len(btcv["training"]) == 24 and btcv["validation"] == ["0035", "0036", "0037", "0038", "0039", "0040"]
    lung = load_split_file("lung")
    assert len(lung["splits"]["train"]) == 50 and len(lung["splits"]["validation"]) == 13
    assert not set(lung["splits"]["train"]) & set(lung["splits"]["validation"])
    assert "lung_058" in lung["splits"]["validation"] and "source" in lung
    for name in ("synapse", "btcv", "lung"):
        assert load_split_file(name)["source"]
    assert case_number("img0005") == case_number("case0005_slice012") == case_number("0005") == 5


def test_apply_lung_split(shared_data: Path) -> None:
    info = read_dataset(shared_data / "Task06_Lung_sample", split="lung")
    assert [it["case"] for it in info.splits["validation"]] == ["lung_001"]
    assert "lung_058" in info.missing["validation"]


# ----------------------------------------------------------------------------------------- TransUNet / nnU-Net v2


def test_nnunet_v2_reader(shared_data: Path, tmp_path: Path) -> None:
    from pipeline.data.check import check_dataset

    root = build_nnunet_v2(shared_data, tmp_path / "Dataset901_BTCVlike")
    info = read_dataset(root)
    assert info.layout == "nnunet_v2" and info.modality == "CT"
    assert info.labels[6] == "liver" and info.labels[0] == "background" and len(info.labels) == 14
    assert [it["case"] for it in info.splits["training"]] == ["btcv_001", "btcv_002"]
    assert info.splits["training"][0]["image"].endswith("imagesTr/btcv_001_0000.nii.gz")
    assert info.splits["training"][0]["label"].endswith("labelsTr/btcv_001.nii.gz")
    assert check_dataset(root).ok
    (root / "labelsTr" / "btcv_003.nii.gz").symlink_to(shared_data / "BTCV_like/labelsTr/label0001.nii.gz")
    report = check_dataset(root)  # a label without its channel file is listed and reported
    assert [c.case for c in report.broken] == ["btcv_003"]
    assert "image file missing" in report.broken[0].problems[0]


def test_transunet_reader_and_label_map(shared_data: Path, tmp_path: Path) -> None:
    from pipeline.data.check import check_dataset
    from pipeline.data.transunet import derive_label_map, load_h5_volume, zyx_to_xyz

    root = build_transunet(shared_data, tmp_path / "Synapse")
    info = read_dataset(root)
    assert info.layout == "transunet" and info.axis_order == "zyx"
    assert [it["case"] for it in info.splits["test"]] == ["case0001"]
    assert len(info.splits["train"]) == 3 and info.splits["train"][0]["case"].startswith("case0001_slice")
    img, lab = load_h5_volume(info.splits["test"][0]["image"])
    assert img.shape == (112, 101, 122) and zyx_to_xyz(img).shape == (122, 101, 112)
    assert 0.0 <= img.min() and img.max() <= 1.0
    report = check_dataset(root)
    assert report.ok and report.n_cases == 4, report.to_dict()
    assert set(report.cases[-1].label_counts) <= set(range(9))

    result = derive_label_map(root, shared_data / "Synapse_like/RawData")
    assert result["cases"] == ["case0001"]
    assert result["axis_transform"]["raw_xyz_transpose"] == [2, 1, 0]
    assert result["axis_transform"]["flip_axes_after_transpose"] == []
    derived = {int(k): v["raw_id"] for k, v in result["mapping"].items()}
    assert derived == {tu: raw for raw, tu in SAMED_RAW_TO_TU.items()}
    assert all(v["agreement"] == 1.0 for v in result["mapping"].values())
    assert result["mapping"]["5"]["name"] == "liver"
    assert result["raw_to_transunet"]["9"] == 0  # IVC is not one of the 8 organs
    assert np.asarray(result["contingency"]["counts"]).shape == (9, 14)
    json.dumps(result)  # JSON-ready


def test_label_map_recovers_a_flipped_export(shared_data: Path, tmp_path: Path) -> None:
    """If an export flipped an axis, the tool finds the flip instead of producing a wrong table."""
    import h5py

    from pipeline.data.transunet import derive_label_map

    root = build_transunet(shared_data, tmp_path / "S", n_slices=1)
    h5 = root / "test_vol_h5/case0001.npy.h5"
    with h5py.File(h5, "r") as f:
        img, lab = f["image"][:], f["label"][:]
    with h5py.File(h5, "w") as f:
        f.create_dataset("image", data=img[:, ::-1])
        f.create_dataset("label", data=lab[:, ::-1])
    result = derive_label_map(root, shared_data / "Synapse_like/RawData")
    assert result["axis_transform"]["flip_axes_after_transpose"] == [1]
    assert result["overall_agreement"] == 1.0


def _unparsable_dataset_json(root: Path) -> None:
    """A dataset folder whose dataset.json is cut off mid-object."""
    root.mkdir()
    (root / "dataset.json").write_text("{not json")


@pytest.mark.parametrize(
    "make_root, message",
    [
        pytest.param(None, "not found", id="missing_folder"),
        pytest.param(_unparsable_dataset_json, "dataset.json.*unreadable JSON", id="unreadable_dataset_json"),
        pytest.param(folder, "no images", id="empty_folder"),
    ],
)
def test_reader_errors(tmp_path: Path, make_root, message) -> None:
    root = tmp_path / "dataset"
    if make_root is not None:
        make_root(root)
    with pytest.raises(InputDataError, match=message):
        read_dataset(root)


def test_folder_pairs_imagesTr_labelsTr(tmp_path: Path, shared_data: Path) -> None:
    root = tmp_path / "plain"
    link(shared_data / "BTCV_like/imagesTr/img0001.nii.gz", root / "imagesTr" / "a.nii.gz")
    link(shared_data / "BTCV_like/labelsTr/label0001.nii.gz", root / "labelsTr" / "a.nii.gz")
    info = read_dataset(root)
    assert info.layout == "folder" and info.splits["training"][0]["label"].endswith("labelsTr/a.nii.gz")
