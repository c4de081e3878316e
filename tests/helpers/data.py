"""Fixture builders for the data-layer tests: tiny synthetic volumes, corrupted MSD folders, TransUNet and nnU-Net v2
folders built from the BTCV_like case. Shared data is only ever symlinked or read, never copied into the project."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

#: SAMed's raw Synapse id -> TransUNet id map (one of the three circulating claims); used to BUILD a fixture whose
#: mapping the derivation tool must then recover from data alone
SAMED_RAW_TO_TU = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}

LPS_AFFINE = np.array([[-0.8, 0, 0, 10.0], [0, -0.8, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
    return dst


def write_json(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path


def build_corrupted_msd(shared_data: Path, root: Path) -> dict[str, str]:
    """An MSD folder (3-class hippocampus) with one good case and one case per defect; returns case -> defect."""
    src = shared_data / "Task04_Hippocampus"
    good = ["hippocampus_001", "hippocampus_003"]
    entries = []
    for case in good:
        link(src / "imagesTr" / f"{case}.nii.gz", root / "imagesTr" / f"{case}.nii.gz")
        link(src / "labelsTr" / f"{case}.nii.gz", root / "labelsTr" / f"{case}.nii.gz")
    ref_img = nib.load(str(src / "imagesTr" / "hippocampus_004.nii.gz"))
    ref_lab = nib.load(str(src / "labelsTr" / "hippocampus_004.nii.gz"))
    lab = np.asarray(ref_lab.dataobj)
    # truncated image (half of the gzip stream)
    raw = (src / "imagesTr" / "hippocampus_004.nii.gz").read_bytes()
    (root / "imagesTr" / "trunc_001.nii.gz").write_bytes(raw[: len(raw) // 2])
    link(src / "labelsTr" / "hippocampus_004.nii.gz", root / "labelsTr" / "trunc_001.nii.gz")
    # label of the wrong shape
    link(src / "imagesTr" / "hippocampus_004.nii.gz", root / "imagesTr" / "shape_001.nii.gz")
    write_nifti(root / "labelsTr" / "shape_001.nii.gz", lab[:-3], ref_lab.affine)
    # label value 7 in a 3-class set
    bad = lab.copy()
    bad[0, 0, 0] = 7
    link(src / "imagesTr" / "hippocampus_004.nii.gz", root / "imagesTr" / "value_001.nii.gz")
    write_nifti(root / "labelsTr" / "value_001.nii.gz", bad, ref_lab.affine)
    # missing label file
    link(src / "imagesTr" / "hippocampus_004.nii.gz", root / "imagesTr" / "nolabel_001.nii.gz")
    # NaN voxels and a shifted label affine (two problems in one case: both must be reported)
    img = np.asarray(ref_img.dataobj).astype(np.float32)
    img[1, 1, 1] = np.nan
    write_nifti(root / "imagesTr" / "multi_001.nii.gz", img, ref_img.affine)
    shifted = ref_lab.affine.copy()
    shifted[0, 3] += 5.0
    write_nifti(root / "labelsTr" / "multi_001.nii.gz", lab, shifted)
    for case in good + ["trunc_001", "shape_001", "value_001", "nolabel_001", "multi_001"]:
        entries.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    write_json(
        root / "dataset.json",
        {
            "name": "Broken",
            "relase": "1.0",
            "tensorImageSize": "3D",
            "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
            "numTraining": len(entries),
            "training": entries,
            "test": [],
        },
    )
    return {
        "trunc_001": "unreadable",
        "shape_001": "shape",
        "value_001": "[7]",
        "nolabel_001": "missing",
        "multi_001": "NaN",
    }


def build_transunet(shared_data: Path, root: Path, *, n_slices: int = 3) -> Path:
    """TransUNet-style folder from BTCV_like img0001/label0001: ``test_vol_h5/case0001.npy.h5`` ((z, y, x), HU clipped
    to [-125, 275] and scaled to [0, 1], labels remapped with SAMed's map) and ``train_npz`` slices."""
    import h5py

    img = np.asarray(nib.load(str(shared_data / "BTCV_like/imagesTr/img0001.nii.gz")).dataobj).astype(np.float32)
    lab = np.asarray(nib.load(str(shared_data / "BTCV_like/labelsTr/label0001.nii.gz")).dataobj).astype(np.int64)
    img = (np.clip(img, -125, 275) + 125) / 400.0
    tu = np.zeros_like(lab)
    for raw_id, tu_id in SAMED_RAW_TO_TU.items():
        tu[lab == raw_id] = tu_id
    img_zyx, tu_zyx = img.transpose(2, 1, 0), tu.transpose(2, 1, 0)
    (root / "test_vol_h5").mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f.create_dataset("image", data=img_zyx.astype(np.float32))
        f.create_dataset("label", data=tu_zyx.astype(np.float32))
    (root / "train_npz").mkdir(parents=True, exist_ok=True)
    z0 = img_zyx.shape[0] // 2
    for k in range(n_slices):
        np.savez(
            root / "train_npz" / f"case0001_slice{z0 + k:03d}.npz",
            image=img_zyx[z0 + k],
            label=tu_zyx[z0 + k].astype(np.float32),
        )
    return root


def build_nnunet_v2(shared_data: Path, root: Path) -> Path:
    """nnU-Net v2 raw folder from the two BTCV_like cases (symlinks) with labels name -> int."""
    for i, n in ((1, "0001"), (2, "0002")):
        link(shared_data / f"BTCV_like/imagesTr/img{n}.nii.gz", root / "imagesTr" / f"btcv_{i:03d}_0000.nii.gz")
        link(shared_data / f"BTCV_like/labelsTr/label{n}.nii.gz", root / "labelsTr" / f"btcv_{i:03d}.nii.gz")
    labels = {
        "background": 0,
        "spleen": 1,
        "right_kidney": 2,
        "left_kidney": 3,
        "gallbladder": 4,
        "esophagus": 5,
        "liver": 6,
        "stomach": 7,
        "aorta": 8,
        "ivc": 9,
        "veins": 10,
        "pancreas": 11,
        "rad": 12,
        "lad": 13,
    }
    write_json(
        root / "dataset.json",
        {
            "channel_names": {"0": "CT"},
            "labels": labels,
            "numTraining": 2,
            "file_ending": ".nii.gz",
            "name": "Dataset901_BTCVlike",
        },
    )
    return root
