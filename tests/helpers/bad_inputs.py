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


def cli(capture, *argv: object) -> tuple[int, str, str]:
    """Run ``medseg argv`` in-process; return (exit code, stdout, stderr). ``capture`` is pytest's capsys or capfd."""
    from pipeline.cli import main

    capture.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capture.readouterr()
    return rc, out, err


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
    meta = {
        "name": "synthetic",
        "modality": {"0": "CT"},
        "labels": labels or {"0": "background", "1": "a", "2": "b"},
        "numTraining": n,
        "training": [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"} for i in range(n)],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root


def make_bundle(root: Path, *, roi: Sequence[int] = (16, 16, 16), seed: int = 0, drop: Sequence[str] = ()) -> Path:
    """A minimal CT inference bundle at ``root``; ``drop`` removes top-level ids from inference.json."""
    from helpers.infer import make_tiny_bundle

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


def link_loop(path: Path) -> None:
    """A symbolic link to itself (``ln -s x x``): every stat of it fails with ELOOP."""
    os.symlink(path, path)


def fifo(path: Path) -> None:
    """A named pipe with an image name: opening it for reading blocks until a writer comes (never, here)."""
    os.mkfifo(path)


def device_link(path: Path) -> None:
    """A symbolic link to the character device /dev/null, named like an image."""
    os.symlink("/dev/null", path)


def raw_nifti(
    array: np.ndarray, edit: Callable[[nib.Nifti1Header], None] = lambda h: None, affine: np.ndarray = AFFINE
) -> Callable[[Path], None]:
    """Writer: a NIfTI-1 file whose header bytes are written exactly as ``edit`` leaves them.

    nibabel "fixes" some header fields on save (zero voxel sizes become 1), so broken headers are built by hand:
    the header block, a 4-byte empty extension flag, then the voxels in Fortran order (gzip for ``.nii.gz``).
    """

    def write(path: Path) -> None:
        arr = np.asarray(array)
        hdr = nib.Nifti1Header()
        hdr.set_data_shape(arr.shape)
        hdr.set_data_dtype(arr.dtype)
        hdr.set_zooms(tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))[: arr.ndim])
        hdr.set_qform(affine, code=1)
        hdr.set_sform(affine, code=1)
        hdr.set_data_offset(352)
        edit(hdr)
        data = hdr.binaryblock + b"\0" * 4 + arr.tobytes(order="F")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)

    return write


def no_affine(pixdim: Sequence[float]) -> Callable[[nib.Nifti1Header], None]:
    """Header edit: qform_code = sform_code = 0 and the given ``pixdim`` voxel size (0 or NaN: unknown spacing)."""

    def edit(hdr: nib.Nifti1Header) -> None:
        hdr.set_qform(None, code=0)
        hdr.set_sform(None, code=0)
        hdr["pixdim"][1:4] = pixdim

    return edit


def nan_sform(hdr: nib.Nifti1Header) -> None:
    """Header edit: an sform (code 1) with a NaN entry."""
    hdr["srow_x"] = [np.nan, 0.0, 0.0, 0.0]


def mha_bytes(extra_header: str, shape: Sequence[int] = (6, 5, 4)) -> Callable[[Path], None]:
    """Writer: an uncompressed MetaImage (.mha) of zeros whose header gets ``extra_header`` lines."""

    def write(path: Path) -> None:
        head = (
            "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            f"DimSize = {' '.join(map(str, shape))}\nElementType = MET_SHORT\n{extra_header}"
            "ElementDataFile = LOCAL\n"
        )
        path.write_bytes(head.encode() + np.zeros(tuple(shape)[::-1], np.int16).tobytes())

    return write


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
