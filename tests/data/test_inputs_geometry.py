"""NIfTI headers with missing or degenerate geometry (issue 16): one rule for infer, datasets check and evaluate.

The rule (pipeline/data/geometry.py, README "Troubleshooting"): a usable sform wins; an unusable one (NaN, not
invertible) gives way to the qform with a warning; without a usable sform/qform the ``pixdim`` voxel size is used with
NIfTI's default axes, with a warning; when ``pixdim`` is zero/NaN too, the file is refused (the matrix in
tests/test_bad_inputs.py covers the refusals). Inputs are tiny synthetic volumes written with hand-made headers,
and the tiny UNet bundle of tests/helpers/bad_inputs.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.volumeutils import shape_zoom_affine

from helpers.bad_inputs import (
    AFFINE,
    SHAPE,
    SPACING,
    cli,
    ct_case,
    make_bundle,
    nan_sform,
    no_affine,
    raw_nifti,
    write_msd_dataset,
    write_nifti,
)
from helpers.commands import evaluate_argv

#: where nibabel (and so MONAI, ITK-SNAP, FSL...) puts the voxels of a NIfTI with qform_code = sform_code = 0
METHOD1_AFFINE = shape_zoom_affine(SHAPE, SPACING, x_flip=True)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def _warning_lines(err: str, path: Path) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("warning:") and str(path) in ln]


def test_infer_no_orientation_uses_pixdim_warns_and_records_it(bundle, tmp_path, capsys):
    """qform_code = sform_code = 0 with a valid pixdim: processed on NIfTI's default axes, said once, recorded, and
    the output keeps codes 0 so every viewer overlays it on the input exactly as it shows the input."""
    image = ct_case(3)[0]
    inp, out = tmp_path / "in", tmp_path / "out"
    bare = inp / "bare.nii.gz"
    raw_nifti(image, no_affine(SPACING))(bare)
    explicit = write_nifti(tmp_path / "ref" / "explicit.nii.gz", image, METHOD1_AFFINE)  # same grid, coded
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", out, "--quiet")
    assert rc == 0, err
    lines = _warning_lines(err, bare)
    assert len(lines) == 1 and lines[0].startswith("warning: case bare: "), err
    assert (
        "no orientation in the header (qform_code = sform_code = 0): used the pixdim voxel size 1.5x1.5x2 mm"
        in lines[0]
    )
    assert "pixdim[1,2,3]" not in err  # nibabel's own line, which names no file, is not printed
    side = json.loads((out / "bare.json").read_text())["input_report"]
    assert side["geometry_source"] == "pixdim" and side["spacing_mm"] == [1.5, 1.5, 2.0]
    assert side["warnings"] == [side["geometry_warning"]] and "orientation unknown" in side["warnings"][0]
    pred = nib.load(str(out / "bare.nii.gz"))
    assert int(pred.header["qform_code"]) == 0 and int(pred.header["sform_code"]) == 0
    assert np.allclose(pred.affine, METHOD1_AFFINE)
    rc, _, err = cli(
        capsys, "infer", "--model", bundle, "--input", explicit, "--output", tmp_path / "ref_out", "--quiet"
    )
    assert rc == 0 and not _warning_lines(err, explicit), err
    ref = np.asarray(nib.load(str(tmp_path / "ref_out" / "explicit.nii.gz")).dataobj)
    assert np.array_equal(np.asarray(pred.dataobj), ref)  # exactly the segmentation of the coded equivalent
    assert len(np.unique(ref)) > 1


def test_infer_nan_sform_falls_back_to_qform_with_a_warning(bundle, tmp_path, capsys):
    image = ct_case(4)[0]
    inp, out = tmp_path / "in", tmp_path / "out"
    bad = inp / "nansform.nii.gz"
    raw_nifti(image, nan_sform)(bad)  # qform (code 1) still holds AFFINE
    write_nifti(inp / "good.nii.gz", image)
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", out, "--quiet")
    assert rc == 0, err
    lines = _warning_lines(err, bad)
    assert (
        len(lines) == 1
        and "the sform (sform_code 1) has NaN/Inf entries; used the qform instead (spacing 1.5x1.5x2 mm)" in lines[0]
    ), err
    assert not _warning_lines(err, inp / "good.nii.gz")
    report = json.loads((out / "nansform.json").read_text())["input_report"]
    assert report["geometry_source"] == "qform"
    assert json.loads((out / "good.json").read_text())["input_report"] == {
        "format": "nifti",
        "geometry_source": "sform",
        "spacing_mm": [1.5, 1.5, 2.0],
        "geometry_warning": None,
        "warnings": [],
    }
    a, b = (nib.load(str(out / f"{c}.nii.gz")) for c in ("nansform", "good"))
    assert np.allclose(a.affine, AFFINE) and np.isfinite(a.affine).all()
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))


def test_zero_pixdim_with_a_valid_sform_is_fine_everywhere(bundle, tmp_path, capsys):
    """pixdim = 0 does not matter when the sform is sound: no warning, and evaluate's mm come from the sform (nibabel
    alone would report 1 mm voxels)."""
    image, label = ct_case(5)
    zero_pix = lambda h: h.__setitem__("pixdim", [1, 0, 0, 0, 1, 1, 1, 1])  # noqa: E731
    img_path = tmp_path / "in" / "z.nii.gz"
    raw_nifti(image, zero_pix)(img_path)
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", img_path, "--output", tmp_path / "out", "--quiet")
    assert rc == 0 and "warning" not in err and "pixdim[1,2,3]" not in err, err
    assert json.loads((tmp_path / "out" / "z.json").read_text())["input_report"]["spacing_mm"] == [1.5, 1.5, 2.0]
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    raw_nifti(label, zero_pix)(labels / "z.nii.gz")
    shifted = np.zeros_like(label)
    shifted[:, :, 1:] = label[:, :, :-1]  # one slice off: HD95 is one slice thickness = 2 mm, not 1
    write_nifti(preds / "z.nii.gz", shifted)
    rc, _, err = cli(capsys, *evaluate_argv(preds, labels, "--classes", "1,2", out=tmp_path / "rep", workers=1))
    assert rc == 0 and "warning" not in err, err
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["grids"]["z"]["spacing"] == [1.5, 1.5, 2.0]
    with open(tmp_path / "rep" / "per_case.csv") as f:
        hd = {int(r["class"]): float(r["hd95"]) for r in csv.DictReader(f)}
    assert hd == {1: 2.0, 2: 2.0}


def test_datasets_check_warns_about_missing_orientation_without_breaking_the_case(tmp_path, capsys):
    ds = write_msd_dataset(tmp_path / "ds")
    image, label = ct_case(1)
    raw_nifti(image, no_affine(SPACING))(ds / "imagesTr" / "c1.nii.gz")
    raw_nifti(label, no_affine(SPACING))(ds / "labelsTr" / "c1.nii.gz")
    rc, out, err = cli(capsys, "datasets", "check", ds, "--json", tmp_path / "check.json")
    assert rc == 0, out + err
    warn = [ln for ln in out.splitlines() if ln.startswith("WARN    c1: ")]
    assert len(warn) == 2, out
    assert f"image {ds / 'imagesTr' / 'c1.nii.gz'}: no orientation in the header" in warn[0]
    assert f"label {ds / 'labelsTr' / 'c1.nii.gz'}: no orientation in the header" in warn[1]
    assert "with warnings: 1" in out and "pixdim[1,2,3]" not in out + err
    rep = json.loads((tmp_path / "check.json").read_text())
    by_case = {c["case"]: c for c in rep["cases"]}
    assert by_case["c1"]["ok"] and len(by_case["c1"]["warnings"]) == 2 and by_case["c0"]["warnings"] == []


def test_evaluate_reads_labels_by_the_same_rule(tmp_path, capsys):
    """A label without orientation is scored with its pixdim (warning naming it); one without a voxel size is refused
    with one line, and the other cases are scored."""
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    for i in range(3):
        label = ct_case(i)[1]
        write_nifti(preds / f"c{i}.nii.gz", label, METHOD1_AFFINE)
        write_nifti(labels / f"c{i}.nii.gz", label, METHOD1_AFFINE)
    raw_nifti(ct_case(1)[1], no_affine(SPACING))(labels / "c1.nii.gz")
    raw_nifti(ct_case(2)[1], no_affine([0, 0, 0]))(labels / "c2.nii.gz")
    rc, _, err = cli(capsys, *evaluate_argv(preds, labels, "--classes", "1,2", out=tmp_path / "rep", workers=1))
    assert rc == 1 and "Traceback" not in err
    assert len(_warning_lines(err, labels / "c1.nii.gz")) == 1
    errors = [ln for ln in err.splitlines() if ln.startswith("error:") or ln.startswith("failed")]
    assert any(str(labels / "c2.nii.gz") in ln and "no usable voxel geometry" in ln for ln in errors), err
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert sorted(summary["grids"]) == ["c0", "c1"]
    assert summary["grids"]["c1"]["spacing"] == [1.5, 1.5, 2.0]
