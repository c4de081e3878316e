"""``medseg benchmark`` on the real fixtures in ../shared/data: split choice, refusal without weights, scoring, and an
end-to-end smoke run of the small hippocampus bundle (untrained, 1 case) that checks the written report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.benchmark.runner import BenchmarkOptions, check_weights, resolve_bundle, score_case, select_cases
from pipeline.cli import main as cli_main
from pipeline.errors import EXIT_MODEL, ModelError, UsageError
from pipeline.paths import BUNDLES_DIR

from helpers.commands import benchmark_argv

HIPPO_BUNDLE = "unetrpp_hippocampus_mri_segmentation"


@pytest.fixture
def bare_bundle(tmp_path) -> Path:
    """A bundle folder without weights (configs only, copied from the hippocampus bundle when it exists)."""
    b = tmp_path / "bare_bundle"
    src = BUNDLES_DIR / HIPPO_BUNDLE / "configs"
    if src.is_dir():
        shutil.copytree(src, b / "configs")
    else:
        (b / "configs").mkdir(parents=True)
    return b


@pytest.mark.parametrize(
    "dataset, table, split, cases",
    [
        ("Synapse_like", "synapse", "test", ["img0001", "img0002"]),  # both are in the official 12 test cases
        ("BTCV_like", "btcv", "validation", ["img0002"]),  # dataset_0.json's validation entry
        ("Task06_Lung_sample", "lung", "validation", ["lung_001"]),  # lung_001 is in the UNETR++ 13; lung_002 is not
    ],
)
def test_official_splits_on_fixtures(shared_data, bare_bundle, dataset, table, split, cases):
    sel = select_cases(BenchmarkOptions(bundle="x", data=str(shared_data / dataset)), bare_bundle)
    assert sel.profile.key == table and sel.split == split
    assert [it["case"] for it in sel.items] == cases
    assert all(Path(it["label"]).is_file() for it in sel.items)
    assert "labelled case(s) present" in sel.note
    if table in ("synapse", "lung"):
        assert "absent" in sel.note  # the official cases missing from the fixture are named


def test_bundle_held_out_split_and_limit(shared_data):
    bundle = BUNDLES_DIR / HIPPO_BUNDLE
    if not (bundle / "configs" / "datalist.json").is_file() or not (bundle / "configs" / "inference.json").is_file():
        pytest.skip(f"{bundle}/configs/datalist.json or inference.json is absent")
    sel = select_cases(BenchmarkOptions(bundle="x", data=str(shared_data / "Task04_Hippocampus"), limit=2), bundle)
    train = json.loads((bundle / "configs" / "datalist.json").read_text())["training"]
    train_names = {Path(e["image"]).name for e in train}
    assert sel.profile.table is None and sel.split == "validation" and len(sel.items) == 2
    assert not {Path(it["image"]).name for it in sel.items} & train_names  # never a training case
    assert "bundle's held-out cases" in sel.note and "--limit 2" in sel.note
    assert [c.label for c in sel.profile.classes] == [1, 2]


def test_training_split_is_flagged(shared_data, bare_bundle):
    sel = select_cases(
        BenchmarkOptions(bundle="x", data=str(shared_data / "STS_CT"), split="training", limit=1), bare_bundle
    )
    assert sel.split == "training" and "WARNING: scored on training cases" in sel.note


def test_refuses_without_weights(shared_data, bare_bundle, tmp_path, capsys):
    with pytest.raises(ModelError, match="--allow-untrained"):
        check_weights(bare_bundle, allow_untrained=False)
    assert check_weights(bare_bundle, allow_untrained=True) is None
    rc = cli_main(benchmark_argv(bare_bundle, shared_data / "Task04_Hippocampus", tmp_path / "out"))
    err = capsys.readouterr().err
    assert rc == EXIT_MODEL == 4
    assert err.startswith("error: ") and "models/model.pt" in err and "--allow-untrained" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_resolve_bundle_errors(tmp_path):
    with pytest.raises(UsageError, match="no such folder"):
        resolve_bundle("no_such_bundle_name_xyz")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ModelError, match="not a bundle"):
        resolve_bundle(tmp_path / "plain")


def test_score_case_on_real_label(shared_data, tmp_path):
    """A prediction equal to the label scores DSC 1 / HD95 0; a shifted one is scored in mm from the header."""
    import nibabel as nib

    label = shared_data / "Task04_Hippocampus" / "labelsTr" / "hippocampus_001.nii.gz"
    img = nib.load(str(label))
    same = tmp_path / "same.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.uint8), img.affine), str(same))
    dice, hd = score_case(same, label, [1, 2], "strict")
    assert dice == {1: 1.0, 2: 1.0} and hd == {1: 0.0, 2: 0.0}
    shifted = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.roll(np.asarray(img.dataobj).astype(np.uint8), 2, axis=0), img.affine), str(shifted))
    dice, hd = score_case(shifted, label, [1, 2], "strict")
    assert 0 < dice[1] < 1 and hd[1] == pytest.approx(2.0 * abs(img.affine[0, 0]), rel=1e-3)
    moved = tmp_path / "moved.nii.gz"
    aff = img.affine.copy()
    aff[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.uint8), aff), str(moved))
    from pipeline.errors import InputDataError

    with pytest.raises(InputDataError, match="not on the same grid") as err:
        score_case(moved, label, [1, 2], "strict")
    assert str(moved) in str(err.value) and str(label) in str(err.value)  # the real files, not the scoring links


def test_score_cases_times_each_case_and_names_failures(shared_data, tmp_path):
    """Several pairs in one evaluate_folders run: rows per case and class, a scoring time per scored case, and a
    failed pair reported with its own file while the others are scored."""
    import nibabel as nib

    from pipeline.benchmark.runner import score_cases

    labels = shared_data / "Task04_Hippocampus" / "labelsTr"
    pairs = []
    for case in ("hippocampus_001", "hippocampus_003"):
        img = nib.load(str(labels / f"{case}.nii.gz"))
        pred = tmp_path / f"pred_{case}.nii.gz"  # any file name: the pairs are linked by case
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.uint8), img.affine), str(pred))
        pairs.append((case, pred, labels / f"{case}.nii.gz"))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    pairs.append(("hippocampus_004", broken, labels / "hippocampus_004.nii.gz"))
    summary, seconds = score_cases(pairs, [1, 2], "strict")
    assert {(r["case"], r["class"], r["dice"]) for r in summary.rows} == {
        (c, k, 1.0) for c in ("hippocampus_001", "hippocampus_003") for k in (1, 2)
    }
    assert set(seconds) == {"hippocampus_001", "hippocampus_003", "hippocampus_004"}
    assert all(s > 0 for s in seconds.values())
    ((case, error),) = summary.failures
    assert case == "hippocampus_004" and str(broken) in error and "medseg_bench_" not in error


def test_end_to_end_untrained_hippocampus(shared_data, tmp_path, capsys):
    """The whole command on one real case with the small hippocampus bundle (random weights: a smoke test)."""
    import nibabel as nib

    bundle = BUNDLES_DIR / HIPPO_BUNDLE
    if not (bundle / "configs" / "inference.json").is_file():
        pytest.skip(f"{bundle}/configs/inference.json is absent")
    # a copy without weights, so the run is untrained even once the bundle ships models/model.pt
    b = tmp_path / HIPPO_BUNDLE
    shutil.copytree(bundle / "configs", b / "configs")
    out = tmp_path / "out"
    argv = benchmark_argv(
        b, shared_data / "Task04_Hippocampus", out, "--limit", "1", "--allow-untrained", "--sw-batch-size", "2"
    )
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "UNTRAINED" in printed and "report.md" in printed
    data = json.loads((out / "report.json").read_text())
    assert data["untrained"] is True and data["weights"] is None
    assert data["split"] == "validation" and len(data["cases_used"]) == 1
    assert [c["class"] for c in data["summary"]["per_class"]] == ["Anterior", "Posterior"]
    case = data["cases"][0]
    assert case["status"] == "ok"
    assert set(case["timings"]) == {"preprocessing", "network", "stitching", "postprocessing", "metrics"}
    assert all(v >= 0 for v in case["timings"].values()) and case["timings"]["network"] > 0
    assert 0.0 <= case["dice"]["1"] <= 1.0 and case["hd95"]["1"] is not None
    assert data["inference_settings"]["sw_batch_size"] == 2 and data["inference_settings"]["roi_size"] == [32, 48, 32]
    assert data["memory"]["peak_rss_mib"] > 0 and data["environment"]["monai"]
    assert "--allow-untrained" in data["command"]
    # the prediction is on the label's grid (scored there) and is a label map of the bundle's classes
    pred = nib.load(case["prediction"])
    lab = nib.load(case["label"])
    assert pred.shape == lab.shape and np.allclose(pred.affine, lab.affine, atol=1e-3)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    # written by infer_cases (medseg infer's code): its sidecar, with the network time of the benchmark's timer
    side = json.loads((out / "predictions" / f"{data['cases_used'][0]}.json").read_text())
    assert side["timings_s"]["network"] == case["timings"]["network"] and side["versions"]["torch"]
    md = (out / "report.md").read_text()
    assert all("UNTRAINED" in line for line in md.splitlines() if line.startswith("#"))
    assert (out / "report.csv").read_text().startswith("# UNTRAINED")
    # a re-run reuses the prediction (and its recorded timings); other settings in the same folder are refused
    assert cli_main(argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["cases"][0]["timings"]["network"] == case["timings"]["network"]
    assert any("were reused" in n for n in again["notes"])
    assert cli_main([*argv[:-2], "--sw-batch-size", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_failed_case_is_reported_and_others_go_on(shared_data, tmp_path, capsys):
    """A corrupt image fails its case only: the other case is scored, the report lists the failure, exit code 1."""
    bundle = BUNDLES_DIR / HIPPO_BUNDLE
    if not (bundle / "configs" / "inference.json").is_file():
        pytest.skip(f"{bundle}/configs/inference.json is absent")
    src = shared_data / "Task04_Hippocampus"
    data = tmp_path / "Task04_small"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    for case in ("hippocampus_001", "hippocampus_003"):
        shutil.copy(src / "labelsTr" / f"{case}.nii.gz", data / "labelsTr")
    shutil.copy(src / "imagesTr" / "hippocampus_001.nii.gz", data / "imagesTr")
    (data / "imagesTr" / "hippocampus_003.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    meta = json.loads((src / "dataset.json").read_text())
    meta["training"] = [
        {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
        for c in ("hippocampus_001", "hippocampus_003")
    ]
    meta["test"] = []
    (data / "dataset.json").write_text(json.dumps(meta))
    b = tmp_path / "bundle"
    shutil.copytree(bundle / "configs", b / "configs")
    out = tmp_path / "out"
    rc = cli_main(benchmark_argv(b, data, out, "--split", "training", "--allow-untrained"))
    captured = capsys.readouterr()
    assert rc == 1
    assert "failed: hippocampus_003" in captured.err and "hippocampus_003.nii.gz" in captured.err
    report = json.loads((out / "report.json").read_text())
    status = {c["case"]: c["status"] for c in report["cases"]}
    assert status == {"hippocampus_001": "ok", "hippocampus_003": "failed"}
    assert report["summary"]["n_failed"] == 1 and "training cases" in report["split_note"]
    assert "| hippocampus_003 | failed:" in (out / "report.md").read_text()


def test_trained_bundle_is_not_marked_untrained(shared_data, tmp_path):
    """With the shipped hippocampus weights: weights load strictly, nothing says UNTRAINED."""
    bundle = BUNDLES_DIR / HIPPO_BUNDLE
    if not (bundle / "models" / "model.pt").is_file() or not (bundle / "configs" / "inference.json").is_file():
        pytest.skip(f"{bundle} ships no trained weights yet")
    out = tmp_path / "out"
    assert cli_main(benchmark_argv(bundle, shared_data / "Task04_Hippocampus", out, "--limit", "1")) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["untrained"] is False and data["weights"].endswith("model.pt") and data["warning"] is None
    assert "UNTRAINED" not in (out / "report.md").read_text() + (out / "report.csv").read_text()
    assert data["cases"][0]["status"] == "ok"


def test_weights_that_do_not_fit_are_a_model_error(shared_data, tmp_path, capsys):
    import torch

    bundle = BUNDLES_DIR / HIPPO_BUNDLE
    if not (bundle / "configs" / "inference.json").is_file():
        pytest.skip(f"{bundle}/configs/inference.json is absent")
    b = tmp_path / "bundle"
    shutil.copytree(bundle / "configs", b / "configs")
    (b / "models").mkdir()
    torch.save({"not_a_layer.weight": torch.zeros(2)}, b / "models" / "model.pt")
    rc = cli_main(benchmark_argv(b, shared_data / "Task04_Hippocampus", tmp_path / "out", "--limit", "1"))
    err = capsys.readouterr().err
    assert rc == EXIT_MODEL and "does not fit" in err and "model.pt" in err


def test_timed_network_times_forward_and_keeps_module_api():
    """The benchmark's timing wrapper returns the network's output, sums its forward time, and leaves nn.Module's
    methods alone (an attribute named ``cuda`` once hid ``Module.cuda()``: ``.cuda()`` raised 'bool' not callable)."""
    import torch

    from pipeline.benchmark.inference import TimedNetwork

    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 1)
    timed = TimedNetwork(net, torch.device("cpu"))
    x = torch.randn(1, 1, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(timed(x), net(x))
    assert timed.seconds > 0
    assert timed.cuda.__func__ is torch.nn.Module.cuda
    # the infer_cases timing hook: reset at entry, the case's network seconds in the yielded dict at exit
    with timed.measure() as stages, torch.no_grad():
        assert timed.seconds == 0.0 and stages == {}
        timed(x)
        timed(x)
    assert stages == {"network": timed.seconds} and stages["network"] > 0
