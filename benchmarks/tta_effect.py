"""Effect of mirroring TTA (``medseg infer --tta``) on a trained bundle's validation split: DSC, HD95 and time.

For each bundle, the validation cases of its ``configs/datalist.json`` are segmented twice with the product's own
inference (:func:`pipeline.inference.infer_cases`, the path of ``medseg infer --model BUNDLE``): once plain and once
with ``--tta`` (8 mirror flips, softmax probabilities averaged as in nnU-Net v1). Both runs are scored with
:func:`pipeline.evaluation.evaluate_folders` (through :func:`pipeline.benchmark.runner.score_cases`) under the
``strict`` protocol on each label's own grid (HD95 in mm), and the wall time of each inference run is reported, so
the ratio of the two times is measured in the same run.

Usage::

    python benchmarks/tta_effect.py [--bundle NAME ...] [--threads 2] [--quick] [--out FILE]

``--quick`` uses the first 2 validation cases of each bundle (a smoke run: figures are not comparable).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.benchmark import markdown_table, publish, script_parser, torch_threads

DEFAULT_BUNDLES = ("unetrpp_hippocampus_mri_segmentation", "unetrpp_sts_ct_segmentation")


def _validation(bundle: Path, dataset: Path, limit: int | None) -> list[dict]:
    from monai.data import load_decathlon_datalist

    items = load_decathlon_datalist(str(bundle / "configs" / "datalist.json"), True, "validation", str(dataset))
    cases = [{"image": d["image"], "label": d["label"], "case": Path(d["image"]).name.split(".")[0]} for d in items]
    return cases[:limit] if limit else cases


def measure(bundle_name: str, work: Path, limit: int | None) -> list[list[str]]:
    """Rows (plain, TTA, difference) of one bundle's table."""
    from pipeline.benchmark.runner import score_cases
    from pipeline.demo import _bundle_facts, _find_dataset, resolve_bundle
    from pipeline.inference import InferenceSettings, infer_cases, load_model

    bundle = resolve_bundle(bundle_name)
    facts = _bundle_facts(bundle)
    cases = _validation(bundle, _find_dataset(facts["dataset"], None, download=False), limit)
    model = load_model(bundle, device="cpu")
    rows, means = [], {}
    for tta in (False, True):
        out = work / bundle.name / ("tta" if tta else "plain")
        t0 = time.perf_counter()
        results = infer_cases(cases, model, out, InferenceSettings(tta=tta, quiet=True))
        seconds = time.perf_counter() - t0
        failed = [r.case for r in results if r.status != "ok"]
        if failed:
            raise RuntimeError(f"{bundle.name}: inference failed for {failed}")
        pairs = [(r.case, str(r.output), c["label"]) for r, c in zip(results, cases)]
        summary, _ = score_cases(pairs, sorted(facts["classes"]), "strict")
        per_class = summary.per_class()
        dsc = [per_class[c]["dice"] for c in sorted(facts["classes"])]
        hd = [per_class[c]["hd95"] for c in sorted(facts["classes"])]
        means[tta] = (sum(dsc) / len(dsc), sum(hd) / len(hd), seconds)
        rows.append(
            [
                bundle.name,
                "--tta" if tta else "plain",
                str(len(cases)),
                " / ".join(f"{v:.4f}" for v in dsc),
                f"{means[tta][0]:.4f}",
                " / ".join(f"{v:.2f}" for v in hd),
                f"{means[tta][1]:.2f}",
                f"{seconds:.1f}",
                f"{seconds / len(cases):.2f}",
            ]
        )
    d_dsc, d_hd, ratio = (
        means[True][0] - means[False][0],
        means[True][1] - means[False][1],
        means[True][2] / means[False][2],
    )
    rows.append([bundle.name, "TTA - plain", "", "", f"{d_dsc:+.4f}", "", f"{d_hd:+.2f}", f"x{ratio:.2f}", ""])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = script_parser(__doc__, quick="2 cases per bundle (smoke run)", repeats=1)
    p.add_argument("--bundle", action="append", help="bundle name or folder (repeatable; default: the trained ones)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.set_defaults(out=Path(__file__).parent / "results" / "tta_effect.md")
    args = p.parse_args(argv)
    rows: list[list[str]] = []
    with torch_threads(args.threads), tempfile.TemporaryDirectory(prefix="tta_effect_") as tmp:
        for name in args.bundle or DEFAULT_BUNDLES:
            rows += measure(name, Path(tmp), 2 if args.quick else None)
        head = ["bundle", "inference", "cases", "DSC per class", "mean DSC", "HD95 per class (mm)", "mean HD95 (mm)"]
        publish(
            markdown_table([*head, "time (s)", "s / case"], rows),
            out=args.out,
            title="Mirroring TTA on the validation splits",
            script=__file__,
            argv=argv,
            notes=[
                f"torch threads: {args.threads}; protocol strict on each label's grid; the same weights and "
                "windows in both rows; --tta averages the softmax probabilities of 8 mirror flips; each inference "
                "run is timed once (--repeats is accepted for the suite)"
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
