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

from pipeline.data.io import describe_read_error, file_kind, is_dicom_series_dir
from pipeline.data.naming import case_name, image_suffix
from pipeline.errors import InputDataError

__all__ = ["list_inference_inputs"]


def _item(path: Path) -> dict:
    return {"image": str(path), "case": case_name(path)}


def _image_files_in(folder: Path) -> int:
    try:
        return sum(1 for c in folder.iterdir() if not c.name.startswith(".") and image_suffix(c) is not None)
    except OSError:
        return 0


def list_inference_inputs(
    path: str | os.PathLike, *, report_problems: bool = False, skipped: list[str] | None = None
) -> list[dict]:
    """Return ``[{"image": str, "case": str}, ...]`` sorted by case, for every image found at ``path``.

    ``path`` may be an image file (NIfTI/NRRD/MHA...), a folder of image files, a DICOM series folder, or a folder of
    DICOM series folders (a mix of image files and series folders is accepted too). Hidden files and our own atomic
    temporary files are ignored. ``case`` is the file name without its image suffix, or the DICOM folder's name.
    Entries that look like images but cannot be one (a folder named ``x.nii.gz`` without a DICOM series, a broken
    symbolic link, a link loop, a named pipe or device file) are listed too, so the run reports them as failed cases
    instead of dropping them silently.

    Args:
        path: the input file or folder.
        report_problems: when two inputs map to one case name (``a.nii`` and ``a.nii.gz``: both outputs would be
            ``a.nii.gz``), give each of them an ``"error"`` entry (a batch then fails those cases and carries on)
            instead of raising.
        skipped: when given, a note is appended for what the listing does not read although it may hold images
            (sub-folders without a DICOM series, ``.dcm`` files next to other images).

    Raises:
        InputDataError: when ``path`` does not exist, is not an image, holds no image, or (without
            ``report_problems``) two inputs share a case name.

    Examples:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.nii.gz").write_bytes(b""), (d / "a.nii").write_bytes(b"")
        >>> [(it["case"], "two inputs map to case 'a'" in it["error"]) for it in list_inference_inputs(
        ...     d, report_problems=True)]
        [('a', True), ('a', True)]
    """
    p = Path(path).expanduser()
    kind = file_kind(p)
    if kind == "missing":
        raise InputDataError("input not found", path=p)
    if kind in ("broken link", "link loop"):
        raise InputDataError(f"input not found: {describe_read_error(p)}", path=p)
    if kind != "folder":  # a file, or a named pipe/device: a batch of one (the loader reports a non-regular file)
        if image_suffix(p) is None:
            raise InputDataError("not an image file (expected .nii.gz, .nii, .nrrd, .mha, .mhd or .dcm)", path=p)
        return [_item(p)]
    children = sorted(c for c in p.iterdir() if not c.name.startswith("."))
    kinds = {c: file_kind(c) for c in children}
    files = [c for c in children if kinds[c] == "file" and image_suffix(c) not in (None, ".dcm")]
    if not files and any(k == "file" for k in kinds.values()) and is_dicom_series_dir(p):  # the folder is one series
        return [_item(p)]
    items = [_item(c) for c in files]
    series_dirs = {c for c in children if kinds[c] == "folder" and is_dicom_series_dir(c)}
    items += [_item(c) for c in children if c in series_dirs]
    seen_images = {it["image"] for it in items}
    items += [
        {"image": str(c), "case": c.name[: -len(suffix)]}  # look like images, cannot be: reported
        for c in children
        if str(c) not in seen_images and (suffix := image_suffix(c)) not in (None, ".dcm") and kinds[c] != "file"
    ]
    if skipped is not None:
        dcm = [c for c in children if kinds[c] == "file" and image_suffix(c) == ".dcm"]
        if dcm and items:
            skipped.append(
                f"{p}: {len(dcm)} .dcm file(s) next to other images are not read; put a DICOM series in "
                "a folder of its own"
            )
        for c in children:
            if kinds[c] == "folder" and c not in series_dirs and image_suffix(c) is None:
                n = _image_files_in(c)
                if n:
                    skipped.append(
                        f"{c}: sub-folder not searched (it holds {n} image file(s)); give it as --input to process it"
                    )
    if not items:
        raise InputDataError("no images found (NIfTI/NRRD/MHA files or DICOM series folders)", path=p)
    by_case: dict[str, list[dict]] = {}
    for it in items:
        by_case.setdefault(it["case"], []).append(it)
    for case, group in by_case.items():
        if len(group) < 2:
            continue
        names = " and ".join(it["image"] for it in group)
        if not report_problems:
            raise InputDataError(f"two inputs map to case {case!r}: {names}", path=p)
        for it in group:
            it["error"] = (
                f"two inputs map to case {case!r}: {names}; both outputs would be {case}.nii.gz, so "
                "neither is processed: rename or move one of them"
            )
    return sorted(items, key=lambda it: (it["case"], it["image"]))
