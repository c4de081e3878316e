"""``medseg datasets ...``: check, fingerprint, derive-label-map, list.

Examples:
    medseg datasets check ../shared/data/Task04_Hippocampus
    medseg datasets check ../shared/data/BTCV_like/dicom --json check.json
    medseg datasets fingerprint ../shared/data/STS_CT --out outputs/sts_fingerprint.json
    medseg datasets derive-label-map --transunet data/Synapse --rawdata RawData --out label_map.json
    medseg datasets list ../shared/data/Synapse_like
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.errors import EXIT_INPUT, EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from pipeline.data.check import CaseReport, check_dataset, format_problems, format_summary, format_table

    def progress(rep: CaseReport) -> None:
        if rep.ok:
            print(f"OK      {rep.case}" + (f"  ({'; '.join(rep.notes)})" if rep.notes and args.verbose else ""))
        else:
            for problem in rep.problems:
                print(f"BROKEN  {rep.case}: {problem}")
        for warning in rep.warnings:  # what had to be assumed to read a file (the case is not broken by it)
            print(f"WARN    {rep.case}: {warning}")
        sys.stdout.flush()

    report = check_dataset(args.path, split=args.split, workers=args.workers, progress=progress)
    print()
    print(format_table(report, max_rows=None if args.all_rows else 50))
    print()
    print(format_summary(report))
    if args.json:
        from pipeline.utils.atomic import save_json_atomic

        save_json_atomic(report.to_dict(), args.json)
        print(f"report written to {args.json}")
    if not report.ok:
        print()
        print(
            f"{len(report.broken)} of {report.n_cases} case(s) broken"
            + (f", {len(report.problems)} dataset problem(s)" if report.problems else "")
            + ":"
        )
        print(format_problems(report))
        return EXIT_INPUT
    print(f"\nall {report.n_cases} case(s) OK")
    return EXIT_OK


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    from pipeline.data.fingerprint import compute_fingerprint, write_fingerprint

    if args.out and Path(args.out).exists() and not args.overwrite:
        print(f"skipped: {args.out} exists (pass --overwrite to recompute it)")
        return EXIT_OK
    fp = compute_fingerprint(
        args.path, split=args.split, progress=(lambda c: print(f"done    {c}", flush=True)) if args.verbose else None
    )
    print(f"dataset: {fp['dataset']} ({fp['layout']}, {fp['num_cases']} labelled cases)")
    print("median spacing (x, y, z) mm: " + " x ".join(f"{s:.4g}" for s in fp["median_spacing"]))
    for c, st in fp["foreground_intensity"].items():
        if st.get("n_voxels"):
            print(
                f"foreground intensity, channel {c} ({st['name']}): mean {st['mean']:.4g}, std {st['std']:.4g}, "
                f"p0.5 {st['percentile_00_5']:.4g}, p99.5 {st['percentile_99_5']:.4g} over {st['n_voxels']} voxels"
            )
    print("class voxel counts: " + ", ".join(f"{k}:{v}" for k, v in fp["class_voxel_counts"].items()))
    if args.out:
        write_fingerprint(fp, args.out, overwrite=args.overwrite)
        print(f"fingerprint written to {args.out}")
    else:
        print(json.dumps(fp, indent=1))
    return EXIT_OK


def _cmd_derive(args: argparse.Namespace) -> int:
    from pipeline.data.transunet import derive_label_map
    from pipeline.utils.atomic import save_json_atomic
    from pipeline.utils.tables import markdown_table

    if args.out and Path(args.out).exists() and not args.overwrite:
        print(f"skipped: {args.out} exists (pass --overwrite to recompute it)")
        return EXIT_OK
    result = derive_label_map(args.transunet, args.rawdata, cases=args.cases)
    at = result["axis_transform"]
    print(
        f"cases: {', '.join(result['cases'])}; raw label transpose {at['raw_xyz_transpose']}, "
        f"flips {at['flip_axes_after_transpose']}; overall agreement {result['overall_agreement']:.4f}"
    )
    rows = [
        [k, str(m["raw_id"]), str(m["name"]), "-" if m["agreement"] is None else f"{m['agreement']:.4f}", m["voxels"]]
        for k, m in result["mapping"].items()
    ]
    print(markdown_table(["TransUNet id", "raw id", "organ", "agreement", "voxels"], rows))
    if args.out:
        save_json_atomic(result, args.out)
        print(f"label map written to {args.out}")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    from pipeline.data.readers import read_dataset

    info = read_dataset(args.path, split=args.split)
    print(f"layout: {info.layout} (axis order {info.axis_order}); name: {info.name}; modality: {info.modality or '-'}")
    print("labels: " + (", ".join(f"{k}={v}" for k, v in info.labels.items()) or "(not declared)"))
    if info.metadata.get("not_in_split_file"):
        print(
            f"cases not in the split file {info.metadata.get('split_file')}: "
            + ", ".join(info.metadata["not_in_split_file"])
        )
    for name, items in info.splits.items():
        missing = info.missing.get(name) or []
        print(
            f"{name}: {len(items)} case(s)"
            + (f" ({len(missing)} listed in the split file but absent)" if missing else "")
        )
        if args.verbose:
            for it in items:
                print(f"  {it['case']}: {it['image']}" + (f" | {it['label']}" if it.get("label") else ""))
    return EXIT_OK


#: the description of ``medseg datasets --help`` (its one-line summary is in ``pipeline.cli.COMMANDS``)
DESCRIPTION = (
    "Dataset tools: validate every case, compute normalisation fingerprints, "
    "derive the TransUNet label map, list detected layouts and splits."
)


def register(p: argparse.ArgumentParser) -> None:
    """Add the options of ``medseg datasets`` to its parser."""
    sub = p.add_subparsers(dest="datasets_command", metavar="SUBCOMMAND")

    def usage(args: argparse.Namespace) -> int:  # `medseg datasets` without a sub-command
        p.print_help()
        return 2

    p.set_defaults(func=usage)

    c = sub.add_parser("check", help="validate every case and print a summary table (exit 3 if any is broken)")
    c.add_argument(
        "path",
        help="dataset folder (MSD, BTCV dataset_0.json, Synapse RawData, TransUNet, nnU-Net v1/v2, "
        "plain folder, DICOM series folders)",
    )
    c.add_argument("--split", help="only this split, or an official split file (synapse, btcv, lung)")
    c.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    c.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    c.add_argument("--all-rows", action="store_true", help="print every case in the table (default: first 50)")
    c.add_argument("-v", "--verbose", action="store_true", help="show notes (empty labels, orientation) for OK cases")
    c.set_defaults(func=_cmd_check)

    f = sub.add_parser("fingerprint", help="median spacing, foreground intensity stats, class voxel counts -> JSON")
    f.add_argument("path", help="dataset folder")
    f.add_argument("--out", metavar="FILE", help="write the JSON here (default: print it)")
    f.add_argument("--split", help="only this split, or an official split file")
    f.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    f.add_argument("-v", "--verbose", action="store_true", help="print each case as it is done")
    f.set_defaults(func=_cmd_fingerprint)

    d = sub.add_parser("derive-label-map", help="derive TransUNet's label ids by cross-tabulation with RawData labels")
    d.add_argument("--transunet", required=True, metavar="DIR", help="TransUNet data folder (with test_vol_h5/)")
    d.add_argument("--rawdata", required=True, metavar="DIR", help="Synapse RawData folder (with Training/label/)")
    d.add_argument("--cases", nargs="+", help="only these case ids (e.g. 0001 0002)")
    d.add_argument("--out", metavar="FILE", help="write the mapping JSON here")
    d.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    d.set_defaults(func=_cmd_derive)

    ls = sub.add_parser("list", help="show the detected layout, labels and splits")
    ls.add_argument("path")
    ls.add_argument("--split")
    ls.add_argument("-v", "--verbose", action="store_true", help="list every case")
    ls.set_defaults(func=_cmd_list)


__all__ = ["register"]
