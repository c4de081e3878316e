"""``medseg benchmark``: infer a bundle on a dataset split, score it under a protocol, write a paper-style report.

Steps: resolve the bundle and refuse to run without trained weights (unless ``allow_untrained``); read the dataset and
choose the split (official split for Synapse/BTCV/Lung, the bundle's own held-out list for other datasets); predict
the cases with :func:`pipeline.inference.infer_cases` (``medseg infer``'s code: skipping finished cases, atomic
``predictions/<case>.nii.gz`` + sidecar; the network's forward time is measured apart from the stitching by
:class:`pipeline.benchmark.inference.TimedNetwork`); score them on the labels' grids with
:func:`pipeline.evaluation.evaluate_folders` (``medseg evaluate``'s code; each case's scoring time is the ``metrics``
stage); write ``report.md``, ``report.json``, ``report.csv`` and ``timings.csv``. A case that fails is reported and
the others go on; the run then exits 1.

Examples:
    >>> from pipeline.benchmark.runner import BenchmarkOptions, run_benchmark
    >>> opts = BenchmarkOptions(bundle="unetrpp_hippocampus_mri_segmentation",
    ...                         data="../shared/data/Task04_Hippocampus", limit=2, out="outputs/bench_hippo")
    >>> report, paths = run_benchmark(opts)  # doctest: +SKIP
    >>> paths["markdown"]  # doctest: +SKIP
    PosixPath('outputs/bench_hippo/report.md')
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.benchmark.datasets import Profile, pick_split, profile_for
from pipeline.benchmark.inference import open_model, stage_timings
from pipeline.benchmark.memory import PeakMemory
from pipeline.benchmark.report import BenchmarkCaseResult, BenchmarkReport
from pipeline.data.naming import case_name
from pipeline.errors import InputDataError, ModelError, UsageError
from pipeline.evaluation.summary import Summary
from pipeline.inference.runner import infer_cases
from pipeline.paths import BUNDLES_DIR, PROJECT_ROOT
from pipeline.utils.atomic import save_json_atomic
from pipeline.utils.environment import system_stamp

logger = logging.getLogger(__name__)

WEIGHTS_FILE = Path("models") / "model.pt"


@dataclass
class BenchmarkOptions:
    """Options of one benchmark run (the ``medseg benchmark`` command line).

    Attributes:
        bundle: bundle folder, or the name of a folder in ``bundles/``.
        data: dataset folder (any layout :func:`pipeline.data.readers.read_dataset` detects).
        split: ``test``/``validation``/``training`` (or a reader's split key); None picks the official one.
        protocol: evaluation protocol (``strict``, ``monai``, ``legacy_unetrpp``, ``legacy_transunet``).
        limit: score only the first N cases of the split.
        out: output folder (report files plus ``predictions/``); default ``outputs/benchmark/<bundle>-<data>-<split>``.
        allow_untrained: run without ``models/model.pt`` (random weights; the report is marked UNTRAINED).
        table: published table to print beside ours: ``auto``, ``none``, ``synapse``, ``btcv``, ``lung``, ``acdc``.
        overwrite: redo predictions that exist from an earlier run.
        device: torch device for inference.
        inference: overrides passed to the inference loader/runner (``roi_size``, ``overlap``, ``sw_batch_size``,
            ``mirror``...); recorded in the report.
        command: the command line, for the report header.
    """

    bundle: str
    data: str
    split: str | None = None
    protocol: str = "strict"
    limit: int | None = None
    out: str | None = None
    allow_untrained: bool = False
    table: str = "auto"
    overwrite: bool = False
    device: str = "cpu"
    inference: dict[str, Any] = field(default_factory=dict)
    command: str = ""


# --- bundle -----------------------------------------------------------------------------------------------------------
def resolve_bundle(spec: str | Path) -> Path:
    """A bundle folder from a path or a name in ``bundles/`` (an unambiguous part of a name is accepted).

    Raises:
        UsageError: when no bundle (or more than one) matches.
    """
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "configs").is_dir():
            raise ModelError("not a bundle folder (no configs/ inside)", path=p)
        return p.resolve()
    candidates = sorted(d for d in BUNDLES_DIR.glob("*") if (d / "configs").is_dir()) if BUNDLES_DIR.is_dir() else []
    exact = [d for d in candidates if d.name == str(spec)]
    if exact:
        return exact[0]
    partial = [d for d in candidates if str(spec) in d.name]
    if len(partial) == 1:
        return partial[0]
    names = ", ".join(d.name for d in candidates) or "none"
    if partial:
        raise UsageError(f"--bundle {spec!r} is ambiguous: matches {', '.join(d.name for d in partial)}")
    raise UsageError(f"--bundle {spec!r}: no such folder and no bundle of that name in {BUNDLES_DIR} (have {names})")


def check_weights(bundle_dir: Path, allow_untrained: bool) -> Path | None:
    """Return the bundle's ``models/model.pt``; without it raise :class:`ModelError` unless ``allow_untrained``."""
    weights = bundle_dir / WEIGHTS_FILE
    if weights.is_file():
        return weights
    if allow_untrained:
        return None
    raise ModelError(
        "no trained weights (models/model.pt is missing): a benchmark of an untrained network reports meaningless "
        "scores. Train or download the weights first; --allow-untrained runs anyway for a smoke test and marks the "
        "report UNTRAINED",
        path=weights,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- dataset and split ------------------------------------------------------------------------------------------------
def bundle_held_out(bundle_dir: Path, data_root: Path, labelled: Sequence[Mapping]) -> list[dict]:
    """The cases the bundle holds out for validation, on this dataset.

    The bundle's ``configs/inference.json`` ``datalist`` (its validation images) is evaluated with ``dataset_dir``
    pointing at ``data_root``, so the bundle's own expression (its ``configs/datalist.json``, or an override)
    decides; the images are matched to the dataset's labelled items. Returns ``[]`` when the bundle defines no such
    list.
    """
    from monai.bundle import ConfigParser

    cfg = bundle_dir / "configs" / "inference.json"
    if not cfg.is_file():
        return []
    parser = ConfigParser()
    try:
        parser.read_config(str(cfg))
        if "datalist" not in parser.get():  # the whole config (parser.config is typed ConfigItem | None)
            return []
        parser["bundle_root"] = str(bundle_dir.resolve())
        parser["dataset_dir"] = str(data_root.resolve())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            images = [str(d["image"] if isinstance(d, Mapping) else d) for d in parser.get_parsed_content("datalist")]
    except Exception as exc:  # noqa: BLE001 - a datalist expression that does not fit this dataset
        logger.info("bundle datalist not usable on %s: %s", data_root, exc)
        return []
    by_path = {str(Path(str(it["image"])).resolve()): it for it in labelled}
    return [dict(by_path[p]) for p in (str(Path(i).resolve()) for i in images) if p in by_path]


@dataclass
class Selection:
    """The cases a run scores and how they were chosen."""

    profile: Profile
    split: str
    items: list[dict]
    layout: str
    note: str


def select_cases(opts: BenchmarkOptions, bundle_dir: Path) -> Selection:
    """Read the dataset, choose the profile and split, apply ``--limit``."""
    from pipeline.data.readers import apply_split_file, read_dataset

    data = Path(opts.data).expanduser()
    if not data.exists():
        raise InputDataError("dataset folder not found", path=data)
    info = read_dataset(data)
    profile = profile_for(layout=info.layout, labels=info.labels, name=f"{info.name} {data.name}", table=opts.table)
    notes = []
    splits = dict(info.splits)
    source = f"{info.layout} layout"
    if profile.key == "lung" and not any(k in splits for k in ("validation", "val")):
        apply_split_file(info, "lung", keep_existing=True)
        splits = dict(info.splits)
        source = "UNETR++ 50/13 lung split (data/lung_split.json)"
    elif profile.key == "synapse":
        source = "official Synapse 18/12 split (data/synapse_split.json)"
    elif profile.key == "btcv":
        source = "the dataset's dataset_0.json"
    own: dict[str, list[dict]] = {}
    if profile.table is None:  # no official split: the bundle's own held-out cases come first
        held = bundle_held_out(bundle_dir, data, info.labelled_items())
        if held:
            own = {"validation": held}
            splits = {**splits, **own}
    default = (
        profile.default_split if profile.table is not None else ("validation" if "validation" in splits else "test")
    )
    name, key, items = pick_split(splits, opts.split, default, source=str(data))
    if key in own:
        source = f"the bundle's held-out cases ({bundle_dir.name}/configs/inference.json 'datalist')"
    missing = info.missing.get(key, [])
    total = len(items) + len(missing)
    notes.append(
        f"{name} split from {source}: {len(items)} labelled case(s) present"
        + (f" of the {total} listed (absent: {', '.join(missing)})" if missing else "")
    )
    if profile.key == "synapse":
        notes.append("upstream (nnFormer/UNETR++) the 12 Synapse test cases also served as the validation set")
    if name in ("training", "train", "Tr", "all"):
        notes.append("WARNING: scored on training cases; the network may have seen them")
    if opts.limit is not None:
        if opts.limit < 1:
            raise UsageError(f"--limit {opts.limit}: must be >= 1")
        if opts.limit < len(items):
            notes.append(f"--limit {opts.limit}: only the first {opts.limit} of {len(items)} case(s) in case order")
        items = sorted(items, key=lambda it: str(it.get("case")))[: opts.limit]
    return Selection(profile, name, items, info.layout, "; ".join(notes))


# --- scoring ---------------------------------------------------------------------------------------------------------
def score_cases(
    pairs: Sequence[tuple[str, str | Path, str | Path]], labels: Sequence[int], protocol: Any
) -> tuple[Summary, dict[str, float]]:
    """Score ``(case, prediction, label)`` files with :func:`pipeline.evaluation.evaluate_folders`, the code of
    ``medseg evaluate`` (the prediction must be on the label's grid; the spacing is the label header's).

    The files are linked as ``<case><suffix>`` into two temporary folders, so only these pairs are scored, whatever
    their names; failure messages name the real files. Returns the summary and each case's scoring seconds.
    """
    from pipeline.data.naming import image_suffix
    from pipeline.evaluation import evaluate_folders

    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="medseg_bench_") as tmp:
        links: dict[str, str] = {}
        for role in ("pred", "label"):
            (Path(tmp) / role).mkdir()
        for case, pred, label in pairs:
            for role, src in (("pred", pred), ("label", label)):
                link = Path(tmp) / role / f"{case}{image_suffix(src) or '.nii.gz'}"
                link.symlink_to(Path(src).resolve())
                links[str(link)] = str(src)
        summary = evaluate_folders(
            Path(tmp) / "pred", Path(tmp) / "label", protocol, classes=list(labels), workers=1, case_seconds=seconds
        )
    for i, (case, error) in enumerate(summary.failures):
        for linked, src in links.items():
            error = error.replace(linked, src)
        summary.failures[i] = (case, error)
    return summary, seconds


def score_case(
    pred_path: str | Path, label_path: str | Path, labels: Sequence[int], protocol: Any
) -> tuple[dict[int, float | None], dict[int, float | None]]:
    """DSC and HD95 per label id of one prediction file against its label file (:func:`score_cases`).

    Raises:
        InputDataError: unreadable files or a prediction that is not on the label's grid.
    """
    summary, _ = score_cases([("case", pred_path, label_path)], labels, protocol)
    if summary.failures:
        raise InputDataError(summary.failures[0][1])
    return {r["class"]: r["dice"] for r in summary.rows}, {r["class"]: r["hd95"] for r in summary.rows}


# --- the run ----------------------------------------------------------------------------------------------------------
def _sidecar_timings(path: Path) -> dict[str, float]:
    """The report's stage timings from an inference sidecar (``timings_s``), or from the ``timings`` that earlier
    benchmark runs wrote into their own sidecars; empty when the sidecar has neither."""
    try:
        side = json.loads(path.read_text())
        if "timings_s" in side:
            return stage_timings(side["timings_s"])
        return {k: float(v) for k, v in side["timings"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def default_out_dir(bundle_dir: Path, data: str | Path, split: str | None) -> Path:
    return PROJECT_ROOT / "outputs" / "benchmark" / f"{bundle_dir.name}-{Path(data).name}-{split or 'auto'}"


def _fingerprint(bundle_dir: Path, weights: Path | None, opts: BenchmarkOptions) -> dict[str, Any]:
    return {
        "bundle": str(bundle_dir),
        "weights_sha256": _sha256(weights) if weights else "untrained",
        "device": opts.device,
        "inference": dict(sorted(opts.inference.items())),
    }


def run_benchmark(opts: BenchmarkOptions) -> tuple[BenchmarkReport, dict[str, Path]]:
    """Run the benchmark described by ``opts``; returns the report and the files written."""
    from pipeline.evaluation.protocols import get_protocol

    t_start = time.perf_counter()
    proto = get_protocol(opts.protocol)
    bundle_dir = resolve_bundle(opts.bundle)
    weights = check_weights(bundle_dir, opts.allow_untrained)
    sel = select_cases(opts, bundle_dir)
    out_dir = Path(opts.out).expanduser() if opts.out else default_out_dir(bundle_dir, opts.data, sel.split)
    pred_dir = out_dir / "predictions"
    fp = _fingerprint(bundle_dir, weights, opts)
    fp_file = out_dir / "run.json"
    if fp_file.is_file() and not opts.overwrite:
        old = json.loads(fp_file.read_text())
        if old != fp:
            raise UsageError(
                f"{out_dir} holds predictions made with other weights or settings; pass --overwrite "
                "or choose another --out"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json_atomic(fp, fp_file)

    items = [{**item, "case": str(item.get("case") or case_name(str(item["image"])))} for item in sel.items]
    cases: list[BenchmarkCaseResult] = []
    reused: list[str] = []
    with PeakMemory(device=opts.device) as mem:
        model = open_model(bundle_dir, weights, device=opts.device, **opts.inference)
        warm = model.warmup()
        settings = replace(model.inference_settings, overwrite=opts.overwrite)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = infer_cases(items, model.loaded, pred_dir, settings, timing_hook=model.timer.measure)
        predicted = [(r.case, str(r.output), it["label"]) for r, it in zip(results, items) if r.status != "failed"]
        labels = [c.label for c in sel.profile.classes]
        summary, metric_seconds = score_cases(predicted, labels, proto) if predicted else (None, {})
    failures = dict(summary.failures) if summary else {}
    for item, r in zip(items, results):
        res = BenchmarkCaseResult(r.case, image=str(item["image"]), label=str(item["label"]))
        cases.append(res)
        if r.status == "failed":
            res.status, res.error = "failed", r.message
            continue
        res.prediction = str(r.output)
        if r.status == "skipped":
            reused.append(r.case)
        res.timings.update(_sidecar_timings(pred_dir / f"{r.case}.json"))
        if r.case in failures:
            res.status, res.error = "failed", failures[r.case]
            continue
        rows = [row for row in summary.rows if row["case"] == r.case] if summary else []
        res.dice = {int(row["class"]): row["dice"] for row in rows}
        res.hd95 = {int(row["class"]): row["hd95"] for row in rows}
        res.timings["metrics"] = metric_seconds[r.case]
    report = BenchmarkReport(
        bundle=bundle_dir.name,
        dataset=str(Path(opts.data).expanduser().resolve()),
        split=sel.split,
        protocol=proto.name,
        classes=list(sel.profile.classes),
        cases=cases,
        untrained=weights is None,
        model=model.description,
        weights=str(weights) if weights else None,
        layout=sel.layout,
        split_note=sel.note,
        protocol_description=proto.summary + (f" (overrides: {', '.join(proto.overrides)})" if proto.overrides else ""),
        warnings=[proto.warning] if proto.warning else [],
        hd95_unit=proto.units,
        published=sel.profile.table,
        memory=mem.as_dict(),
        environment=system_stamp(opts.device),
        inference_settings=model.settings,
        command=opts.command,
        notes=[
            sel.profile.why,
            *model.notes,
            f"one untimed warm-up forward pass ({warm:.2f} s) ran before the first case",
            "the metrics stage includes reading the prediction and the label files",
            *(
                [
                    f"predictions of {', '.join(reused)} were reused from {pred_dir} (their inference timings are "
                    "those recorded when they were made; --overwrite redoes them)"
                ]
                if reused
                else []
            ),
        ],
        wall_seconds=time.perf_counter() - t_start,
    )
    paths = report.write(out_dir)
    return report, paths
