"""``medseg demo`` (``make demo``): a trained bundle end to end on its validation cases.

By default the hippocampus MRI bundle; ``--ct`` runs the soft-tissue-sarcoma CT bundle, and ``--bundle NAME|PATH`` any
bundle with a ``configs/datalist.json`` validation split and weights.

1. Find the bundle's dataset (the name its ``dataset_dir`` names): ``$MEDSEG_DATA``, else ``../shared/data``; MSD
   Task04_Hippocampus alone can also be downloaded with MONAI's :class:`~monai.apps.DecathlonDataset` into
   ``$MEDSEG_DATA`` (or ``outputs/data``).
2. Run the bundle's ``configs/inference.json`` (sliding window, Gaussian blending, inverted to each image's grid) on
   the bundle's fixed validation cases, writing ``<out>/predictions/<case>.nii.gz``.
3. Score DSC and HD95 (mm, header spacing, ``strict`` protocol of :mod:`pipeline.evaluation`) per class (the class
   names come from the bundle's ``metadata.json``), print the table and write ``<out>/summary.json`` / ``summary.md``.
4. Draw PNG overlays (image, ground truth, prediction on three slices) for a few cases in ``<out>/overlays/``; CT is
   shown in a soft-tissue window (W400/L40).

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
from typing import Any, cast

import numpy as np

from pipeline.errors import InputDataError, ModelError, UsageError
from pipeline.paths import BUNDLES_DIR, PROJECT_ROOT, find_data_root
from pipeline.utils.atomic import atomic_path, save_json_atomic
from pipeline.utils.tables import markdown_table

__all__ = ["register", "ensure_task04", "run_demo", "resolve_bundle", "DEMO_BUNDLE", "CT_BUNDLE", "TASK"]

logger = logging.getLogger(__name__)

TASK = "Task04_Hippocampus"
DEMO_BUNDLE = BUNDLES_DIR / "unetrpp_hippocampus_mri_segmentation"
CT_BUNDLE = BUNDLES_DIR / "unetrpp_sts_ct_segmentation"
#: soft-tissue display window for CT overlays (W400/L40, HU)
CT_WINDOW = (-160.0, 240.0)
_COLOURS = [
    (1.0, 0.2, 0.2, 0.55),
    (0.2, 0.6, 1.0, 0.55),
    (0.2, 0.9, 0.3, 0.55),
    (1.0, 0.8, 0.1, 0.55),
    (0.8, 0.3, 1.0, 0.55),
    (0.1, 0.9, 0.9, 0.55),
]


def resolve_bundle(bundle: str | os.PathLike) -> Path:
    """A bundle folder from a path or a name under ``bundles/``.

    Raises:
        UsageError: no such bundle folder (one line naming what was looked for).

    Examples:
        >>> resolve_bundle("unetrpp_sts_ct_segmentation").name
        'unetrpp_sts_ct_segmentation'
    """
    for candidate in (Path(bundle), BUNDLES_DIR / str(bundle)):
        if (candidate / "configs" / "inference.json").is_file():
            return candidate.resolve()
    raise UsageError(f"--bundle {bundle}: no bundle folder with configs/inference.json there or in {BUNDLES_DIR}")


def _bundle_facts(bundle: Path) -> dict[str, Any]:
    """What the demo needs from a bundle: dataset folder name, class names, modality."""
    from monai.bundle import ConfigParser

    from pipeline.transforms.presets import get_preprocessing_preset

    try:
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        dataset = Path(str(parser.get_parsed_content("dataset_dir"))).name
        preset = parser.get("preprocessing_preset")
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    except Exception as exc:  # any config problem is one line naming the bundle
        raise ModelError(
            f"cannot read the bundle's dataset_dir/metadata: {type(exc).__name__}: {exc}", path=bundle
        ) from exc
    classes = {int(k): str(v) for k, v in channels.items() if int(k) != 0}
    modality = get_preprocessing_preset(preset).get("modality") if isinstance(preset, str) else None
    return {"dataset": dataset, "classes": classes, "modality": modality}


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

        DecathlonDataset(
            root_dir=str(base),
            task=TASK,
            section="validation",
            download=True,
            cache_rate=0.0,
            num_workers=0,
            transform=(),
        )
    except Exception as exc:  # network/disk problems become one line
        raise InputDataError(f"could not download {TASK}: {type(exc).__name__}: {exc}", path=base) from exc
    if not (folder / "dataset.json").is_file():
        raise InputDataError(f"download finished but {folder / 'dataset.json'} is missing", path=folder)
    return folder


def _weights_stamp(weights: Path) -> str:
    """SHA-1 of the weights file ("untrained" without one): predictions made with other weights are redone."""
    if not weights.is_file():
        return "untrained"
    return hashlib.sha1(weights.read_bytes()).hexdigest()


def _find_dataset(name: str, root: str | os.PathLike | None, download: bool) -> Path:
    if name == TASK:
        return ensure_task04(root, download=download)
    base = Path(root) if root is not None else find_data_root()
    folder = base / name if base is not None else None
    if folder is None or not folder.is_dir():
        raise InputDataError(
            f"{name} not found (set MEDSEG_DATA or pass --data ROOT holding {name}/)",
            path=folder if folder is not None else name,
        )
    return folder


def _validation_cases(bundle: Path, dataset: Path, limit: int | None) -> list[dict]:
    from monai.data import load_decathlon_datalist

    datalist = bundle / "configs" / "datalist.json"
    if not datalist.is_file():
        raise ModelError("the demo needs configs/datalist.json (a fixed validation split)", path=bundle)
    items = load_decathlon_datalist(str(datalist), True, "validation", str(dataset))
    missing = [d["image"] for d in items if not Path(d["image"]).is_file()]
    if missing:
        raise InputDataError(f"{len(missing)} validation images are missing, e.g. {missing[0]}", path=dataset)
    for d in items:
        d["case"] = Path(d["image"]).name.split(".")[0]
    return items[:limit] if limit else items


def _infer(bundle: Path, items: list[dict], pred_dir: Path, device: str | None) -> None:
    """Run the bundle's inference.json on ``items`` (images only), writing ``<pred_dir>/<case>.nii.gz``."""
    from monai.bundle import ConfigWorkflow

    overrides: dict[str, Any] = {
        "bundle_root": str(bundle),  # a config cannot see its own folder
        "datalist": [{"image": d["image"]} for d in items],
        "output_dir": str(pred_dir),
    }
    if device:
        overrides["device"] = f"$torch.device({device!r})"
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.json"), workflow_type="infer", logging_file=False, **overrides
    )
    try:
        workflow.initialize()
    except Exception as exc:
        raise ModelError(f"cannot initialise the bundle: {type(exc).__name__}: {exc}", path=bundle) from exc
    missing = workflow.check_properties()
    if missing:
        raise ModelError(f"inference.json misses properties {missing}", path=bundle)
    workflow.run()
    workflow.finalize()


def _score(items: list[dict], pred_dir: Path, classes: dict[int, str]) -> list[dict]:
    from pipeline.evaluation import evaluate_case
    from pipeline.evaluation.io import read_label_map

    rows = []
    for d in items:
        pred = read_label_map(pred_dir / f"{d['case']}.nii.gz")[0].astype(np.uint8)
        lab_arr, _, spacing = read_label_map(d["label"])
        lab = lab_arr.astype(np.uint8)
        row: dict[str, Any] = {"case": d["case"]}
        for r in evaluate_case(pred, lab, spacing, classes, protocol="strict"):
            name = classes[int(r["class"])]
            row[f"dice_{name}"], row[f"hd95_{name}"] = r["dice"], r["hd95"]
        rows.append(row)
    return rows


def _mean(values: list[Any]) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v)) and not math.isinf(float(v))]
    return float(np.mean(vals)) if vals else float("nan")


def _table(rows: list[dict], classes: dict[int, str]) -> str:
    names = list(classes.values())
    cols = [f"dice_{n}" for n in names] + [f"hd95_{n}" for n in names]
    head = ["case", *[f"DSC {n}" for n in names], *[f"HD95 {n} (mm)" for n in names]]
    cells = [[r["case"], *[None if r[c] is None else float(r[c]) for c in cols]] for r in rows]
    cells.append(["**mean**", *[f"**{_mean([r[c] for r in rows]):.3f}**" for c in cols]])
    return markdown_table(head, cells, floatfmt=".3f", missing="-")


def _overlay(item: dict, pred_path: Path, out: Path, classes: dict[int, str], modality: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    image = np.asarray(cast(nib.Nifti1Image, nib.load(item["image"])).dataobj, dtype=np.float32)
    label = np.asarray(cast(nib.Nifti1Image, nib.load(item["label"])).dataobj).astype(np.uint8)
    pred = np.asarray(cast(nib.Nifti1Image, nib.load(str(pred_path))).dataobj).astype(np.uint8)
    fg = np.argwhere(label > 0)
    zs = np.percentile(fg[:, 2], [25, 50, 75]).astype(int) if len(fg) else [image.shape[2] // 2] * 3
    lo, hi = CT_WINDOW if modality == "CT" else np.percentile(image, [0.5, 99.5])
    n_cls = max(classes) if classes else 1
    colours = [_COLOURS[i % len(_COLOURS)] for i in range(n_cls)]
    cmap = matplotlib.colors.ListedColormap([(0, 0, 0, 0), *colours])
    fig, axes = plt.subplots(len(zs), 3, figsize=(7.5, 2.6 * len(zs)))
    for row, z in zip(np.atleast_2d(axes), zs):
        sl = np.rot90(image[:, :, z])
        for ax, (title, mask) in zip(row, (("image", None), ("ground truth", label), ("prediction", pred))):
            ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi)
            if mask is not None:
                ax.imshow(np.rot90(mask[:, :, z]), cmap=cmap, vmin=0, vmax=n_cls, interpolation="nearest")
            ax.set_title(f"{title} (z={z})", fontsize=8)
            ax.axis("off")
    names = ["red", "blue", "green", "yellow", "purple", "cyan"]
    legend = ", ".join(f"{names[(k - 1) % len(names)]} {v}" for k, v in sorted(classes.items()))
    fig.suptitle(f"{item['case']}: {legend}", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def run_demo(
    out_dir: str | os.PathLike = PROJECT_ROOT / "outputs" / "demo",
    *,
    data_root: str | None = None,
    download: bool = True,
    limit: int | None = None,
    overlays: int = 4,
    overwrite: bool = False,
    device: str | None = None,
    bundle: str | os.PathLike = DEMO_BUNDLE,
) -> dict:
    """Run the demo of ``bundle`` (default: hippocampus); return the summary dict (also in ``<out_dir>/summary.json``).

    Raises:
        ModelError: the bundle is missing, has no weights or no validation split.
        InputDataError: the dataset is missing (and cannot be downloaded).
    """
    t0 = time.time()
    bundle = resolve_bundle(bundle)
    facts = _bundle_facts(bundle)
    classes = facts["classes"]
    weights = bundle / "models" / "model.pt"
    if not weights.is_file():
        raise ModelError(
            "the bundle ships no trained weights (models/model.pt): a demo of an untrained network "
            "would show random labels; train it first (medseg train --bundle ...)",
            path=bundle,
        )
    dataset = _find_dataset(facts["dataset"], data_root, download)
    items = _validation_cases(bundle, dataset, limit)
    out = Path(out_dir)
    pred_dir = out / "predictions"
    stamp_file, stamp = pred_dir / ".weights_sha1", _weights_stamp(weights)
    if stamp_file.is_file() and stamp_file.read_text().strip() != stamp:
        overwrite = True  # the weights changed since these predictions were made
    todo = [d for d in items if overwrite or not (pred_dir / f"{d['case']}.nii.gz").is_file()]
    print(
        f"data: {dataset}\nbundle: {bundle}\nsliding-window inference on {len(todo)} of {len(items)} "
        f"validation cases ({len(items) - len(todo)} already done) ...",
        flush=True,
    )
    if todo:
        _infer(bundle, todo, pred_dir, device)
        with atomic_path(stamp_file) as tmp:
            tmp.write_text(stamp + "\n")
    rows = _score(items, pred_dir, classes)
    table = _table(rows, classes)
    print(table)
    n_overlay = 0
    for d in items[: max(overlays, 0)]:
        _overlay(d, pred_dir / f"{d['case']}.nii.gz", out / "overlays" / f"{d['case']}.png", classes, facts["modality"])
        n_overlay += 1
    summary: dict[str, Any] = {
        "bundle": str(bundle),
        "weights": str(weights),
        "dataset": str(dataset),
        "cases": len(rows),
        "protocol": "strict (DSC; HD95 in mm from header spacing)",
        "mean_dice": {n: _mean([r[f"dice_{n}"] for r in rows]) for n in classes.values()},
        "mean_hd95_mm": {n: _mean([r[f"hd95_{n}"] for r in rows]) for n in classes.values()},
        "per_case": rows,
        "seconds": round(time.time() - t0, 1),
    }
    summary["mean_dice"]["mean"] = _mean(list(summary["mean_dice"].values()))
    summary["mean_hd95_mm"]["mean"] = _mean(list(summary["mean_hd95_mm"].values()))
    save_json_atomic(summary, out / "summary.json")
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(f"# Demo: {bundle.name} ({len(rows)} validation cases, protocol strict)\n\n{table}\n")
    per_class = ", ".join(f"{n} {summary['mean_dice'][n]:.3f}" for n in classes.values())
    print(
        f"mean DSC {summary['mean_dice']['mean']:.3f} ({per_class}); mean HD95 {summary['mean_hd95_mm']['mean']:.2f} mm"
    )
    print(
        f"wrote {pred_dir}/ ({len(rows)} predictions), {n_overlay} overlays in {out / 'overlays'}/, "
        f"{out / 'summary.md'} in {summary['seconds']:.0f} s"
    )
    return summary


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.ct and args.bundle:
        raise UsageError("--ct and --bundle both given: --ct is --bundle unetrpp_sts_ct_segmentation")
    bundle = CT_BUNDLE if args.ct else resolve_bundle(args.bundle) if args.bundle else DEMO_BUNDLE
    out = args.out or str(PROJECT_ROOT / "outputs" / ("demo" if bundle == DEMO_BUNDLE else f"demo_{bundle.name}"))
    run_demo(
        out,
        data_root=args.data,
        download=not args.no_download,
        limit=args.limit,
        overlays=args.overlays,
        overwrite=args.overwrite,
        device=args.device,
        bundle=bundle,
    )
    return 0


#: the description of ``medseg demo --help`` (its one-line summary is in ``pipeline.cli.COMMANDS``)
DESCRIPTION = (
    "Run a trained bundle's sliding-window inference on its fixed validation cases, score DSC/HD95 "
    "(strict protocol) and write predictions and PNG overlays. Default: the hippocampus MRI bundle (MSD "
    "Task04_Hippocampus, downloaded when missing); --ct: the soft-tissue-sarcoma CT bundle on STS_CT."
)


def register(p: argparse.ArgumentParser) -> None:
    """Add the options of ``medseg demo`` to its parser."""
    p.add_argument("--ct", action="store_true", help="the CT demo: bundles/unetrpp_sts_ct_segmentation on STS_CT")
    p.add_argument("--bundle", help="any bundle folder or name under bundles/ (with configs/datalist.json)")
    p.add_argument("--out", help="output folder (default outputs/demo, or outputs/demo_<bundle> for other bundles)")
    p.add_argument("--data", help="folder holding the dataset folder (default: $MEDSEG_DATA, else ../shared/data)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing dataset")
    p.add_argument("--download", action="store_true", help="download a missing dataset (the default; Task04 only)")
    p.add_argument("--limit", type=int, help="only the first N validation cases")
    p.add_argument("--overlays", type=int, default=4, help="number of cases with PNG overlays (default 4)")
    p.add_argument("--overwrite", action="store_true", help="recompute existing predictions")
    p.add_argument("--device", help="cpu or cuda:0 (default: cuda when available)")
    p.set_defaults(func=_cmd_demo)
