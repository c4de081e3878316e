"""Helpers for the bundle tests: small per-bundle overrides and synthetic NIfTI cases (MONAI zoo CI style)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.paths import BUNDLES_DIR

#: md5 MONAI's tests/testing_data/data_config.json lists for meta_schema_20240725.json; ../shared/schema's copy has
#: another md5 (76e1add2...), so the tests validate against the copy without a hash check
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"

BUNDLES = (
    "unetrpp_synapse_ct_segmentation",
    "unetrpp_btcv_ct_segmentation",
    "unetrpp_lung_ct_segmentation",
    "swinunet3d_btcv_ct_segmentation",
    "swinunet3d_lgt_btcv_ct_segmentation",
    "unetrpp_hippocampus_mri_segmentation",
    "unetrpp_sts_ct_segmentation",
    "swinunet3d_hippocampus_mri_segmentation",
)


@dataclass(frozen=True)
class SmokeSpec:
    """A small ROI the bundle's network accepts, a synthetic case geometry matching its preprocessing, and config
    overrides that shrink the network's widths (the zoo CI shrinks spatial sizes the same way)."""

    roi: tuple[int, int, int]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    num_classes: int
    mri: bool = False
    net: dict = field(default_factory=dict)

    def overrides(self) -> dict:
        return {"roi_size": list(self.roi), **self.net}


_SMALL_UNETRPP = {
    "network_def#dims": [16, 32, 64, 128],
    "network_def#feature_size": 8,
    "network_def#depths": [1, 1, 1, 1],
    "network_def#decoder_depth": 1,
    "network_def#proj_size": [16, 16, 16, 8],
    "network_def#decoder_proj_size": 16,
}
_SMALL_SWIN = {"network_def#embed_dim": 12, "network_def#num_heads": [1, 2, 4, 8], "network_def#depths": [1, 1, 1, 1]}

#: eval-only checks may use a 1-voxel stage-4 grid; training runs keep it >= 2 voxels (BatchNorm in training mode)
SMOKE: dict[str, SmokeSpec] = {
    # UNETR++ Synapse/BTCV: internal (z,y,x) divisible by stem (2,4,4) * 8 -> x,y multiples of 32, z of 16
    "unetrpp_synapse_ct_segmentation": SmokeSpec((32, 32, 16), (36, 34, 18), (1.5, 1.5, 2.0), 14, net=_SMALL_UNETRPP),
    "unetrpp_btcv_ct_segmentation": SmokeSpec((32, 32, 16), (36, 34, 18), (1.5, 1.5, 2.0), 14, net=_SMALL_UNETRPP),
    # Lung: stem (1,4,4) -> z multiple of 8
    "unetrpp_lung_ct_segmentation": SmokeSpec((32, 32, 8), (36, 34, 10), (0.79, 0.79, 1.24), 2, net=_SMALL_UNETRPP),
    "swinunet3d_btcv_ct_segmentation": SmokeSpec((32, 32, 32), (34, 34, 33), (1.5, 1.5, 2.0), 14, net=_SMALL_SWIN),
    "swinunet3d_lgt_btcv_ct_segmentation": SmokeSpec((32, 32, 32), (34, 34, 33), (1.5, 1.5, 2.0), 14, net=_SMALL_SWIN),
    # the hippocampus network is small: it runs at its real patch, checked against the real metadata
    "unetrpp_hippocampus_mri_segmentation": SmokeSpec((32, 48, 32), (34, 50, 33), (1.0, 1.0, 1.0), 3, mri=True),
    "unetrpp_sts_ct_segmentation": SmokeSpec((32, 32, 16), (36, 34, 18), (1.0, 1.0, 3.0), 2, net=_SMALL_UNETRPP),
    "swinunet3d_hippocampus_mri_segmentation": SmokeSpec(
        (32, 48, 32), (34, 50, 33), (1.0, 1.0, 1.0), 3, mri=True, net=_SMALL_SWIN
    ),
}


def bundle_dir(name: str) -> Path:
    return BUNDLES_DIR / name


def write_cases(folder: Path, spec: SmokeSpec, n: int, seed: int = 0) -> list[dict]:
    """Write ``n`` synthetic image/label pairs (RAS affine with ``spec.spacing``) and return their datalist."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spec.spacing, 1.0])
    items = []
    for i in range(n):
        label = np.zeros(spec.shape, np.uint8)
        for k in range(1, spec.num_classes):
            lo = [int(rng.integers(0, max(1, s - 5))) for s in spec.shape]
            label[lo[0] : lo[0] + 5, lo[1] : lo[1] + 5, lo[2] : lo[2] + 4] = k
        if spec.mri:
            image = rng.normal(300.0, 30.0, spec.shape) + 150.0 * label
        else:
            image = rng.normal(0.0, 40.0, spec.shape) + 20.0 * label + 40.0
        img_path, lab_path = folder / f"case{i:03d}_img.nii.gz", folder / f"case{i:03d}_seg.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(img_path))
        nib.save(nib.Nifti1Image(label, affine), str(lab_path))
        items.append({"image": str(img_path), "label": str(lab_path), "case": f"case{i:03d}"})
    return items


def small_meta(name: str, out: Path, roi: tuple[int, ...]) -> Path:
    """A copy of the bundle's metadata.json with ``spatial_shape`` set to the small test ROI."""
    meta = json.loads((bundle_dir(name) / "configs" / "metadata.json").read_text())
    for section in ("inputs", "outputs"):
        for spec in meta["network_data_format"][section].values():
            spec["spatial_shape"] = list(roi)
    out.write_text(json.dumps(meta))
    return out


def run_bundle_inference(
    config: Path, image: str | Path, out: Path, *extra: str, cwd: Path
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run --config_file CONFIG --output_dir OUT --datalist [IMAGE] EXTRA...`` from ``cwd``,
    as a user runs it (one torch thread); returns the finished process with its captured output."""
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(config),
        "--output_dir",
        str(out),
        "--datalist",
        f"$[{{'image': '{image}'}}]",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
