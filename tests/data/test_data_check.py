"""check_dataset: every problem of every case is reported, on a folder the test corrupts itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.data.check import check_case, check_dataset, format_problems, format_table, grid_difference

from helpers.data import LPS_AFFINE, build_corrupted_msd, write_nifti


@pytest.fixture(scope="module")
def corrupted(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("broken") / "Task99_Broken"
    return root, build_corrupted_msd(shared_data, root)


def test_corrupted_folder_reports_every_case_and_problem(corrupted: tuple[Path, dict[str, str]]) -> None:
    root, defects = corrupted
    report = check_dataset(root)
    assert not report.ok
    by_case = {c.case: c for c in report.cases}
    assert by_case["hippocampus_001"].ok and by_case["hippocampus_003"].ok
    assert {c.case for c in report.broken} == set(defects)
    assert "unreadable" in by_case["trunc_001"].problems[0] and "trunc_001.nii.gz" in by_case["trunc_001"].problems[0]
    assert any("label shape" in p and "!= image shape" in p for p in by_case["shape_001"].problems)
    assert any("[7]" in p and "declared label set [0, 1, 2]" in p for p in by_case["value_001"].problems)
    assert any("label file missing" in p for p in by_case["nolabel_001"].problems)
    multi = by_case["multi_001"].problems  # two defects in one case: both reported
    assert any("NaN" in p for p in multi) and any("affine differs" in p for p in multi), multi
    text = format_problems(report)
    for case in defects:
        assert f"{case}:" in text
    table = format_table(report)
    assert table.count("BROKEN") == len(defects) and table.count("| OK ") == 2


def test_check_case_unit(tmp_path: Path, rng: np.random.Generator) -> None:
    img = write_nifti(tmp_path / "i.nii.gz", rng.random((5, 6, 7)).astype(np.float32), LPS_AFFINE)
    lab = write_nifti(tmp_path / "l.nii.gz", rng.integers(0, 3, (5, 6, 7)).astype(np.uint8), LPS_AFFINE)
    rep = check_case({"image": str(img), "label": str(lab), "case": "c"}, label_ids=[0, 1, 2])
    assert rep.ok and rep.shape == [5, 6, 7] and rep.orientation == "LPS"
    assert rep.spacing == [0.8, 0.8, 2.5] and sum(rep.label_counts.values()) == 5 * 6 * 7
    # float label with a fractional value, and a 2D image
    flt = write_nifti(tmp_path / "f.nii.gz", np.full((5, 6, 7), 0.5, np.float32), LPS_AFFINE)
    rep = check_case({"image": str(img), "label": str(flt), "case": "f"}, label_ids=[0, 1])
    assert any("non-integer" in p for p in rep.problems)
    flat = write_nifti(tmp_path / "flat.nii.gz", rng.random((5, 6)).astype(np.float32))
    rep = check_case({"image": str(flat), "case": "flat"})
    assert any("2 spatial dimensions" in p for p in rep.problems)
    rep = check_case({"image": str(img), "case": "ch"}, expected_channels=2)
    assert any("1 channel(s), the dataset declares 2" in p for p in rep.problems)


def test_grid_difference_accepts_reoriented_copies(rng: np.random.Generator) -> None:
    shape = (5, 6, 7)
    flipped = LPS_AFFINE.copy()
    flipped[:3, 0] *= -1
    flipped[:3, 3] += LPS_AFFINE[:3, 0] * (shape[0] - 1)  # same voxels, x axis stored the other way round
    same, diff = grid_difference(shape, LPS_AFFINE, shape, flipped)
    assert same and diff < 1e-9
    shifted = LPS_AFFINE.copy()
    shifted[2, 3] += 1.0
    assert grid_difference(shape, LPS_AFFINE, shape, shifted)[1] == pytest.approx(1.0)
