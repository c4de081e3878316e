"""Atomic file output: write to a temporary file in the target folder, then ``os.replace``.

A reader (or a re-run after a kill) therefore sees either the complete previous file, the complete new file, or no
file, never a truncated one. Temporary files are named ``.<name>.<random>.tmp`` and removed on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    Args:
        path: the final file.
        overwrite: when False and ``path`` exists, raise ``FileExistsError`` instead of replacing it.

    Examples:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_path(d / "a.txt") as tmp:
        ...     _ = tmp.write_text("hello")
        >>> (d / "a.txt").read_text()
        'hello'
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and final.exists():
        raise FileExistsError(f"{final}: exists (pass --overwrite to replace it)")
    # keep the full suffix (e.g. .nii.gz) so writers that dispatch on the extension still work
    name = final.name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp" + "".join(final.suffixes), dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not overwrite and final.exists():
            raise FileExistsError(f"{final}: exists (pass --overwrite to replace it)")
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def save_json_atomic(obj: Any, path: str | os.PathLike, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")
    return Path(path)


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (the previous file stays intact until the new one is complete)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_nifti_atomic(img: Any, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Save a nibabel image to ``path`` atomically: the one NIfTI writer of the pipeline's outputs.

    Args:
        img: a nibabel image (e.g. ``Nifti1Image``), saved as ``nib.save`` would.
        path: the final file; its extension (``.nii.gz``) chooses the format.
        overwrite: when False and ``path`` exists, raise ``FileExistsError``.

    Examples:
        >>> import tempfile, pathlib, numpy as np, nibabel as nib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.nii.gz"
        >>> _ = save_nifti_atomic(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), out)
        >>> nib.load(out).shape, sorted(p.name for p in out.parent.iterdir())
        ((2, 2, 2), ['a.nii.gz'])
    """
    import nibabel as nib

    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
