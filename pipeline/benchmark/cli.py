"""``medseg benchmark``: paper-style results of a bundle on a dataset split, with timings and memory.

Examples::

    medseg benchmark --bundle unetrpp_hippocampus_mri_segmentation --data ../shared/data/Task04_Hippocampus --limit 5
    medseg benchmark --bundle unetrpp_synapse --data RawData --split test --protocol legacy_unetrpp --out out/syn
    medseg benchmark --bundle unetrpp_lung --data ../shared/data/Task06_Lung_sample --allow-untrained  # smoke only
"""

from __future__ import annotations

import argparse
import shlex
import sys

from pipeline.deploy.cli import add_backend_options, backend_options
from pipeline.errors import EXIT_CASES_FAILED, EXIT_OK, UsageError


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers like 32,48,32") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers like 32,48,32")
    return vals


#: the description of ``medseg benchmark --help`` (its one-line summary is in ``pipeline.cli.COMMANDS``)
DESCRIPTION = (
    "Run a bundle on a dataset split, score it under an evaluation protocol and write report.md, "
    "report.json, report.csv and timings.csv: per-class DSC/HD95 in the paper's column order beside the "
    "published rows, timings per case and stage, peak memory, hardware and versions. Refuses to run without "
    "trained weights unless --allow-untrained (smoke tests; the report is marked UNTRAINED)."
)


def register(p: argparse.ArgumentParser) -> None:
    """Add the options of ``medseg benchmark`` to its parser."""
    p.add_argument("--bundle", required=True, help="bundle folder or name in bundles/ (e.g. unetrpp_synapse)")
    p.add_argument("--data", required=True, help="dataset folder (Synapse RawData, BTCV dataset_0.json, MSD ...)")
    p.add_argument(
        "--split",
        default=None,
        help="test | validation | training (default: the official split: Synapse test, BTCV and Lung "
        "validation, else the bundle's held-out list)",
    )
    p.add_argument(
        "--protocol",
        default="strict",
        help="evaluation protocol: strict (default) | monai | legacy_unetrpp | legacy_transunet",
    )
    p.add_argument("--limit", type=int, default=None, help="score only the first N cases (in case order)")
    p.add_argument("--out", default=None, help="output folder (default outputs/benchmark/<bundle>-<data>-<split>)")
    p.add_argument(
        "--allow-untrained",
        action="store_true",
        help="run without models/model.pt (random weights, smoke tests only; report marked UNTRAINED)",
    )
    p.add_argument(
        "--table",
        default="auto",
        help="published table beside ours: auto (default) | none | synapse | btcv | lung | acdc",
    )
    p.add_argument("--overwrite", action="store_true", help="redo predictions that exist in --out")
    p.add_argument("--device", default="cpu", help="torch device for inference (default cpu; cuda, cuda:1)")
    g = p.add_argument_group("inference overrides (recorded in the report)")
    g.add_argument("--roi-size", type=_ints, default=None, help="sliding-window ROI in x,y,z (e.g. 32,48,32)")
    g.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (0..1)")
    g.add_argument("--sw-batch-size", type=int, default=None, help="windows per network call")
    g.add_argument("--tta", action="store_true", help="nnU-Net mirroring test-time augmentation (8 flips)")
    add_backend_options(p)
    p.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    """The command line equivalent to ``args`` (the options that were set), for the report header."""
    parts = ["medseg", "benchmark", "--bundle", args.bundle, "--data", args.data]
    defaults = (
        ("protocol", "strict"),
        ("table", "auto"),
        ("device", "cpu"),
        ("backend", "torch"),
        ("precision", "fp32"),
    )
    for opt in (
        "split",
        "protocol",
        "limit",
        "out",
        "table",
        "device",
        "overlap",
        "sw_batch_size",
        "backend",
        "precision",
    ):
        val = getattr(args, opt)
        if val is not None and (opt, val) not in defaults:
            parts += [f"--{opt.replace('_', '-')}", str(val)]
    if args.roi_size:
        parts += ["--roi-size", ",".join(map(str, args.roi_size))]
    parts += [f"--{flag.replace('_', '-')}" for flag in ("tta", "allow_untrained", "overwrite") if getattr(args, flag)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when every case was scored, 1 when some failed (the report lists them)."""
    from pipeline.benchmark.runner import BenchmarkOptions, run_benchmark
    from pipeline.cli import from_args

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: must be >= 1")
    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise UsageError(f"--overlap {args.overlap}: must be in [0, 1)")
    inference = {
        k: v
        for k, v in (
            ("roi_size", args.roi_size),
            ("overlap", args.overlap),
            ("sw_batch_size", args.sw_batch_size),
            ("tta", args.tta or None),
            *(
                (k, v)
                for k, v in backend_options(args).items()
                if (k, v) not in (("backend", "torch"), ("precision", "fp32"))
            ),
        )
        if v is not None
    }
    opts = from_args(BenchmarkOptions, args, inference=inference, command=_command(args))
    report, paths = run_benchmark(opts)
    print(report.to_markdown().split("\n## ")[0].rstrip())  # the header block
    mean = report.mean_scores()
    failed = [c for c in report.cases if c.status != "ok"]
    tag = " (UNTRAINED)" if report.untrained else ""
    dice = "–" if mean["dice"] is None else f"{100 * mean['dice']:.2f}"
    hd = "–" if mean["hd95"] is None else f"{mean['hd95']:.2f}"
    print(
        f"\nmean DSC {dice} %, mean HD95 {hd} {report.hd95_unit}{tag}; {len(report.cases) - len(failed)} of "
        f"{len(report.cases)} case(s) scored"
    )
    for c in failed:
        print(f"failed: {c.case}: {c.error}", file=sys.stderr)
    for key, path in paths.items():
        print(f"{key}: {path}")
    return EXIT_CASES_FAILED if failed else EXIT_OK
