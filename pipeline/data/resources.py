"""Memory checks made *before* allocating: a volume that cannot fit fails with one line that says what to do.

The budget is the free RAM reported by ``psutil`` or, when set, the environment variable ``MEDSEG_MEMORY_LIMIT_MB``
(whichever is smaller). The variable lets a shared machine cap each job, and lets tests trigger the check with a
small volume.

Examples:
    >>> from pipeline.data.resources import estimate_inference_bytes, format_mb
    >>> format_mb(estimate_inference_bytes((512, 512, 400), out_channels=14))
    '12.1 GB'
    >>> format_mb(estimate_inference_bytes((512, 512, 400), out_channels=14, streaming=True))
    '1.4 GB'
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from pipeline.errors import InputDataError, ResourceError

__all__ = [
    "MEMORY_LIMIT_ENV",
    "available_memory_bytes",
    "estimate_inference_bytes",
    "estimate_load_bytes",
    "format_mb",
    "check_load_memory",
    "header_shape",
    "require_memory",
]

#: environment variable capping the memory a job may plan to use (MB)
MEMORY_LIMIT_ENV = "MEDSEG_MEMORY_LIMIT_MB"

#: float32 copies of the image alive at once while loading and preprocessing (stored array, float cast, resampled,
#: normalised)
LOAD_COPIES = 4


def available_memory_bytes() -> int:
    """Free RAM (``psutil.virtual_memory().available``), capped by ``$MEDSEG_MEMORY_LIMIT_MB`` when set.

    Raises:
        ResourceError: when the variable is not a positive number.
    """
    import psutil

    free = int(psutil.virtual_memory().available)
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not text:
        return free
    try:
        limit = float(text)
    except ValueError:
        raise ResourceError(f"${MEMORY_LIMIT_ENV}={text!r} is not a number of megabytes") from None
    if limit <= 0:
        raise ResourceError(f"${MEMORY_LIMIT_ENV}={text!r} must be > 0")
    return min(free, int(limit * 2**20))


def format_mb(nbytes: float) -> str:
    """``1536 * 2**20`` -> ``'1.5 GB'``; below 1 GB in MB."""
    mb = float(nbytes) / 2**20
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def estimate_load_bytes(spatial_shape: Sequence[int], channels: int = 1) -> int:
    """Peak bytes of loading + preprocessing one volume (:data:`LOAD_COPIES` float32 copies)."""
    return int(math.prod(int(s) for s in spatial_shape) * max(1, int(channels)) * 4 * LOAD_COPIES)


def estimate_inference_bytes(
    spatial_shape: Sequence[int],
    out_channels: int,
    *,
    in_channels: int = 1,
    streaming: bool = False,
    slab_fraction: float = 0.1,
) -> int:
    """Peak bytes of sliding-window inference on a volume of ``spatial_shape`` (the preprocessed, model-grid shape).

    Full mode holds the input, the ``out_channels`` logits, the blending-weight sum and the softmax output (all
    float32) plus the label map. Streaming holds the input and the labels, and logits only for a slab of windows
    (``slab_fraction`` of the volume).

    Args:
        spatial_shape: model-grid spatial shape.
        out_channels: classes produced by the network.
        in_channels: image channels.
        streaming: estimate for streaming argmax.
        slab_fraction: fraction of the volume one streaming slab covers.
    """
    voxels = math.prod(int(s) for s in spatial_shape)
    c = max(1, int(out_channels))
    if streaming:
        per_voxel = 4 * in_channels + 4 + (4 * c + 4) * float(slab_fraction)
    else:
        per_voxel = 4 * in_channels + 4 * c * 2 + 4 + 4
    return int(voxels * per_voxel)


def require_memory(nbytes: int, *, path: str | os.PathLike | None, what: str, hint: str) -> None:
    """Raise :class:`ResourceError` naming ``path`` when ``nbytes`` exceed :func:`available_memory_bytes`.

    Args:
        nbytes: the planned allocation.
        path: the file the allocation is for (named in the message).
        what: what the memory is for, e.g. ``"sliding-window inference of 512x512x400 voxels"``.
        hint: what the user can do, e.g. ``"use --streaming"``.
    """
    budget = available_memory_bytes()
    if nbytes > budget:
        source = f"${MEMORY_LIMIT_ENV}" if os.environ.get(MEMORY_LIMIT_ENV) else "free RAM"
        raise ResourceError(
            f"{what} needs about {format_mb(nbytes)} but only {format_mb(budget)} is available ({source}); {hint}",
            path=path,
        )


def header_shape(path: str | os.PathLike) -> tuple[tuple[int, ...], int] | None:
    """(spatial shape, channels) read from the header only (no voxel data), or None when it cannot be told cheaply.

    NIfTI through nibabel's lazy proxy, NRRD/MHA through ``SimpleITK.ImageFileReader.ReadImageInformation``, a DICOM
    series folder as rows x columns x number of files.
    """
    p = Path(path)
    try:
        if p.is_dir():
            import SimpleITK as sitk

            files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
            if not files:
                return None
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(sorted(files)[0]))
            reader.ReadImageInformation()
            size = reader.GetSize()
            return (int(size[0]), int(size[1]), len(files)), 1
        name = p.name.lower()
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            from pipeline.data.geometry import quiet_nibabel

            with quiet_nibabel():
                shape = tuple(int(s) for s in cast(nib.Nifti1Image, nib.load(str(p))).shape)
            return (shape[:3], int(math.prod(shape[3:])) if len(shape) > 3 else 1)
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        return tuple(int(s) for s in reader.GetSize()), int(reader.GetNumberOfComponents())
    except Exception:  # noqa: BLE001 - unreadable headers are reported by the reader itself, with its reason
        return None


def check_load_memory(path: str | os.PathLike) -> None:
    """Refuse (``ResourceError``) to load ``path`` when its header says it cannot fit in memory.

    Raises:
        ResourceError: naming the file, its size and the budget, suggesting ``--streaming``.
    """
    info = header_shape(path)
    if info is None:
        return
    shape, channels = info
    if not shape or min(shape) < 1 or channels < 1:
        raise InputDataError(
            f"image header declares no voxels (shape {'x'.join(map(str, shape)) or '()'}"
            + (f", {channels} channel(s)" if channels != 1 else "")
            + ")",
            path=path,
        )
    require_memory(
        estimate_load_bytes(shape, channels),
        path=path,
        what=f"loading a {'x'.join(map(str, shape))} volume ({channels} channel(s))",
        hint="free memory or raise the limit; for inference also pass --streaming (and --stitch-device cpu) so the "
        "stitched output does not need a full copy per class",
    )
