"""The Swin-Unet 3D hippocampus bundle and ``benchmarks/ablation_hippocampus.py``.

Fast checks (no data): the bundle's network is valid for all five seed-module variants at its real 32x48x32 patch
with the documented grids and windows, its recipe equals the UNETR++ hippocampus bundle's except for the network,
the guided auxiliary losses of ``swinunet3d_pamcam`` reach the training loss, and the ablation's run plan and module
verdicts. Real-data checks (``../shared/data/Task04_Hippocampus``): the ``--quick`` ablation end to end (two runs of
two steps), a rerun that skips finished runs, the resumption of an interrupted run from its checkpoint, and the
refusal of another step budget.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from pipeline.errors import UsageError
from pipeline.paths import BUNDLES_DIR, PROJECT_ROOT

from helpers.bundles import run_bundle_inference

SCRIPT = PROJECT_ROOT / "benchmarks" / "ablation_hippocampus.py"
SWIN = BUNDLES_DIR / "swinunet3d_hippocampus_mri_segmentation"
UNETRPP = BUNDLES_DIR / "unetrpp_hippocampus_mri_segmentation"
VARIANTS = ("swinunet3d", "swinunet3d_lgt", "swinunet3d_ag", "swinunet3d_pamcam", "swinunet3d_transfuse")
ROI = (32, 48, 32)


def _script():
    """The benchmark script as a module (registered in ``sys.modules``, which its dataclasses need)."""
    if "ablation_hippocampus" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ablation_hippocampus", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["ablation_hippocampus"] = module
        spec.loader.exec_module(module)
    return sys.modules["ablation_hippocampus"]


def _parser(bundle: Path, config: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser["device"] = "$torch.device('cpu')"
    for key, value in overrides.items():
        parser[key] = value
    return parser


# --- the bundle -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_fits_the_patch(variant):
    """Each seed module builds from the bundle's config at 32x48x32 with the documented stage grids and windows, and
    segments a window into 3 classes at full resolution."""
    torch.manual_seed(0)
    net = _parser(SWIN, "inference.json", network_preset=variant).get_parsed_content("network_def").eval()
    assert net.patch_size == (2, 2, 2)
    assert net.grids == [(16, 24, 16), (8, 12, 8), (4, 6, 4), (2, 3, 2)]
    assert net.window_sizes == [(4, 4, 4), (4, 4, 4), (4, 6, 4), (2, 3, 2)]
    with torch.no_grad():
        out = net(torch.randn(1, 1, *ROI))
    assert out.shape == (1, 3, *ROI) and torch.isfinite(out).all()


def test_recipe_equals_the_unetrpp_bundle():
    """Same split, data pipeline, optimizer, schedule, loss, handlers and validation as the UNETR++ bundle: only the
    network, the bundle name and the auxiliary-loss hook differ (an equal-recipe ablation depends on it)."""
    assert (SWIN / "configs" / "datalist.json").read_bytes() == (UNETRPP / "configs" / "datalist.json").read_bytes()
    for name in ("evaluate.json", "multi_gpu_train.json", "logging.conf"):
        assert (SWIN / "configs" / name).read_text() == (UNETRPP / "configs" / name).read_text(), name
    for name in ("train.json", "inference.json"):
        ours = json.loads((SWIN / "configs" / name).read_text())
        theirs = json.loads((UNETRPP / "configs" / name).read_text())
        assert ours.pop("network_preset") == "swinunet3d_transfuse"  # the variant of the shipped weights
        for cfg in (ours, theirs):
            for key in ("network_def", "bundle_root", "imports"):
                cfg.pop(key)
        if name == "train.json":
            assert ours["loss"].pop("auxiliary") == "$@network_def.auxiliary_loss"
        assert ours == theirs, name


def test_pamcam_auxiliary_losses_reach_the_training_loss():
    """With ``swinunet3d_pamcam`` the bundle's loss is Dice+CE plus ``net.auxiliary_loss()`` (the guided losses of a
    training forward); the plain network adds nothing. Small widths keep it fast."""
    small = {"network_def#embed_dim": 12, "network_def#num_heads": [1, 2, 4, 8]}
    label = torch.randint(0, 3, (2, 1, *ROI), generator=torch.Generator().manual_seed(0))
    for variant in ("swinunet3d_pamcam", "swinunet3d"):
        torch.manual_seed(0)
        parser = _parser(SWIN, "train.json", network_preset=variant, **small)
        net, loss = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
        net.train()
        pred = net(torch.randn(2, 1, *ROI))
        total, seg = loss(pred, label), loss.base(pred, label)
        aux = net.auxiliary_loss()
        aux = aux.detach() if isinstance(aux, torch.Tensor) else aux
        if variant == "swinunet3d_pamcam":
            assert set(net.aux_losses) == {"guided", "reconstruction"} and float(aux) > 0
            assert float((total - seg).detach()) == pytest.approx(float(aux), rel=1e-5)
            total.backward()  # the auto-encoders of the guided bottleneck get gradients only through these losses
            ae = net.bottleneck_attn.autoencoders
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ae.parameters())
        else:
            assert aux == 0.0 and float(total.detach()) == pytest.approx(float(seg.detach()))


# --- the ablation script: plan, verdicts, options ---------------------------------------------------------------------
def test_plan_and_verdicts():
    abl = _script()
    runs = abl.plan_runs(["swinunet3d", "swinunet3d_ag", "unetrpp"], 0, ["swinunet3d_ag", "swinunet3d_ag"])
    assert [r.name for r in runs] == ["swinunet3d_seed0", "swinunet3d_ag_seed0", "unetrpp_seed0", "swinunet3d_ag_seed1"]
    assert runs[1].overrides() == {"network_preset": "swinunet3d_ag"} and runs[2].overrides() == {}
    assert runs[2].bundle == UNETRPP and runs[0].bundle == SWIN
    with pytest.raises(UsageError, match="swinunet3d_xx"):
        abl.plan_runs(["swinunet3d_xx"], 0, [])

    def st(variant, seed, dice):
        return {"variant": variant, "seed": seed, "eval": {"mean_dice": dice}}

    states = [
        st("swinunet3d", 0, 0.860),
        st("swinunet3d", 1, 0.850),
        st("swinunet3d_ag", 0, 0.880),
        st("swinunet3d_lgt", 0, 0.865),
        st("swinunet3d_pamcam", 0, 0.835),
        st("unetrpp", 0, 0.885),
    ]
    lines = abl.verdicts(states, 0)
    assert "a module counts as helping or hurting only beyond 0.0100" in lines[0]
    by = {line.split(":")[0]: line for line in lines[1:]}
    assert "+0.0200" in by["swinunet3d_ag"] and "helped (2.0x the spread)" in by["swinunet3d_ag"]
    assert "within the seed-to-seed spread" in by["swinunet3d_lgt"]
    assert "hurt (2.5x the spread)" in by["swinunet3d_pamcam"]
    assert by["swinunet3d_transfuse"].endswith("not finished yet")
    unknown = abl.verdicts([st("swinunet3d", 0, 0.86), st("swinunet3d_ag", 0, 0.88)], 0)
    assert "not measured yet" in unknown[0]
    ag = [line for line in unknown if line.startswith("swinunet3d_ag:")][0]
    assert ag.endswith("+0.0200 against plain swinunet3d (0.8600): spread unknown")


def test_step_budget_must_be_whole_epochs(tmp_path, shared_data):
    abl = _script()
    args = abl.build_parser().parse_args(
        ["--steps", "100", "--results-dir", str(tmp_path), "--data", str(shared_data / "Task04_Hippocampus")]
    )
    expected = r"--steps 100 is not a whole number of epochs of 80 iterations \(e.g. 80 or 160\)"
    with pytest.raises(UsageError, match=expected):
        abl.settings_from(args)
    args = abl.build_parser().parse_args(
        ["--steps", "2400", "--results-dir", str(tmp_path), "--data", str(shared_data / "Task04_Hippocampus")]
    )
    s = abl.settings_from(args)
    assert (s.epochs, s.val_interval, s.datalist) == (30, 5, SWIN / "configs" / "datalist.json")


# --- the quick ablation end to end (real data) ------------------------------------------------------------------------
def _run(results: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--results-dir", str(results), *extra]
    return subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)


def _run_here(results: Path, capsys, *extra: str) -> tuple[int, str, str]:
    """The script's entry point in this process (no interpreter start-up): exit code, stdout, stderr."""
    old = signal.getsignal(signal.SIGTERM)
    capsys.readouterr()
    try:
        code = _script().run_cli(["--quick", "--threads", "1", "--results-dir", str(results), *extra])
    finally:
        signal.signal(signal.SIGTERM, old)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_quick_ablation_end_to_end(tmp_path, shared_data, capsys):
    """One ``--quick`` ablation, then, on its results: the table and figures, the exported weights under the shipped
    config, a rerun that skips, an interrupted run that resumes, and a refused budget (one test: they share the
    ~40 s run and must see its results in this order)."""
    results = tmp_path / "results"
    res = _run(results)
    assert res.returncode == 0, res.stderr[-3000:]
    try:
        _check_table_and_figures(results)
        _check_weights_run_with_the_shipped_config(results, tmp_path / "other_cwd", shared_data)
        _check_rerun_skips_finished_runs(results, capsys)
        _check_interrupted_run_resumes(results)
        _check_other_budget_is_refused(results, capsys)
    finally:
        shutil.rmtree(results, ignore_errors=True)  # ~0.5 GB of checkpoints


def _state(results: Path, run: str) -> dict:
    return json.loads((results / run / "run.json").read_text())


def _check_table_and_figures(results: Path) -> None:
    section = (results / "ablation_hippocampus.md").read_text()
    assert "QUICK SMOKE RUN" in section and "python benchmarks/ablation_hippocampus.py --quick" in section
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| run ")
    }
    assert {"swinunet3d_seed0", "unetrpp_seed0", "constant label 0", "constant label 1"} <= set(rows)
    for run, bundle, overrides in (
        ("swinunet3d_seed0", SWIN, {"network_preset": "swinunet3d"}),
        ("unetrpp_seed0", UNETRPP, {}),
    ):
        state = _state(results, run)
        torch.manual_seed(0)
        net = _parser(bundle, "inference.json", **overrides).get_parsed_content("network_def")
        n_params = sum(p.numel() for p in net.parameters())
        assert state["params"] == n_params
        assert rows[run][3] == f"{n_params / 1e6:.2f}"  # the table's parameter column
        # swinunet3d ~1.7, UNETR++ ~3.2 GMACs (every convolution counted: the old oneDNN-in-block path hid 56 %)
        assert 1.0 < state["gmacs"] < 4.0 and rows[run][4] == f"{state['gmacs']:.2f}"
        assert state["final_step"] == 2 and rows[run][5] == "2" and state["training"]["nan_free"]
        assert rows[run][14] == "yes"
        work = results / "work" / run
        ckpt = torch.load(work / "train" / "checkpoint.pt", map_location="cpu", weights_only=True)
        assert ckpt["trainer"]["iteration"] == 2
        # the evaluated weights are the final ones of the training, scored on the one quick validation case
        weights = torch.load(work / "bundle" / "models" / "model.pt", map_location="cpu", weights_only=True)
        assert all(torch.equal(weights[k], ckpt["model"][k]) for k in ckpt["model"])
        ev = state["eval"]
        assert ev["cases"] == 1 and ev["protocol"] == "strict"
        assert all(0.0 <= ev["dice"][c] <= 1.0 for c in ("1", "2")) and all(ev["hd95_mm"][c] > 0 for c in ("1", "2"))
        assert rows[run][10] == f"**{ev['mean_dice']:.3f}**"
        report = json.loads((results / run / "report.json").read_text())
        assert report["protocol"] == "strict" and not report.get("untrained")
        assert (results / run / "learning_curve.png").stat().st_size > 1000
        # the small files for git are copies of the work folder's
        assert (results / run / "training_log.jsonl").read_text() == (work / "train" / "training_log.jsonl").read_text()
    assert (results / "curves.png").is_file()
    # weights and checkpoints stay in the work folder
    assert not [p for p in results.rglob("*.pt") if "work" not in p.relative_to(results).parts]
    # the constant predictor: all background scores DSC 0 for both classes
    assert rows["constant label 0"][8:11] == ["0.000", "0.000", "0.000"]


def _check_weights_run_with_the_shipped_config(results: Path, cwd: Path, shared_data: Path) -> None:
    """``python -m monai.bundle run`` with the Swin bundle's own inference.json and a run's weights, from an
    unrelated working directory: a label map on the input's grid."""
    import nibabel as nib

    cwd.mkdir()

    case = shared_data / "Task04_Hippocampus" / "imagesTr" / "hippocampus_008.nii.gz"
    weights = results / "work" / "swinunet3d_seed0" / "bundle" / "models" / "model.pt"
    res = run_bundle_inference(  # the run's variant: the config's default is the shipped weights' variant
        SWIN / "configs" / "inference.json",
        case,
        cwd / "out",
        "--ckpt_path",
        str(weights),
        "--network_preset",
        "swinunet3d",
        cwd=cwd,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    pred, img = nib.load(str(cwd / "out" / "hippocampus_008.nii.gz")), nib.load(str(case))
    assert pred.shape == img.shape and np.allclose(pred.affine, img.affine)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2}


def _check_rerun_skips_finished_runs(results: Path, capsys) -> None:
    logs = {run: (results / run / "train.log").read_text() for run in ("swinunet3d_seed0", "unetrpp_seed0")}
    states = {run: _state(results, run) for run in logs}
    code, out, err = _run_here(results, capsys)
    assert code == 0, err[-3000:]
    assert out.count("finished earlier") == 2 and "training ->" not in out
    for run in logs:
        assert (results / run / "train.log").read_text() == logs[run]  # no training process was started
        assert _state(results, run) == states[run]
    # a finished run's run.json is what counts: deleting its work folder (checkpoints, weights) retrains nothing
    table = (results / "ablation_hippocampus.md").read_text().split("What each module")[0]
    shutil.rmtree(results / "work" / "unetrpp_seed0")
    code, out, err = _run_here(results, capsys)
    assert code == 0, err[-3000:]
    assert "unetrpp_seed0: finished earlier" in out and not (results / "work" / "unetrpp_seed0").exists()
    assert (results / "ablation_hippocampus.md").read_text().split("What each module")[0].split("\n| run")[
        1
    ] == table.split("\n| run")[1]


def _check_interrupted_run_resumes(results: Path) -> None:
    """A run killed during its last epoch (its checkpoint is the previous epoch's, no scores yet) continues from that
    checkpoint and ends with the same final loss as the uninterrupted run (the RNG state is restored too). Works on
    the results in place (they end finished again, as before)."""
    run = results / "work" / "swinunet3d_seed0"
    log = [json.loads(line) for line in (run / "train" / "training_log.jsonl").read_text().splitlines()]
    final_loss = [r["loss"] for r in log if r.get("iteration") == 2 and "loss" in r]
    (run / "train" / "checkpoint_prev.pt").replace(run / "train" / "checkpoint.pt")  # state after epoch 1 of 2
    state = _state(results, "swinunet3d_seed0")
    interrupted = copy.deepcopy(state)
    for key in ("eval", "training", "final_step"):
        interrupted.pop(key)
    (results / "swinunet3d_seed0" / "run.json").write_text(json.dumps(interrupted))
    res = _run(results)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "swinunet3d_seed0: resuming at step 1 -> 2 steps" in res.stdout
    assert "unetrpp_seed0: finished earlier" in res.stdout
    assert "resumed from" in (run / "train.log").read_text()
    assert (results / "swinunet3d_seed0" / "train.log").read_text() == (run / "train.log").read_text()
    ckpt = torch.load(run / "train" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2
    log = [json.loads(line) for line in (run / "train" / "training_log.jsonl").read_text().splitlines()]
    redone = [r["loss"] for r in log if r.get("iteration") == 2 and "loss" in r]
    assert len(redone) == 2 and redone[-1] == pytest.approx(final_loss[0], rel=1e-6)
    new = _state(results, "swinunet3d_seed0")
    assert new["final_step"] == 2 and new["eval"]["cases"] == 1
    assert [i["resumed_at_step"] for i in new["invocations"]] == [0, 1]


def _check_other_budget_is_refused(results: Path, capsys) -> None:
    before = (results / "swinunet3d_seed0" / "train.log").read_text()
    code, _, err = _run_here(results, capsys, "--steps", "4")
    assert code == 2
    assert err.startswith("error: run swinunet3d_seed0 was started with --steps 2, not 4: ")
    assert len(err.strip().splitlines()) == 1
    assert (results / "swinunet3d_seed0" / "train.log").read_text() == before
