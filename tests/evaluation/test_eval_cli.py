"""Pairing, class sets, reports and the ``medseg evaluate`` command end to end on shared data."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.data.naming import case_id, pair_cases
from pipeline.errors import InputDataError, UsageError
from pipeline.evaluation import evaluate_case, resolve_classes
from pipeline.evaluation.folders import evaluate_folders

from helpers.commands import evaluate_argv


# ------------------------------------------------------------------------------------------------------ pairing rules
def test_case_id_rules():
    assert case_id("img0001") == case_id("label0001") == "0001"
    assert case_id("lung_001_0000") == case_id("lung_001") == "lung_001"
    assert case_id("sts_010_seg") == "sts_010"
    assert case_id("image_12") == case_id("pred-12") == "12"
    assert case_id("segmentation") == "segmentation"  # a prefix is stripped only before a digit or separator
    assert case_id("liver") == "liver"


def test_pairing_never_by_order_and_reports_problems():
    preds = [Path(n) for n in ("img0003.nii.gz", "img0001.nii.gz", "extra_9.nii.gz", "a_0001.nii", "a_0001.nii.gz")]
    labels = [Path(n) for n in ("label0001.nii.gz", "label0002.nii.gz", "label0003.nii.gz", "a_0001.nii.gz")]
    r = pair_cases(preds, labels)
    got = {c: lab.name for c, _, lab in r.pairs}
    assert got == {"img0001": "label0001.nii.gz", "img0003": "label0003.nii.gz"}
    assert r.missing == ["a_0001.nii.gz", "label0002.nii.gz"] and r.extra == ["extra_9.nii.gz"]
    assert len(r.ambiguous) == 1 and "a_0001.nii, a_0001.nii.gz" in r.ambiguous[0]  # same name, two formats
    # two prediction files with the same case id on one side -> ambiguous, not silently picked
    r2 = pair_cases([Path("img0001.nii.gz"), Path("pred_0001.nii.gz")], [Path("label0001.nii.gz")])
    assert r2.ambiguous and not r2.pairs


def test_class_sets(tmp_path):
    s8 = resolve_classes("synapse8")
    assert s8.ids == (1, 2, 3, 4, 6, 7, 8, 11)  # UNETR++ table order, as medseg benchmark prints it
    assert resolve_classes("btcv13").ids == tuple(range(1, 14))
    assert resolve_classes("2, 1").ids == (2, 1)
    msd = tmp_path / "dataset.json"
    msd.write_text(json.dumps({"labels": {"0": "background", "1": "cancer"}}))
    assert resolve_classes(str(msd)).labels == {1: "cancer"}
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}}))
    assert resolve_classes(v2).labels == {1: "liver", 2: "tumour"}
    with pytest.raises(UsageError):
        resolve_classes("synapse9")
    with pytest.raises(InputDataError):
        resolve_classes(str(tmp_path / "missing.json"))


# --------------------------------------------------------------------------------------------------- end to end
@pytest.fixture()
def btcv_preds(shared_data, tmp_path):
    """Predictions named img000N for the two BTCV_like labels: case 1 perfect, case 2 shifted with the liver
    dropped and a spurious esophagus island (esophagus is absent from both labels)."""
    labels = shared_data / "BTCV_like" / "labelsTr"
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    shutil.copy(labels / "label0001.nii.gz", pred_dir / "img0001.nii.gz")
    img = nib.load(str(labels / "label0002.nii.gz"))
    a = np.roll(np.asanyarray(img.dataobj), 1, axis=0)
    a[a == 6] = 0
    a[2:5, 2:5, 2:4] = 5
    nib.save(nib.Nifti1Image(a, img.affine, img.header), str(pred_dir / "img0002.nii.gz"))
    return pred_dir, labels


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_command_end_to_end(btcv_preds, tmp_path, capsys):
    pred_dir, labels = btcv_preds
    out = tmp_path / "out"
    split = ("--split", "BTCV_like training+validation")
    rc = main(evaluate_argv(pred_dir, labels, "--classes", "btcv13", *split, out=out, workers=2))
    assert rc == 0
    rows = _read_csv(out / "per_case.csv")
    assert list(rows[0])[:4] == ["case", "class", "dice", "hd95"]
    assert {r["case"] for r in rows} == {"img0001", "img0002"} and len(rows) == 26
    by = {(r["case"], int(r["class"])): r for r in rows}
    assert float(by["img0001", 1]["dice"]) == 1.0 and float(by["img0001", 1]["hd95"]) == 0.0
    assert by["img0002", 6]["situation"] == "missed" and float(by["img0002", 6]["dice"]) == 0.0
    assert by["img0002", 5]["situation"] == "spurious"
    assert by["img0001", 5]["situation"] == "both_empty" and by["img0001", 5]["dice"] == ""  # excluded

    # the CSV equals evaluate_case on the same arrays, spacing from the header
    lab = nib.load(str(labels / "label0002.nii.gz"))
    pred = np.asanyarray(nib.load(str(pred_dir / "img0002.nii.gz")).dataobj)
    ref = evaluate_case(pred, np.asanyarray(lab.dataobj), lab.header.get_zooms()[:3], "btcv13")
    for r in ref:
        got = by["img0002", r["class"]]
        assert float(got["hd95"]) == pytest.approx(r["hd95"], rel=1e-9)
        diag = float(np.linalg.norm(np.array(lab.shape) * 3.0))
        if r["situation"] in ("missed", "spurious"):
            assert r["hd95"] == pytest.approx(diag)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["name"] == "strict" and summary["units"] == "mm"
    assert summary["per_class"]["5"]["n_dice_excluded"] == 1 and summary["per_class"]["5"]["dice"] == 0.0
    liver = summary["per_class"]["6"]
    assert liver["dice"] == pytest.approx(0.5) and liver["n_missed"] == 1
    means = [summary["per_class"][str(c)]["dice"] for c in range(1, 14)]
    assert summary["mean"]["dice"] == pytest.approx(float(np.mean(means)))
    md = (out / "summary.md").read_text()
    assert "protocol `strict`" in md and "image diagonal" in md and "btcv13" in md and "BTCV_like" in md

    # outputs exist: a re-run is skipped unless --overwrite
    before = (out / "summary.json").stat().st_mtime_ns
    assert main(evaluate_argv(pred_dir, labels, out=out)) == 0
    assert "skipped" in capsys.readouterr().err
    assert (out / "summary.json").stat().st_mtime_ns == before


def test_legacy_protocol_report_has_banner_and_voxel_units(btcv_preds, tmp_path, capsys):
    pred_dir, labels = btcv_preds
    out = tmp_path / "legacy"
    rc = main(evaluate_argv(pred_dir, labels, "--protocol", "legacy_unetrpp", out=out, workers=1))
    assert rc == 0
    assert "WARNING" in capsys.readouterr().err
    md = (out / "summary.md").read_text()
    assert "WARNING" in md and "voxels" in md and "synapse8" in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"]["name"] == "synapse8" and list(summary["per_class"])[0] == "1"  # spleen first
    assert summary["per_class"]["6"]["hd95"] == 0.0  # the missed liver scores HD95 0 in this convention (case 1: 0)


def test_monai_protocol_counts_nans(btcv_preds, tmp_path):
    pred_dir, labels = btcv_preds
    s = evaluate_folders(pred_dir, labels, "monai", "btcv13", workers=1)
    pc = s.per_class()
    assert pc[6]["n_hd95_nan"] == 1 and pc[6]["n_hd95"] == 1  # missed liver: NaN (MONAI #9095), dropped and counted
    assert pc[5]["n_dice_nan"] == 2  # esophagus: empty ground truth in both cases
    assert math.isfinite(s.means()["hd95_mean_over_entries"])


def test_bad_cases_are_reported_and_the_batch_carries_on(btcv_preds, tmp_path, capsys):
    pred_dir, labels = btcv_preds
    (pred_dir / "img0002.nii.gz").write_bytes(b"not a nifti file at all")
    img = nib.load(str(labels / "label0001.nii.gz"))
    shutil.copy(labels / "label0001.nii.gz", pred_dir / "label0001_copy.nii.gz")  # an extra prediction
    rc = main(evaluate_argv(pred_dir, labels, "--classes", "1,2", out=tmp_path / "o", workers=2))
    err = capsys.readouterr().err
    assert rc == 1
    bad = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(bad) == 1 and "img0002.nii.gz" in bad[0] and "Traceback" not in err
    assert "label0001_copy.nii.gz" in err  # no label for it: reported
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["cases"] == ["img0001"] and summary["failed"][0]["case"] == "img0002"

    # shape and affine mismatches name the prediction file
    a = np.asanyarray(img.dataobj)
    nib.save(nib.Nifti1Image(a[:-1], img.affine), str(pred_dir / "img0002.nii.gz"))
    s = evaluate_folders(pred_dir, labels, classes=[1], workers=1)
    assert "img0002.nii.gz" in s.failures[0][1] and "shape" in s.failures[0][1]
    moved = img.affine.copy()
    moved[0, 3] += 5.0
    nib.save(nib.Nifti1Image(a, moved), str(pred_dir / "img0001.nii.gz"))
    s = evaluate_folders(pred_dir, labels, classes=[1], workers=1)
    assert any("affine" in e and "img0001.nii.gz" in e for _, e in s.failures)
    s = evaluate_folders(pred_dir, labels, classes=[1], workers=1, check_affine=False)
    assert "img0001" in s.cases


def test_usage_and_input_errors(tmp_path, capsys):
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--label", str(tmp_path), "--quiet"]) == 3
    assert "nope" in capsys.readouterr().err
    (tmp_path / "p").mkdir()
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--label", str(tmp_path), "--metrics", "iou"]) == 2


def test_default_classes_auto_and_nnunet_names(shared_data, tmp_path):
    """No dataset.json next to the labels: every id found is scored; nnU-Net ``_0000`` names pair with labels."""
    src = shared_data / "Task04_Hippocampus" / "labelsTr"
    names = sorted(p.name for p in src.glob("hippocampus_*.nii.gz"))[:2]
    lab_dir, pred_dir = tmp_path / "labels", tmp_path / "preds"
    lab_dir.mkdir()
    pred_dir.mkdir()
    for n in names:
        shutil.copy(src / n, lab_dir / n)
        img = nib.load(str(src / n))
        a = np.asanyarray(img.dataobj).copy()
        a[a == 2] = 0  # posterior hippocampus missed
        nib.save(nib.Nifti1Image(a, img.affine, img.header), str(pred_dir / n.replace(".nii.gz", "_0000.nii.gz")))
    s = evaluate_folders(pred_dir, lab_dir, workers=1)
    assert s.classes.name == "auto" and s.classes.ids == (1, 2)
    assert len(s.cases) == 2 and all(c.endswith("_0000") for c in s.cases)
    pc = s.per_class()
    assert pc[1]["dice"] == 1.0 and pc[2]["dice"] == 0.0 and pc[2]["n_missed"] == 2
