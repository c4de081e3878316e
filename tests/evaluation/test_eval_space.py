"""``medseg evaluate --space resampled``: label and prediction on a target-spacing grid (pipeline.evaluation.space)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.errors import InputDataError, UsageError
from pipeline.evaluation import evaluate_case
from pipeline.evaluation.folders import evaluate_folders
from pipeline.evaluation.space import (
    TargetSpacing,
    parse_target_spacing,
    resample_nearest,
    spacing_from_preset,
    target_grid,
    to_target_space,
)

from helpers.commands import evaluate_argv

# Anisotropic source grid, flipped x/y axes (LPS-like storage, as many CT files): exercises the RAS <-> ITK LPS mapping.
SPACING = (0.75, 0.75, 3.0)
SHAPE = (64, 64, 16)
AFFINE = np.array([[-0.75, 0, 0, 40.0], [0, -0.75, 0, 30.0], [0, 0, 3.0, -20.0], [0, 0, 0, 1]])
CENTRE = AFFINE @ np.array([31.3, 30.2, 7.6, 1.0])  # world (mm) centre of the ground-truth ellipsoid


def ellipsoid(affine: np.ndarray, shape, centre, radii, value: int = 1, dtype=np.uint8) -> np.ndarray:
    """A label map on (affine, shape): ``value`` where the voxel centre lies inside the world-space ellipsoid."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    inside = (((world - np.asarray(centre[:3])) / np.asarray(radii)) ** 2).sum(1) <= 1.0
    return (inside.reshape(shape) * value).astype(dtype)


def gt_and_pred(affine=AFFINE, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    gt = ellipsoid(affine, shape, CENTRE, (14.0, 11.0, 15.0))
    pred = ellipsoid(affine, shape, CENTRE + np.array([1.3, -0.7, 1.0, 0]), (13.0, 11.5, 16.0))
    return gt, pred


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def monai_hd95(pred: np.ndarray, gt: np.ndarray, spacing) -> float:
    """MONAI HausdorffDistanceMetric(percentile=95) (max-directed, as the strict protocol) on binary masks."""
    from monai.metrics import HausdorffDistanceMetric

    def onehot(m: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([m == 0, m == 1])[None].astype(np.float32))

    metric = HausdorffDistanceMetric(include_background=False, percentile=95)
    return float(metric(onehot(pred), onehot(gt), spacing=list(spacing)).item())


def explicit_nearest(array: np.ndarray, src_spacing, dst_spacing, dst_shape) -> np.ndarray:
    """Nearest neighbour onto a grid with the same origin and direction, written with index arithmetic only: target
    voxel i sits at source index i * dst / src (no SimpleITK, no affines). Used only where no exact half-voxel tie
    occurs (dst/src = 4/3 and 2/3 below), so rounding conventions cannot matter."""
    idx = [np.rint(np.arange(n) * d / s).astype(int) for n, s, d in zip(dst_shape, src_spacing, dst_spacing)]
    assert all(i.max() < n for i, n in zip(idx, array.shape))
    return array[np.ix_(*idx)]


# ----------------------------------------------------------------------------------------------- grid and resampler
def test_target_grid_and_exact_label_ids():
    aff, shape = target_grid(AFFINE, SHAPE, (1.0, 1.0, 2.0))
    assert shape == (48, 48, 24)  # round(64 * 0.75 / 1), round(16 * 3 / 2)
    np.testing.assert_allclose(aff[:3, :3], np.diag([-1.0, -1.0, 2.0]))
    np.testing.assert_allclose(aff[:3, 3], AFFINE[:3, 3])  # same origin (centre of voxel 0) and direction
    assert target_grid(AFFINE, (3, 3, 1), 50.0)[1] == (1, 1, 1)  # never below one voxel

    lab = np.zeros(SHAPE, np.uint16)
    lab[10:40, 12:30, 2:9] = 300
    lab[40:60, 40:60, 9:15] = 1000
    out = resample_nearest(lab, AFFINE, aff, shape)
    assert out.dtype == np.uint16 and set(np.unique(out)) == {0, 300, 1000}
    np.testing.assert_array_equal(out, explicit_nearest(lab, SPACING, (1.0, 1.0, 2.0), shape))
    with pytest.raises(ValueError, match="integer"):
        resample_nearest(lab.astype(np.float32), AFFINE, aff, shape)


def test_parse_spacing_and_preset_pixdim():
    assert parse_target_spacing("1.5,1.5,2") == (1.5, 1.5, 2.0) and parse_target_spacing("2") == (2.0, 2.0, 2.0)
    for bad in ("1,2", "a,b,c", "0,1,1", "nan"):
        with pytest.raises(UsageError):
            parse_target_spacing(bad)
    t = spacing_from_preset("ct_abdomen")
    assert t.spacing == (1.5, 1.5, 2.0) and t.frame == "RAS" and "ct_abdomen" in t.describe()
    # a label stored with its axes permuted (array axis 0 runs inferior-superior): the RAS pixdim follows the axes
    permuted = np.array([[0, 0, 0.8, 0], [0, -0.8, 0, 0], [-2.5, 0, 0, 0], [0, 0, 0, 1.0]])
    assert t.for_affine(permuted) == (2.0, 1.5, 1.5) and t.for_affine(AFFINE) == (1.5, 1.5, 2.0)
    for name in ("ct_nnunet", "mri_zscore"):  # fingerprint / native spacing: no fixed pixdim
        with pytest.raises(UsageError, match=name):
            spacing_from_preset(name)


# ---------------------------------------------------------------------------------------------- metric values
@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI 1.6 get_mask_edges deprecation, not ours
def test_resampled_hd95_matches_an_independent_computation(tmp_path):
    """Target 1.0 x 1.0 x 2.0 mm from 0.75 x 0.75 x 3.0 mm. Reference: the masks resampled by explicit index
    arithmetic, scored by MONAI's HausdorffDistanceMetric with the target spacing. Tolerance 1e-4 mm (MONAI
    computes the percentile in float32)."""
    gt, pred = gt_and_pred()
    (tmp_path / "p").mkdir()
    (tmp_path / "l").mkdir()
    save(tmp_path / "p" / "case1.nii.gz", pred, AFFINE)
    save(tmp_path / "l" / "case1.nii.gz", gt, AFFINE)
    orig = evaluate_folders(tmp_path / "p", tmp_path / "l", classes=[1], workers=1).rows[0]
    res = evaluate_folders(
        tmp_path / "p", tmp_path / "l", classes=[1], workers=1, space="resampled", target_spacing=(1.0, 1.0, 2.0)
    )
    row = res.rows[0]
    assert res.grids["case1"] == {"shape": [48, 48, 24], "spacing": [1.0, 1.0, 2.0]}

    target = (1.0, 1.0, 2.0)
    g_t = explicit_nearest(gt, SPACING, target, (48, 48, 24))
    p_t = explicit_nearest(pred, SPACING, target, (48, 48, 24))
    ref_hd95 = monai_hd95(p_t, g_t, target)
    assert row["hd95"] == pytest.approx(ref_hd95, abs=1e-4)
    tp = int(np.count_nonzero((p_t == 1) & (g_t == 1)))
    assert row["dice"] == pytest.approx(2 * tp / (np.count_nonzero(p_t) + np.count_nonzero(g_t)), rel=1e-12)
    # the space matters: the original grid gives another HD95 (its own MONAI value) and another Dice
    assert orig["hd95"] == pytest.approx(monai_hd95(pred, gt, SPACING), abs=1e-4)
    assert abs(row["hd95"] - orig["hd95"]) > 0.2
    assert row["dice"] != pytest.approx(orig["dice"], abs=1e-4)

    # voxel units: voxels of the target grid
    vox = evaluate_folders(
        tmp_path / "p",
        tmp_path / "l",
        "legacy_unetrpp",
        classes=[1],
        workers=1,
        space="resampled",
        target_spacing=target,
    ).rows[0]
    assert vox["hd95"] == pytest.approx(evaluate_case(p_t, g_t, None, [1], "legacy_unetrpp")[0]["hd95"])


def test_prediction_on_target_grid_equals_prediction_on_original_grid(tmp_path):
    """Target 1.5 x 1.5 x 3.0 mm from 0.75 x 0.75 x 3.0 mm: every target voxel centre is a source voxel centre, so
    nearest neighbour sampling of the original-grid prediction equals the prediction drawn directly on the target
    grid, and both must score exactly alike. (With a non-integer ratio, e.g. 1.0 mm, a prediction drawn on the
    target grid samples the ellipsoid at other points than the resampled one, and boundary voxels may differ.)"""
    gt, pred = gt_and_pred()
    t_aff, t_shape = target_grid(AFFINE, SHAPE, (1.5, 1.5, 3.0))
    pred_on_target = gt_and_pred(t_aff, t_shape)[1]
    for sub, array, aff in (("orig", pred, AFFINE), ("target", pred_on_target, t_aff)):
        (tmp_path / sub).mkdir()
        save(tmp_path / sub / "case1.nii.gz", array, aff)
    (tmp_path / "l").mkdir()
    save(tmp_path / "l" / "case1.nii.gz", gt, AFFINE)
    kw = dict(
        classes=[1],
        workers=1,
        space="resampled",
        target_spacing=1.5 * np.array([1, 1, 2]),
        metrics=("dice", "hd95", "assd"),
    )
    a = evaluate_folders(tmp_path / "orig", tmp_path / "l", **kw).rows[0]
    b = evaluate_folders(tmp_path / "target", tmp_path / "l", **kw).rows[0]
    assert a["n_pred"] > 0 and a == b
    # in original space the target-grid prediction cannot be scored
    s = evaluate_folders(tmp_path / "target", tmp_path / "l", classes=[1], workers=1)
    assert "shape" in s.failures[0][1]


def test_geometry_checks_in_resampled_space():
    gt, pred = gt_and_pred()
    far = AFFINE.copy()
    far[:3, 3] += 500.0
    with pytest.raises(InputDataError, match="no overlap"):
        to_target_space(pred, far, gt, AFFINE, 1.5, pred_path="p.nii.gz")
    flipped = AFFINE @ np.diag([-1.0, 1, 1, 1])
    flipped[0, 3] = AFFINE[0, 3] + AFFINE[0, 0] * (SHAPE[0] - 1)  # same extent, x axis stored the other way
    with pytest.raises(InputDataError, match="direction"):
        to_target_space(pred[::-1], flipped, gt, AFFINE, 1.5, pred_path="p.nii.gz")
    # --no-affine-check: a prediction of the label's shape is compared voxel by voxel (its affine ignored)
    p_t, g_t, spacing, _ = to_target_space(pred, far, gt, AFFINE, 1.5, check=False)
    p_ref, _, _, _ = to_target_space(pred, AFFINE, gt, AFFINE, 1.5)
    np.testing.assert_array_equal(p_t, p_ref)
    assert spacing == (1.5, 1.5, 1.5) and g_t.shape == (32, 32, 32)
    # partial overlap is allowed: the part outside the prediction is background
    half = AFFINE.copy()
    half[2, 3] += 24.0
    p_half, _, _, _ = to_target_space(pred, half, gt, AFFINE, TargetSpacing((1.5, 1.5, 1.5)))
    assert not p_half[:, :, :16].any()


# ------------------------------------------------------------------------------------------------------- the CLI
@pytest.fixture()
def three_cases(tmp_path):
    """case1 and case2 fine (original grid, target grid); case3 lies 500 mm away from its label."""
    gt, pred = gt_and_pred()
    pdir, ldir = tmp_path / "pred", tmp_path / "labels"
    pdir.mkdir()
    ldir.mkdir()
    t_aff, t_shape = target_grid(AFFINE, SHAPE, (1.5, 1.5, 3.0))
    far = AFFINE.copy()
    far[:3, 3] += 500.0
    for case, array, aff in (
        ("case1", pred, AFFINE),
        ("case2", gt_and_pred(t_aff, t_shape)[1], t_aff),
        ("case3", pred, far),
    ):
        save(ldir / f"{case}.nii.gz", gt, AFFINE)
        save(pdir / f"{case}.nii.gz", array, aff)
    return pdir, ldir


def test_cli_resampled_reports_state_space_and_bad_case_fails_alone(three_cases, tmp_path, capsys):
    pdir, ldir = three_cases
    out = tmp_path / "out"
    resampled = ("--space", "resampled", "--target-spacing", "1.5,1.5,3")
    rc = main(evaluate_argv(pdir, ldir, "--classes", "1", *resampled, out=out, workers=2))
    err = capsys.readouterr().err
    assert rc == 1
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "case3.nii.gz" in errors[0] and "no overlap" in errors[0] and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["space"] == "resampled" and summary["units"] == "mm"
    assert summary["target_spacing"] == {
        "spacing": [1.5, 1.5, 3.0],
        "frame": "array",
        "source": "--target-spacing 1.5,1.5,3",
    }
    assert summary["cases"] == ["case1", "case2"] and summary["failed"][0]["case"] == "case3"
    assert summary["grids"]["case1"] == {"shape": [32, 32, 16], "spacing": [1.5, 1.5, 3.0]}
    assert any(h.startswith("space: resampled") and "1.5 x 1.5 x 3 mm" in h for h in summary["header"])
    md = (out / "summary.md").read_text()
    assert "resampled space" in md and "1.5 x 1.5 x 3 mm" in md
    rows = [ln.split(",") for ln in (out / "per_case.csv").read_text().splitlines()[1:]]
    assert rows[0][2] == rows[1][2] and rows[0][3] == rows[1][3]  # same Dice and HD95 (see the test above)

    # the default space is stated too, with per-case header spacing
    out2 = tmp_path / "orig"
    # case2 (other shape) and case3 (other affine) fail
    assert main(evaluate_argv(pdir, ldir, "--classes", "1", out=out2, workers=1)) == 1
    s2 = json.loads((out2 / "summary.json").read_text())
    assert s2["space"] == "original" and s2["target_spacing"] is None
    assert s2["grids"]["case1"]["spacing"] == pytest.approx(list(SPACING))
    assert "original space" in (out2 / "summary.md").read_text()


def test_cli_preset_pixdim_equals_explicit_spacing(three_cases, tmp_path):
    pdir, ldir = three_cases
    shutil.move(str(pdir / "case3.nii.gz"), str(tmp_path / "case3.nii.gz"))
    shutil.move(str(ldir / "case3.nii.gz"), str(tmp_path / "label3.nii.gz"))
    for name, extra in (("a", ["--preprocessing", "ct_sts"]), ("b", ["--target-spacing", "2,2,3"])):
        options = ("--classes", "1", "--space", "resampled", *extra)
        assert main(evaluate_argv(pdir, ldir, *options, out=tmp_path / name, workers=1)) == 0
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert a["target_spacing"]["source"] == "--preprocessing ct_sts" and a["target_spacing"]["frame"] == "RAS"
    # AFFINE's array axes are (L-R, P-A, I-S) up to sign: the RAS pixdim applies axis by axis
    assert a["grids"] == b["grids"] and a["grids"]["case1"]["spacing"] == [2.0, 2.0, 3.0]
    assert a["mean"] == b["mean"]


@pytest.mark.parametrize(
    "options, needle",
    [
        (["--space", "resampled"], "--target-spacing X,Y,Z"),
        (["--target-spacing", "1.5"], "only with --space resampled"),
        (["--preprocessing", "ct_abdomen"], "only with --space resampled"),
        (["--space", "resampled", "--target-spacing", "1", "--preprocessing", "ct_abdomen"], "both given"),
        (["--space", "resampled", "--preprocessing", "ct_nnunet"], "no fixed target pixdim"),
        (["--space", "resampled", "--target-spacing", "1,2"], "--target-spacing '1,2'"),
    ],
)
def test_cli_usage_errors(three_cases, capsys, options, needle):
    pdir, ldir = three_cases
    rc = main(evaluate_argv(pdir, ldir, *options))
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


# ------------------------------------------------------------------------------------------------------ real data
def test_real_case_resampled(shared_data, tmp_path):
    """BTCV_like label0002 (3 mm isotropic) against itself and against a copy shifted by one voxel (3 mm) along x,
    at 1.5 x 1.5 x 2 mm. A 3 mm shift is exactly 2 target voxels along x, so the resampled shifted prediction must
    equal the resampled label shifted by 2 voxels (checked), and the scores must equal evaluate_case on that pair."""
    src = shared_data / "BTCV_like" / "labelsTr" / "label0002.nii.gz"
    img = nib.load(str(src))
    lab = np.asanyarray(img.dataobj)
    assert not lab[0].any() and not lab[-1].any()  # background at the x borders: the shift loses nothing
    shifted = np.zeros_like(lab)
    shifted[1:] = lab[:-1]
    ldir, same, moved = tmp_path / "labels", tmp_path / "same", tmp_path / "moved"
    for d in (ldir, same, moved):
        d.mkdir()
    shutil.copy(src, ldir / "label0002.nii.gz")
    shutil.copy(src, same / "img0002.nii.gz")
    nib.save(nib.Nifti1Image(shifted, img.affine, img.header), str(moved / "img0002.nii.gz"))
    args = dict(classes="btcv13", workers=1, space="resampled", target_spacing=(1.5, 1.5, 2.0))

    s = evaluate_folders(same, ldir, **args)
    assert s.grids["img0002"] == {"shape": [244, 202, 45], "spacing": [1.5, 1.5, 2.0]}
    present = [r for r in s.rows if r["situation"] == "present"]
    assert len(present) >= 5 and all(r["dice"] == 1.0 and r["hd95"] == 0.0 for r in present)

    s = evaluate_folders(moved, ldir, **args)
    p_t, g_t, spacing, _ = to_target_space(shifted, img.affine, lab, img.affine, (1.5, 1.5, 2.0))
    np.testing.assert_array_equal(p_t[2:], g_t[:-2])
    assert not p_t[:2].any()
    ref = {r["class"]: r for r in evaluate_case(p_t, g_t, spacing, "btcv13")}
    for r in s.rows:
        if r["situation"] == "present":
            assert r["dice"] == pytest.approx(ref[r["class"]]["dice"], rel=1e-12)
            assert r["hd95"] == pytest.approx(ref[r["class"]]["hd95"], rel=1e-12)
            assert 2.9 < r["hd95"] < 3.6  # a 3 mm translation
