"""Content hashes: of a file (what ``sha256sum`` prints) and of a state dict (independent of how it was saved).

Examples:
    >>> import tempfile, pathlib, torch
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = f.write_bytes(b"abc")
    >>> file_sha256(f)[:16]
    'ba7816bf8f01cfea'
    >>> a = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
    >>> state_dict_sha256(a) == state_dict_sha256({k: v.clone() for k, v in a.items()})
    True
    >>> state_dict_sha256(a) == state_dict_sha256({"w": torch.ones(2, 3), "b": torch.ones(3)})
    False
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import torch

__all__ = ["file_sha256", "state_dict_sha256"]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's keys (in order), dtypes, shapes and values (hex).

    Two state dicts hash alike exactly when they hold the same tensors under the same keys, whichever file format,
    device or checkpoint wrapper they came from.
    """
    h = hashlib.sha256()
    for key, value in state.items():
        t = value.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
