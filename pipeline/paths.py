"""Where data lives: ``MEDSEG_DATA``, else ``../shared/data`` next to the project, else nothing."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLES_DIR = PROJECT_ROOT / "bundles"
SPLITS_DIR = PROJECT_ROOT / "data"

HOW_TO_GET_DATA = (
    "no data folder found: set MEDSEG_DATA to a folder holding e.g. Task04_Hippocampus/, or place the project next "
    "to a 'shared/data' folder; 'medseg demo --download' fetches Task04_Hippocampus with MONAI's DecathlonDataset"
)


def find_data_root() -> Path | None:
    """Return the data root: ``$MEDSEG_DATA`` if set (even if it does not exist yet), else ``../shared/data``.

    Returns None when neither is available.
    """
    env = os.environ.get("MEDSEG_DATA")
    if env:
        return Path(env).expanduser()
    shared = PROJECT_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return None


def find_dataset(name: str) -> Path | None:
    """Return ``<data root>/<name>`` if it exists, else None."""
    root = find_data_root()
    if root is None:
        return None
    path = root / name
    return path if path.exists() else None
