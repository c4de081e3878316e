"""Golden tests for pipeline.evaluation metrics and protocols against MONAI 1.6.1 and medpy 0.5.2."""

from __future__ import annotations

import math
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline.evaluation import evaluate_case, get_protocol, surface_distances
from pipeline.evaluation.metrics import as_label_map, image_diagonal
from pipeline.evaluation.surface import hd95_from_distances, mask_surface

medpy_binary = pytest.importorskip("medpy.metric.binary")
from monai.metrics import DiceMetric, HausdorffDistanceMetric, compute_hausdorff_distance  # noqa: E402


def monai_hd95(pred: np.ndarray, gt: np.ndarray, spacing) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None],
            torch.from_numpy(gt)[None, None],
            include_background=True,
            percentile=95,
            spacing=spacing,
        )
    return float(out.item())


def medpy_hd95(pred: np.ndarray, gt: np.ndarray, spacing) -> float:
    return float(medpy_binary.hd95(pred, gt, voxelspacing=spacing))


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


# ------------------------------------------------------------------------------------------------------------ surface
def test_mask_surface_matches_scipy_erosion_including_border(rng):
    for _ in range(5):
        m = rng.random((9, 7, 6)) > 0.3
        m[0] = True  # touches the volume border
        expected = m ^ ndimage.binary_erosion(m)
        assert np.array_equal(mask_surface(m), expected)
    thin = np.ones((5, 2, 5), bool)  # an axis shorter than 3: everything is surface
    assert mask_surface(thin).all()


def test_hd95_definitions_differ_on_an_island():
    """The doc's island case: sphere r=8 in 32^3 plus a 4^3 false-positive cube in a corner."""
    z, y, x = np.ogrid[:32, :32, :32]
    gt = (z - 16) ** 2 + (y - 16) ** 2 + (x - 16) ** 2 <= 64
    pred = gt.copy()
    pred[:4, :4, :4] = True
    d = surface_distances(pred, gt)
    assert d.hd95("pooled") == pytest.approx(medpy_hd95(pred, gt, None), rel=1e-6, abs=1e-9)
    assert d.hd95("max_directed") == pytest.approx(monai_hd95(pred, gt, None), rel=1e-6)
    assert d.hd95("pooled") == 0.0
    assert d.hd95("max_directed") > 15.0  # MONAI measured 15.6: the island is not hidden
    with pytest.raises(ValueError, match="definition"):
        hd95_from_distances(d.pred_to_gt, d.gt_to_pred, "mean")


# ------------------------------------------------------------------------------------------------------- real labels
def _perturbations(label: np.ndarray, organ: int) -> dict[str, np.ndarray]:
    """Predictions made from a real label map: erosion, dilation, shift, dropped organ, spurious island."""
    out = {}
    m = label == organ
    eroded = label.copy()
    eroded[m & ~ndimage.binary_erosion(m)] = 0
    out["erosion"] = eroded
    dil = label.copy()
    dil[ndimage.binary_dilation(m) & (label == 0)] = organ
    out["dilation"] = dil
    out["shift"] = np.roll(label, (2, -1, 1), axis=(0, 1, 2))
    dropped = label.copy()
    dropped[m] = 0
    out["dropped"] = dropped
    island = label.copy()
    island[:3, :3, :2] = organ  # a corner island that also touches the volume border
    out["island"] = island
    return out


@pytest.fixture(scope="module")
def real_labels(shared_data):
    cases = []
    for path in (shared_data / "BTCV_like/labelsTr/label0002.nii.gz", shared_data / "STS_CT/labelsTr/sts_010.nii.gz"):
        img = nib.load(str(path))
        cases.append(
            (path.name, np.asanyarray(img.dataobj).astype(np.uint8), tuple(map(float, img.header.get_zooms())))
        )
    return cases


def test_real_label_pairs_match_monai_and_medpy(real_labels):
    checked = 0
    for name, label, spacing in real_labels:
        organs = [6, 4, 11] if name.startswith("label") else [1]
        for organ in organs:
            for kind, pred in _perturbations(label, organ).items():
                for sp in (spacing, None) if name.startswith("label") else (spacing,):  # STS: anisotropic mm
                    rows = {
                        r["class"]: r
                        for r in evaluate_case(
                            pred, label, sp, [organ], get_protocol("strict", units="mm" if sp else "voxel")
                        )
                    }
                    p, g = pred == organ, label == organ
                    r = rows[organ]
                    if kind == "dropped":
                        assert r["situation"] == "missed" and r["dice"] == 0.0
                        assert r["hd95"] == pytest.approx(image_diagonal(label.shape, sp))
                        continue
                    assert rel(r["hd95"], monai_hd95(p, g, sp)) < 1e-6, (name, organ, kind, sp)
                    pooled = surface_distances(p, g, sp).hd95("pooled")
                    assert rel(pooled, medpy_hd95(p, g, sp)) < 1e-6, (name, organ, kind, sp)
                    checked += 1
    assert checked >= 28
    # anisotropic spacing matters: the STS shift differs between mm and voxel units
    name, label, spacing = real_labels[1]
    shifted = np.roll(label, 2, axis=2)
    mm = evaluate_case(shifted, label, spacing, [1])[0]["hd95"]
    vox = evaluate_case(shifted, label, None, [1], get_protocol("strict", units="voxel"))[0]["hd95"]
    assert spacing[2] > 3 and mm == pytest.approx(vox * spacing[2], rel=1e-6)


def test_dice_equals_monai_dicemetric_on_label_maps(real_labels):
    name, label, spacing = real_labels[0]
    pred = np.roll(label, (1, 1, 0), axis=(0, 1, 2))
    pred[pred == 4] = 0  # gallbladder missed
    ids = list(range(1, 14))
    ours = [r["dice"] for r in evaluate_case(pred, label, spacing, ids)]
    metric = DiceMetric(include_background=False, num_classes=14, reduction="none")
    monai = metric(torch.from_numpy(pred)[None, None], torch.from_numpy(label)[None, None])[0].double().numpy()
    present = [i - 1 for i in ids if i != 5]  # esophagus absent from both: MONAI NaN, ours excluded (None)
    assert np.allclose(np.array(ours, dtype=float)[present], monai[present], rtol=0, atol=1e-6)
    assert ours[4] is None and math.isnan(monai[4])


# ------------------------------------------------------------------------------------------------ edge-case goldens
SPACING = (0.8, 0.8, 3.0)
SHAPE = (10, 12, 8)
DIAG = float(np.linalg.norm(np.array(SHAPE) * np.array(SPACING)))
DIAG_VOX = float(np.linalg.norm(SHAPE))


def _edge_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    z = np.zeros(SHAPE, np.uint8)
    blob = z.copy()
    blob[2:6, 3:8, 2:5] = 1
    single_g, single_p = z.copy(), z.copy()
    single_g[4, 4, 2] = 1
    single_p[4, 4, 4] = 1  # two slices away: 6 mm
    border_g, border_p = z.copy(), z.copy()
    border_g[0:4, :, 0:3] = 1  # touches three faces
    border_p[0:3, :, 0:4] = 1
    return {
        "both_empty": (z, z),
        "missed": (z, blob),
        "spurious": (blob, z),
        "single_voxel": (single_p, single_g),
        "border": (border_p, border_g),
    }


# expected (dice, hd95) per protocol and edge case; "D"/"d" = image diagonal in mm/voxels, None = excluded
GOLDEN = {
    "strict": {"both_empty": (None, None), "missed": (0.0, "D"), "spurious": (0.0, "D"), "single_voxel": (0.0, 6.0)},
    "monai": {
        "both_empty": (math.nan, math.nan),
        "missed": (0.0, math.nan),
        "spurious": (math.nan, math.nan),
        "single_voxel": (0.0, 6.0),
    },
    "legacy_unetrpp": {
        "both_empty": (1.0, 0.0),
        "missed": (0.0, 0.0),
        "spurious": (0.0, 0.0),
        "single_voxel": (0.0, 2.0),
    },
    "legacy_transunet": {
        "both_empty": (0.0, 0.0),
        "missed": (0.0, 0.0),
        "spurious": (1.0, 0.0),
        "single_voxel": (0.0, 2.0),
    },
}


def _same(a, b) -> bool:
    if b is None:
        return a is None
    if isinstance(b, float) and math.isnan(b):
        return isinstance(a, float) and math.isnan(a)
    return a == pytest.approx(b, rel=1e-9)


@pytest.mark.parametrize("protocol", list(GOLDEN))
def test_protocol_goldens_on_edge_cases(protocol):
    cases = _edge_cases()
    proto = get_protocol(protocol)
    for name, (dice_exp, hd_exp) in GOLDEN[protocol].items():
        pred, gt = cases[name]
        row = evaluate_case(pred, gt, SPACING, [1], protocol)[0]
        hd_exp = {"D": DIAG, "d": DIAG_VOX}.get(hd_exp, hd_exp) if isinstance(hd_exp, str) else hd_exp
        assert _same(row["dice"], dice_exp), (protocol, name, row)
        assert _same(row["hd95"], hd_exp), (protocol, name, row)
    # border-touching masks: values follow the protocol's HD95 definition and units
    pred, gt = cases["border"]
    row = evaluate_case(pred, gt, SPACING, [1], protocol)[0]
    sp = SPACING if proto.units == "mm" else None
    ref = (
        monai_hd95(pred == 1, gt == 1, sp)
        if proto.hd95_definition == "max_directed"
        else medpy_hd95(pred == 1, gt == 1, sp)
    )
    assert rel(row["hd95"], ref) < 1e-6
    assert row["dice"] == pytest.approx(2 * row["tp"] / (row["n_gt"] + row["n_pred"]))


def test_monai_protocol_reproduces_monai_nan_behaviour():
    """MONAI 1.6.1 itself: NaN HD95 for any empty mask (#9095), NaN Dice for an empty ground truth."""
    cases = _edge_cases()
    for name in ("both_empty", "missed", "spurious"):
        pred, gt = cases[name]
        oh = lambda a: torch.from_numpy(np.stack([a == 0, a == 1]))[None].float()  # noqa: E731
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
                oh(pred), oh(gt), spacing=SPACING
            )[0, 0].item()
            dc = DiceMetric(include_background=False, reduction="none")(oh(pred), oh(gt))[0, 0].item()
        row = evaluate_case(pred, gt, SPACING, [1], "monai")[0]
        assert math.isnan(hd) and math.isnan(row["hd95"]), name
        assert _same(row["dice"], dc), (name, dc)


def _nnformer_reference(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """nnFormer / UNETR++ inference_synapse.py, re-typed."""
    dice = 1.0 if pred.sum() + gt.sum() == 0 else 2.0 * np.logical_and(pred, gt).sum() / (pred.sum() + gt.sum())
    hd = medpy_binary.hd95(pred, gt) if pred.sum() > 0 and gt.sum() > 0 else 0.0
    return float(dice), float(hd)


def _transunet_reference(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """TransUNet calculate_metric_percase, re-typed."""
    if pred.sum() > 0 and gt.sum() > 0:
        return float(medpy_binary.dc(pred, gt)), float(medpy_binary.hd95(pred, gt))
    if pred.sum() > 0 and gt.sum() == 0:
        return 1.0, 0.0
    return 0.0, 0.0


@pytest.mark.parametrize(
    "protocol,reference", [("legacy_unetrpp", _nnformer_reference), ("legacy_transunet", _transunet_reference)]
)
def test_legacy_protocols_match_the_published_scripts(protocol, reference, rng):
    cases = _edge_cases()
    gt = np.zeros((20, 18, 12), np.uint8)
    gt[4:14, 5:12, 3:9] = 1
    pred = np.roll(gt, 2, axis=0)
    pred[0:2, 0:2, 0:2] = 1
    cases["island"] = (pred, gt)
    for name, (pred, gt) in cases.items():
        row = evaluate_case(pred, gt, SPACING, [1], protocol)[0]
        dice, hd = reference(pred == 1, gt == 1)
        assert row["dice"] == pytest.approx(dice, rel=1e-9, abs=1e-12), (protocol, name)
        assert row["hd95"] == pytest.approx(hd, rel=1e-6, abs=1e-12), (protocol, name)


def test_protocol_overrides_and_errors():
    from pipeline.errors import UsageError

    p = get_protocol("strict", hd95_missed=373.13, dice_both_empty=1.0)
    assert "hd95_missed=373.13" in p.overrides and p.name == "strict"
    _, blob = _edge_cases()["missed"]
    row = evaluate_case(np.zeros_like(blob), blob, SPACING, [1, 2], p)
    assert row[0]["hd95"] == 373.13 and row[1]["dice"] == 1.0
    with pytest.raises(UsageError):
        get_protocol("nnunet")
    with pytest.raises(UsageError):
        get_protocol("strict", hd95_definition="mean")
    assert get_protocol("legacy_unetrpp").warning.startswith("WARNING")
    assert get_protocol("strict").warning is None


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_optional_metrics_assd_nsd_match_monai():
    from monai.metrics import compute_average_surface_distance, compute_surface_dice

    _, label = _edge_cases()["missed"]
    pred = np.roll(label, 1, axis=2)
    pred[7:9, 0:2, 0:2] = 1
    row = evaluate_case(pred, label, SPACING, [1], metrics=("assd", "nsd"), nsd_tolerance=2.0)[0]
    t = lambda a: torch.from_numpy(a == 1)[None, None]  # noqa: E731
    assd = compute_average_surface_distance(
        t(pred), t(label), include_background=True, symmetric=True, spacing=SPACING
    ).item()
    nsd = compute_surface_dice(
        t(pred).float(), t(label).float(), class_thresholds=[2.0], include_background=True, spacing=SPACING
    ).item()
    assert rel(row["assd"], assd) < 1e-6 and rel(row["nsd"], nsd) < 1e-6


def test_bad_inputs_raise_clear_errors():
    gt = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="non-integer"):
        as_label_map(np.full((4, 4, 4), 0.5, np.float32))
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(np.zeros((4, 4, 5), np.uint8), gt, SPACING, [1])
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(gt, gt, None, [1], "strict")
    # a float label map with integral values and a leading channel is accepted
    f = np.zeros((1, 4, 4, 4), np.float32)
    f[0, 1, 1, 1] = 2
    assert evaluate_case(f, f, 1.0, [2])[0]["dice"] == 1.0
