"""Helpers for tests/test_bad_inputs.py: tiny synthetic volumes, a tiny bundle, broken-file makers, CLI capture."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

#: voxel size of every synthetic case (ct_abdomen's target spacing, so no resampling happens)
SPACING = (1.5, 1.5, 2.0)
SHAPE = (20, 18, 12)
AFFINE = np.diag([*SPACING, 1.0])

#: a 3-class MONAI UNet small enough for sub-second CPU inference


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    """Save ``array`` as NIfTI (creating the folder) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64)), str(path))
    return path


def ct_case(seed: int, shape: Sequence[int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like float32 image (HU) and its uint8 label (two boxes, ids 1 and 2)."""
    rng = np.random.default_rng(seed)
    label = np.zeros(tuple(shape), np.uint8)
    label[4:9, 4:9, 3:6] = 1
    label[10:15, 9:14, 6:9] = 2
    image = rng.normal(0.0, 30.0, tuple(shape)) + 80.0 * label
    return image.astype(np.float32), label


def write_msd_dataset(root: Path, n: int = 3, labels: dict | None = None) -> Path:
    """An MSD-layout dataset (dataset.json, imagesTr/, labelsTr/) of ``n`` synthetic CT cases ``c0..``."""
    for i in range(n):
        image, label = ct_case(i)
        write_nifti(root / "imagesTr" / f"c{i}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"c{i}.nii.gz", label)
    meta = {"name": "synthetic", "modality": {"0": "CT"}, "labels": labels or {"0": "background", "1": "a", "2": "b"},
            "numTraining": n, "training": [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"}
                                           for i in range(n)], "test": []}
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root


def make_bundle(root: Path, *, roi: Sequence[int] = (16, 16, 16), seed: int = 0, drop: Sequence[str] = ()) -> Path:
    """A minimal CT inference bundle at ``root``; ``drop`` removes top-level ids from inference.json."""
    from _infer_utils import make_tiny_bundle

    return make_tiny_bundle(root, roi=roi, seed=seed, sw_batch_size=4, overlap=0.25, drop=drop)


# --- broken files -----------------------------------------------------------------------------------------------------
def truncate(src: Path) -> Callable[[Path], None]:
    """Writer: the first half of ``src``'s bytes (a .nii.gz cut off mid-stream)."""
    def write(path: Path) -> None:
        data = src.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return write


def raw_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def nifti(array: np.ndarray, affine: np.ndarray = AFFINE) -> Callable[[Path], None]:
    return lambda path: write_nifti(path, array, affine)


def folder(path: Path) -> None:
    """A folder where an image file is expected (what a user gets from a half-finished PACS export)."""
    path.mkdir(parents=True)


def broken_link(path: Path) -> None:
    """A symbolic link to a file that does not exist (an unreadable input, even for root)."""
    os.symlink(path.parent / "does-not-exist" / path.name, path)


def gz_text(path: Path) -> None:
    """A valid gzip stream holding text, named .nii.gz: a non-image file."""
    path.write_bytes(gzip.compress(b"patient export log\n" * 20))


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# --- assertions -------------------------------------------------------------------------------------------------------
def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_clean_error(stderr: str, path: str | os.PathLike, *patterns: str) -> str:
    """Exactly one ``error:`` line names ``path`` and matches every regex in ``patterns``; no traceback anywhere.

    Returns the line.
    """
    import re

    assert "Traceback" not in stderr, stderr
    lines = [line for line in error_lines(stderr) if str(path) in line]
    assert len(lines) == 1, f"expected one error line naming {path}, got: {stderr!r}"
    for pattern in patterns:
        assert re.search(pattern, lines[0], flags=re.IGNORECASE), f"{pattern!r} not in {lines[0]!r}"
    return lines[0]
