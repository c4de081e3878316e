"""``medseg datasets fingerprint``: dataset statistics that drive the normalisation presets.

It computes, over the labelled cases of a dataset:

- the median voxel spacing in MONAI (x, y, z) order (the ``ct_nnunet`` preset's target spacing);
- per image channel, the foreground intensity statistics, as nnU-Net does for CT normalisation: voxels under a
  non-zero label, pooled over cases; mean and std over ALL foreground voxels, percentiles 0.5 / 50 / 99.5 over a
  deterministic per-case subsample of at most ``1e7 / n_cases`` voxels (nnU-Net v2's budget);
- class voxel counts (total and number of cases containing each class), shapes and orientations.

The JSON it writes is read by :func:`pipeline.transforms.resolve_preset` (``fingerprint=``).

Examples:
    >>> from pipeline.data.fingerprint import compute_fingerprint
    >>> fp = compute_fingerprint("../shared/data/STS_CT")  # doctest: +SKIP
    >>> fp["median_spacing"], fp["foreground_intensity"]["0"]["percentile_99_5"]  # doctest: +SKIP
    ([0.9765620231628418, 0.9765620231628418, 3.2699999809265137], 104.0)
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.check import orientation_code
from pipeline.data.geometry import spacing_from_affine
from pipeline.errors import InputDataError

#: total number of foreground voxels kept for the percentiles (split evenly between cases), as in nnU-Net v2
FOREGROUND_SAMPLE_BUDGET = 10_000_000


def _case_stats(item: dict, per_case_samples: int, seed: int) -> dict[str, Any]:
    from pipeline.data.io import load_volume

    images = item["image"] if isinstance(item["image"], (list, tuple)) else [item["image"]]
    vols = [load_volume(p, dtype=np.float32) for p in images]
    img = np.concatenate([v.as_tensor().numpy() for v in vols], axis=0)  # (C, x, y, z)
    lab_mt = load_volume(item["label"], dtype=None)
    lab = np.round(lab_mt.as_tensor().numpy()[0]).astype(np.int64)
    if lab.shape != img.shape[1:]:
        raise InputDataError(f"label shape {list(lab.shape)} != image shape {list(img.shape[1:])}", path=item["label"])
    fg = lab > 0
    rng = np.random.default_rng(seed)
    channels = []
    for c in range(img.shape[0]):
        vals = img[c][fg].astype(np.float64)
        vals = vals[np.isfinite(vals)]
        sample = vals if vals.size <= per_case_samples else rng.choice(vals, per_case_samples, replace=False)
        channels.append(
            {
                "n": int(vals.size),
                "sum": float(vals.sum()),
                "sumsq": float((vals**2).sum()),
                "min": float(vals.min()) if vals.size else None,
                "max": float(vals.max()) if vals.size else None,
                "sample": sample.astype(np.float32),
            }
        )
    values, counts = np.unique(lab, return_counts=True)
    aff = np.asarray(vols[0].affine, dtype=np.float64)
    return {
        "case": item.get("case"),
        "shape": [int(s) for s in img.shape[1:]],
        "spacing": [float(s) for s in spacing_from_affine(aff)],
        "orientation": orientation_code(aff),
        "channels": channels,
        "label_counts": {int(v): int(n) for v, n in zip(values, counts)},
    }


def compute_fingerprint(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compute the fingerprint of the labelled cases of the dataset at ``path`` (any supported NIfTI/DICOM layout).

    Args:
        path: dataset folder.
        split: only the cases of this split (or official split file), as in ``read_dataset``.
        progress: called with each case name once it is done.

    Raises:
        InputDataError: no labelled cases, an unreadable case, or a TransUNet (npz/h5) folder, whose intensities are
            already normalised.
    """
    from pipeline.data.readers import read_dataset

    info = read_dataset(path, split=split)
    if info.axis_order != "xyz":
        raise InputDataError("a fingerprint needs raw volumes; this layout holds already-normalised arrays", path=path)
    items = info.labelled_items()
    if not items:
        raise InputDataError("no labelled cases to fingerprint", path=path)
    per_case = max(1, FOREGROUND_SAMPLE_BUDGET // len(items))
    stats = []
    for i, item in enumerate(items):
        stats.append(_case_stats(item, per_case, seed=i))
        if progress:
            progress(str(item.get("case")))
    n_chan = len(stats[0]["channels"])
    channel_names = info.channels or {0: info.modality or "image"}
    fg: dict[str, Any] = {}
    for c in range(n_chan):
        n = sum(s["channels"][c]["n"] for s in stats)
        if n == 0:
            fg[str(c)] = {"name": channel_names.get(c, f"channel_{c}"), "n_voxels": 0}
            continue
        total = sum(s["channels"][c]["sum"] for s in stats)
        total_sq = sum(s["channels"][c]["sumsq"] for s in stats)
        mean = total / n
        var = max(total_sq / n - mean * mean, 0.0)
        sample = np.concatenate([s["channels"][c]["sample"] for s in stats]).astype(np.float64)
        p005, p50, p995 = np.percentile(sample, [0.5, 50.0, 99.5])
        fg[str(c)] = {
            "name": channel_names.get(c, f"channel_{c}"),
            "n_voxels": int(n),
            "n_sampled": int(sample.size),
            "mean": float(mean),
            "std": float(np.sqrt(var)),
            "min": float(min(s["channels"][c]["min"] for s in stats if s["channels"][c]["min"] is not None)),
            "max": float(max(s["channels"][c]["max"] for s in stats if s["channels"][c]["max"] is not None)),
            "median": float(p50),
            "percentile_00_5": float(p005),
            "percentile_99_5": float(p995),
        }
    class_counts: dict[str, int] = {}
    class_cases: dict[str, int] = {}
    for s in stats:
        for k, v in s["label_counts"].items():
            class_counts[str(k)] = class_counts.get(str(k), 0) + v
            class_cases[str(k)] = class_cases.get(str(k), 0) + (1 if v > 0 else 0)
    for k in info.labels:  # declared classes that never occur are listed with 0
        class_counts.setdefault(str(k), 0)
        class_cases.setdefault(str(k), 0)
    spacings = np.array([s["spacing"] for s in stats])
    shapes = np.array([s["shape"] for s in stats])
    orients: dict[str, int] = {}
    for s in stats:
        orients[s["orientation"]] = orients.get(s["orientation"], 0) + 1
    return {
        "dataset": str(path),
        "layout": info.layout,
        "name": info.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "num_cases": len(stats),
        "cases": [s["case"] for s in stats],
        "modality": {str(k): v for k, v in channel_names.items()},
        "labels": {str(k): v for k, v in info.labels.items()},
        "axis_order": "xyz",
        "median_spacing": [float(v) for v in np.median(spacings, axis=0)],
        "spacing_min": [float(v) for v in spacings.min(axis=0)],
        "spacing_max": [float(v) for v in spacings.max(axis=0)],
        "median_shape": [float(v) for v in np.median(shapes, axis=0)],
        "orientations": orients,
        "foreground_intensity": fg,
        "class_voxel_counts": dict(sorted(class_counts.items(), key=lambda kv: int(kv[0]))),
        "class_case_counts": dict(sorted(class_cases.items(), key=lambda kv: int(kv[0]))),
        "normalisation": {
            "nnunet_ct": {
                "lower": fg.get("0", {}).get("percentile_00_5"),
                "upper": fg.get("0", {}).get("percentile_99_5"),
                "mean": fg.get("0", {}).get("mean"),
                "std": fg.get("0", {}).get("std"),
            },
            "note": "ct_nnunet preset: clip channel 0 to [lower, upper], then (x - mean) / std",
        },
    }


def write_fingerprint(fingerprint: dict[str, Any], out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the fingerprint JSON atomically; an existing file is kept unless ``overwrite``."""
    from pipeline.utils.atomic import save_json_atomic

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists (pass --overwrite to replace it)")
    return save_json_atomic(fingerprint, out)
