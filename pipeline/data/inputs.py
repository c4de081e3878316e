"""Listing the images an inference run should process: a file, a folder of files, or DICOM series folders.

Examples:
    >>> from pipeline.data.inputs import list_inference_inputs
    >>> items = list_inference_inputs("../shared/data/Task06_Lung_sample/imagesTr")  # doctest: +SKIP
    >>> items[0]  # doctest: +SKIP
    {'image': '.../imagesTr/lung_001.nii.gz', 'case': 'lung_001'}
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.data.io import case_name, image_suffix, is_dicom_series_dir
from pipeline.errors import InputDataError


def _item(path: Path) -> dict:
    return {"image": str(path), "case": case_name(path)}


def list_inference_inputs(path: str | os.PathLike) -> list[dict]:
    """Return ``[{"image": str, "case": str}, ...]`` sorted by case, for every image found at ``path``.

    ``path`` may be an image file (NIfTI/NRRD/MHA...), a folder of image files, a DICOM series folder, or a folder of
    DICOM series folders (a mix of image files and series folders is accepted too). Hidden files and our own atomic
    temporary files are ignored. ``case`` is the file name without its image suffix, or the DICOM folder's name.
    Entries that look like images but cannot be one (a folder named ``x.nii.gz`` without a DICOM series, a broken
    symbolic link) are listed too, so the run reports them as failed cases instead of dropping them silently.

    Raises:
        InputDataError: when ``path`` does not exist, is not an image, holds no image, or two inputs share a case name.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputDataError("input not found", path=p)
    if p.is_file():
        if image_suffix(p) is None:
            raise InputDataError("not an image file (expected .nii.gz, .nii, .nrrd, .mha, .mhd or .dcm)", path=p)
        return [_item(p)]
    children = sorted(c for c in p.iterdir() if not c.name.startswith("."))
    files = [c for c in children if c.is_file() and image_suffix(c) is not None and image_suffix(c) != ".dcm"]
    if not files and any(c.is_file() for c in children) and is_dicom_series_dir(p):  # the folder is one series
        return [_item(p)]
    items = [_item(c) for c in files]
    items += [_item(c) for c in children if c.is_dir() and is_dicom_series_dir(c)]
    seen_images = {it["image"] for it in items}
    items += [{"image": str(c), "case": c.name[: -len(image_suffix(c))]}  # look like images, cannot be: reported
              for c in children
              if str(c) not in seen_images and image_suffix(c) not in (None, ".dcm")
              and (c.is_dir() or (c.is_symlink() and not c.exists()))]
    if not items:
        raise InputDataError("no images found (NIfTI/NRRD/MHA files or DICOM series folders)", path=p)
    seen: dict[str, str] = {}
    for it in items:
        if it["case"] in seen:
            raise InputDataError(f"two inputs map to case {it['case']!r}: {seen[it['case']]} and {it['image']}", path=p)
        seen[it["case"]] = it["image"]
    return sorted(items, key=lambda it: it["case"])
