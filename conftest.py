"""Pytest set-up shared by the test suite (``tests/``) and the docstring Examples (``--doctest-modules pipeline``)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

# one torch thread per process: `make test` runs one xdist worker per core, so more threads would only compete
torch.set_num_threads(int(os.environ.get("MEDSEG_TEST_THREADS", "1")))
# exports cached by `--backend` runs in tests go to a temporary folder, never to the user's ~/.cache/medseg
os.environ.setdefault("MEDSEG_CACHE_DIR", tempfile.mkdtemp(prefix="medseg-test-cache-"))


@pytest.fixture(autouse=True)
def _doctest_tempdir(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Examples that call ``tempfile.mkdtemp()`` write under the item's ``tmp_path``, which pytest cleans up."""
    if type(request.node).__name__ == "DoctestItem":
        monkeypatch.setattr(tempfile, "tempdir", str(request.getfixturevalue("tmp_path")))
