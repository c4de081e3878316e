"""Dataset readers: detect the layout of a folder and turn it into MONAI datalists plus label names.

Supported layouts (``DatasetInfo.layout``):

- ``msd``: Medical Segmentation Decathlon ``dataset.json`` (``./`` path prefixes, plain-string test entries, the
  ``relase`` misspelling, 4D multi-modal images, labels id -> name);
- ``nnunet_v1``: MSD-style ``dataset.json`` whose images are stored as ``imagesTr/<case>_0000.nii.gz`` channel files;
- ``btcv``: MONAI's BTCV ``dataset_0.json`` (``training`` / ``validation`` / ``test`` keys, paths relative to the JSON);
- ``nnunet_v2``: ``dataset.json`` with ``channel_names``, labels name -> int and ``file_ending``;
  images ``imagesTr/<case>_0000<file_ending>``;
- ``synapse_raw``: Synapse ``RawData/Training/img/img0001.nii.gz`` + ``label/label0001.nii.gz`` (+ ``Testing/img``),
  split with the official 18/12 split in ``data/synapse_split.json``;
- ``transunet``: TransUNet's preprocessed Synapse, ``train_npz/case0005_slice000.npz`` and
  ``test_vol_h5/case0001.npy.h5`` (arrays in (z, y, x) order: ``DatasetInfo.axis_order == "zyx"``);
- ``folder``: a plain folder (``imagesTr``/``labelsTr`` pairs matched by name, or images only), a single file, or
  DICOM series folders (inference inputs).

Every item of a datalist is ``{"image": str | list[str], "label": str (when labelled), "case": str}``; multi-channel
nnU-Net cases list their channel files in ``image`` (``LoadImaged`` stacks them as channels).

Examples:
    >>> from pipeline.data.readers import read_dataset
    >>> info = read_dataset("../shared/data/Task04_Hippocampus")  # doctest: +SKIP
    >>> info.layout, info.labels, len(info.splits["training"])  # doctest: +SKIP
    ('msd', {0: 'background', 1: 'Anterior', 2: 'Posterior'}, 200)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data.naming import case_name, image_suffix, pair_labels
from pipeline.errors import InputDataError, UsageError
from pipeline.paths import SPLITS_DIR

#: official split files shipped in the project's data/ folder, by short name
SPLIT_FILES = {"synapse": "synapse_split.json", "btcv": "btcv_split.json", "lung": "lung_split.json"}

#: BTCV / Synapse raw label ids (the Synapse wiki ids)
BTCV_LABELS = {
    0: "background",
    1: "spleen",
    2: "right_kidney",
    3: "left_kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior_vena_cava",
    10: "portal_and_splenic_vein",
    11: "pancreas",
    12: "right_adrenal_gland",
    13: "left_adrenal_gland",
}


@dataclass
class DatasetInfo:
    """What a reader found in a dataset folder.

    Attributes:
        layout: one of ``msd``, ``nnunet_v1``, ``nnunet_v2``, ``btcv``, ``synapse_raw``, ``transunet``, ``folder``.
        root: the dataset folder (or the file, for a single input).
        labels: label id -> name, background included (empty when unknown).
        splits: split name -> MONAI datalist (``[{"image": ..., "label": ..., "case": ...}]``).
        modality: the first channel's modality (``"CT"``, ``"MRI"``...) or ``""`` when not declared.
        channels: channel index -> modality name.
        axis_order: array axis order of the stored files: ``"xyz"`` (NIfTI/NRRD/DICOM read by our readers) or
            ``"zyx"`` (TransUNet h5/npz arrays).
        name: the dataset's declared name (or the folder name).
        metadata: the raw dataset JSON (if any).
        missing: for an applied split file, split -> case ids listed in it but not present in the folder.
    """

    layout: str
    root: Path
    labels: dict[int, str] = field(default_factory=dict)
    splits: dict[str, list[dict]] = field(default_factory=dict)
    modality: str = ""
    channels: dict[int, str] = field(default_factory=dict)
    axis_order: str = "xyz"
    name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)

    @property
    def label_ids(self) -> set[int]:
        """The declared label values (background included)."""
        return set(self.labels)

    def all_items(self) -> list[dict]:
        """Every item once (a case listed in two splits is returned once), in split order."""
        seen, out = set(), []
        for items in self.splits.values():
            for it in items:
                key = (str(it["image"]), it.get("case"))
                if key not in seen:
                    seen.add(key)
                    out.append(it)
        return out

    def labelled_items(self) -> list[dict]:
        """Every item that has a label."""
        return [it for it in self.all_items() if it.get("label")]


# ------------------------------------------------------------------------------------------------------------ helpers
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputDataError("file not found", path=path) from None
    except (OSError, ValueError) as exc:
        raise InputDataError(f"unreadable JSON ({' '.join(str(exc).split())})", path=path) from exc
    if not isinstance(data, dict):
        raise InputDataError("expected a JSON object at the top level", path=path)
    return data


def _resolve(root: Path, rel: str) -> Path:
    rel = str(rel)
    while rel.startswith("./"):
        rel = rel[2:]
    p = Path(rel)
    return p if p.is_absolute() else root / p


def _int_labels(labels: dict, path: Path) -> dict[int, str]:
    """MSD/BTCV labels ``{"0": "background"}`` (id -> name) or nnU-Net v2 ``{"background": 0}`` (name -> int)."""
    out: dict[int, str] = {}
    for k, v in labels.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):  # nnU-Net v2: name -> int
            out[int(v)] = str(k)
        elif isinstance(v, (list, tuple)):  # nnU-Net v2 region-based labels: name -> [ids]
            raise InputDataError(f"region-based label {k!r} -> {v} is not supported (give one id per class)", path=path)
        else:
            try:
                out[int(k)] = str(v)
            except ValueError:
                raise InputDataError(f"label key {k!r} is not an integer id", path=path) from None
    return dict(sorted(out.items()))


def _channels(meta: dict) -> dict[int, str]:
    chans = meta.get("modality") or meta.get("channel_names") or {}
    if isinstance(chans, dict):
        try:
            return {int(k): str(v) for k, v in sorted(chans.items(), key=lambda kv: int(kv[0]))}
        except ValueError:
            return {}
    return {}


def case_number(case: str) -> int | None:
    """The trailing integer of a case name (``img0001`` -> 1, ``lung_058`` -> 58, ``case0005_slice003`` -> 5)."""
    m = re.match(r"^case(\d+)_slice\d+$", case)
    if m:
        return int(m.group(1))
    m = re.search(r"(\d+)$", case)
    return int(m.group(1)) if m else None


def _nnunet_channel_files(folder: Path, case: str, ending: str) -> list[Path]:
    files = sorted(folder.glob(f"{glob_escape(case)}_[0-9][0-9][0-9][0-9]{ending}"))
    return files


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


# ------------------------------------------------------------------------------------------------------------ layouts
def detect_layout(path: str | os.PathLike) -> str:
    """Return the layout name of ``path`` (see the module docstring); raises InputDataError when nothing fits."""
    p = Path(path)
    if not p.exists():
        raise InputDataError("dataset path not found", path=p)
    if p.is_file():
        if p.suffix == ".json":
            return "btcv" if p.name.startswith("dataset_") else _json_layout(p)
        return "folder"
    if (p / "dataset.json").is_file():
        return _json_layout(p / "dataset.json")
    if sorted(p.glob("dataset_*.json")):
        return "btcv"
    if (p / "train_npz").is_dir() or (p / "test_vol_h5").is_dir():
        return "transunet"
    for cand in (p, p / "RawData"):
        if (cand / "Training" / "img").is_dir():
            return "synapse_raw"
    if p.name == "Training" and (p / "img").is_dir():
        return "synapse_raw"
    return "folder"


def _json_layout(json_path: Path) -> str:
    meta = _read_json(json_path)
    if "channel_names" in meta or "file_ending" in meta:
        return "nnunet_v2"
    root = json_path.parent
    for item in meta.get("training", [])[:1]:
        if isinstance(item, dict) and "image" in item:
            img = _resolve(root, item["image"])
            if not img.exists():
                stem = case_name(img)
                if _nnunet_channel_files(img.parent, stem, ".nii.gz"):
                    return "nnunet_v1"
    return "msd"


def _msd_items(root: Path, entries: list, *, key: str, path: Path, nnunet_v1: bool = False) -> list[dict]:
    items = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):  # MSD/BTCV test entries are plain strings
            entry = {"image": entry}
        if not isinstance(entry, dict) or "image" not in entry:
            raise InputDataError(f"{key}[{i}] has no 'image' entry", path=path)
        item = dict(entry)
        img = _resolve(root, entry["image"])
        item["case"] = case_name(img)
        if nnunet_v1 and not img.exists():
            chans = _nnunet_channel_files(img.parent, item["case"], ".nii.gz")
            item["image"] = [str(c) for c in chans] if len(chans) > 1 else str(chans[0]) if chans else str(img)
        else:
            item["image"] = str(img)
        if entry.get("label"):
            item["label"] = str(_resolve(root, entry["label"]))
        items.append(item)
    return items


def _folds(items: list[dict]) -> dict[str, list[dict]]:
    folds: dict[str, list[dict]] = {}
    for it in items:
        if "fold" in it:
            folds.setdefault(f"fold{int(it['fold'])}", []).append(it)
    return dict(sorted(folds.items()))


def _json_dataset(
    layout: str,
    root: Path,
    splits: dict[str, list[dict]],
    meta: dict,
    json_path: Path,
    *,
    default_labels: dict[int, str] | None = None,
    default_modality: str = "",
) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset described by a JSON file (``meta``, read from ``json_path``): labels,
    channels and name come from it; ``default_labels`` / ``default_modality`` stand in where it declares none."""
    chans = _channels(meta)
    return DatasetInfo(
        layout=layout,
        root=root,
        labels=_int_labels(meta.get("labels", {}), json_path) or dict(default_labels or {}),
        splits=splits,
        modality=chans.get(0, default_modality),
        channels=chans or ({0: default_modality} if default_modality else {}),
        name=str(meta.get("name", root.name)),
        metadata=meta,
    )


def read_msd(path: str | os.PathLike) -> DatasetInfo:
    """Read an MSD (or nnU-Net v1) ``dataset.json`` folder: splits ``training`` and ``test`` (if listed)."""
    p = Path(path)
    json_path = p if p.is_file() else p / "dataset.json"
    root = json_path.parent
    meta = _read_json(json_path)
    layout = _json_layout(json_path)
    if "training" not in meta:
        raise InputDataError("no 'training' list", path=json_path)
    splits = {
        "training": _msd_items(root, meta["training"], key="training", path=json_path, nnunet_v1=layout == "nnunet_v1")
    }
    if meta.get("test"):
        splits["test"] = _msd_items(root, meta["test"], key="test", path=json_path, nnunet_v1=layout == "nnunet_v1")
    splits.update(_folds(splits["training"]))
    return _json_dataset(layout, root, splits, meta, json_path)


def read_btcv(path: str | os.PathLike) -> DatasetInfo:
    """Read MONAI's BTCV ``dataset_0.json`` (or another ``dataset_*.json``): ``training``/``validation``/``test``."""
    p = Path(path)
    if p.is_dir():
        cands = sorted(p.glob("dataset_*.json"))
        if not cands:
            raise InputDataError("no dataset_*.json", path=p)
        p = cands[0]
    root = p.parent
    meta = _read_json(p)
    splits = {}
    for key in ("training", "validation", "test"):
        if meta.get(key):
            splits[key] = _msd_items(root, meta[key], key=key, path=p)
    if "training" in splits:
        splits.update(_folds(splits["training"]))
    return _json_dataset("btcv", root, splits, meta, p, default_labels=BTCV_LABELS, default_modality="CT")


def read_nnunet_v2(path: str | os.PathLike) -> DatasetInfo:
    """Read an nnU-Net v2 raw dataset (``imagesTr/<case>_XXXX<ending>``, ``labelsTr/<case><ending>``)."""
    p = Path(path)
    root = p.parent if p.is_file() else p
    json_path = root / "dataset.json"
    meta = _read_json(json_path)
    ending = str(meta.get("file_ending", ".nii.gz"))
    chans = _channels(meta)
    n_chan = max(len(chans), 1)
    splits: dict[str, list[dict]] = {}
    for split, img_dir, lab_dir in (("training", "imagesTr", "labelsTr"), ("test", "imagesTs", None)):
        folder = root / img_dir
        if not folder.is_dir():
            continue
        cases = sorted({f.name[: -len(ending) - 5] for f in folder.glob(f"*_[0-9][0-9][0-9][0-9]{ending}")})
        if lab_dir:  # a labelled case with all channel files missing must still be listed (check reports it)
            cases = sorted(set(cases) | {f.name[: -len(ending)] for f in (root / lab_dir).glob(f"*{ending}")})
        items = []
        for case in cases:
            files = [folder / f"{case}_{c:04d}{ending}" for c in range(n_chan)]
            item = {"image": str(files[0]) if n_chan == 1 else [str(f) for f in files], "case": case}
            if lab_dir:
                item["label"] = str(root / lab_dir / f"{case}{ending}")
            items.append(item)
        if items:
            splits[split] = items
    if "training" not in splits:
        raise InputDataError("no imagesTr/<case>_0000 files", path=root)
    return _json_dataset("nnunet_v2", root, splits, meta, json_path)


def read_synapse_raw(path: str | os.PathLike) -> DatasetInfo:
    """Read Synapse ``RawData``: all labelled cases in ``all``, plus the official 18/12 ``train``/``test`` split
    (cases of the split that are absent are listed in ``DatasetInfo.missing``) and ``unlabelled`` Testing images."""
    p = Path(path)
    if (p / "RawData").is_dir():
        p = p / "RawData"
    training = p if p.name == "Training" else p / "Training"
    raw_root = training.parent
    items = []
    for img in sorted((training / "img").glob("img*.nii*")):
        case = case_name(img)
        num = case[3:]
        lab = next(
            (
                c
                for c in (training / "label" / f"label{num}.nii.gz", training / "label" / f"label{num}.nii")
                if c.exists()
            ),
            training / "label" / f"label{num}.nii.gz",
        )
        items.append({"image": str(img), "label": str(lab), "case": case})
    for lab in sorted((training / "label").glob("label*.nii*")):  # labels whose image is missing
        num = case_name(lab)[5:]
        if not any(it["case"] == f"img{num}" for it in items):
            items.append({"image": str(training / "img" / f"img{num}.nii.gz"), "label": str(lab), "case": f"img{num}"})
    if not items:
        raise InputDataError("no Training/img/img*.nii.gz files", path=training)
    info = DatasetInfo(
        layout="synapse_raw",
        root=raw_root,
        labels=dict(BTCV_LABELS),
        splits={"all": items},
        modality="CT",
        channels={0: "CT"},
        name="Synapse",
    )
    apply_split_file(info, "synapse", keep_existing=True)
    test_dir = raw_root / "Testing" / "img"
    if test_dir.is_dir():
        unl = [{"image": str(f), "case": case_name(f)} for f in sorted(test_dir.glob("img*.nii*"))]
        if unl:
            info.splits["unlabelled"] = unl
    return info


def read_transunet(path: str | os.PathLike) -> DatasetInfo:
    """Read TransUNet's preprocessed Synapse: ``train`` (npz slices) and ``test`` (h5 volumes), arrays in (z, y, x).

    Label ids are TransUNet's 0..8, whose organ mapping is disputed: derive it with
    :func:`pipeline.data.label_map.derive_label_map` (``medseg datasets derive-label-map``). If the folder holds a
    ``label_map.json`` written by that tool, its names are used; otherwise the labels are named ``class_1``...
    """
    root = Path(path)
    splits: dict[str, list[dict]] = {}
    train = sorted((root / "train_npz").glob("*.npz"))
    if train:
        splits["train"] = [{"image": str(f), "label": str(f), "case": f.stem} for f in train]
    test = sorted((root / "test_vol_h5").glob("*.npy.h5")) or sorted((root / "test_vol_h5").glob("*.h5"))
    if test:
        splits["test"] = [{"image": str(f), "label": str(f), "case": f.name.split(".")[0]} for f in test]
    if not splits:
        raise InputDataError("no train_npz/*.npz or test_vol_h5/*.npy.h5 files", path=root)
    labels = {0: "background", **{i: f"class_{i}" for i in range(1, 9)}}
    map_file = root / "label_map.json"
    if map_file.is_file():
        mapping = _read_json(map_file).get("mapping", {})
        for k, v in mapping.items():
            labels[int(k)] = str(v.get("name", labels.get(int(k))))
    return DatasetInfo(
        layout="transunet",
        root=root,
        labels=labels,
        splits=splits,
        modality="CT",
        channels={0: "CT"},
        axis_order="zyx",
        name="Synapse (TransUNet preprocessed)",
    )


def read_folder(path: str | os.PathLike, *, report_problems: bool = False) -> DatasetInfo:
    """A folder with ``imagesTr``/``labelsTr`` (pairs matched by case name) and/or ``imagesTs``, or a folder/file of
    images (inference inputs: split ``test``, no labels; images and labels paired by their role words, see
    :func:`pipeline.data.naming.pair_labels`, go to split ``labelled``).

    ``report_problems``: two files for one case name become items with an ``"error"`` entry instead of an
    InputDataError (see :func:`pipeline.data.inputs.list_inference_inputs`); ``datasets check`` reports them per case.
    """
    from pipeline.data.inputs import list_inference_inputs

    p = Path(path)
    splits: dict[str, list[dict]] = {}
    if p.is_dir() and (p / "imagesTr").is_dir():
        images = list_inference_inputs(p / "imagesTr", report_problems=report_problems)
        lab_dir = p / "labelsTr"
        labels_by_case = {}
        if lab_dir.is_dir():
            labels_by_case = {case_name(f): f for f in lab_dir.iterdir() if image_suffix(f) is not None}
        items = []
        for it in images:
            item = dict(it)
            if it["case"] in labels_by_case:
                item["label"] = str(labels_by_case[it["case"]])
            elif lab_dir.is_dir():
                item["label"] = str(lab_dir / Path(it["image"]).name)  # expected name; check reports it missing
            items.append(item)
        splits["training"] = items
        if (p / "imagesTs").is_dir():
            splits["test"] = list_inference_inputs(p / "imagesTs", report_problems=report_problems)
    else:
        labelled, unlabelled = pair_labels(list_inference_inputs(p, report_problems=report_problems))
        if labelled:
            splits["labelled"] = labelled
        if unlabelled:
            splits["test"] = unlabelled
    return DatasetInfo(layout="folder", root=p, splits=splits, name=p.name)


_READERS = {
    "msd": read_msd,
    "nnunet_v1": read_msd,
    "btcv": read_btcv,
    "nnunet_v2": read_nnunet_v2,
    "synapse_raw": read_synapse_raw,
    "transunet": read_transunet,
    "folder": read_folder,
}


# ------------------------------------------------------------------------------------------------------------ splits
def load_split_file(split: str | os.PathLike) -> dict:
    """Load an official split file: a short name (``synapse``, ``btcv``, ``lung``), a file in ``data/``, or a path."""
    s = str(split)
    cands = [Path(s)]
    if s in SPLIT_FILES:
        cands.insert(0, SPLITS_DIR / SPLIT_FILES[s])
    cands += [SPLITS_DIR / s, SPLITS_DIR / f"{s}.json", SPLITS_DIR / f"{s}_split.json"]
    for c in cands:
        if c.is_file():
            data = _read_json(c)
            if not isinstance(data.get("splits"), dict):
                raise InputDataError("split file has no 'splits' object", path=c)
            return data
    raise UsageError(
        f"unknown split {s!r}: not a split of the dataset, not one of {sorted(SPLIT_FILES)}, and not a split JSON file"
    )


def apply_split_file(info: DatasetInfo, split: str | os.PathLike, *, keep_existing: bool = False) -> DatasetInfo:
    """Regroup ``info``'s labelled cases by an official split file, matching case numbers (``img0005`` = ``0005``).

    Cases named in the file but absent from the folder are listed in ``info.missing`` (not an error: sample folders
    hold a few cases only).
    """
    data = load_split_file(split)
    by_num: dict[int, list[dict]] = {}
    for it in info.labelled_items() or info.all_items():
        num = case_number(str(it.get("case", "")))
        if num is not None:
            by_num.setdefault(num, []).append(it)
    new: dict[str, list[dict]] = {}
    for name, ids in data["splits"].items():
        new[name], info.missing[name] = [], []
        for cid in ids:
            num = case_number(str(cid))
            if num in by_num:
                new[name].extend(by_num[num])
            else:
                info.missing[name].append(str(cid))
    assigned = {id(it) for items in new.values() for it in items}
    info.metadata["not_in_split_file"] = sorted(
        str(it.get("case")) for its in by_num.values() for it in its if id(it) not in assigned
    )
    info.splits = {**info.splits, **new} if keep_existing else new
    info.metadata.setdefault("split_file", data.get("name", str(split)))
    return info


def read_dataset(path: str | os.PathLike, split: str | None = None, *, report_problems: bool = False) -> DatasetInfo:
    """Detect the layout of ``path`` and read it.

    Args:
        path: a dataset folder (or its ``dataset.json`` / ``dataset_0.json``, or an image file/DICOM folder).
        split: None for the layout's own splits; the name of one of them (e.g. ``"validation"``) to keep only that
            one; or an official split file (``synapse``, ``btcv``, ``lung``, a file in ``data/`` or a path) to regroup
            the labelled cases by case number.
        report_problems: for a plain folder, two image files for one case name become items with an ``"error"``
            entry (reported per case by ``datasets check``) instead of an InputDataError.

    Raises:
        InputDataError: missing folder, unreadable JSON, unknown layout content.
        UsageError: unknown split name.

    Examples:
        >>> info = read_dataset("../shared/data/BTCV_like", split="validation")  # doctest: +SKIP
        >>> [it["case"] for it in info.splits["validation"]]  # doctest: +SKIP
        ['img0002']
    """
    layout = detect_layout(path)
    info = read_folder(path, report_problems=report_problems) if layout == "folder" else _READERS[layout](path)
    if split is not None:
        if split in info.splits:
            info.splits = {split: info.splits[split]}
        else:
            apply_split_file(info, split)
    return info


def fold_split(items: list[dict], fold: int) -> tuple[list[dict], list[dict]]:
    """Cross-validation by the datalists' ``fold`` key: (items whose fold != ``fold``, items whose fold == ``fold``)."""
    if not any("fold" in it for it in items):
        raise UsageError("the datalist has no 'fold' keys")
    train = [it for it in items if int(it.get("fold", -1)) != int(fold)]
    val = [it for it in items if int(it.get("fold", -1)) == int(fold)]
    if not val:
        raise UsageError(f"no item has fold {fold}")
    return train, val


__all__ = [
    "BTCV_LABELS",
    "DatasetInfo",
    "apply_split_file",
    "case_number",
    "detect_layout",
    "fold_split",
    "load_split_file",
    "read_btcv",
    "read_dataset",
    "read_folder",
    "read_msd",
    "read_nnunet_v2",
    "read_synapse_raw",
    "read_transunet",
]
