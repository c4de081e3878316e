"""Shared fixtures: real data under ../shared/data (skipped with a reason when absent), small synthetic volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.paths import PROJECT_ROOT

# torch runs with one thread per xdist worker: see ../conftest.py (it also covers the doctests of pipeline/)

SHARED = PROJECT_ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the real-data tests need ../shared next to the project")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (docs, parity fixtures, schema); skips when absent."""
    return _need(SHARED)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips when absent."""
    return _need(SHARED_DATA)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
