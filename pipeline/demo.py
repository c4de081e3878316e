"""``medseg demo`` (``make demo``): the trained hippocampus bundle end to end on the validation cases.

1. Find MSD Task04_Hippocampus: ``$MEDSEG_DATA``, else ``../shared/data``, else download it with MONAI's
   :class:`~monai.apps.DecathlonDataset` into ``$MEDSEG_DATA`` (or ``outputs/data``).
2. Run the bundle's ``configs/inference.json`` (sliding-window UNETR++, Gaussian blending, inverted to each image's
   grid) on the bundle's fixed validation cases, writing ``outputs/demo/predictions/<case>.nii.gz``.
3. Score DSC and HD95 (mm, header spacing, ``strict`` protocol of :mod:`pipeline.evaluation`), print the table and
   write ``outputs/demo/summary.json`` / ``summary.md``.
4. Draw PNG overlays (image, ground truth, prediction on three slices) for a few cases in ``outputs/demo/overlays/``.

Existing predictions are reused unless ``--overwrite``; every file is written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputDataError, ModelError, UsageError
from pipeline.paths import BUNDLES_DIR, PROJECT_ROOT, find_data_root
from pipeline.utils.atomic import atomic_path, save_json_atomic

__all__ = ["register", "ensure_task04", "run_demo", "DEMO_BUNDLE", "TASK"]

logger = logging.getLogger(__name__)

TASK = "Task04_Hippocampus"
DEMO_BUNDLE = BUNDLES_DIR / "unetrpp_hippocampus_mri_segmentation"
CLASSES = {1: "anterior", 2: "posterior"}


def ensure_task04(root: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Return the Task04_Hippocampus folder under ``root`` (default: :func:`pipeline.paths.find_data_root`, else
    ``outputs/data``), downloading it with MONAI's ``DecathlonDataset`` when it is missing and ``download`` is True.

    Raises:
        InputDataError: the dataset is missing and cannot (or may not) be downloaded.
    """
    base = Path(root) if root is not None else (find_data_root() or PROJECT_ROOT / "outputs" / "data")
    folder = base / TASK
    if (folder / "dataset.json").is_file():
        return folder
    if not download:
        raise InputDataError(f"{TASK} not found (pass --download, or set MEDSEG_DATA)", path=folder)
    print(f"{TASK} not found under {base}: downloading it with monai.apps.DecathlonDataset (about 27 MB) ...")
    base.mkdir(parents=True, exist_ok=True)
    try:
        from monai.apps import DecathlonDataset

        DecathlonDataset(root_dir=str(base), task=TASK, section="validation", download=True, cache_rate=0.0,
                         num_workers=0, transform=None)
    except Exception as exc:  # noqa: BLE001 - network/disk problems become one line
        raise InputDataError(f"could not download {TASK}: {type(exc).__name__}: {exc}", path=base) from exc
    if not (folder / "dataset.json").is_file():
        raise InputDataError(f"download finished but {folder / 'dataset.json'} is missing", path=folder)
    return folder


def _weights_stamp(weights: Path) -> str:
    """SHA-1 of the weights file ("untrained" without one): predictions made with other weights are redone."""
    if not weights.is_file():
        return "untrained"
    return hashlib.sha1(weights.read_bytes()).hexdigest()


def _validation_cases(dataset: Path, limit: int | None) -> list[dict]:
    from monai.data import load_decathlon_datalist

    items = load_decathlon_datalist(str(DEMO_BUNDLE / "configs" / "datalist.json"), True, "validation", str(dataset))
    missing = [d["image"] for d in items if not Path(d["image"]).is_file()]
    if missing:
        raise InputDataError(f"{len(missing)} validation images are missing, e.g. {missing[0]}", path=dataset)
    for d in items:
        d["case"] = Path(d["image"]).name.split(".")[0]
    return items[:limit] if limit else items


def _infer(items: list[dict], pred_dir: Path, device: str | None) -> None:
    """Run the bundle's inference.json on ``items`` (images only), writing ``<pred_dir>/<case>.nii.gz``."""
    from monai.bundle import ConfigWorkflow

    overrides: dict[str, Any] = {"datalist": [{"image": d["image"]} for d in items], "output_dir": str(pred_dir)}
    if device:
        overrides["device"] = f"$torch.device({device!r})"
    workflow = ConfigWorkflow(config_file=str(DEMO_BUNDLE / "configs" / "inference.json"), workflow_type="infer",
                              logging_file=False, **overrides)
    try:
        workflow.initialize()
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot initialise the bundle: {type(exc).__name__}: {exc}", path=DEMO_BUNDLE) from exc
    missing = workflow.check_properties()
    if missing:
        raise ModelError(f"inference.json misses properties {missing}", path=DEMO_BUNDLE)
    workflow.run()
    workflow.finalize()


def _score(items: list[dict], pred_dir: Path) -> list[dict]:
    import nibabel as nib

    from pipeline.evaluation import evaluate_case

    rows = []
    for d in items:
        pred_img, lab_img = nib.load(str(pred_dir / f"{d['case']}.nii.gz")), nib.load(d["label"])
        pred = np.asarray(pred_img.dataobj).astype(np.uint8)
        lab = np.asarray(lab_img.dataobj).astype(np.uint8)
        spacing = tuple(float(s) for s in lab_img.header.get_zooms()[:3])
        row: dict[str, Any] = {"case": d["case"]}
        for r in evaluate_case(pred, lab, spacing, CLASSES, protocol="strict"):
            name = CLASSES[int(r["class"])]
            row[f"dice_{name}"], row[f"hd95_{name}"] = r["dice"], r["hd95"]
        rows.append(row)
    return rows


def _mean(values: list[Any]) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v)) and not math.isinf(float(v))]
    return float(np.mean(vals)) if vals else float("nan")


def _table(rows: list[dict]) -> str:
    cols = ["dice_anterior", "dice_posterior", "hd95_anterior", "hd95_posterior"]
    lines = ["| case | DSC anterior | DSC posterior | HD95 anterior (mm) | HD95 posterior (mm) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([r["case"]] + [f"{float(r[c]):.3f}" if r[c] is not None else "-" for c in cols])
                     + " |")
    means = [_mean([r[c] for r in rows]) for c in cols]
    lines.append("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    return "\n".join(lines)


def _overlay(item: dict, pred_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    image = np.asarray(nib.load(item["image"]).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(item["label"]).dataobj).astype(np.uint8)
    pred = np.asarray(nib.load(str(pred_path)).dataobj).astype(np.uint8)
    fg = np.argwhere(label > 0)
    zs = np.percentile(fg[:, 2], [25, 50, 75]).astype(int) if len(fg) else [image.shape[2] // 2] * 3
    lo, hi = np.percentile(image, [0.5, 99.5])
    cmap = matplotlib.colors.ListedColormap([(0, 0, 0, 0), (1.0, 0.2, 0.2, 0.55), (0.2, 0.6, 1.0, 0.55)])
    fig, axes = plt.subplots(len(zs), 3, figsize=(7.5, 2.6 * len(zs)))
    for row, z in zip(np.atleast_2d(axes), zs):
        sl = np.rot90(image[:, :, z])
        for ax, (title, mask) in zip(row, (("image", None), ("ground truth", label), ("prediction", pred))):
            ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi)
            if mask is not None:
                ax.imshow(np.rot90(mask[:, :, z]), cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
            ax.set_title(f"{title} (z={z})", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{item['case']}: red anterior, blue posterior", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def run_demo(out_dir: str | os.PathLike = PROJECT_ROOT / "outputs" / "demo", *, data_root: str | None = None,
             download: bool = True, limit: int | None = None, overlays: int = 4, overwrite: bool = False,
             device: str | None = None) -> dict:
    """Run the demo; return the summary dict (also written to ``<out_dir>/summary.json``)."""
    t0 = time.time()
    if not (DEMO_BUNDLE / "configs" / "inference.json").is_file():
        raise ModelError("the hippocampus bundle is missing", path=DEMO_BUNDLE)
    weights = DEMO_BUNDLE / "models" / "model.pt"
    if not weights.is_file():
        print(f"warning: {weights} is missing: predictions come from an untrained network")
    dataset = ensure_task04(data_root, download=download)
    items = _validation_cases(dataset, limit)
    out = Path(out_dir)
    pred_dir = out / "predictions"
    stamp_file, stamp = pred_dir / ".weights_sha1", _weights_stamp(weights)
    if stamp_file.is_file() and stamp_file.read_text().strip() != stamp:
        overwrite = True  # the weights changed since these predictions were made
    todo = [d for d in items if overwrite or not (pred_dir / f"{d['case']}.nii.gz").is_file()]
    print(f"data: {dataset}\nbundle: {DEMO_BUNDLE}\nsliding-window inference on {len(todo)} of {len(items)} "
          f"validation cases ({len(items) - len(todo)} already done) ...", flush=True)
    if todo:
        _infer(todo, pred_dir, device)
        with atomic_path(stamp_file) as tmp:
            tmp.write_text(stamp + "\n")
    rows = _score(items, pred_dir)
    table = _table(rows)
    print(table)
    n_overlay = 0
    for d in items[: max(overlays, 0)]:
        _overlay(d, pred_dir / f"{d['case']}.nii.gz", out / "overlays" / f"{d['case']}.png")
        n_overlay += 1
    summary = {
        "bundle": str(DEMO_BUNDLE), "weights": str(weights) if weights.is_file() else None, "dataset": str(dataset),
        "cases": len(rows), "protocol": "strict (DSC; HD95 in mm from header spacing)",
        "mean_dice": {n: _mean([r[f"dice_{n}"] for r in rows]) for n in CLASSES.values()},
        "mean_hd95_mm": {n: _mean([r[f"hd95_{n}"] for r in rows]) for n in CLASSES.values()},
        "per_case": rows, "seconds": round(time.time() - t0, 1),
    }
    summary["mean_dice"]["mean"] = _mean(list(summary["mean_dice"].values()))
    summary["mean_hd95_mm"]["mean"] = _mean(list(summary["mean_hd95_mm"].values()))
    save_json_atomic(summary, out / "summary.json")
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(f"# Hippocampus demo ({len(rows)} validation cases)\n\n{table}\n")
    print(f"mean DSC {summary['mean_dice']['mean']:.3f} (anterior {summary['mean_dice']['anterior']:.3f}, posterior "
          f"{summary['mean_dice']['posterior']:.3f}); mean HD95 {summary['mean_hd95_mm']['mean']:.2f} mm")
    print(f"wrote {pred_dir}/ ({len(rows)} predictions), {n_overlay} overlays in {out / 'overlays'}/, "
          f"{out / 'summary.md'} in {summary['seconds']:.0f} s")
    return summary


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    run_demo(args.out, data_root=args.data, download=not args.no_download, limit=args.limit,
             overlays=args.overlays, overwrite=args.overwrite, device=args.device)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the trained hippocampus bundle on its validation cases (DSC/HD95 table, PNG overlays)",
        description="Find (or download) MSD Task04_Hippocampus, run the hippocampus bundle's sliding-window "
        "inference on its validation cases, score DSC/HD95 and write predictions and PNG overlays.")
    p.add_argument("--out", default=str(PROJECT_ROOT / "outputs" / "demo"), help="output folder (outputs/demo)")
    p.add_argument("--data", help="folder holding Task04_Hippocampus/ (default: $MEDSEG_DATA, else ../shared/data)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing dataset")
    p.add_argument("--download", action="store_true", help="download a missing dataset (the default)")
    p.add_argument("--limit", type=int, help="only the first N validation cases")
    p.add_argument("--overlays", type=int, default=4, help="number of cases with PNG overlays (default 4)")
    p.add_argument("--overwrite", action="store_true", help="recompute existing predictions")
    p.add_argument("--device", help="cpu or cuda:0 (default: cuda when available)")
    p.set_defaults(func=_cmd_demo)
