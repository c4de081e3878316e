#!/usr/bin/env python
"""Ablation of the 3D Swin-Unet seed modules on MSD Task04 Hippocampus, at an equal step budget, against UNETR++.

Every run trains through the product's own machinery (``python -m pipeline train`` on a bundle's ``train.json``):

* the five Swin variants ``swinunet3d``, ``swinunet3d_lgt``, ``swinunet3d_ag``, ``swinunet3d_pamcam`` and
  ``swinunet3d_transfuse`` use ``bundles/swinunet3d_hippocampus_mri_segmentation`` with ``--set network_preset=V``;
* the ``unetrpp`` row uses ``bundles/unetrpp_hippocampus_mri_segmentation`` (the shipped configuration);

with the same recipe (the two ``train.json`` differ only in ``network_def`` and, for the Swin bundle, the guided
auxiliary losses of ``swinunet3d_pamcam`` added to the loss), the same split (``configs/datalist.json``, 160/40), the
same seed and the same number of optimizer steps (``--steps``, a whole number of epochs of 80 iterations; the poly
learning rate decays over exactly that budget). Then the **final** weights (not the best validation epoch, so nothing
is picked on the validation cases) are exported as a small bundle (``<run>/bundle``) and scored on the 40 validation
cases with the product's ``medseg benchmark`` code (:func:`pipeline.benchmark.runner.run_benchmark`: sliding-window
inference inverted to each image's grid, DSC and HD95 in mm under the ``strict`` protocol).

Output:

* ``--work-dir`` (default ``outputs/ablation_hippocampus``, out of git): per run the training state
  (``<run>/train/``: ``checkpoint.pt``, the live ``training_log.jsonl``, TensorBoard), the training process's output
  ``<run>/train.log``, the exported bundle ``<run>/bundle`` (final weights) and the predictions ``<run>/eval/``;
* ``--results-dir`` (default ``benchmarks/results/ablation_hippocampus``, small files for git): per run ``run.json``
  (settings and figures; it says which runs are finished), copies of ``training_log.jsonl`` (loss per step,
  validation every 5 epochs) and ``train.log``, ``learning_curve.png`` (:mod:`pipeline.training.curve`) and
  ``report.md``/``report.json``; ``curves.png`` (every run against steps), ``constant_baseline.json``, ``cost.json``;
* the Markdown section ``benchmarks/results/ablation_hippocampus.md`` (``--out``): per run parameters, GMACs per
  32x48x32 window, steps, wall time, DSC and HD95 per class, NaN-free, a constant-predictor baseline and what each
  module changed compared with the seed-to-seed spread.

It is resumable: a finished run (its ``run.json`` holds scores) is skipped, even when its work folder was deleted;
an interrupted one continues from its last epoch checkpoint (``<work>/<run>/train/checkpoint.pt``, written every
epoch); an evaluation that was cut short reuses the predictions it already wrote. A run keeps the ``--steps`` it was
started with (another value is refused).

Threads: ``--threads N`` sets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` of the training processes and
``torch.set_num_threads`` of this one (evaluation). On the 2-core development machine, long runs go in the background
with one thread, at low priority, so that the test suite (one torch thread per worker) keeps the other core::

    mkdir -p outputs && nohup nice -n 10 python benchmarks/ablation_hippocampus.py --steps 2400 --threads 1 \\
        > outputs/ablation.log 2>&1 &

Usage::

    python benchmarks/ablation_hippocampus.py --steps 2400 --threads 1           # the 6 runs at seed 0
    python benchmarks/ablation_hippocampus.py --steps 2400 --threads 1 \\
        --extra-seed swinunet3d --extra-seed swinunet3d_ag                       # + a second seed for two variants
    python benchmarks/ablation_hippocampus.py --steps 2400 --only swinunet3d_ag   # one variant (all its seeds)
    python benchmarks/ablation_hippocampus.py --steps 2400 --report-only          # table/curves from what is done
    python benchmarks/ablation_hippocampus.py --measure --threads 1               # params, GMACs, s/step only
    python benchmarks/ablation_hippocampus.py --quick --results-dir /tmp/abl     # smoke run: 2 runs of 2 steps

This script is not part of the speed suite: it trains networks for hours, so its entry point is ``run_cli``, not
``main`` (``benchmarks/run_all.py`` runs the ``benchmarks/*.py`` that define ``main``). Its section file is assembled
into ``benchmarks/RESULTS.md`` like the others (``python benchmarks/run_all.py --no-run``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import torch  # noqa: E402

from pipeline.errors import (  # noqa: E402
    EXIT_CASES_FAILED,
    EXIT_INTERRUPTED,
    InputDataError,
    ModelError,
    PipelineError,
    UsageError,
)
from pipeline.paths import BUNDLES_DIR, PROJECT_ROOT  # noqa: E402
from pipeline.utils.atomic import atomic_path, save_json_atomic, save_torch_atomic  # noqa: E402

SWIN_BUNDLE = BUNDLES_DIR / "swinunet3d_hippocampus_mri_segmentation"
UNETRPP_BUNDLE = BUNDLES_DIR / "unetrpp_hippocampus_mri_segmentation"
SWIN_VARIANTS = ("swinunet3d", "swinunet3d_lgt", "swinunet3d_ag", "swinunet3d_pamcam", "swinunet3d_transfuse")
UNETRPP = "unetrpp"
VARIANTS = (*SWIN_VARIANTS, UNETRPP)
ROI = (32, 48, 32)
DEFAULT_RESULTS = BENCH_DIR / "results" / "ablation_hippocampus"
DEFAULT_OUT = BENCH_DIR / "results" / "ablation_hippocampus.md"
DEFAULT_WORK = PROJECT_ROOT / "outputs" / "ablation_hippocampus"
QUICK_RESULTS = PROJECT_ROOT / "outputs" / "ablation_hippocampus_quick"
#: the small files of a run that are copied from its work folder to its results folder (source -> copy)
COPIED = {
    "train/training_log.jsonl": "training_log.jsonl",
    "train.log": "train.log",
    "eval/report.md": "report.md",
    "eval/report.json": "report.json",
}
#: quick mode: the first N training / validation cases of the datalist, 2 steps, validation every epoch
QUICK_CASES = (2, 1)
QUICK_STEPS = 2
QUICK_VARIANTS = ("swinunet3d", UNETRPP)
#: the recipe's validation interval (epochs); quick mode validates every epoch
VAL_INTERVAL = 5
TARGET_DICE = 0.87
CLASS_NAMES = {1: "anterior", 2: "posterior"}
TITLE = "3D Swin-Unet seed modules on MSD Task04 Hippocampus (`benchmarks/ablation_hippocampus.py`)"


# --- the plan ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One training run: a variant (Swin preset name or ``unetrpp``) and a seed."""

    variant: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}_seed{self.seed}"

    @property
    def bundle(self) -> Path:
        """The bundle whose ``train.json``/``inference.json`` this run uses."""
        return UNETRPP_BUNDLE if self.variant == UNETRPP else SWIN_BUNDLE

    def overrides(self) -> dict[str, Any]:
        """Config overrides that select the variant (none for UNETR++)."""
        return {} if self.variant == UNETRPP else {"network_preset": self.variant}


def plan_runs(variants: Sequence[str], seed: int, extra_seeds: Sequence[str]) -> list[RunSpec]:
    """The runs in order: every variant at ``seed``, then the ``extra_seeds`` variants at ``seed + 1``.

    Examples:
        >>> [r.name for r in plan_runs(["swinunet3d", "unetrpp"], 0, ["swinunet3d"])]
        ['swinunet3d_seed0', 'unetrpp_seed0', 'swinunet3d_seed1']
    """
    unknown = [v for v in [*variants, *extra_seeds] if v not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    runs = [RunSpec(v, seed) for v in variants]
    runs += [RunSpec(v, seed + 1) for v in dict.fromkeys(extra_seeds)]
    return runs


# --- networks: size, cost ---------------------------------------------------------------------------------------------
def parse_bundle(bundle: Path, config: str, overrides: dict[str, Any]) -> Any:
    """A MONAI ``ConfigParser`` of ``bundle/configs/<config>`` on the CPU, with ``overrides`` applied."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    for key, value in overrides.items():
        parser[key] = value
    return parser


def build_network(spec: RunSpec) -> torch.nn.Module:
    """The run's network exactly as its bundle's ``inference.json`` builds it (seeded initialisation)."""
    torch.manual_seed(spec.seed)
    return parse_bundle(spec.bundle, "inference.json", spec.overrides()).get_parsed_content("network_def")


def network_size(spec: RunSpec) -> dict[str, Any]:
    """Parameters and GMACs of one 1x1x32x48x32 forward (``torch.utils.flop_counter``, math SDPA backend so the
    attention matmuls count; MACs = FLOPs / 2), as ``benchmarks/swin3d_forward.py`` counts them."""
    from swin3d_forward import count_gmacs

    net = build_network(spec).eval()
    return {
        "params": int(sum(p.numel() for p in net.parameters())),
        "gmacs": round(float(count_gmacs(net, torch.zeros(1, 1, *ROI))), 4),
    }


class StepTimer:
    """One training step of a run's recipe on a synthetic batch of two 32x48x32 crops: forward, the bundle's loss
    (with the auxiliary losses where the network has them), backward, the bundle's AdamW step."""

    def __init__(self, spec: RunSpec) -> None:
        parser = parse_bundle(spec.bundle, "train.json", spec.overrides())
        torch.manual_seed(spec.seed)
        self.net, self.loss_fn, self.opt = (parser.get_parsed_content(k) for k in ("network", "loss", "optimizer"))
        self.net.train()
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(2, 1, *ROI, generator=gen)
        self.y = torch.randint(0, 3, (2, 1, *ROI), generator=gen)
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def step(self, record: bool = True) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        self.opt.zero_grad(set_to_none=True)
        self.loss_fn(self.net(self.x), self.y).backward()
        self.opt.step()
        if record:
            self.wall.append(time.perf_counter() - t0)
            self.cpu.append(time.process_time() - c0)


def time_training_steps(specs: Sequence[RunSpec], rounds: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per training step of each run's recipe, timed round-robin (one step of every
    variant per round, after one untimed warm-up step each) so that load changes on a shared machine hit all alike.
    CPU seconds (``time.process_time``) barely grow when another process takes the core; wall seconds do."""
    timers = {spec.variant: StepTimer(spec) for spec in specs}
    for timer in timers.values():
        timer.step(record=False)
    for _ in range(rounds):
        for timer in timers.values():
            timer.step()
    return {v: {"step_s": statistics.median(t.wall), "cpu_step_s": statistics.median(t.cpu)} for v, t in timers.items()}


# --- data -------------------------------------------------------------------------------------------------------------
def load_datalist(path: Path) -> dict[str, list[dict]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputDataError(f"unreadable datalist ({exc})", path=path) from None


def prepare_datalist(results: Path, quick: bool) -> Path:
    """The datalist every run uses: the bundles' ``configs/datalist.json`` (identical in both), or in quick mode its
    first training/validation cases, written to ``<results>/datalist.json``."""
    src = SWIN_BUNDLE / "configs" / "datalist.json"
    other = UNETRPP_BUNDLE / "configs" / "datalist.json"
    full = load_datalist(src)
    if full != load_datalist(other):
        raise ModelError(f"the two bundles' datalists differ ({other}): the runs would not share a split", path=src)
    if not quick:
        return src
    small = {
        "description": f"quick smoke run: the first {QUICK_CASES[0]} training and {QUICK_CASES[1]} validation "
        f"cases of {src}",
        "training": full["training"][: QUICK_CASES[0]],
        "validation": full["validation"][: QUICK_CASES[1]],
    }
    out = results / "datalist.json"
    save_json_atomic(small, out)
    return out


def iterations_per_epoch(datalist: Path) -> int:
    """Optimizer steps per epoch: the training cases over the recipe's batch size (the last batch may be short)."""
    batch = parse_bundle(SWIN_BUNDLE, "train.json", {}).get("train#dataloader#batch_size")
    other = parse_bundle(UNETRPP_BUNDLE, "train.json", {}).get("train#dataloader#batch_size")
    if batch != other:
        raise ModelError(f"the bundles' batch sizes differ ({batch} vs {other})", path=SWIN_BUNDLE)
    return math.ceil(len(load_datalist(datalist)["training"]) / int(batch))


def check_data(data: Path, datalist: Path) -> None:
    lists = load_datalist(datalist)
    for item in [*lists["training"], *lists["validation"]]:
        for key in ("image", "label"):
            if not (data / item[key]).is_file():
                raise InputDataError(
                    f"{item[key]} of {datalist.name} is missing (is --data the Task04 folder?)", path=data
                )


# --- training ---------------------------------------------------------------------------------------------------------
def checkpoint_trainer_state(train_dir: Path) -> dict[str, int] | None:
    """``{"epoch", "iteration", ...}`` of the run's latest resumable checkpoint, or None before the first epoch."""
    from pipeline.training import load_training_state

    found = load_training_state(train_dir)
    return None if found is None else dict(found[0]["trainer"])


def child_env(threads: int) -> dict[str, str]:
    """The training processes' environment: ``threads`` OpenMP/MKL threads, no progress bars, unbuffered output."""
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "MEDSEG_PROGRESS": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def train_command(
    spec: RunSpec,
    run_dir: Path,
    *,
    epochs: int,
    data: Path,
    datalist: Path,
    val_interval: int,
    device: str,
    resume: bool,
) -> list[str]:
    """``python -m pipeline train`` for this run (the product's training command)."""
    train_dir = run_dir / "train"
    sets = {
        "train_dir": str(train_dir),
        "ckpt_dir": str(train_dir / "best"),
        "seed": spec.seed,
        "dataset_dir": str(data),
        "datalist_file": str(datalist),
        "val_interval": val_interval,
        **spec.overrides(),
    }
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "train",
        "--bundle",
        str(spec.bundle),
        "--epochs",
        str(epochs),
        "--device",
        device,
    ]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd + (["--resume"] if resume else [])


def run_training(cmd: list[str], log: Path, threads: int) -> int:
    """Run the training process with its output appended to ``log``; returns its exit code.

    Ctrl-C or SIGTERM of this script stops the child first (its last epoch checkpoint stays), then re-raises.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n# started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, OMP_NUM_THREADS={threads}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=child_env(threads), stdout=fh, stderr=subprocess.STDOUT)
        try:
            return proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise


def read_log(train_dir: Path) -> dict[str, Any]:
    """Figures from the run's ``training_log.jsonl``: steps, NaN-free, wall time of the completed epochs (training
    plus the periodic validation), seconds per step of the epochs without validation, validation points."""
    from pipeline.training.curve import read_epochs

    path = train_dir / "training_log.jsonl"
    by_step: dict[int, float] = {}  # an epoch redone after an interruption logs its steps again: the last wins
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if "loss" in rec:
                by_step[int(rec["iteration"])] = float(rec["loss"])
    losses = list(by_step.values())
    epochs = read_epochs(path)
    steps = [r["iteration"] - (epochs[i - 1]["iteration"] if i else 0) for i, r in enumerate(epochs)]
    val = [r for r in epochs if "val_mean_dice" in r]
    plain = [r["seconds"] / n for r, n in zip(epochs, steps) if "val_mean_dice" not in r and n > 0]
    every = [r["seconds"] / n for r, n in zip(epochs, steps) if n > 0]
    finite = all(math.isfinite(v) for v in losses) and all(math.isfinite(r["epoch_loss"]) for r in epochs)
    return {
        "nan_free": finite and bool(losses),
        "logged_steps": len(losses),
        "wall_s": round(sum(r["seconds"] for r in epochs), 1),
        "step_s": round(statistics.median(plain or every), 3) if (plain or every) else None,
        "first_epoch_loss": epochs[0]["epoch_loss"],
        "last_epoch_loss": epochs[-1]["epoch_loss"],
        "val": [{"epoch": r["epoch"], "iteration": r["iteration"], "mean_dice": r["val_mean_dice"]} for r in val],
    }


# --- evaluation -------------------------------------------------------------------------------------------------------
def export_bundle(spec: RunSpec, run_dir: Path, datalist: Path) -> Path:
    """``<run>/bundle``: the source bundle's inference config (variant selected), metadata and datalist, plus the
    final weights of ``<run>/train/checkpoint.pt`` as ``models/model.pt`` (a plain state dict, like the shipped
    bundles). Returns the bundle folder."""
    from pipeline.training import load_training_state

    found = load_training_state(run_dir / "train")
    if found is None:
        raise ModelError("no training checkpoint to export", path=run_dir / "train")
    bundle = run_dir / "bundle"
    (bundle / "configs").mkdir(parents=True, exist_ok=True)
    infer = json.loads((spec.bundle / "configs" / "inference.json").read_text())
    infer.update(spec.overrides())
    save_json_atomic(infer, bundle / "configs" / "inference.json", indent=4)
    with atomic_path(bundle / "configs" / "metadata.json") as tmp:
        shutil.copyfile(spec.bundle / "configs" / "metadata.json", tmp)
    with atomic_path(bundle / "configs" / "datalist.json") as tmp:
        shutil.copyfile(datalist, tmp)
    state = found[0]["model"]
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelError(f"the final weights hold NaN/Inf values ({', '.join(bad[:3])})", path=found[1])
    save_torch_atomic(state, bundle / "models" / "model.pt")
    return bundle


def evaluate(bundle: Path, data: Path, out: Path, device: str, overwrite: bool) -> dict[str, Any]:
    """Score the exported bundle on its validation cases with the ``medseg benchmark`` code (``strict``)."""
    from pipeline.benchmark.runner import BenchmarkOptions, run_benchmark

    opts = BenchmarkOptions(
        bundle=str(bundle),
        data=str(data),
        split="validation",
        protocol="strict",
        out=str(out),
        table="none",
        overwrite=overwrite,
        device=device,
        command="benchmarks/ablation_hippocampus.py (medseg benchmark code)",
    )
    report, _ = run_benchmark(opts)
    failed = [c.case for c in report.cases if c.status != "ok"]
    if failed:
        raise InputDataError(
            f"{len(failed)} validation case(s) failed, e.g. {failed[0]} (see {out}/report.md)", path=out
        )
    means = report.class_means()
    return {
        "cases": len(report.ok_cases),
        "dice": {str(k): v["dice"] for k, v in means.items()},
        "hd95_mm": {str(k): v["hd95"] for k, v in means.items()},
        "mean_dice": report.mean_scores()["dice"],
        "mean_hd95_mm": report.mean_scores()["hd95"],
        "protocol": report.protocol,
        "inference_s_per_case": report.timing_summary()["total"]["median"],
    }


def constant_baseline(data: Path, datalist: Path) -> list[dict[str, Any]]:
    """DSC/HD95 (``strict``) of predicting one label everywhere, for each label, on the validation cases."""
    import numpy as np

    from pipeline.data.io import load_volume
    from pipeline.evaluation import evaluate_case

    items = load_datalist(datalist)["validation"]
    rows = []
    labels = [load_volume(data / it["label"], dtype=None) for it in items]
    for k in (0, *CLASS_NAMES):
        dice: dict[int, list[float]] = {c: [] for c in CLASS_NAMES}
        hd95: dict[int, list[float]] = {c: [] for c in CLASS_NAMES}
        for lab in labels:
            arr = np.asarray(lab[0]).astype(np.int64)
            pred = np.full_like(arr, k)
            spacing = tuple(float(s) for s in np.asarray(lab.pixdim)[:3])
            for r in evaluate_case(pred, arr, spacing, list(CLASS_NAMES), "strict"):
                if r["dice"] is not None:
                    dice[r["class"]].append(float(r["dice"]))
                if r["hd95"] is not None:
                    hd95[r["class"]].append(float(r["hd95"]))
        row = {
            "label": k,
            "cases": len(labels),
            "dice": {str(c): statistics.fmean(v) for c, v in dice.items()},
            "hd95_mm": {str(c): statistics.fmean(v) for c, v in hd95.items()},
        }
        row["mean_dice"] = statistics.fmean(row["dice"].values())
        row["mean_hd95_mm"] = statistics.fmean(row["hd95_mm"].values())
        rows.append(row)
    return rows


# --- one run ----------------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """What every run of one invocation shares."""

    results: Path
    work: Path
    data: Path
    datalist: Path
    steps: int
    epochs: int
    val_interval: int
    threads: int
    device: str
    quick: bool


def run_state_file(settings: Settings, spec: RunSpec) -> Path:
    return settings.results / spec.name / "run.json"


def sync_results(spec: RunSpec, s: Settings) -> None:
    """Copy the run's small files (:data:`COPIED`) from its work folder to its results folder, atomically."""
    for src, dst in COPIED.items():
        path = s.work / spec.name / src
        if path.is_file():
            with atomic_path(s.results / spec.name / dst) as tmp:
                shutil.copyfile(path, tmp)


def load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise InputDataError(
            f"unreadable run state ({exc}); delete the file to redo the run's figures", path=path
        ) from None


def check_budgets(specs: Sequence[RunSpec], s: Settings) -> None:
    """Refuse, before anything runs, a ``--steps`` that differs from the budget a run was started with."""
    for spec in specs:
        steps = load_state(run_state_file(s, spec)).get("steps")
        if steps is not None and steps != s.steps:
            raise UsageError(
                f"run {spec.name} was started with --steps {steps}, not {s.steps}: use the same budget "
                f"for every run, or delete {s.results / spec.name} and {s.work / spec.name} "
                "to start it again"
            )


def do_run(spec: RunSpec, s: Settings, log=print) -> dict[str, Any]:
    """Train (or resume), export and evaluate one run; a finished run returns its recorded state untouched."""
    run_dir = s.work / spec.name
    state_file = run_state_file(s, spec)
    state = load_state(state_file)
    if state and state.get("steps") != s.steps:
        raise UsageError(
            f"run {spec.name} was started with --steps {state.get('steps')}, not {s.steps}: use the same "
            f"budget for every run, or delete {state_file.parent} and {run_dir} to start it again"
        )
    if state.get("eval") and state.get("final_step") == s.steps:
        log(
            f"[ablation] {spec.name}: finished earlier ({s.steps} steps, mean DSC {state['eval']['mean_dice']:.4f}), "
            "skipped"
        )
        return state
    ckpt = checkpoint_trainer_state(run_dir / "train")
    if ckpt is not None and ckpt["iteration"] > s.steps:
        raise UsageError(f"run {spec.name} has a checkpoint at step {ckpt['iteration']}, beyond --steps {s.steps}")
    state.update(
        {
            "run": spec.name,
            "variant": spec.variant,
            "seed": spec.seed,
            "steps": s.steps,
            "epochs": s.epochs,
            "bundle": spec.bundle.name,
            "overrides": spec.overrides(),
            "val_interval": s.val_interval,
            "quick": s.quick,
            "work_dir": str(run_dir),
        }
    )
    if "params" not in state:
        state.update(network_size(spec))
    save_json_atomic(state, state_file)
    trained_now = False
    if ckpt is None or ckpt["iteration"] < s.steps:
        resume = ckpt is not None
        log(
            f"[ablation] {spec.name}: {'resuming at step ' + str(ckpt['iteration']) if resume else 'training'} "
            f"-> {s.steps} steps ({s.epochs} epochs), {s.threads} thread(s); log {run_dir / 'train.log'}"
        )
        cmd = train_command(
            spec,
            run_dir,
            epochs=s.epochs,
            data=s.data,
            datalist=s.datalist,
            val_interval=s.val_interval,
            device=s.device,
            resume=resume,
        )
        t0, rc = time.time(), None
        try:
            rc = run_training(cmd, run_dir / "train.log", s.threads)
        finally:  # an interrupted invocation is recorded too
            sync_results(spec, s)
            state.setdefault("invocations", []).append(
                {
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
                    "seconds": round(time.time() - t0, 1),
                    "threads": s.threads,
                    "returncode": "interrupted" if rc is None else rc,
                    "resumed_at_step": ckpt["iteration"] if resume else 0,
                }
            )
            save_json_atomic(state, state_file)
        if rc != 0:
            raise ModelError(f"training exited with code {rc} (see {run_dir / 'train.log'})", path=run_dir)
        ckpt = checkpoint_trainer_state(run_dir / "train")
        if ckpt is None or ckpt["iteration"] != s.steps:
            raise ModelError(
                f"training ended at step {None if ckpt is None else ckpt['iteration']}, expected {s.steps}",
                path=run_dir / "train",
            )
        trained_now = True
    state["training"] = read_log(run_dir / "train")
    state["final_step"] = ckpt["iteration"]
    draw_run_curve(spec, run_dir / "train" / "training_log.jsonl", s.results / spec.name / "learning_curve.png")
    bundle = run_dir / "bundle"
    exported = trained_now or not (bundle / "models" / "model.pt").is_file()
    if exported:
        log(f"[ablation] {spec.name}: exporting the final weights to {bundle}")
        export_bundle(spec, run_dir, s.datalist)
    log(f"[ablation] {spec.name}: scoring the validation cases")
    torch.set_num_threads(s.threads)
    state["eval"] = evaluate(bundle, s.data, run_dir / "eval", s.device, overwrite=exported)
    sync_results(spec, s)
    save_json_atomic(state, state_file)
    log(
        f"[ablation] {spec.name}: mean DSC {state['eval']['mean_dice']:.4f}, mean HD95 "
        f"{state['eval']['mean_hd95_mm']:.2f} mm"
    )
    return state


def draw_run_curve(spec: RunSpec, log: Path, png: Path) -> Path:
    from pipeline.training.curve import plot_curve, read_epochs

    return plot_curve(
        read_epochs(log), png, title=f"{spec.name}: train loss (epoch mean) and validation Dice (MONAI MeanDice)"
    )


# --- report -----------------------------------------------------------------------------------------------------------
def _f(x: Any, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def seed_spread(states: Sequence[dict]) -> dict[str, float]:
    """Per variant with two or more finished seeds: max - min of the mean validation DSC.

    Examples:
        >>> seed_spread([{"variant": "a", "eval": {"mean_dice": 0.85}}, {"variant": "a", "eval": {"mean_dice": 0.86}},
        ...              {"variant": "b", "eval": {"mean_dice": 0.8}}])
        {'a': 0.01}
    """
    by: dict[str, list[float]] = {}
    for st in states:
        if st.get("eval"):
            by.setdefault(st["variant"], []).append(st["eval"]["mean_dice"])
    return {v: round(max(d) - min(d), 6) for v, d in by.items() if len(d) > 1}


def verdicts(states: Sequence[dict], seed: int) -> list[str]:
    """One sentence per Swin module: its mean-DSC change against plain ``swinunet3d`` (same seed), compared with the
    largest seed-to-seed spread measured."""
    done = {(st["variant"], st["seed"]): st for st in states if st.get("eval")}
    base = done.get(("swinunet3d", seed))
    spread = seed_spread(states)
    width = max(spread.values()) if spread else None
    lines = []
    if width is None:
        lines.append(
            "seed-to-seed spread: not measured yet (no variant has two finished seeds), so no difference "
            "below can be called real or noise"
        )
    else:
        lines.append(
            "seed-to-seed spread of the mean DSC: "
            + ", ".join(f"{v} {d:.4f}" for v, d in spread.items())
            + f"; a module counts as helping or hurting only beyond {width:.4f}"
        )
    if base is None:
        return lines + ["plain swinunet3d (the reference of every module) has not finished yet"]
    ref = base["eval"]["mean_dice"]
    for v in [*SWIN_VARIANTS[1:], UNETRPP]:
        st = done.get((v, seed))
        if st is None:
            lines.append(f"{v}: not finished yet")
            continue
        delta = st["eval"]["mean_dice"] - ref
        what = "UNETR++ (shipped configuration)" if v == UNETRPP else v
        if width is None:
            verdict = "spread unknown"
        elif abs(delta) <= width:
            verdict = "within the seed-to-seed spread: no measurable effect"
        elif delta > 0:
            verdict = f"helped ({delta / width:.1f}x the spread)" if width > 0 else "helped"
        else:
            verdict = f"hurt ({-delta / width:.1f}x the spread)" if width > 0 else "hurt"
        lines.append(
            f"{what}: mean DSC {st['eval']['mean_dice']:.4f}, {delta:+.4f} against plain swinunet3d "
            f"({ref:.4f}): {verdict}"
        )
    return lines


def results_table(specs: Sequence[RunSpec], states: dict[str, dict], baseline: list[dict] | None) -> str:
    from pipeline.benchmark import markdown_table

    head = [
        "run",
        "variant",
        "seed",
        "params (M)",
        "GMACs / window",
        "steps",
        "train wall time",
        "s / step",
        "DSC ant.",
        "DSC post.",
        "DSC mean",
        "HD95 ant. (mm)",
        "HD95 post. (mm)",
        "HD95 mean (mm)",
        "NaN-free",
    ]
    rows = []
    for spec in specs:
        st = states.get(spec.name, {})
        ev, tr = st.get("eval") or {}, st.get("training") or {}
        params = f"{st['params'] / 1e6:.2f}" if "params" in st else None
        if ev:
            steps = st.get("final_step")
        else:
            steps = f"{st.get('progress_step', 0)} of {st['steps']} (not finished)" if "steps" in st else "not started"
        rows.append(
            [
                spec.name,
                f"`{spec.variant}`",
                spec.seed,
                params,
                _f(st.get("gmacs"), 2),
                steps,
                _hms(tr.get("wall_s")) if tr else None,
                _f(tr.get("step_s"), 2) if tr else None,
                _f(ev.get("dice", {}).get("1")),
                _f(ev.get("dice", {}).get("2")),
                f"**{_f(ev.get('mean_dice'))}**" if ev else None,
                _f(ev.get("hd95_mm", {}).get("1"), 2),
                _f(ev.get("hd95_mm", {}).get("2"), 2),
                _f(ev.get("mean_hd95_mm"), 2) if ev else None,
                ("yes" if tr.get("nan_free") else "**no**") if tr else None,
            ]
        )
    for b in baseline or []:
        rows.append(
            [
                f"constant label {b['label']}",
                "baseline",
                "–",
                "0",
                "0",
                "0",
                "–",
                "–",
                _f(b["dice"]["1"]),
                _f(b["dice"]["2"]),
                _f(b["mean_dice"]),
                _f(b["hd95_mm"]["1"], 2),
                _f(b["hd95_mm"]["2"], 2),
                _f(b["mean_hd95_mm"], 2),
                "–",
            ]
        )
    return markdown_table(head, rows)


def cost_table(cost: dict[str, dict]) -> str:
    from pipeline.benchmark import markdown_table

    rows = [
        [
            f"`{v}`",
            f"{c['params']:,}",
            _f(c["gmacs"], 2),
            _f(c.get("step_s"), 2),
            _f(c.get("cpu_step_s"), 2),
            c.get("threads"),
            c.get("measured"),
        ]
        for v, c in cost.items()
    ]
    return markdown_table(
        [
            "variant",
            "parameters",
            "GMACs / 32x48x32 window",
            "wall s / training step (batch 2)",
            "CPU s / step",
            "torch threads",
            "measured",
        ],
        rows,
    )


def draw_summary_curves(specs: Sequence[RunSpec], s: Settings, png: Path) -> Path | None:
    """Validation mean Dice (MONAI MeanDice of the training's validation) against optimizer steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.training.curve import read_epochs

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    drawn = 0
    for spec in specs:
        log = s.work / spec.name / "train" / "training_log.jsonl"
        if not log.is_file():
            log = s.results / spec.name / "training_log.jsonl"
        if not log.is_file():
            continue
        try:
            epochs = read_epochs(log)
        except InputDataError:
            continue
        style = "--" if spec.variant == UNETRPP else ("-" if spec.seed == min(s.seed for s in specs) else ":")
        left.plot([r["iteration"] for r in epochs], [r["epoch_loss"] for r in epochs], style, label=spec.name)
        val = [(r["iteration"], r["val_mean_dice"]) for r in epochs if "val_mean_dice" in r]
        if val:
            right.plot(*zip(*val), style, marker="o", ms=3, label=spec.name)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    left.set(xlabel="optimizer step", ylabel="train loss (epoch mean)", title="training loss")
    right.set(xlabel="optimizer step", ylabel="validation mean Dice", title="validation (MONAI MeanDice, no bg)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png


def collect_states(specs: Sequence[RunSpec], s: Settings) -> dict[str, dict]:
    """Each run's ``run.json``; unfinished runs get their checkpoint's step as ``progress_step``."""
    states = {}
    for spec in specs:
        st = load_state(run_state_file(s, spec))
        if st and not st.get("eval"):
            ckpt = checkpoint_trainer_state(s.work / spec.name / "train")
            st["progress_step"] = 0 if ckpt is None else ckpt["iteration"]
        states[spec.name] = st
    return states


def write_report(specs: Sequence[RunSpec], s: Settings, out: Path, argv: Sequence[str]) -> str:
    """The Markdown section (table, cost table, verdicts, notes), written atomically to ``out``; returns the table."""
    from pipeline.benchmark import system_stamp, write_section
    from pipeline.benchmark.sections import command_line

    states = collect_states(specs, s)
    baseline_file = s.results / "constant_baseline.json"
    baseline = load_state(baseline_file).get("rows") if baseline_file.is_file() else None
    finished = [st for st in states.values() if st.get("eval")]
    if baseline is None and finished:
        baseline = constant_baseline(s.data, s.datalist)
        save_json_atomic({"rows": baseline}, baseline_file)
    table = results_table(specs, states, baseline)
    parts = [table, ""]
    cost = load_state(s.results / "cost.json")
    if cost:
        parts += [
            "Network cost (`--measure`): parameters, GMACs, and the median time of a synthetic training step "
            "of the recipe (batch 2, forward + loss + backward + AdamW), the variants timed round-robin while "
            "the machine's other core ran other jobs (wall time grows with that load, CPU time much less):",
            "",
            cost_table(cost),
            "",
        ]
    seed = min(sp.seed for sp in specs)
    parts += ["What each module changed (validation mean DSC, final weights):", ""]
    parts += [f"- {line}" for line in verdicts(finished, seed)]
    swin = [st for st in finished if st["variant"] in SWIN_VARIANTS]
    if swin:
        best = max(swin, key=lambda st: st["eval"]["mean_dice"])
        met = "met" if best["eval"]["mean_dice"] >= TARGET_DICE else "NOT met"
        parts.append(
            f"- best Swin run: {best['run']} with mean DSC {best['eval']['mean_dice']:.4f} "
            f"(target >= {TARGET_DICE}: {met})"
        )
    if baseline and finished:
        best_const = max(b["mean_dice"] for b in baseline)
        worst = min(st["eval"]["mean_dice"] for st in finished)
        parts.append(
            f"- every finished run is above the best constant predictor (mean DSC {best_const:.3f}) by at "
            f"least {worst - best_const:.3f}"
            if worst > best_const
            else f"- WARNING: a run does not beat the best constant predictor (mean DSC {best_const:.3f})"
        )
    parts.append("")
    curves = draw_summary_curves(specs, s, s.results / "curves.png")
    rel = os.path.relpath(s.results, out.parent)
    notes = [
        f"budget: {s.steps} optimizer steps = {s.epochs} epochs of {s.steps // s.epochs} iterations (batch 2), the "
        "same for every run; poly learning rate over that budget; validation during training every "
        f"{s.val_interval} epoch(s) (only drawn in the curves: no weights are picked by it)",
        "recipe: the bundles' train.json (AdamW lr 2e-3, weight decay 1e-4, poly 0.9, Dice+CE with deep supervision "
        "where the network has it, gradient clip 12, 32x48x32 crops with the same augmentation); "
        "swinunet3d_pamcam adds its guided auxiliary losses (net.auxiliary_loss()) to the loss",
        "scores: the final weights, exported to a bundle and scored by the medseg benchmark code on the "
        f"validation cases of {s.datalist.name} (sliding window 32x48x32, overlap 0.5, Gaussian, inverted to each "
        "image's grid); protocol strict: DSC, HD95 in mm from the header spacing (1 mm here)",
        "train wall time: the sum of the completed epochs (training and the periodic validation), from each run's "
        "training_log.jsonl, on the CPU with the thread count of run.json (`invocations`); s / step: median over the "
        "epochs without validation; the machine's other core was busy with other jobs, so times are under load",
        "GMACs: torch.utils.flop_counter on one 1x1x32x48x32 forward with the math SDPA backend (attention matmuls "
        "counted), MACs = FLOPs / 2",
        "constant label k: every voxel of every validation case predicted as k, scored the same way (strict: DSC 0 "
        "for an absent class, HD95 = image diagonal when the prediction is empty)",
        f"per run: {rel}/<run>/run.json, training_log.jsonl, train.log, learning_curve.png, report.md"
        + (f"; all runs: {rel}/curves.png" if curves else ""),
    ]
    if s.quick:
        notes.insert(0, "QUICK SMOKE RUN: a few cases and steps; these figures say nothing about the networks")
    write_section(
        out,
        TITLE,
        "\n".join(parts),
        command=command_line(argv, "benchmarks/ablation_hippocampus.py"),
        stamp=system_stamp(s.device),
        notes=notes,
        script="ablation_hippocampus",
    )
    return table


# --- locking ----------------------------------------------------------------------------------------------------------
@contextmanager
def results_lock(results: Path) -> Iterator[None]:
    """One invocation per results folder at a time (two would train the same run twice)."""
    results.mkdir(parents=True, exist_ok=True)
    fh = open(results / ".lock", "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                "another ablation_hippocampus.py is running on this results folder", path=results
            ) from None
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()


# --- command line -----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/ablation_hippocampus.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps per run, the same for every run; a multiple of the iterations per epoch "
        "(80). Required unless --measure/--quick",
    )
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of training and evaluation (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the main runs (default 0)")
    p.add_argument(
        "--extra-seed",
        action="append",
        default=[],
        metavar="VARIANT",
        help="also train VARIANT with seed --seed + 1 (repeatable), for the seed-to-seed spread",
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated variants of the main runs (default all: {','.join(VARIANTS)})",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="VARIANT_OR_RUN",
        help="train/evaluate only these (a variant or a run name such as swinunet3d_seed1); the report "
        "still lists every planned run",
    )
    p.add_argument("--report-only", action="store_true", help="train nothing; rebuild the table and curves")
    p.add_argument(
        "--measure",
        action="store_true",
        help="only measure parameters, GMACs and seconds per training step of each variant",
    )
    p.add_argument(
        "--measure-steps",
        type=int,
        default=5,
        help="timed steps per variant with --measure, one per variant per round (median; default 5)",
    )
    p.add_argument(
        "--data", type=Path, default=None, help="the Task04_Hippocampus folder (default $MEDSEG_DATA or ../shared/data)"
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help=f"runs folder (default {DEFAULT_RESULTS.relative_to(PROJECT_ROOT)}, quick: "
        f"{QUICK_RESULTS.relative_to(PROJECT_ROOT)})",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help=f"training state, exported weights and predictions (default "
        f"{DEFAULT_WORK.relative_to(PROJECT_ROOT)}, quick: <results-dir>/work)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"Markdown section (default {DEFAULT_OUT.relative_to(PROJECT_ROOT)}, quick: "
        "<results-dir>/ablation_hippocampus.md)",
    )
    p.add_argument("--device", default="cpu", help="torch device of training and evaluation (default cpu)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {' and '.join(QUICK_VARIANTS)}, {QUICK_STEPS} steps on {QUICK_CASES[0]} "
        f"training / {QUICK_CASES[1]} validation case(s), outside benchmarks/results",
    )
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    from pipeline.training.bundle import dataset_dir

    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    results = (args.results_dir or (QUICK_RESULTS if args.quick else DEFAULT_RESULTS)).resolve()
    work = (args.work_dir or (results / "work" if args.quick else DEFAULT_WORK)).resolve()
    data = (args.data or Path(dataset_dir("Task04_Hippocampus"))).expanduser().resolve()
    if not data.is_dir():
        raise InputDataError("dataset folder not found (pass --data or set MEDSEG_DATA)", path=data)
    results.mkdir(parents=True, exist_ok=True)
    datalist = prepare_datalist(results, args.quick)
    per_epoch = iterations_per_epoch(datalist)
    steps = args.steps if args.steps is not None else (QUICK_STEPS * per_epoch if args.quick else None)
    if steps is None and not args.measure:
        raise UsageError("--steps is required (the budget of every run, e.g. --steps 2400 = 30 epochs)")
    steps = steps or per_epoch
    if steps < per_epoch or steps % per_epoch:
        lo = max(per_epoch, steps // per_epoch * per_epoch)
        raise UsageError(
            f"--steps {steps} is not a whole number of epochs of {per_epoch} iterations (e.g. {lo} or {lo + per_epoch})"
        )
    return Settings(
        results=results,
        work=work,
        data=data,
        datalist=datalist,
        steps=steps,
        epochs=steps // per_epoch,
        val_interval=1 if args.quick else VAL_INTERVAL,
        threads=args.threads,
        device=args.device,
        quick=args.quick,
    )


def measure(specs: Sequence[RunSpec], s: Settings, rounds: int) -> dict[str, dict]:
    """Parameters, GMACs and seconds per synthetic training step per variant, saved to ``<results>/cost.json``."""
    torch.set_num_threads(s.threads)
    unique = list({sp.variant: sp for sp in specs}.values())
    cost = load_state(s.results / "cost.json")
    times = time_training_steps(unique, rounds)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    for spec in unique:
        row = {
            **network_size(spec),
            **{k: round(v, 3) for k, v in times[spec.variant].items()},
            "threads": s.threads,
            "rounds": rounds,
            "measured": stamp,
        }
        cost[spec.variant] = row
        print(
            f"[ablation] {spec.variant}: {row['params']:,} parameters, {row['gmacs']:.2f} GMACs/window, "
            f"{row['step_s']:.2f} s/step wall, {row['cpu_step_s']:.2f} s/step CPU, {s.threads} thread(s)",
            flush=True,
        )
    save_json_atomic(cost, s.results / "cost.json")
    return cost


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 a run failed, 2 bad options, 3 missing data, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        s = settings_from(args)
        variants = list(QUICK_VARIANTS) if args.quick else [v.strip() for v in args.variants.split(",") if v.strip()]
        specs = plan_runs(variants, args.seed, args.extra_seed)
        todo = [sp for sp in specs if not args.only or sp.variant in args.only or sp.name in args.only]
        if args.only and not todo:
            names = ", ".join(sp.name for sp in specs)
            raise UsageError(f"--only {', '.join(args.only)}: no planned run matches ({names})")
        out = (args.out or (s.results / "ablation_hippocampus.md" if args.quick else DEFAULT_OUT)).resolve()
        torch.set_num_threads(s.threads)
        failed = []
        with results_lock(s.results):
            if args.measure:
                cost = measure(todo, s, args.measure_steps)
                print(cost_table(cost))
                if args.steps is None:  # no budget given: nothing else to report
                    return 0
            elif not args.report_only:
                check_data(s.data, s.datalist)
                check_budgets(todo, s)
                for spec in todo:
                    try:
                        do_run(spec, s, log=lambda m: print(m, flush=True))
                    except PipelineError as exc:
                        print(f"error: {spec.name}: {exc}", file=sys.stderr, flush=True)
                        failed.append(spec.name)
            table = write_report(specs, s, out, argv)
        print(table)
        print(f"[ablation] wrote {out}", flush=True)
        if failed:
            print(f"[ablation] failed: {', '.join(failed)}", file=sys.stderr)
            return EXIT_CASES_FAILED
        return 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted: finished runs and the last epoch checkpoint of the current one are kept; run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(run_cli())
