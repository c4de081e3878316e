"""``medseg evaluate``: score a folder of predictions against a folder of labels under a named protocol.

Examples::

    medseg evaluate --pred outputs/preds --label ../shared/data/BTCV_like/labelsTr --classes btcv13 --out outputs/eval
    medseg evaluate --pred preds --label RawData/Training/label --protocol legacy_unetrpp --classes synapse8
    medseg evaluate --pred outputs/preds --label labelsTr --space resampled --target-spacing 1.5,1.5,2 --out ev
    medseg evaluate --pred outputs/preds --label labelsTr --space resampled --preprocessing ct_abdomen --out ev
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import EXIT_CASES_FAILED, EXIT_OK, UsageError
from pipeline.evaluation.protocols import PROTOCOLS, get_protocol
from pipeline.evaluation.space import SPACES, TargetSpacing, parse_target_spacing, spacing_from_preset

__all__ = ["register", "run"]


def _penalty(text: str) -> float | str:
    if text == "diagonal":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'diagonal' or a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("the penalty must be >= 0")
    return value


def _both_empty(text: str) -> float | str:
    if text == "exclude":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'exclude' or a number, got {text!r}") from None


def _target_spacing(args: argparse.Namespace) -> TargetSpacing | None:
    """The resampled grid's spacing from ``--target-spacing`` / ``--preprocessing``, checked against ``--space``."""
    given = [
        f"--{name}"
        for name, value in (("target-spacing", args.target_spacing), ("preprocessing", args.preprocessing))
        if value is not None
    ]
    if args.space == "original":
        if given:
            raise UsageError(f"{given[0]} applies only with --space resampled (the default space is original)")
        return None
    if len(given) == 2:
        raise UsageError("--target-spacing and --preprocessing both given: pass only one")
    if not given:
        raise UsageError("--space resampled needs --target-spacing X,Y,Z (mm) or --preprocessing PRESET")
    if args.target_spacing is not None:
        spacing = parse_target_spacing(args.target_spacing)
        return TargetSpacing(spacing, source=f"--target-spacing {args.target_spacing}")
    return spacing_from_preset(args.preprocessing)


#: the description of ``medseg evaluate --help`` (its one-line summary is in ``pipeline.cli.COMMANDS``)
DESCRIPTION = (
    "Pair predictions with labels by case id (img0001 <-> label0001, lung_001_0000 <-> lung_001; "
    "never by sort order), score Dice and HD95 per case and class, and write per_case.csv, summary.json and "
    "summary.md. Protocols: " + "; ".join(f"{k}: {v.summary}" for k, v in PROTOCOLS.items())
)
FORMATTER = argparse.ArgumentDefaultsHelpFormatter


def register(p: argparse.ArgumentParser) -> None:
    """Add the options of ``medseg evaluate`` to its parser."""
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted label maps")
    p.add_argument("--label", required=True, type=Path, help="folder of ground-truth label maps (spacing source)")
    p.add_argument("--protocol", default="strict", choices=list(PROTOCOLS), help="evaluation protocol")
    p.add_argument(
        "--classes",
        default=None,
        help="synapse8, btcv13, a dataset.json path or a comma list of ids; default: synapse8 for "
        "legacy protocols, else the dataset.json next to the labels, else every id found",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder for the reports (default: print only)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: up to 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table on stdout")
    p.add_argument("--voxel-units", action="store_true", help="report distances in voxels (no spacing)")
    p.add_argument(
        "--hd95-definition",
        choices=("max_directed", "pooled"),
        default=None,
        help="override the protocol's HD95 definition",
    )
    p.add_argument(
        "--penalty",
        type=_penalty,
        default=None,
        help="HD95 for a one-sided empty mask: 'diagonal' or a number (overrides the protocol)",
    )
    p.add_argument(
        "--both-empty-dice",
        type=_both_empty,
        default=None,
        help="Dice when both masks are empty: 'exclude' or a number (overrides the protocol)",
    )
    p.add_argument("--metrics", default="dice,hd95", help="comma list among dice,hd95,assd,nsd")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="NSD tolerance in the protocol's units")
    p.add_argument(
        "--no-affine-check",
        action="store_true",
        help="compare voxel by voxel even when prediction and label affines differ (in resampled space: "
        "a prediction of the label's shape is taken to lie on the label's grid)",
    )
    p.add_argument(
        "--space",
        choices=SPACES,
        default="original",
        help="original: score on each label's grid with its header spacing; resampled: resample label "
        "and prediction (nearest neighbour, each through its own affine) onto a grid with the target "
        "spacing covering the label's extent, and score there",
    )
    p.add_argument(
        "--target-spacing",
        default=None,
        metavar="X,Y,Z",
        help="--space resampled: target spacing in mm, in the label's array axis order as nibabel loads "
        "it (one number: isotropic)",
    )
    p.add_argument(
        "--preprocessing",
        default=None,
        metavar="PRESET",
        help="--space resampled: use this preprocessing preset's target pixdim (per RAS axis for presets "
        "that reorient to RAS) instead of --target-spacing",
    )
    p.add_argument("--split", default=None, help="name of the split the cases come from (stated in the report)")
    p.add_argument(
        "--require-all", action="store_true", help="exit 1 when a label has no prediction (default: reported only)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing reports in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``medseg evaluate``; return 0, or 1 when some case failed (each failure printed as one line)."""
    from pipeline.evaluation.folders import evaluate_folders
    from pipeline.evaluation.report import REPORT_FILES, summary_to_markdown

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    bad = set(metrics) - {"dice", "hd95", "assd", "nsd"}
    if bad:
        raise UsageError(f"--metrics: unknown {sorted(bad)}; expected some of dice,hd95,assd,nsd")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be >= 1")
    target = _target_spacing(args)
    overrides: dict = {"hd95_definition": args.hd95_definition}
    if args.voxel_units:
        overrides["units"] = "voxel"
    if args.penalty is not None:
        overrides["hd95_missed"] = overrides["hd95_spurious"] = args.penalty
    if args.both_empty_dice is not None:
        overrides["dice_both_empty"] = args.both_empty_dice
    protocol = get_protocol(args.protocol, **overrides)
    if args.out is not None and not args.overwrite:
        existing = [args.out / f for f in REPORT_FILES if (args.out / f).exists()]
        if existing:
            print(f"skipped: {existing[0]} exists (pass --overwrite to recompute)", file=sys.stderr)
            return EXIT_OK
    if protocol.warning:
        print(protocol.warning, file=sys.stderr)
    summary = evaluate_folders(
        args.pred,
        args.label,
        protocol,
        args.classes,
        args.out,
        args.workers,
        metrics=metrics,
        nsd_tolerance=args.nsd_tolerance,
        check_affine=not args.no_affine_check,
        progress=not args.quiet,
        split=args.split,
        space=args.space,
        target_spacing=target,
    )
    for _case, error in summary.failures:
        print(f"error: {error}", file=sys.stderr)
    for line in summary.ambiguous:
        print(f"error: {args.pred}: {line}", file=sys.stderr)
    if summary.missing:
        print(
            f"warning: {len(summary.missing)} label file(s) in {args.label} have no prediction: "
            f"{', '.join(summary.missing)}",
            file=sys.stderr,
        )
    if summary.extra:
        print(
            f"warning: {len(summary.extra)} prediction file(s) in {args.pred} have no label: "
            f"{', '.join(summary.extra)}",
            file=sys.stderr,
        )
    if not args.quiet:
        print(summary_to_markdown(summary))
    if args.out is not None and not args.quiet:
        print(f"reports written to {args.out}: {', '.join(REPORT_FILES)}", file=sys.stderr)
    failed = bool(summary.failures or summary.ambiguous or (args.require_all and summary.missing))
    return EXIT_CASES_FAILED if failed else EXIT_OK
