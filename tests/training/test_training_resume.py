"""Resume after SIGKILL gives the same losses as an uninterrupted run; torchrun 2-process (gloo) training works.

Both run the hippocampus bundle's train.json through ``medseg train`` (``python -m pipeline train``) on small
synthetic volumes. Tolerance for the resumed losses: 1e-6 absolute (single-threaded CPU runs are bitwise
reproducible here, so any drift means the resumed state differs). Equal losses alone would not show that
``--resume`` worked (a run started from scratch with the same seed reproduces them too), so the resume test also checks
that the resumed process's first logged iteration is the one after the checkpoint. The torchrun test checks that the
two ranks hold bit-identical parameters after training on different shards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from helpers.bundles import SmokeSpec, bundle_dir, write_cases

BUNDLE = bundle_dir("unetrpp_hippocampus_mri_segmentation")
SPEC = SmokeSpec((32, 32, 32), (34, 36, 33), (1.0, 1.0, 1.0), 3, mri=True)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
TOL = 1e-6


def _override_file(tmp: Path, run: str, items: list[dict], epochs: int, val_interval: int, n_val: int = 1) -> Path:
    cfg = {
        "roi_size": list(SPEC.roi),
        "dataset_dir": str(tmp / "data"),
        "train_datalist": items[:-n_val],
        "val_datalist": items[-n_val:],
        "ckpt_dir": str(tmp / run / "models"),
        "train_dir": str(tmp / run / "runs"),
        "output_dir": str(tmp / run / "eval"),
        "train#trainer#max_epochs": epochs,
        "val_interval": val_interval,
        "device": "$torch.device('cpu')",
    }
    path = tmp / f"{run}.json"
    path.write_text(json.dumps(cfg))
    return path


def _train_cmd(override: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "train", "--bundle", str(BUNDLE), "--config", str(override), *extra]


def _losses(log: Path) -> dict[int, float]:
    """iteration -> loss (the last record wins, so a resumed run's records replace the killed run's)."""
    out = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["iteration"]] = rec["loss"]
    return out


def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    items = write_cases(tmp_path / "data", SPEC, n=9)  # 8 training cases, batch 2 -> 4 iterations per epoch
    epochs, per_epoch = 2, 4
    full_cfg = _override_file(tmp_path, "full", items, epochs, val_interval=100)
    kill_cfg = _override_file(tmp_path, "killed", items, epochs, val_interval=100)
    full = subprocess.Popen(_train_cmd(full_cfg), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = subprocess.Popen(_train_cmd(kill_cfg), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "killed" / "runs" / "training_log.jsonl"
    deadline = time.time() + 240
    try:
        # kill as soon as the first iteration of epoch 2 is logged: mid-epoch, after the epoch-1 checkpoint
        while time.time() < deadline and killed.poll() is None:
            if log.is_file() and any(i > per_epoch for i in _losses(log)):
                killed.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        killed.wait(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-epoch"
    ckpt = torch.load(tmp_path / "killed" / "runs" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["trainer"] == {"epoch": 1, "iteration": per_epoch, "epoch_length": per_epoch, "max_epochs": epochs}
    seen = _losses(log)
    assert per_epoch < max(seen) < 2 * per_epoch, f"not killed mid-epoch 2: iterations logged {sorted(seen)}"
    n_before = len(log.read_text().splitlines())

    resumed = subprocess.run(_train_cmd(kill_cfg, "--resume"), env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # where the resumed process started: the records it appended begin with the first iteration of epoch 2 (the one
    # after the checkpoint) and never redo epoch 1; a run that ignored --resume would start again at iteration 1
    new = [json.loads(line) for line in log.read_text().splitlines()[n_before:]]
    assert new and (new[0]["epoch"], new[0]["iteration"]) == (2, per_epoch + 1), new[:2]
    assert [r["iteration"] for r in new if "loss" in r] == list(range(per_epoch + 1, epochs * per_epoch + 1))
    assert all(r["epoch"] == 2 for r in new), [r for r in new if r["epoch"] != 2]
    assert [r["epoch"] for r in new if "epoch_loss" in r] == [2]
    assert full.wait(timeout=300) == 0, full.stderr.read().decode()[-3000:]

    ref = _losses(tmp_path / "full" / "runs" / "training_log.jsonl")
    got = _losses(log)
    assert sorted(ref) == sorted(got) == list(range(1, epochs * per_epoch + 1))
    diffs = {i: abs(ref[i] - got[i]) for i in ref if i > per_epoch}
    assert max(diffs.values()) <= TOL, diffs
    # and the losses do change between iterations (the comparison is not trivially equal)
    assert len({round(v, 6) for v in ref.values()}) > per_epoch


#: each rank saves its network's parameters before and after training, to compare the ranks' weights
_SAVE_PARAMS = (
    "$torch.save({n: p.detach().cpu().clone() for n, p in @network.module.named_parameters()}, "
    "@train_dir + '/rank%d_WHEN.pt' % dist.get_rank())"
)


def test_torchrun_two_process_gloo(tmp_path):
    items = write_cases(tmp_path / "data", SPEC, n=6)  # 4 training cases over 2 ranks, batch 2 -> 1 iteration
    cfg = _override_file(tmp_path, "ddp", items, epochs=2, val_interval=1, n_val=2)  # >= 1 validation case per rank
    override = json.loads(cfg.read_text())
    override["run"] = [
        _SAVE_PARAMS.replace("WHEN", "before"),
        "$@train#trainer.run()",
        _SAVE_PARAMS.replace("WHEN", "after"),
    ]
    cfg.write_text(json.dumps(override))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        "-m",
        "pipeline",
        "train",
        "--bundle",
        str(BUNDLE),
        "--multi-gpu",
        "--config",
        str(cfg),
    ]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-4000:]
    runs = tmp_path / "ddp" / "runs"
    records = [json.loads(x) for x in (runs / "training_log.jsonl").read_text().splitlines()]
    # only rank 0 writes the log: one record per iteration (1 per epoch) plus one per epoch
    assert [r["iteration"] for r in records if "loss" in r] == [1, 2]
    assert sum("val_mean_dice" in r for r in records) == 2
    ckpt = torch.load(runs / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["trainer"]["epoch"] == 2 and ckpt["trainer"]["epoch_length"] == 1
    assert not any(k.startswith("module.") for k in ckpt["model"]), "DDP wrapper leaked into the checkpoint"
    assert (tmp_path / "ddp" / "models" / "model.pt").is_file()
    # the two ranks trained on different shards but hold identical weights after 2 steps (gradients all-reduced),
    # and those weights moved away from the common initialisation
    params = {
        (rank, when): torch.load(runs / f"rank{rank}_{when}.pt", weights_only=True)
        for rank in (0, 1)
        for when in ("before", "after")
    }
    names = sorted(params[0, "after"])
    assert names == sorted(params[1, "after"]) and len(names) > 10
    diverged = [n for n in names if not torch.equal(params[0, "after"][n], params[1, "after"][n])]
    assert not diverged, f"DDP ranks diverged in {len(diverged)} of {len(names)} tensors, e.g. {diverged[:3]}"
    moved = [n for n in names if not torch.equal(params[0, "before"][n], params[0, "after"][n])]
    assert len(moved) > len(names) // 2, f"training changed only {len(moved)} of {len(names)} tensors"
    assert all(torch.equal(ckpt["model"][n], params[0, "after"][n]) for n in names)
