"""TransUNet's preprocessed Synapse data (``train_npz/*.npz`` slices, ``test_vol_h5/*.npy.h5`` volumes) and the tool
that derives its disputed label-id mapping by cross-tabulating against the RawData labels.

Facts (``../shared/docs/data_and_evaluation.md`` section 2): images are HU clipped to [-125, 275] and scaled to
[0, 1]; h5 volumes are (D, H, W) = the nibabel (x, y, z) array transposed by (2, 1, 0); labels are 0..8 and three
different organ orders circulate, so the mapping is derived from data, never hard-coded.

Examples:
    >>> from pipeline.data.transunet import derive_label_map
    >>> result = derive_label_map("data/Synapse", "RawData")  # doctest: +SKIP
    >>> result["mapping"]["5"]["name"]  # doctest: +SKIP
    'liver'
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, cast

import numpy as np

from pipeline.errors import InputDataError

#: TransUNet's HU window
TRANSUNET_HU_WINDOW = (-125.0, 275.0)
#: number of TransUNet classes (background + 8 organs)
TRANSUNET_NUM_CLASSES = 9


def load_npz_slice(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(image, label)`` of one ``train_npz`` slice, each (H, W)."""
    p = Path(path)
    try:
        with np.load(p) as data:
            return np.asarray(data["image"]), np.asarray(data["label"])
    except FileNotFoundError:
        raise InputDataError("file not found", path=p) from None
    except KeyError as exc:
        raise InputDataError(f"npz has no {exc} array (expected 'image' and 'label')", path=p) from None
    except Exception as exc:  # zip/pickle errors for corrupt files
        raise InputDataError(f"unreadable npz ({type(exc).__name__}: {exc})", path=p) from exc


def load_h5_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(image, label)`` of one ``test_vol_h5`` case, each (D, H, W) = (z, y, x)."""
    import h5py

    p = Path(path)
    if not p.exists():
        raise InputDataError("file not found", path=p)
    try:
        with h5py.File(p, "r") as f:
            return np.asarray(f["image"][:]), np.asarray(f["label"][:])
    except KeyError as exc:
        raise InputDataError(f"h5 has no {exc} dataset (expected 'image' and 'label')", path=p) from None
    except Exception as exc:
        raise InputDataError(f"unreadable h5 ({type(exc).__name__}: {exc})", path=p) from exc


def load_transunet_item(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load an npz slice or an h5 volume by its suffix."""
    return load_npz_slice(path) if str(path).endswith(".npz") else load_h5_volume(path)


def zyx_to_xyz(array: np.ndarray) -> np.ndarray:
    """TransUNet/nnU-Net (z, y, x) array -> MONAI/nibabel (x, y, z) (the inverse of SAMed's transpose(2, 1, 0))."""
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0)))


# ------------------------------------------------------------------------------------------------------ label mapping
def _contingency(tu: np.ndarray, raw: np.ndarray, n_raw: int) -> np.ndarray:
    tu = tu.astype(np.int64, copy=False).ravel()
    raw = raw.astype(np.int64, copy=False).ravel()
    if tu.min(initial=0) < 0 or raw.min(initial=0) < 0:
        raise InputDataError("negative label values")
    n_tu = max(TRANSUNET_NUM_CLASSES, int(tu.max(initial=0)) + 1)
    n_raw = max(n_raw, int(raw.max(initial=0)) + 1)
    return np.bincount(tu * n_raw + raw, minlength=n_tu * n_raw).reshape(n_tu, n_raw)


def _variants(tu_shape: tuple[int, ...], raw_shape: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(permutation of the raw (x, y, z) axes, flipped axes) candidates that give the TransUNet array's shape;
    SAMed's documented (2, 1, 0) comes first."""
    perms = [(2, 1, 0)] + [p for p in itertools.permutations(range(3)) if p != (2, 1, 0)]
    out = []
    for perm in perms:
        if tuple(raw_shape[i] for i in perm) != tuple(tu_shape):
            continue
        for flips in itertools.chain.from_iterable(itertools.combinations(range(3), k) for k in range(4)):
            out.append((perm, flips))
    return out


def _apply(raw: np.ndarray, perm: tuple[int, ...], flips: tuple[int, ...]) -> np.ndarray:
    out = np.transpose(raw, perm)
    return np.flip(out, axis=flips) if flips else out


def _agreement(table: np.ndarray) -> float:
    """Fraction of foreground TransUNet voxels that fall on their row's most common raw FOREGROUND id (a misaligned
    pair puts organs on raw background, which must score low, not high)."""
    total = table[1:].sum()
    return float(table[1:, 1:].max(axis=1).sum() / total) if total and table.shape[1] > 1 else 0.0


def derive_label_map(
    transunet_dir: str | os.PathLike,
    rawdata_dir: str | os.PathLike,
    *,
    cases: list[str] | None = None,
) -> dict[str, Any]:
    """Derive TransUNet's label ids from data: cross-tabulate each ``test_vol_h5/caseXXXX.npy.h5`` label against
    ``RawData/Training/label/labelXXXX.nii.gz`` of the same case.

    The raw (x, y, z) label is brought to the h5's (z, y, x) layout with SAMed's transpose (2, 1, 0); if that does not
    fit, every axis permutation/flip whose shape matches is tried on the first case and the best one is used for all.

    Args:
        transunet_dir: the folder holding ``test_vol_h5/``.
        rawdata_dir: Synapse ``RawData`` (or its ``Training`` folder, or a folder with ``Training/label``).
        cases: restrict to these case ids (``"0001"``, ``"case0001"``); default every h5 case with a raw label.

    Returns:
        a JSON-ready dict: ``mapping`` (TransUNet id -> raw id, organ name, agreement, voxels), ``raw_to_transunet``,
        the summed 9 x 14 ``contingency`` table (rows TransUNet 0..8, columns raw 0..13), per-case tables, and the
        axis transform used.

    Raises:
        InputDataError: no h5 volumes, no matching raw labels, or a shape that no axis permutation explains.
    """
    import nibabel as nib

    from pipeline.data.readers import BTCV_LABELS, case_number

    tu_root, raw_root = Path(transunet_dir), Path(rawdata_dir)
    h5_dir = tu_root / "test_vol_h5" if (tu_root / "test_vol_h5").is_dir() else tu_root
    h5_files = sorted(h5_dir.glob("*.h5"))
    if not h5_files:
        raise InputDataError("no test_vol_h5/*.npy.h5 volumes", path=h5_dir)
    label_dir = next(
        (
            d
            for d in (
                raw_root / "Training" / "label",
                raw_root / "RawData" / "Training" / "label",
                raw_root / "label",
                raw_root,
            )
            if d.is_dir() and list(d.glob("label*.nii*"))
        ),
        None,
    )
    if label_dir is None:
        raise InputDataError("no Training/label/label*.nii.gz files", path=raw_root)
    raw_by_num = {case_number(f.name.split(".")[0]): f for f in label_dir.glob("label*.nii*")}
    wanted = None if cases is None else {case_number(str(c)) for c in cases}
    n_raw = len(BTCV_LABELS)
    total = None
    per_case: dict[str, Any] = {}
    variant: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    skipped = []
    for h5 in h5_files:
        num = case_number(h5.name.split(".")[0])
        if wanted is not None and num not in wanted:
            continue
        if num not in raw_by_num:
            skipped.append(h5.name)
            continue
        _, tu_label = load_h5_volume(h5)
        try:
            raw = np.asarray(cast(nib.Nifti1Image, nib.load(str(raw_by_num[num]))).dataobj)
        except Exception as exc:
            raise InputDataError(f"unreadable label ({exc})", path=raw_by_num[num]) from exc
        raw = np.round(raw).astype(np.int64)
        if variant is None:
            cands = _variants(tuple(tu_label.shape), tuple(raw.shape))
            if not cands:
                raise InputDataError(
                    f"h5 label shape {list(tu_label.shape)} fits no axis order of the raw label "
                    f"{list(raw.shape)} ({raw_by_num[num].name})",
                    path=h5,
                )
            sub = tuple(slice(None, None, 2) for _ in range(3))
            scores = [
                (_agreement(_contingency(tu_label[sub], np.ascontiguousarray(_apply(raw, *v))[sub], n_raw)), i)
                for i, v in enumerate(cands)
            ]
            variant = cands[max(scores, key=lambda s: (s[0], -s[1]))[1]]
        aligned = _apply(raw, *variant)
        if aligned.shape != tu_label.shape:
            raise InputDataError(
                f"h5 label shape {list(tu_label.shape)} != transformed raw label {list(aligned.shape)}", path=h5
            )
        table = _contingency(tu_label, np.ascontiguousarray(aligned), n_raw)
        per_case[h5.name.split(".")[0]] = {
            "raw_label": str(raw_by_num[num]),
            "agreement": round(_agreement(table), 6),
            "contingency": table.tolist(),
        }
        if total is None:
            total = table
        else:
            rows, cols = max(total.shape[0], table.shape[0]), max(total.shape[1], table.shape[1])
            grown = np.zeros((rows, cols), dtype=np.int64)
            grown[: total.shape[0], : total.shape[1]] += total
            grown[: table.shape[0], : table.shape[1]] += table
            total = grown
    if total is None or variant is None:  # (both are set by the first matching case)
        raise InputDataError(f"no h5 case has a matching raw label in {label_dir}", path=h5_dir)
    mapping: dict[str, Any] = {}
    for k in range(1, total.shape[0]):
        row = total[k]
        if row.sum() == 0:
            mapping[str(k)] = {"raw_id": None, "name": None, "agreement": None, "voxels": 0}
            continue
        j = 1 + int(row[1:].argmax())  # an organ maps to a raw organ id; background overlap lowers the agreement
        mapping[str(k)] = {
            "raw_id": j,
            "name": BTCV_LABELS.get(j, f"raw_{j}"),
            "agreement": round(float(row[j] / row.sum()), 6),
            "voxels": int(row.sum()),
        }
    raw_to_tu = {}
    for j in range(total.shape[1]):
        col = total[:, j]
        raw_to_tu[str(j)] = int(col.argmax()) if col.sum() else None
    perm, flips = variant
    return {
        "tool": "medseg datasets derive-label-map",
        "transunet_dir": str(tu_root),
        "rawdata_dir": str(raw_root),
        "cases": sorted(per_case),
        "skipped_without_raw_label": skipped,
        "axis_transform": {
            "raw_xyz_transpose": list(perm),
            "flip_axes_after_transpose": list(flips),
            "note": "applied to the nibabel (x, y, z) raw label to match the h5 (z, y, x) array",
        },
        "overall_agreement": round(_agreement(total), 6),
        "mapping": mapping,
        "raw_to_transunet": raw_to_tu,
        "contingency": {"rows": "TransUNet label 0..8", "columns": "raw Synapse label 0..13", "counts": total.tolist()},
        "per_case": per_case,
    }
