"""Per-case, per-class Dice and HD95 (optionally ASSD and NSD) from two label maps under a named protocol.

Work is proportional to the organs, not to the volume: one ``scipy.ndimage.find_objects`` pass per label map gives
every class's bounding box; each class is then scored on the union box of its prediction and ground truth only, and
surface distances use the surface voxels only (see :mod:`pipeline.evaluation.surface`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from pipeline.evaluation.classes import ClassSet, resolve_classes
from pipeline.evaluation.protocols import Protocol, get_protocol
from pipeline.evaluation.surface import surface_distances

__all__ = ["evaluate_case", "as_label_map", "image_diagonal", "METRICS"]

#: metrics :func:`evaluate_case` can compute; ``dice`` and ``hd95`` are always reported
METRICS = ("dice", "hd95", "assd", "nsd")


def as_label_map(array: np.ndarray, name: str = "array") -> np.ndarray:
    """Return ``array`` as a non-negative integer label map (squeezing a leading channel of size 1).

    Raises:
        ValueError: for non-integral float values, negative labels or more than 3 spatial dimensions after squeezing.
    """
    if hasattr(array, "detach"):  # torch tensor / MetaTensor, possibly on a GPU
        a = array.detach().cpu().numpy()
    else:
        a = np.asarray(array)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.dtype == bool:
        return a.view(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{name}: dtype {a.dtype} is not a label map")
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: holds NaN/Inf values; expected a label map")
        ints = a.astype(np.int32)
        if not np.array_equal(ints, a):
            raise ValueError(f"{name}: holds non-integer values; expected a label map (argmax'ed), not probabilities")
        a = ints
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise ValueError(f"{name}: holds negative labels")
    return a


def image_diagonal(shape: Sequence[int], spacing: Sequence[float] | None) -> float:
    """The image diagonal ``|shape * spacing|`` (voxel units when ``spacing`` is None): the one-sided penalty."""
    s = np.ones(len(shape)) if spacing is None else np.asarray(spacing, float)
    return float(np.linalg.norm(np.asarray(shape, float) * s))


def _union(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def evaluate_case(
    pred: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float] | float | None,
    classes: str | ClassSet | Mapping[int, str] | Sequence[int],
    protocol: str | Protocol = "strict",
    *,
    metrics: Sequence[str] = ("dice", "hd95"),
    nsd_tolerance: float = 1.0,
) -> list[dict]:
    """Score one case: one row per class, with the protocol's empty-mask rules applied.

    Args:
        pred: predicted label map (spatial dims only, or with a leading channel of size 1).
        label: ground-truth label map, same shape as ``pred``.
        spacing: voxel size per axis in mm (from the label's header), in the same axis order as the arrays. Ignored
            when the protocol's units are ``"voxel"``; required otherwise.
        classes: the label ids to score: a class-set name (``synapse8``, ``btcv13``), a dataset.json path, an
            ``{id: name}`` map, a sequence of ids or a :class:`~pipeline.evaluation.classes.ClassSet`.
        protocol: a protocol name (``strict``, ``monai``, ``legacy_unetrpp``, ``legacy_transunet``) or a
            :class:`~pipeline.evaluation.protocols.Protocol`.
        metrics: any of ``dice``, ``hd95``, ``assd``, ``nsd`` (Dice and HD95 are always computed). ASSD follows the
            protocol's HD95 empty rules, NSD its Dice empty rules.
        nsd_tolerance: NSD tolerance in the protocol's units.

    Returns:
        One dict per class, in class-set order, with keys ``class, dice, hd95, class_name, n_gt, n_pred, tp, fp, fn,
        empty_gt, empty_pred, situation`` (and ``assd``/``nsd`` if asked). A value is ``None`` when the protocol
        excludes it and ``nan`` when the protocol reports NaN.

    Raises:
        ValueError: on shape mismatch, a non-label-map input or a missing spacing for a mm protocol.

    Examples:
        >>> import numpy as np
        >>> gt = np.zeros((20, 20, 10), np.uint8); gt[4:12, 4:12, 2:6] = 1
        >>> pr = np.roll(gt, 1, axis=0)
        >>> row = evaluate_case(pr, gt, (1.0, 1.0, 2.5), [1, 2])
        >>> round(row[0]["dice"], 4), round(row[0]["hd95"], 3), row[1]["situation"], row[1]["dice"]
        (0.875, 1.0, 'both_empty', None)
    """
    proto = get_protocol(protocol)
    cset = resolve_classes(classes)
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; expected some of {METRICS}")
    pred = as_label_map(pred, "prediction")
    label = as_label_map(label, "label")
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    if proto.units == "voxel":
        scale = None
    else:
        if spacing is None:
            raise ValueError(f"protocol {proto.name!r} reports mm: pass the spacing (or use voxel units)")
        scale = np.broadcast_to(np.asarray(spacing, float), (label.ndim,)).copy()
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError(f"invalid spacing {tuple(scale)}")
    diagonal = image_diagonal(label.shape, scale)
    want = set(metrics)

    positive = [c for c in cset.ids if c > 0]
    max_id = max(positive) if positive else 0
    boxes_p = ndimage.find_objects(pred, max_label=max_id) if max_id else []
    boxes_g = ndimage.find_objects(label, max_label=max_id) if max_id else []
    full = tuple(slice(0, n) for n in label.shape)

    rows = []
    for c, cname in cset.labels.items():
        if c > 0:
            box = _union(boxes_p[c - 1], boxes_g[c - 1])
        else:  # the background (or a negative id) is not covered by find_objects: use the whole volume
            box = full
        if box is None:
            m_p = m_g = None
            n_pred = n_gt = tp = 0
        else:
            m_p, m_g = pred[box] == c, label[box] == c
            n_pred, n_gt = int(np.count_nonzero(m_p)), int(np.count_nonzero(m_g))
            tp = int(np.count_nonzero(m_p & m_g)) if n_pred and n_gt else 0
        if n_pred and n_gt:
            situation = "present"
        elif n_gt:
            situation = "missed"
        elif n_pred:
            situation = "spurious"
        else:
            situation = "both_empty"
        row: dict = {
            "class": int(c),
            "dice": None,
            "hd95": None,
            "class_name": cname,
            "n_gt": n_gt,
            "n_pred": n_pred,
            "tp": tp,
            "fp": n_pred - tp,
            "fn": n_gt - tp,
            "empty_gt": n_gt == 0,
            "empty_pred": n_pred == 0,
            "situation": situation,
        }
        if situation == "present":
            row["dice"] = 2.0 * tp / (n_pred + n_gt)
            assert m_p is not None and m_g is not None  # both masks were cut out of a box that holds the class
            dist = surface_distances(m_p, m_g, scale)
            row["hd95"] = dist.hd95(proto.hd95_definition)
            if "assd" in want:
                row["assd"] = dist.assd()
            if "nsd" in want:
                row["nsd"] = dist.nsd(nsd_tolerance)
        else:
            row["dice"] = proto.value("dice", situation, diagonal)
            row["hd95"] = proto.value("hd95", situation, diagonal)
            if "assd" in want:
                row["assd"] = row["hd95"]
            if "nsd" in want:
                row["nsd"] = row["dice"]
        rows.append(row)
    return rows


def is_missing(value: float | None) -> bool:
    """True for an excluded (None) or NaN value."""
    return value is None or (isinstance(value, float) and math.isnan(value))
