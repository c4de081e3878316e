"""Named class sets: which label ids are scored, under which names, in which (paper) column order.

* ``synapse8``: the 8 organs of the Synapse protocol (TransUNet, nnFormer, UNETR++) in raw Synapse/BTCV ids and in
  the UNETR++/nnFormer table column order (spleen, right kidney, left kidney, gallbladder, liver, stomach, aorta,
  pancreas), the same order ``medseg benchmark`` prints beside the published rows. (TransUNet's paper lists them
  alphabetically; the ids, not the order, are what the protocols share.)
* ``btcv13``: all 13 BTCV organs, ids 1..13.
* a ``dataset.json`` / ``dataset_0.json`` path: its ``labels`` map (MSD ``id -> name`` or nnU-Net v2
  ``name -> id``), background (0) left out.
* a comma list of ids, e.g. ``"1,2"``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.readers import BTCV_LABELS
from pipeline.errors import InputDataError, UsageError

__all__ = ["ClassSet", "CLASS_SETS", "resolve_classes"]


@dataclass(frozen=True)
class ClassSet:
    """An ordered set of label ids to score.

    Attributes:
        name: how reports name the set (``synapse8``, ``btcv13``, a file name, ``ids``).
        labels: ``{id: name}`` in report column order.
        description: one line for the report header.

    Examples:
        >>> resolve_classes("synapse8").ids[:3]
        (1, 2, 3)
        >>> resolve_classes("1,3").labels
        {1: 'class_1', 3: 'class_3'}
    """

    name: str
    labels: dict[int, str] = field(default_factory=dict)
    description: str = ""

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(self.labels)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "labels": {str(k): v for k, v in self.labels.items()},
        }


#: report names of the BTCV organs by raw id: the dataset's names (:data:`pipeline.data.readers.BTCV_LABELS`), five
#: of them spelled side last
_BTCV_NAMES = {
    **BTCV_LABELS,
    2: "kidney_right",
    3: "kidney_left",
    10: "portal_splenic_vein",
    12: "adrenal_right",
    13: "adrenal_left",
}
SYNAPSE8 = ClassSet(
    "synapse8",
    {i: _BTCV_NAMES[i] for i in (1, 2, 3, 4, 6, 7, 8, 11)},
    "the 8 Synapse organs in raw Synapse/BTCV ids, UNETR++ table column order",
)
BTCV13 = ClassSet("btcv13", {i: _BTCV_NAMES[i] for i in range(1, 14)}, "all 13 BTCV organs, ids 1..13")

#: the built-in class sets by name
CLASS_SETS: dict[str, ClassSet] = {c.name: c for c in (SYNAPSE8, BTCV13)}


def _from_dataset_json(path: Path) -> ClassSet:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputDataError(f"cannot read the class list: {exc}", path=path) from exc
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise InputDataError("has no 'labels' map to take the classes from", path=path)
    out: dict[int, str] = {}
    for key, value in labels.items():
        # MSD / MONAI: {"1": "spleen"}; nnU-Net v2: {"spleen": 1} (region lists are not supported)
        if str(key).lstrip("-").isdigit():
            idx, name = int(key), str(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            idx, name = value, str(key)
        else:
            raise InputDataError(f"label entry {key!r}: {value!r} is neither 'id: name' nor 'name: id'", path=path)
        if idx != 0:
            out[idx] = name
    if not out:
        raise InputDataError("'labels' holds only the background", path=path)
    return ClassSet(path.name, dict(sorted(out.items())), f"labels of {path}")


def resolve_classes(spec: str | Path | ClassSet | Mapping[int, str] | Sequence[int] | None) -> ClassSet:
    """Turn a class specification into a :class:`ClassSet`.

    Args:
        spec: a :class:`ClassSet`; a built-in name (``synapse8``, ``btcv13``); a path to a ``dataset.json``; a comma
            list of ids (``"1,2,3"``); a ``{id: name}`` mapping; or a sequence of ids.

    Raises:
        UsageError: for an unknown name or a malformed id list.
        InputDataError: for an unreadable dataset.json.
    """
    if spec is None:
        raise UsageError("no classes given: pass synapse8, btcv13, a dataset.json path or a comma list of ids")
    if isinstance(spec, ClassSet):
        return spec
    if isinstance(spec, Mapping):
        return ClassSet("custom", {int(k): str(v) for k, v in spec.items()}, "custom class map")
    if isinstance(spec, (str, Path)):
        text = str(spec).strip()
        if text in CLASS_SETS:
            return CLASS_SETS[text]
        if text.endswith(".json") or Path(text).is_file():
            path = Path(text)
            if not path.is_file():
                raise InputDataError("class list file does not exist", path=path)
            return _from_dataset_json(path)
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts or not all(p.lstrip("-").isdigit() for p in parts):
            raise UsageError(
                f"--classes {text!r}: expected one of {sorted(CLASS_SETS)}, a dataset.json path or a comma list of ids"
            )
        spec = [int(p) for p in parts]
    ids = [int(i) for i in spec]
    if len(set(ids)) != len(ids):
        raise UsageError(f"--classes: duplicate ids in {ids}")
    return ClassSet("ids", {i: f"class_{i}" for i in ids}, "ids " + ",".join(map(str, ids)))
