"""``medseg datasets check | fingerprint | derive-label-map | list`` through the real CLI entry point (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main

from helpers.data import build_corrupted_msd, build_transunet

REAL = ["Task04_Hippocampus", "STS_CT", "BTCV_like", "Synapse_like", "Task06_Lung_sample", "BTCV_like/dicom"]


@pytest.mark.parametrize("name", REAL)
def test_check_passes_on_every_shared_dataset(shared_data: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    code = main(["datasets", "check", str(shared_data / name)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "BROKEN" not in out and "OK      " in out
    assert "| case" in out and "spacing (mm)" in out and "label voxels" in out  # the summary table
    assert "case(s) OK" in out


def test_check_fails_on_corrupted_folder(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "Task99_Broken"
    defects = build_corrupted_msd(shared_data, root)
    out_json = tmp_path / "report.json"
    code = main(["datasets", "check", str(root), "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 3
    assert "OK      hippocampus_001" in out
    for case in defects:
        assert f"BROKEN  {case}:" in out
    assert "5 of 7 case(s) broken" in out
    report = json.loads(out_json.read_text())
    assert report["ok"] is False and report["n_broken"] == 5


def test_check_missing_folder_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["datasets", "check", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("error: ") and "nope" in err and len(err.strip().splitlines()) == 1


def test_fingerprint_cli(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "fp.json"
    assert main(["datasets", "fingerprint", str(shared_data / "Task06_Lung_sample"), "--out", str(out)]) == 0
    fp = json.loads(out.read_text())
    assert fp["num_cases"] == 2 and fp["class_voxel_counts"]["1"] == 837 + 24644
    text = capsys.readouterr().out
    assert "median spacing" in text and "fingerprint written" in text
    mtime = out.stat().st_mtime_ns
    assert main(["datasets", "fingerprint", str(shared_data / "Task06_Lung_sample"), "--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out and out.stat().st_mtime_ns == mtime  # kept without --overwrite


def test_derive_label_map_cli(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = build_transunet(shared_data, tmp_path / "Synapse", n_slices=1)
    out = tmp_path / "map.json"
    code = main(
        [
            "datasets",
            "derive-label-map",
            "--transunet",
            str(root),
            "--rawdata",
            str(shared_data / "Synapse_like/RawData"),
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and "| 5 | 6 | liver |" in text
    assert json.loads(out.read_text())["mapping"]["8"]["name"] == "pancreas"


def test_list_cli(shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["datasets", "list", str(shared_data / "Synapse_like")]) == 0
    out = capsys.readouterr().out
    assert "synapse_raw" in out and "test: 2 case(s) (10 listed in the split file but absent)" in out
