"""The demo: local data end to end, the DecathlonDataset download path (offline, with a stand-in), clear errors."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline import demo
from pipeline.cli import main
from pipeline.errors import InputDataError


def test_demo_on_local_data(tmp_path, shared_data):
    summary = demo.run_demo(tmp_path / "demo", data_root=str(shared_data), download=False, limit=2, overlays=1)
    assert summary["cases"] == 2
    written = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert written["per_case"][0]["case"] == "hippocampus_008"
    assert len(list((tmp_path / "demo" / "predictions").glob("*.nii.gz"))) == 2
    assert (tmp_path / "demo" / "overlays" / "hippocampus_008.png").stat().st_size > 1000
    assert "| **mean** |" in (tmp_path / "demo" / "summary.md").read_text()
    if summary["weights"]:  # the shipped model segments both structures
        assert summary["mean_dice"]["mean"] > 0.7, summary["mean_dice"]
    # a second run reuses the predictions (nothing to infer) and gives the same scores
    again = demo.run_demo(tmp_path / "demo", data_root=str(shared_data), download=False, limit=2, overlays=0)
    assert again["mean_dice"] == summary["mean_dice"]


def test_missing_data_downloads_with_decathlon_dataset(tmp_path, shared_data, monkeypatch):
    """The download branch calls monai.apps.DecathlonDataset(root_dir, task, section, download=True)."""
    calls = []

    class FakeDecathlon:  # stands in for the network download: lays out the MSD folder from local files
        def __init__(self, root_dir, task, section, download, **kwargs):
            calls.append((root_dir, task, section, download))
            src, dst = shared_data / task, tmp_path / "root" / task
            for sub in ("imagesTr", "labelsTr"):
                (dst / sub).mkdir(parents=True)
                for f in sorted((src / sub).glob("*.nii.gz"))[:2]:
                    shutil.copy(f, dst / sub / f.name)
            shutil.copy(src / "dataset.json", dst / "dataset.json")

    monkeypatch.setattr("monai.apps.DecathlonDataset", FakeDecathlon)
    folder = demo.ensure_task04(tmp_path / "root")
    assert calls == [(str(tmp_path / "root"), "Task04_Hippocampus", "validation", True)]
    assert (folder / "dataset.json").is_file()
    assert demo.ensure_task04(tmp_path / "root") == folder and len(calls) == 1  # found now: no second download


def test_missing_data_without_download_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(InputDataError, match="Task04_Hippocampus not found"):
        demo.ensure_task04(tmp_path, download=False)
    assert main(["demo", "--no-download", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Task04_Hippocampus" in err[0]
