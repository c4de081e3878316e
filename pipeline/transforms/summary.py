"""Run a preprocessing preset over a few cases and summarise what it did (for ``medseg demo`` and quick looks).

Examples:
    >>> from pipeline.data.readers import read_dataset
    >>> from pipeline.transforms.summary import summarise_preprocessing, format_preprocessing_summary
    >>> items = read_dataset("../shared/data/Task04_Hippocampus").splits["training"][:3]  # doctest: +SKIP
    >>> print(format_preprocessing_summary(summarise_preprocessing(items, "mri_hippocampus")))  # doctest: +SKIP
    | case | original shape @ spacing | preprocessed shape @ spacing | intensity min..max (mean +- std) | label voxels |
    |---|---|---|---|---|
    | hippocampus_001 | 35x51x35 @ 1x1x1 | 35x51x35 @ 1x1x1 | -2.27..1.82 (4.1e-08 +- 1) | 1:1324 2:1624 |
    ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.errors import InputDataError
from pipeline.utils.tables import markdown_table


def summarise_preprocessing(
    items: Sequence[dict],
    preset: str | Mapping[str, Any],
    *,
    fingerprint: str | os.PathLike | Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Preprocess each item (image and, when present, label) and return one row per case.

    Each row holds ``case``, ``original_shape``, ``original_spacing``, ``shape``, ``spacing`` (x, y, z, mm), the
    preprocessed image's ``min``/``max``/``mean``/``std`` and the label voxel counts; a case that fails to load gets an
    ``error`` entry instead (the other cases still run).
    """
    from pipeline.data.geometry import spacing_from_affine
    from pipeline.transforms.builders import build_preprocessing

    with_label = build_preprocessing(preset, keys=("image", "label"), fingerprint=fingerprint)
    image_only = build_preprocessing(preset, keys=("image",), fingerprint=fingerprint)
    rows: list[dict[str, Any]] = []
    for it in items:
        case = str(it.get("case", it["image"]))
        try:
            pre = with_label if it.get("label") else image_only
            data = {k: it[k] for k in ("image", "label") if it.get(k)}
            out = pre(data)
        except Exception as exc:  # noqa: BLE001 - one broken case must not stop the summary
            inner: BaseException = exc
            while inner.__cause__ is not None:  # MONAI wraps the reader's error in "applying transform ..."
                inner = inner.__cause__
            reason = " ".join(str(inner).split())[:200] or type(inner).__name__
            rows.append(
                {"case": case, "error": str(InputDataError(f"preprocessing failed ({reason})", path=it["image"]))}
            )
            continue
        img = out["image"]
        arr = img.numpy()
        orig_aff = np.asarray(img.meta.get("original_affine", img.affine), dtype=np.float64)
        row = {
            "case": case,
            "original_shape": [int(s) for s in img.meta.get("spatial_shape", arr.shape[1:])],
            "original_spacing": [round(float(s), 4) for s in spacing_from_affine(orig_aff)],
            "shape": [int(s) for s in arr.shape[1:]],
            "spacing": [round(float(s), 4) for s in spacing_from_affine(np.asarray(img.affine))],
            "min": float(arr.min()),
            "max": float(arr.max()),
            "mean": float(arr.mean()),
            "std": float(arr.std()),
        }
        if "label" in out:
            values, counts = np.unique(out["label"].numpy().astype(np.int64), return_counts=True)
            row["label_counts"] = {int(v): int(c) for v, c in zip(values, counts)}
        rows.append(row)
    return rows


def format_preprocessing_summary(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`summarise_preprocessing` rows."""

    def geo(shape: list, sp: list) -> str:
        return "x".join(map(str, shape)) + " @ " + "x".join(f"{s:g}" for s in sp)

    head = [
        "case",
        "original shape @ spacing",
        "preprocessed shape @ spacing",
        "intensity min..max (mean +- std)",
        "label voxels",
    ]
    cells: list[list[str]] = []
    for r in rows:
        if "error" in r:
            cells.append([r["case"], f"FAILED: {r['error']}", "", "", ""])
            continue
        counts = " ".join(f"{k}:{v}" for k, v in sorted(r.get("label_counts", {}).items()) if k) or "-"
        original, preprocessed = geo(r["original_shape"], r["original_spacing"]), geo(r["shape"], r["spacing"])
        intensity = f"{r['min']:.3g}..{r['max']:.3g} ({r['mean']:.3g} +- {r['std']:.3g})"
        cells.append([r["case"], original, preprocessed, intensity, counts])
    return markdown_table(head, cells)
