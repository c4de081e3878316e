"""Published result tables (UNETR++ paper, Shaker et al., IEEE TMI 2024, arXiv 2212.04497) as data.

Each :class:`PublishedTable` holds the paper's class columns in the paper's order (label ids and short names), the
split it used, and one :class:`PublishedRow` per method with the evaluation protocol that produced the numbers.
Numbers are DSC in percent and HD95 as printed (Synapse HD95 is in **voxels** of the original grid, medpy's pooled
definition, 0 for empty masks). The benchmark report prints these rows beside ours, labelled "as published".

Sources: the tables in ``../shared/docs/unetr_pp.md`` section 9 (read from the repository's ``media/*.png``) and the
protocols in ``../shared/docs/data_and_evaluation.md`` section 8.

Examples:
    >>> from pipeline.benchmark.published import get_table
    >>> t = get_table("synapse")
    >>> [c.short for c in t.classes][:3]
    ['Spl', 'RKid', 'LKid']
    >>> t.row("UNETR++").mean_dsc
    87.22
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PAPER = "Shaker et al., UNETR++, IEEE TMI 2024 (arXiv 2212.04497 v3)"

#: descriptions of the protocols published numbers were produced with (keys used in ``PublishedRow.protocol``)
PUBLISHED_PROTOCOLS: dict[str, str] = {
    "legacy_unetrpp": "nnFormer/UNETR++ inference_synapse.py: raw Synapse ids, 8 organs; Dice 1 when both masks "
    "are empty; HD95 = medpy pooled percentile in voxels (no spacing), 0 when either mask is empty; mean over cases "
    "per organ, then over organs",
    "legacy_transunet": "TransUNet/Swin-Unet calculate_metric_percase: 2D inference at 224^2; pred>0 & GT empty -> "
    "(1, 0); missed or both empty -> (0, 0); HD95 = medpy pooled in voxels; 8 organs",
    "nnunet_summary": "nnU-Net v1 summary.json: Dice per class, NaN when both masks are empty (nan-mean), no HD95",
    "unstated": "the paper does not state how these numbers were computed (copied from other papers)",
}

#: our evaluation preset that reproduces a published protocol (None: not reproducible with our presets).
#: nnU-Net's summary.json Dice (2TP/(2TP+FP+FN), NaN when TP+FP+FN = 0, nan-mean) has exactly ``strict``'s Dice rules
#: (one-sided empty -> 0, both empty -> excluded); it reports no HD95.
COMPARABLE_PRESET: dict[str, str | None] = {
    "legacy_unetrpp": "legacy_unetrpp",
    "legacy_transunet": "legacy_transunet",
    "nnunet_summary": "strict",
    "unstated": None,
}


@dataclass(frozen=True)
class ClassColumn:
    """One class column of a published table: label id in the raw dataset, short and long names."""

    label: int
    short: str
    name: str


@dataclass(frozen=True)
class PublishedRow:
    """One method's published numbers (DSC in %, HD95 as printed, ``None`` where the paper prints '-')."""

    method: str
    dsc: Mapping[int, float] = field(default_factory=dict)  # label id -> DSC %
    mean_dsc: float | None = None
    mean_hd95: float | None = None
    params_m: float | None = None
    flops_g: float | None = None
    protocol: str = "unstated"
    note: str = ""


@dataclass(frozen=True)
class PublishedTable:
    """A paper table: class columns in the paper's order, split, units and rows."""

    key: str
    dataset: str
    classes: tuple[ClassColumn, ...]
    split: str
    hd95_unit: str | None
    source: str
    rows: tuple[PublishedRow, ...]
    note: str = ""

    @property
    def labels(self) -> list[int]:
        """Label ids in the paper's column order."""
        return [c.label for c in self.classes]

    def row(self, method: str) -> PublishedRow:
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(f"{self.key}: no published row for {method!r} (have {[r.method for r in self.rows]})")


# --- class columns in the paper's order -----------------------------------------------------------------------------
_ORGANS = {
    1: ("Spl", "spleen"),
    2: ("RKid", "right kidney"),
    3: ("LKid", "left kidney"),
    4: ("Gal", "gallbladder"),
    5: ("Eso", "esophagus"),
    6: ("Liv", "liver"),
    7: ("Sto", "stomach"),
    8: ("Aor", "aorta"),
    9: ("IVC", "inferior vena cava"),
    10: ("PSV", "portal and splenic vein"),
    11: ("Pan", "pancreas"),
    12: ("RAG", "right adrenal gland"),
    13: ("LAG", "left adrenal gland"),
}


def _cols(ids: Sequence[int]) -> tuple[ClassColumn, ...]:
    return tuple(ClassColumn(i, *_ORGANS[i]) for i in ids)


SYNAPSE_ORDER = (1, 2, 3, 4, 6, 7, 8, 11)  # Spl RKid LKid Gal Liv Sto Aor Pan (as printed in the UNETR++ table)
BTCV_ORDER = tuple(range(1, 14))


def _row(method: str, values: Sequence[float | None], order: Sequence[int], **kw: Any) -> PublishedRow:
    if len(values) != len(order):
        raise ValueError(f"{method}: {len(values)} values for {len(order)} columns")
    return PublishedRow(method, {k: v for k, v in zip(order, values) if v is not None}, **kw)


# (protocol, note) of the Synapse rows
_SYN_TU = ("legacy_transunet", "row from the TransUNet-style evaluation (2D), copied into the UNETR++ table")
_SYN_COPIED = ("unstated", "copied into the UNETR++ table from earlier papers; evaluation code not stated")
_SYN_NNFORMER = ("legacy_unetrpp", "nnFormer's inference_synapse.py, which UNETR++ reuses")
_SYN_UNETRPP = ("legacy_unetrpp", "final checkpoint; FLOPs at 64x128x128")

#: the Synapse table: method, DSC per column (SYNAPSE_ORDER), mean DSC, mean HD95, M params, GFLOPs,
#: (protocol, note); None where the paper prints '-'
_SYNAPSE_ROWS: tuple[
    tuple[str, tuple[float, ...], float, float | None, float | None, float | None, tuple[str, str]], ...
] = (
    ("U-Net", (86.67, 68.60, 77.77, 69.72, 93.43, 75.58, 89.07, 53.98), 76.85, None, None, None, _SYN_TU),
    ("TransUNet", (85.08, 77.02, 81.87, 63.16, 94.08, 75.62, 87.23, 55.86), 77.49, 31.69, 96.07, 88.91, _SYN_TU),
    ("Swin-UNet (2D)", (90.66, 79.61, 83.28, 66.53, 94.29, 76.60, 85.47, 56.58), 79.13, 21.55, None, None, _SYN_TU),
    ("UNETR", (85.00, 84.52, 85.60, 56.30, 94.57, 70.46, 89.80, 60.47), 78.35, 18.59, 92.49, 75.76, _SYN_COPIED),
    ("MISSFormer", (91.92, 82.00, 85.21, 68.65, 94.41, 80.81, 86.99, 65.67), 81.96, 18.20, None, None, _SYN_TU),
    ("Swin-UNETR", (95.37, 86.26, 86.99, 66.54, 95.72, 77.01, 91.12, 68.80), 83.48, 10.55, 62.83, 384.2, _SYN_COPIED),
    ("nnFormer", (90.51, 86.25, 86.57, 70.17, 96.84, 86.83, 92.04, 83.35), 86.57, 10.63, 150.5, 213.4, _SYN_NNFORMER),
    ("UNETR++", (95.77, 87.18, 87.54, 71.25, 96.42, 86.01, 92.52, 81.10), 87.22, 7.53, 42.96, 47.98, _SYN_UNETRPP),
)

SYNAPSE = PublishedTable(
    key="synapse",
    dataset="Synapse multi-organ CT (BTCV RawData)",
    classes=_cols(SYNAPSE_ORDER),
    split="TransUNet 18 train / 12 test (the 12 test cases also served as validation upstream)",
    hd95_unit="voxels",
    source=PAPER + ", Synapse table",
    note="8 of the 13 trained organs are evaluated; HD95 in voxels of the original grid (no spacing).",
    rows=tuple(
        _row(m, dsc, SYNAPSE_ORDER, mean_dsc=avg, mean_hd95=hd95, params_m=par, flops_g=flops, protocol=pr, note=note)
        for m, dsc, avg, hd95, par, flops, (pr, note) in _SYNAPSE_ROWS
    ),
)

_BTCV_NOTE = "Dice only, 13 organs; the paper does not state the evaluation code"
#: the BTCV table: method, DSC per column (BTCV_ORDER), printed Avg
_BTCV_ROWS: tuple[tuple[str, tuple[float, ...], float], ...] = (
    ("nnUNet", (95.95, 88.35, 93.02, 70.13, 76.72, 96.51, 86.79, 88.93, 82.89, 78.51, 79.60, 73.26, 68.35), 83.16),
    ("TransBTS", (94.55, 89.20, 90.97, 68.38, 75.61, 96.44, 83.52, 88.55, 82.48, 74.21, 76.02, 67.23, 67.03), 81.31),
    ("UNETR", (90.48, 82.51, 86.05, 58.23, 71.21, 94.64, 72.06, 86.57, 76.51, 70.37, 66.06, 66.25, 63.04), 76.00),
    ("Swin-UNETR", (94.59, 88.97, 92.39, 65.37, 75.43, 95.61, 75.57, 88.28, 81.61, 76.30, 74.52, 68.23, 66.02), 80.44),
    ("nnFormer", (94.58, 88.62, 93.68, 65.29, 76.22, 96.17, 83.59, 89.09, 80.80, 75.97, 77.87, 70.20, 66.05), 81.62),
    ("UNETR++", (94.94, 91.90, 93.62, 70.75, 77.18, 95.95, 85.15, 89.28, 83.14, 76.91, 77.42, 72.56, 68.17), 83.28),
)
BTCV = PublishedTable(
    key="btcv",
    dataset="BTCV multi-organ CT (MONAI dataset_0.json)",
    classes=_cols(BTCV_ORDER),
    split="MONAI dataset_0.json: 24 train / 6 validation",
    hd95_unit=None,
    source=PAPER + ", BTCV table",
    note="In every row the printed Avg is 0.16-0.44 points above the mean of the 13 printed organ columns; both are "
    "kept as published (the paper does not say how Avg was averaged).",
    rows=tuple(
        _row(m, dsc, BTCV_ORDER, mean_dsc=avg, protocol="unstated", note=_BTCV_NOTE) for m, dsc, avg in _BTCV_ROWS
    ),
)

_LUNG_COL = (ClassColumn(1, "Cancer", "lung cancer"),)
LUNG = PublishedTable(
    key="lung",
    dataset="MSD Task06 Lung",
    classes=_LUNG_COL,
    split="UNETR++ 50 train / 13 validation (hard-coded in the trainer)",
    hd95_unit=None,
    source=PAPER + ", MSD Lung table",
    note="UNETR++ 80.68 is the class-1 Dice of nnU-Net's summary.json, re-verified by the maintainer (issue #35).",
    rows=tuple(
        _row(m, (dsc,), (1,), mean_dsc=dsc, protocol=pr)  # one class: its Dice is the mean
        for m, dsc, pr in (
            ("nnUNet", 74.31, "unstated"),
            ("Swin-UNETR", 75.55, "unstated"),
            ("nnFormer", 77.95, "unstated"),
            ("UNETR", 73.29, "unstated"),
            ("UNETR++", 80.68, "nnunet_summary"),
        )
    ),
)

_ACDC_COLS = (
    ClassColumn(1, "RV", "right ventricle"),
    ClassColumn(2, "Myo", "myocardium"),
    ClassColumn(3, "LV", "left ventricle"),
)
ACDC = PublishedTable(
    key="acdc",
    dataset="ACDC cardiac MRI",
    classes=_ACDC_COLS,
    split="UNETR++ 160 / 40 frames",
    hd95_unit=None,
    source=PAPER + ", ACDC table",
    note="only UNETR++ prints per-class values; the other rows give the mean DSC only",
    rows=(
        PublishedRow("TransUNet", mean_dsc=89.71, protocol="unstated"),
        PublishedRow("Swin-UNet", mean_dsc=90.00, protocol="unstated"),
        PublishedRow("UNETR", mean_dsc=87.38, protocol="unstated"),
        PublishedRow("MISSFormer", mean_dsc=87.90, protocol="unstated"),
        PublishedRow("nnFormer", mean_dsc=90.50, protocol="unstated"),
        PublishedRow("UNETR++", {1: 91.47, 2: 86.47, 3: 94.25}, mean_dsc=90.73, protocol="unstated"),
    ),
)

PUBLISHED_TABLES: dict[str, PublishedTable] = {t.key: t for t in (SYNAPSE, BTCV, LUNG, ACDC)}


def get_table(key: str) -> PublishedTable:
    """Return the published table ``synapse``, ``btcv``, ``lung`` or ``acdc``."""
    try:
        return PUBLISHED_TABLES[key]
    except KeyError:
        raise KeyError(f"unknown published table {key!r}; choose from {sorted(PUBLISHED_TABLES)}") from None
