"""Shared fixtures: real data under ../shared/data (skipped with a reason when absent), small synthetic volumes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.paths import PROJECT_ROOT

# one torch thread per xdist worker: two workers share the two cores
torch.set_num_threads(int(os.environ.get("MEDSEG_TEST_THREADS", "1")))

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
