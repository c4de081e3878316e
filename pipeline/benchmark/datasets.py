"""Which classes, published table and split a benchmark uses for a dataset.

A *profile* ties a dataset to the paper table it is compared with: the Synapse RawData layout to the 8-organ Synapse
table (test split), BTCV ``dataset_0.json`` to the 13-organ BTCV table (validation split), MSD Task06 Lung to the Lung
table (UNETR++ 13-case validation split). Other datasets (hippocampus, STS ...) use their own labels in id order and
have no published table.

Examples:
    >>> from pipeline.benchmark.datasets import profile_for
    >>> p = profile_for(layout="synapse_raw", labels={i: str(i) for i in range(14)}, name="Synapse_like")
    >>> p.table.key, p.default_split, [c.label for c in p.classes][:4]
    ('synapse', 'test', [1, 2, 3, 4])
    >>> profile_for(layout="msd", labels={0: "background", 1: "anterior", 2: "posterior"}, name="Task04").table is None
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.benchmark.published import PUBLISHED_TABLES, ClassColumn, PublishedTable
from pipeline.errors import InputDataError, UsageError

#: split names accepted on the command line -> the keys a dataset reader may use for them
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "test": ("test", "testing", "Ts"),
    "validation": ("validation", "val", "valid"),
    "training": ("training", "train", "Tr"),
}

BTCV_IDS = set(range(14))


@dataclass(frozen=True)
class Profile:
    """Classes in report column order, the published table (or None) and the split used by default."""

    key: str
    classes: tuple[ClassColumn, ...]
    table: PublishedTable | None
    default_split: str
    why: str


def _short(name: str) -> str:
    return name if len(name) <= 12 else name[:12]


def _own_labels(labels: Mapping[int, str]) -> tuple[ClassColumn, ...]:
    return tuple(ClassColumn(int(k), _short(str(v)), str(v)) for k, v in sorted(labels.items()) if int(k) != 0)


def profile_for(*, layout: str, labels: Mapping[int, str], name: str = "", table: str = "auto") -> Profile:
    """Pick the profile for a dataset.

    Args:
        layout: the reader's layout name (``DatasetInfo.layout``); a name containing ``synapse`` means Synapse RawData.
        labels: ``{id: name}`` of the dataset (background included or not).
        name: the dataset folder name or ``name`` field (used to spot MSD Task06 Lung).
        table: ``auto``, ``none`` or a published table key (``synapse``, ``btcv``, ``lung``, ``acdc``) to force.

    Raises:
        UsageError: for an unknown ``table``.
    """
    ids = {int(k) for k in labels}
    lname = f"{name} {layout}".lower()
    if table not in ("auto", "none") and table not in PUBLISHED_TABLES:
        raise UsageError(f"--table {table!r}: expected auto, none or one of {', '.join(PUBLISHED_TABLES)}")
    if table == "none":
        return Profile("own", _own_labels(labels), None, "test", "--table none: the dataset's own labels")
    if table == "auto":
        if "synapse" in lname and ids >= BTCV_IDS - {0}:
            table = "synapse"
        elif ids >= BTCV_IDS - {0} and ("btcv" in lname or "dataset_0" in lname or "monai" in lname):
            table = "btcv"
        elif ids - {0} == {1} and ("lung" in lname or "task06" in lname):
            table = "lung"
        else:
            return Profile(
                "own",
                _own_labels(labels),
                None,
                "test",
                "no published table matches this dataset: its own labels in id order",
            )
    t = PUBLISHED_TABLES[table]
    missing = [c.label for c in t.classes if labels and c.label not in ids]
    if missing and labels:
        raise UsageError(f"--table {table}: the dataset has no label(s) {missing} that the table scores")
    default = {"synapse": "test", "btcv": "validation", "lung": "validation"}.get(table, "test")
    return Profile(table, t.classes, t, default, f"{t.dataset}: {t.split}")


def pick_split(
    splits: Mapping[str, Sequence[Mapping]], wanted: str | None, default: str, *, source: str
) -> tuple[str, str, list[dict]]:
    """Choose the split to benchmark.

    Args:
        splits: ``DatasetInfo.splits`` (split name -> datalist).
        wanted: ``--split`` (``test``/``validation``/``training`` or a reader key), or None for ``default``.
        default: the profile's split; if absent or empty, ``test`` then ``validation`` are tried.
        source: the dataset path, for messages.

    Returns:
        ``(name asked for, reader key used, items with a label)``.

    Raises:
        InputDataError: when the split does not exist or has no labelled case.
    """

    def find(name: str) -> str | None:
        for key in (name, *SPLIT_ALIASES.get(name, ())):
            if key in splits:
                return key
        return None

    available = {k: len(v) for k, v in splits.items()}
    names = [wanted] if wanted else [default, "test", "validation"]
    for name in dict.fromkeys(names):
        key = find(name)
        items = [dict(it) for it in splits.get(key, [])] if key else []
        labelled = [it for it in items if it.get("label")]
        if labelled and key is not None:
            return name, key, labelled
        if wanted:
            what = "does not exist" if key is None else "has no labelled case"
            raise InputDataError(f"split {wanted!r} {what} (splits found: {available})", path=source)
    raise InputDataError(
        f"no labelled test or validation split to benchmark (splits found: {available}); pass --split", path=source
    )
