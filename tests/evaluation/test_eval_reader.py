"""One reader for scoring: ``evaluate``, ``benchmark`` and ``demo`` read label maps with ``read_label_map`` and take
the voxel size from the header's geometry rule (``spacing_from_affine`` of the chosen sform/qform)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.benchmark.runner import score_case
from pipeline.demo import _score as demo_score
from pipeline.evaluation import evaluate_case
from pipeline.evaluation.folders import evaluate_folders


def _three_ways(pred_dir: Path, label_dir: Path, case: str, classes: dict[int, str]) -> list[dict]:
    """(dice, hd95) per class as ``evaluate``, ``benchmark`` and ``demo`` score the same pair."""
    summary = evaluate_folders(pred_dir, label_dir, "strict", list(classes), workers=1)
    assert not summary.failures, summary.failures
    by_eval = {int(r["class"]): (r["dice"], r["hd95"]) for r in summary.rows}
    dice, hd = score_case(pred_dir / f"{case}.nii.gz", label_dir / f"{case}.nii.gz", list(classes), "strict")
    by_bench = {c: (dice[c], hd[c]) for c in classes}
    (row,) = demo_score([{"case": case, "label": str(label_dir / f"{case}.nii.gz")}], pred_dir, classes)
    by_demo = {c: (row[f"dice_{n}"], row[f"hd95_{n}"]) for c, n in classes.items()}
    return [by_eval, by_bench, by_demo]


def test_evaluate_benchmark_demo_score_a_real_case_identically(shared_data, tmp_path):
    """On a real label, the three commands give the same numbers, equal to scoring with the header's voxel size."""
    label = shared_data / "STS_CT" / "labelsTr" / "sts_001.nii.gz"
    img = nib.load(str(label))
    arr = np.asarray(img.dataobj)
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    labels.mkdir()
    preds.mkdir()
    (labels / label.name).symlink_to(label)
    nib.save(nib.Nifti1Image(np.roll(arr, 2, axis=2), img.affine, img.header), str(preds / label.name))
    ref = evaluate_case(np.roll(arr, 2, axis=2), arr, img.header.get_zooms()[:3], [1], "strict")[0]
    results = _three_ways(preds, labels, "sts_001", {1: "tumour"})
    assert results == [{1: (ref["dice"], ref["hd95"])}] * 3
    assert 0 < ref["dice"] < 1 and ref["hd95"] > 3.0  # two 3.27 mm slices off: scored in mm, not voxels


def test_scoring_uses_the_sform_voxel_size_when_pixdim_disagrees(tmp_path):
    """A header whose pixdim (1 mm) disagrees with its sform (1.5 x 1.5 x 2 mm) is scored in the sform's mm, the voxel
    size ``infer`` resamples with, by all three commands (``evaluate`` and ``demo`` used to take the pixdim)."""
    lab = np.zeros((12, 12, 10), np.uint8)
    lab[3:9, 3:9, 2:8] = 1
    lab[5:7, 5:7, 4:6] = 2
    pred = np.roll(lab, 1, axis=2)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    for folder, arr in ((labels, lab), (preds, pred)):
        folder.mkdir()
        img = nib.Nifti1Image(arr, affine)
        img.header.set_sform(affine, code=1)
        img.header.set_qform(None, code=0)
        img.header["pixdim"][1:4] = 1.0
        nib.save(img, str(folder / "c1.nii.gz"))
    assert nib.load(str(labels / "c1.nii.gz")).header.get_zooms()[:3] == (1.0, 1.0, 1.0)
    rows = evaluate_case(pred, lab, (1.5, 1.5, 2.0), [1, 2], "strict")
    expected = {int(r["class"]): (r["dice"], r["hd95"]) for r in rows}
    in_pixdim = {int(r["class"]): r["hd95"] for r in evaluate_case(pred, lab, (1.0, 1.0, 1.0), [1, 2], "strict")}
    assert in_pixdim != {c: hd for c, (_, hd) in expected.items()}  # the two voxel sizes do give other distances
    assert expected[2][1] == pytest.approx(2.0)
    assert _three_ways(preds, labels, "c1", {1: "outer", 2: "inner"}) == [expected] * 3
