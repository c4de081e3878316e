"""Evaluation protocols: every rule that changes a reported DSC/HD95 number, named and documented in one place.

Per case and class, a prediction ``P`` and ground truth ``G`` fall in one of four situations:

==============  ==========  =============  ===========  ==================  ==================
situation       P, G        ``strict``     ``monai``    ``legacy_unetrpp``  ``legacy_transunet``
==============  ==========  =============  ===========  ==================  ==================
overlap         both > 0    DSC, HD95      DSC, HD95    DSC, HD95           DSC, HD95
missed          P=0, G>0    0, penalty     0, NaN       0, 0                0, 0
spurious        P>0, G=0    0, penalty     NaN, NaN     0, 0                **1**, 0
both empty      P=0, G=0    excluded       NaN, NaN     **1**, 0            0, 0
==============  ==========  =============  ===========  ==================  ==================

* ``strict`` (default): HD95 = max of the two directed 95th percentiles (MONAI / DeepMind surface-distance), in mm
  from the header spacing; the penalty for a one-sided empty mask is the image diagonal in mm (``|shape * spacing|``),
  stated in every report; a class whose masks are both empty is excluded from that case (counted and reported).
* ``monai``: MONAI 1.6.1 as shipped. ``DiceMetric(ignore_empty=True)`` gives NaN when the ground truth is empty;
  ``HausdorffDistanceMetric(percentile=95)`` gives NaN whenever a mask is empty (MONAI #9095: ``torch.quantile``
  over all-inf distances), which MONAI's nan-mean then drops, so a missed organ *improves* the mean. We reproduce the
  values and count the NaNs per class in every report instead of hiding them.
* ``legacy_unetrpp``: nnFormer / UNETR++ ``inference_synapse.py``: Dice 1 when both are empty, HD95 = medpy ``hd95``
  (pooled percentile) in voxel units, 0 when either mask is empty; plain mean over cases then over classes.
* ``legacy_transunet``: TransUNet / Swin-Unet ``calculate_metric_percase``: a false positive on an absent organ
  scores (1, 0), a missed organ and both-empty score (0, 0); medpy pooled HD95 in voxel units.

Legacy protocols exist to reproduce published numbers; every report made with them carries a warning banner.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UsageError

__all__ = ["Protocol", "PROTOCOLS", "get_protocol", "PENALTY_DIAGONAL", "EXCLUDE"]

#: penalty keyword: the image diagonal ``|shape * spacing|`` in the protocol's units
PENALTY_DIAGONAL = "diagonal"
#: value keyword: the entry is left out of the means (and counted)
EXCLUDE = "exclude"
NAN = math.nan

SITUATIONS = ("missed", "spurious", "both_empty")
_RULE_FIELDS = tuple(f"{m}_{s}" for m in ("dice", "hd95") for s in SITUATIONS)


@dataclass(frozen=True)
class Protocol:
    """The rules of one evaluation protocol.

    Attributes:
        name: protocol name shown in every report header.
        hd95_definition: ``"max_directed"`` (MONAI) or ``"pooled"`` (medpy).
        units: ``"mm"`` (header spacing) or ``"voxel"`` (no spacing).
        dice_missed / dice_spurious / dice_both_empty: Dice for P=0<G, G=0<P and P=G=0: a number, ``nan`` (kept
            as NaN, dropped by the nan-mean and counted) or ``"exclude"`` (left out and counted).
        hd95_missed / hd95_spurious / hd95_both_empty: HD95 for the same situations: a number, ``nan``,
            ``"exclude"`` or ``"diagonal"`` (the image diagonal in ``units``).
        legacy: True for protocols that reproduce published but flawed conventions (warning banner).
        summary: one line describing the protocol for report headers.
        reference: where the rules come from.

    Examples:
        >>> p = get_protocol("strict")
        >>> p.hd95_definition, p.units, p.hd95_missed
        ('max_directed', 'mm', 'diagonal')
        >>> get_protocol("strict", units="voxel").units
        'voxel'
    """

    name: str
    hd95_definition: str
    units: str
    dice_missed: float | str
    dice_spurious: float | str
    dice_both_empty: float | str
    hd95_missed: float | str
    hd95_spurious: float | str
    hd95_both_empty: float | str
    legacy: bool = False
    summary: str = ""
    reference: str = ""
    overrides: tuple[str, ...] = ()

    def rule(self, metric: str, situation: str) -> float | str:
        """The value rule for ``metric`` (``dice``/``hd95``) in ``situation`` (not ``overlap``)."""
        return getattr(self, f"{metric}_{situation}")

    def value(self, metric: str, situation: str, diagonal: float) -> float | None:
        """The score of ``metric`` in ``situation`` (not ``overlap``): None when excluded, ``diagonal`` (the image
        diagonal in the protocol's units) for the diagonal penalty, else the rule's number.

        Examples:
            >>> strict = get_protocol("strict")
            >>> strict.value("hd95", "missed", 50.0), strict.value("dice", "missed", 50.0)
            (50.0, 0.0)
            >>> strict.value("dice", "both_empty", 50.0) is None
            True
        """
        rule = self.rule(metric, situation)
        if rule == EXCLUDE:
            return None
        if rule == PENALTY_DIAGONAL:
            return diagonal
        return float(rule)

    @property
    def warning(self) -> str | None:
        """The banner printed with legacy results, else None."""
        if not self.legacy:
            return None
        return (
            f"WARNING: protocol '{self.name}' reproduces a published convention with known flaws "
            f"({self.summary}). Its numbers are only comparable with papers that used the same script; "
            "use --protocol strict for new results."
        )

    def penalty_text(self) -> str:
        """How one-sided empty masks are scored, for report headers."""
        parts = []
        for situation, label in (
            ("missed", "missed organ"),
            ("spurious", "prediction on empty ground truth"),
            ("both_empty", "both empty"),
        ):
            d, h = self.rule("dice", situation), self.rule("hd95", situation)
            parts.append(f"{label}: Dice {_fmt_rule(d)}, HD95 {_fmt_rule(h, self.units)}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and math.isnan(value):
                out[key] = "nan"
        out["overrides"] = list(self.overrides)
        out["penalty"] = self.penalty_text()
        out["warning"] = self.warning
        return out


def _fmt_rule(value: float | str, units: str = "") -> str:
    if value == PENALTY_DIAGONAL:
        return f"image diagonal ({units})"
    if value == EXCLUDE:
        return "excluded (counted)"
    if isinstance(value, float) and math.isnan(value):
        return "NaN (dropped by nan-mean, counted)"
    return f"{value:g}"


_LEGACY_UNETRPP = Protocol(
    "legacy_unetrpp",
    "pooled",
    "voxel",
    dice_missed=0.0,
    dice_spurious=0.0,
    dice_both_empty=1.0,
    hd95_missed=0.0,
    hd95_spurious=0.0,
    hd95_both_empty=0.0,
    legacy=True,
    summary="nnFormer/UNETR++ inference_synapse.py: medpy pooled HD95 in voxels, HD95 0 when a mask is empty, "
    "Dice 1 when both are empty",
    reference="nnFormer / UNETR++ inference_synapse.py",
)

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "strict",
            "max_directed",
            "mm",
            dice_missed=0.0,
            dice_spurious=0.0,
            dice_both_empty=EXCLUDE,
            hd95_missed=PENALTY_DIAGONAL,
            hd95_spurious=PENALTY_DIAGONAL,
            hd95_both_empty=EXCLUDE,
            summary="HD95 = max of directed 95th percentiles in mm; one-sided empty -> Dice 0, HD95 = image "
            "diagonal; both empty -> excluded",
            reference="MONAI / DeepMind surface-distance HD95; BraTS-style diagonal penalty",
        ),
        Protocol(
            "monai",
            "max_directed",
            "mm",
            dice_missed=0.0,
            dice_spurious=NAN,
            dice_both_empty=NAN,
            hd95_missed=NAN,
            hd95_spurious=NAN,
            hd95_both_empty=NAN,
            summary="MONAI 1.6.1 DiceMetric(ignore_empty=True) and HausdorffDistanceMetric(percentile=95) with header "
            "spacing; NaN for empty masks (MONAI #9095) dropped by the nan-mean and counted",
            reference="monai.metrics DiceMetric / HausdorffDistanceMetric 1.6.1",
        ),
        _LEGACY_UNETRPP,
        # the same medpy HD95 rules; only the Dice of a spurious and of a both-empty class differ
        dataclasses.replace(
            _LEGACY_UNETRPP,
            name="legacy_transunet",
            dice_spurious=1.0,
            dice_both_empty=0.0,
            summary="TransUNet/Swin-Unet calculate_metric_percase: medpy pooled HD95 in voxels, a false positive on an "
            "absent organ scores (1, 0), a missed organ (0, 0)",
            reference="TransUNet utils.py calculate_metric_percase (copied by Swin-Unet)",
        ),
    )
}


def get_protocol(name: str | Protocol = "strict", **overrides: object) -> Protocol:
    """Return the named protocol, optionally with some rules overridden.

    Args:
        name: one of :data:`PROTOCOLS` (or a :class:`Protocol`, returned with the overrides applied).
        overrides: field values to replace, e.g. ``units="voxel"``, ``hd95_definition="pooled"``,
            ``dice_both_empty=1.0``, ``hd95_missed=373.13``. ``None`` values are ignored. Overridden fields are
            listed in every report header.

    Raises:
        UsageError: for an unknown protocol or field value.
    """
    if isinstance(name, Protocol):
        base = name
    else:
        if name not in PROTOCOLS:
            raise UsageError(f"--protocol {name!r}: expected one of {', '.join(PROTOCOLS)}")
        base = PROTOCOLS[name]
    changes: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None and getattr(base, k, object()) != v}
    if not changes:
        return base
    fields = {f.name for f in dataclasses.fields(Protocol)}
    for key, value in changes.items():
        if key not in fields or key in ("name", "overrides", "legacy", "summary", "reference"):
            raise UsageError(f"protocol option {key!r} cannot be overridden")
        if key == "hd95_definition" and value not in ("max_directed", "pooled"):
            raise UsageError(f"--hd95-definition {value!r}: expected max_directed or pooled")
        if key == "units" and value not in ("mm", "voxel"):
            raise UsageError(f"units {value!r}: expected mm or voxel")
        if key in _RULE_FIELDS and not isinstance(value, (int, float)):
            allowed = (EXCLUDE, PENALTY_DIAGONAL) if key.startswith("hd95_") else (EXCLUDE,)
            if value not in allowed:
                raise UsageError(f"protocol option {key}={value!r}: expected a number or one of {allowed}")
    changes = {k: (float(v) if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in changes.items()}
    desc = tuple(f"{k}={v}" for k, v in changes.items())
    return dataclasses.replace(base, overrides=base.overrides + desc, **changes)
