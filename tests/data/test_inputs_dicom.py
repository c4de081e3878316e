"""DICOM series folders with a missing slice or several series (issue 16, item 7).

Built from the real 20-slice CT series in ../shared/data/BTCV_like/dicom/ct_series (skipped when absent), copied
to a temporary folder: ``gap/`` lacks its 10th slice; ``two/`` holds the series under UID 1.2.3.1 plus a 5-slice
"scout" series 1.2.3.2 (the first five slices with a new SeriesInstanceUID and SOPInstanceUIDs). The facts are
asserted on stderr (one ``warning:`` line naming the folder), in the ``<case>.json`` sidecar (``input_report``) and in
``medseg datasets check``; ``--series-uid`` picks the series. ``capfd`` also catches lines printed by ITK itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import pytest

from helpers.bad_inputs import cli, make_bundle
from helpers.commands import infer_argv

MAIN_UID, SCOUT_UID = "1.2.3.1", "1.2.3.2"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    # a window large enough for the 333x333x20 model grid of a 512x512 slice at 1.5 mm in a few dozen windows
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny", roi=(96, 96, 16))


@pytest.fixture(scope="module")
def series_folders(shared_data, tmp_path_factory) -> Path:
    """``<tmp>/dicom/gap`` (20 - 1 slices) and ``<tmp>/dicom/two`` (20-slice and 5-slice series)."""
    import pydicom
    from pydicom.uid import generate_uid

    src = sorted((shared_data / "BTCV_like" / "dicom" / "ct_series").iterdir())
    assert len(src) == 20
    root = tmp_path_factory.mktemp("dicom") / "dicom"
    gap, two = root / "gap", root / "two"
    gap.mkdir(parents=True)
    two.mkdir()
    for i, f in enumerate(src):
        if i != 9:
            shutil.copy(f, gap / f.name)
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = MAIN_UID
        ds.save_as(two / f.name)
        if i < 5:
            ds.SeriesInstanceUID = SCOUT_UID
            ds.SOPInstanceUID = generate_uid()
            ds.SeriesDescription = "scout"
            ds.save_as(two / f"scout_{f.name}")
    return root


@pytest.fixture(scope="module")
def broken_series(shared_data, tmp_path_factory) -> Path:
    """``<tmp>/broken/cut``: the 20 slices, the 15th cut to its first 3000 bytes (GDCM drops it from the series);
    ``<tmp>/broken/mixed``: the 5th slice replaced by a 256x256 crop of itself; ``<tmp>/broken/piped``: the 20
    slices plus a named pipe and a link loop (which made GDCM's folder scan drop 17 of the 20 slices)."""
    import os

    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    src = sorted((shared_data / "BTCV_like" / "dicom" / "ct_series").iterdir())
    root = tmp_path_factory.mktemp("broken") / "broken"
    shutil.copytree(src[0].parent, root / "cut")
    shutil.copytree(src[0].parent, root / "mixed")
    (root / "cut" / src[14].name).write_bytes(src[14].read_bytes()[:3000])
    ds = pydicom.dcmread(src[4])
    crop = ds.pixel_array[:256, :256].copy()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.PixelData = 256, 256, crop.tobytes()
    ds.save_as(root / "mixed" / src[4].name, enforce_file_format=True)
    shutil.copytree(src[0].parent, root / "piped")
    os.mkfifo(root / "piped" / "pipe")
    os.symlink(root / "piped" / "loop", root / "piped" / "loop")
    return root


def _sidecar(out: Path, case: str) -> dict:
    return json.loads((out / f"{case}.json").read_text())["input_report"]


def test_infer_reports_missing_slice_and_series_choice(bundle, series_folders, tmp_path, capfd):
    out = tmp_path / "out"
    rc, _, err = cli(capfd, *infer_argv(bundle, series_folders, out))
    assert rc == 0, err
    assert "Non uniform sampling" not in err and "WARNING: In" not in err  # ITK's own unnamed line is not printed
    gap_lines = [ln for ln in err.splitlines() if ln.startswith(f"warning: case gap: {series_folders / 'gap'}: ")]
    assert len(gap_lines) == 1, err
    assert "(19 slices" in gap_lines[0] and "uneven slice spacing: median gap 2 mm" in gap_lines[0]
    assert "the largest 4 mm between slices 10 and 11" in gap_lines[0] and "1 missing slice?" in gap_lines[0]
    two_lines = [ln for ln in err.splitlines() if ln.startswith(f"warning: case two: {series_folders / 'two'}: ")]
    assert len(two_lines) == 1, err
    assert (
        f'2 DICOM series in this folder: read {MAIN_UID} (20 slices, "CT Body 3.0"), the one with the most '
        f'slices; not read: {SCOUT_UID} (5 slices, "scout"); choose one with --series-uid UID'
    ) in two_lines[0]

    gap = _sidecar(out, "gap")
    assert gap["slices"] == 19 and gap["selected_by"] == "only series" and gap["uniform_slice_spacing"] is False
    assert gap["slice_spacing_mm"]["median"] == 2.0 and gap["slice_spacing_mm"]["max"] == 4.0
    assert gap["slice_spacing_mm"]["uniform_as_read"] == pytest.approx(38 / 18, abs=1e-5)
    assert len(gap["warnings"]) == 1 and "missing slice" in gap["warnings"][0]
    two = _sidecar(out, "two")
    assert two["series_uid"] == MAIN_UID and two["slices"] == 20 and two["selected_by"] == "most slices"
    assert two["uniform_slice_spacing"] is True
    assert [(s["series_uid"], s["slices"]) for s in two["series_in_folder"]] == [(MAIN_UID, 20), (SCOUT_UID, 5)]
    assert nib.load(str(out / "gap.nii.gz")).shape == (512, 512, 19)
    assert nib.load(str(out / "two.nii.gz")).shape == (512, 512, 20)


def test_infer_series_uid_picks_the_series(bundle, series_folders, tmp_path, capfd):
    out = tmp_path / "out"
    rc, _, err = cli(capfd, *infer_argv(bundle, series_folders / "two", out, "--series-uid", SCOUT_UID))
    assert rc == 0, err
    assert "2 DICOM series" not in err
    two = _sidecar(out, "two")
    assert two["series_uid"] == SCOUT_UID and two["slices"] == 5 and two["selected_by"] == "--series-uid"
    assert two["warnings"] == []
    assert nib.load(str(out / "two.nii.gz")).shape == (512, 512, 5)
    assert json.loads((out / "two.json").read_text())["settings"]["series_uids"] == [SCOUT_UID]


def test_infer_series_uid_absent_from_a_multi_series_folder_fails_that_case(bundle, series_folders, tmp_path, capfd):
    out = tmp_path / "out"
    rc, _, err = cli(capfd, *infer_argv(bundle, series_folders, out, "--series-uid", "9.9.9"))
    assert rc == 1 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert lines == [
        f"error: case two: {series_folders / 'two'}: DICOM series '9.9.9' (--series-uid) not in this "
        f'folder of 2 series: {MAIN_UID} (20 slices, "CT Body 3.0"); {SCOUT_UID} (5 slices, "scout")'
    ], err
    assert (out / "gap.nii.gz").is_file()  # a folder of one series is read as is: the batch carries on


def test_datasets_check_warns_about_both(series_folders, tmp_path, capfd):
    rc, out, err = cli(capfd, "datasets", "check", series_folders, "--json", tmp_path / "check.json")
    assert rc == 0, out + err
    assert "Non uniform sampling" not in out + err
    warn = {ln.split(":")[0]: ln for ln in out.splitlines() if ln.startswith("WARN    ")}
    assert "uneven slice spacing" in warn["WARN    gap"] and str(series_folders / "gap") in warn["WARN    gap"]
    assert "2 DICOM series in this folder" in warn["WARN    two"]
    cases = {c["case"]: c for c in json.loads((tmp_path / "check.json").read_text())["cases"]}
    assert cases["gap"]["shape"] == [512, 512, 19] and cases["two"]["shape"] == [512, 512, 20]
    assert len(cases["gap"]["warnings"]) == 1 and len(cases["two"]["warnings"]) == 1


def test_infer_truncated_slice_is_named_and_odd_sized_slice_fails_the_case(bundle, broken_series, tmp_path, capfd):
    out = tmp_path / "out"
    rc, _, err = cli(capfd, *infer_argv(bundle, broken_series, out))
    assert rc == 1 and "Traceback" not in err
    cut = broken_series / "cut"
    cut_name = sorted(p.name for p in cut.iterdir())[14]
    lines = [ln for ln in err.splitlines() if ln.startswith(f"warning: case cut: {cut}: ")]
    assert any("1 file(s) in this folder belong to no DICOM series" in ln and cut_name in ln for ln in lines), err
    assert any("uneven slice spacing: median gap 2 mm, 1 gap(s) differ, the largest 4 mm" in ln for ln in lines), err
    assert _sidecar(out, "cut")["files_in_no_series"] == [cut_name]
    mixed = broken_series / "mixed"
    odd = sorted(p.name for p in mixed.iterdir())[4]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert errors == [
        f'error: case mixed: {mixed}: DICOM series (empty SeriesInstanceUID) (20 slices, "CT Body 3.0") '
        f"unreadable: slices differ in size: {odd} is 256x256, the other 19 are 512x512 (columns x "
        "rows); export the series again"
    ], err
    piped = _sidecar(out, "piped")
    assert piped["slices"] == 20 and piped["uniform_slice_spacing"] is True
    assert piped["files_in_no_series"] == ["loop (link loop)", "pipe (a named pipe (FIFO))"]
    assert nib.load(str(out / "piped.nii.gz")).shape == (512, 512, 20)
    assert sorted(p.name for p in out.iterdir()) == ["cut.json", "cut.nii.gz", "piped.json", "piped.nii.gz"]
