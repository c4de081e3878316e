#!/usr/bin/env python
"""CPU backends: the network exported to OpenVINO and ONNX Runtime vs PyTorch, forward and end to end (issue 15).

1. **Forward**, batch 1, fp32, every UNETR++ preset at its official window and ``swinunet3d`` at 96^3, seeded random
   weights. Paths of the same weights, timed round robin in one run (:func:`pipeline.benchmark.time_paths`):
   ``official`` (UNETR++ only: ``set_fast(False)``, the official op sequence at the official (z, y, x) input),
   ``torch`` (what ``medseg infer --backend torch`` runs: the fast path plus ``optimize_for_cpu``), ``openvino`` and
   ``onnxruntime`` (the export that ``--backend`` caches, built by :func:`pipeline.deploy.cache.cached_export`).
   The error column is max |delta logit| / max |logit| of each backend against ``torch`` on the timed input.
2. **End to end** on the real CT cases of ``../shared/data`` (STS_CT, BTCV_like, Task06_Lung_sample):
   ``unetrpp_synapse`` with seeded random weights and ``ct_abdomen`` preprocessing. ``medseg`` = ``infer_cases``
   with ``--backend auto`` (the export is built before the timing); ``monai`` = the same preprocessing, MONAI
   ``sliding_window_inference`` (same window, overlap, Gaussian, sw_batch_size) with the torch network, softmax,
   MONAI ``Invertd`` to the original grid, argmax. Agreement = voxels with the same label.
3. With ``--bf16`` on a CPU with native bf16: the same end to end with ``--precision bf16`` against fp32; bf16 columns
   in the forward table (OpenVINO's bf16 inference precision and torch under CPU autocast, error against fp32
   torch); and the **trained** bundles (those that ship ``models/model.pt``) scored on their validation cases with
   ``medseg benchmark`` code (``strict``) for torch fp32, OpenVINO fp32, OpenVINO bf16 and torch bf16: mean DSC and
   HD95, network seconds, and the share of voxels whose label equals the torch fp32 label (worst case and mean).

Targets (issue 15): ``unetrpp_synapse`` backend <= 0.40x ``official``; ``swinunet3d`` and every UNETR++ preset
backend <= 0.65x ``torch``; end to end ``auto`` >= 2x MONAI with >= 99.99 % equal labels.

Usage::

    python benchmarks/backends.py --out benchmarks/results/backends.md       # full run (about an hour on 2 cores)
    python benchmarks/backends.py --quick                                    # smoke run: tiny networks, one case
    python benchmarks/backends.py --presets unetrpp_synapse --per-dataset 2
    python benchmarks/backends.py --bf16 --out benchmarks/results/backends.md  # + bf16 (AMX / AVX512-BF16 CPUs)
    python benchmarks/backends.py --bf16 --skip-end-to-end --skip-trained     # the forward table only
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.benchmark import markdown_table, publish, script_parser, time_paths, torch_threads  # noqa: E402

#: in order of the targets: the Synapse network and swinunet3d first, then the other UNETR++ presets
PRESETS = (
    "unetrpp_synapse",
    "swinunet3d",
    "unetrpp_hippocampus",
    "unetrpp_sts",
    "unetrpp_acdc",
    "unetrpp_tumor",
    "unetrpp_lung",
)
BACKENDS = ("openvino", "onnxruntime")
#: (backend, precision) paths of the trained-bundle part (--bf16); the first is the reference
TRAINED_PATHS = (("torch", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("torch", "bf16"))
#: a small Swin-Unet 3D for --quick (every stage type, seconds per forward)
QUICK_SWIN = {"roi_size": (32, 32, 16), "patch_size": 2, "embed_dim": 12, "num_heads": (1, 2, 4, 8), "out_channels": 3}
CT_GLOBS = ("STS_CT/imagesTr/*.nii.gz", "BTCV_like/imagesTr/*.nii.gz", "Task06_Lung_sample/imagesTr/*.nii.gz")


def _networks(name: str, quick: bool) -> tuple[torch.nn.Module, torch.nn.Module | None, tuple[int, ...], bool]:
    """``(MONAI-order network, official-op-sequence network or None, window (x, y, z), official input is (z, y, x))``,
    all with the same seeded weights."""
    from pipeline.networks import create_network, get_preset
    from pipeline.networks.unetrpp.presets import TINY_UNETRPP

    preset = get_preset(name)
    swin = name.startswith("swinunet3d")
    kwargs: dict[str, Any] = {}
    if quick:
        kwargs = dict(QUICK_SWIN) if swin else {k: v for k, v in TINY_UNETRPP.items() if k != "in_channels"}
    torch.manual_seed(0)
    if swin:
        net = create_network(name, **kwargs).eval()
        return net, None, tuple(net.roi_size), False
    official = create_network(name, **kwargs).eval()
    zyx = preset.axes != "xyz"
    if zyx:  # a preset's own kwargs are turned to (x, y, z) by input_order; overrides are taken in the order given
        xyz = {**kwargs, "img_size": tuple(kwargs["img_size"])[::-1]} if "img_size" in kwargs else kwargs
        ours = create_network(name, **xyz, input_order="xyz").eval()
        ours.load_state_dict(official.state_dict())
    else:
        ours = copy.deepcopy(official)
    return ours, official.set_fast(False), tuple(ours.img_size), zyx


def forward_rows(
    names: Sequence[str], repeats: int, threads: int, cache: Path, quick: bool, bf16: bool = False
) -> list[list[Any]]:
    """One row per network: window, parameters, median seconds per path, ratios and backend errors (with ``bf16``:
    OpenVINO bf16 and torch bf16 autocast too, their error against fp32 torch)."""
    from monai.transforms import Compose

    from pipeline.deploy.backend import BACKEND_FORMATS, Bf16Autocast
    from pipeline.deploy.cache import cached_export
    from pipeline.deploy.export import compare
    from pipeline.deploy.runtimes import load_exported
    from pipeline.inference.loading import LoadedModel
    from pipeline.networks import optimize_for_cpu

    rows = []
    for name in names:
        net, official, roi, zyx = _networks(name, quick)
        x = torch.randn(1, net.in_channels, *roi, generator=torch.Generator().manual_seed(1))
        fast = optimize_for_cpu(copy.deepcopy(net))
        loaded = LoadedModel(fast, Compose([]), roi, sw_batch_size=1, name=name, source=f"preset:{name}")
        paths: dict[str, Any] = {}
        if official is not None:
            x_official = x.permute(0, 1, 4, 3, 2).contiguous() if zyx else x
            paths["official"] = lambda n=official, t=x_official: n(t)
        paths["torch"] = lambda n=fast, t=x: n(t)
        errors, export_s = {}, {}
        with torch.inference_mode():
            reference = fast(x)
        exports = [(backend, "fp32") for backend in BACKENDS] + ([("openvino", "bf16")] if bf16 else [])
        for backend, precision in exports:
            label = backend if precision == "fp32" else f"{backend} {precision}"
            fmt = BACKEND_FORMATS[backend]
            t0 = time.perf_counter()
            entry = cached_export(loaded, fmt, sw_batch_size=1, precision=precision, root=cache, threads=threads)
            export_s[label] = time.perf_counter() - t0
            run = load_exported(entry.path, fmt, threads=threads, config=entry.metadata["check"].get("runtime_config"))
            errors[label] = compare(reference, run(x))["relative_error"]
            paths[label] = lambda r=run, t=x: r(t)
        if bf16:
            auto = Bf16Autocast(fast)
            with torch.inference_mode():
                errors["torch bf16"] = compare(reference, auto(x))["relative_error"]
            paths["torch bf16"] = lambda n=auto, t=x: n(t)
        with torch.inference_mode():
            t = time_paths(paths, repeats=repeats)
        n_params = sum(p.numel() for p in net.parameters()) / 1e6
        best = min(BACKENDS, key=lambda b: t[b])
        rows.append(
            [
                name,
                "x".join(map(str, roi)),
                f"{n_params:.2f}",
                f"{t['official']:.3f}" if "official" in t else "–",
                f"{t['torch']:.3f}",
                f"{t['openvino']:.3f}",
                f"{t['onnxruntime']:.3f}",
                f"{t[best] / t['official']:.2f}x" if "official" in t else "–",
                f"{t['openvino'] / t['torch']:.2f}x",
                f"{t['onnxruntime'] / t['torch']:.2f}x",
                f"{errors['openvino']:.1e} / {errors['onnxruntime']:.1e}",
            ]
            + (
                [
                    f"{t['openvino bf16']:.3f}",
                    f"{t['torch bf16']:.3f}",
                    f"{t['openvino bf16'] / t['official']:.2f}x" if "official" in t else "–",
                    f"{t['openvino bf16'] / t['openvino']:.2f}x",
                    f"{errors['openvino bf16']:.1e} / {errors['torch bf16']:.1e}",
                ]
                if bf16
                else []
            )
        )
        print(f"[backends] {name}: {t} exports {export_s}", flush=True)
    return rows


def _ct_cases(quick: bool, per_dataset: int | None) -> list[dict[str, str]]:
    from pipeline.data.naming import case_name
    from pipeline.paths import find_data_root

    root = find_data_root()
    if root is None:
        return []
    files = [f for pattern in CT_GLOBS for f in sorted(root.glob(pattern))[: 1 if quick else per_dataset]]
    files = files[:1] if quick else files
    return [{"image": str(f), "case": case_name(str(f))} for f in files]


def _monai_labels(model: Any, image: str, overlap: float, sw: int) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's labels in the original grid and, per voxel, the gap between its two highest class probabilities."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import Invertd

    data = model.preprocessing({"image": image})
    with torch.inference_mode():
        logits = sliding_window_inference(
            data["image"][None].float(), model.roi_size, sw, model.network, overlap=overlap, mode="gaussian"
        )
        data["pred"] = torch.softmax(logits[0], 0)
        inverted = Invertd(keys="pred", transform=model.preprocessing, orig_keys="image", nearest_interp=False)(data)
    probs = inverted["pred"].as_tensor().float()
    top2 = probs.topk(2, dim=0).values
    return probs.argmax(0).to(torch.uint8).numpy(), (top2[0] - top2[1]).numpy()


def end_to_end_rows(
    cases: Sequence[dict[str, str]], threads: int, cache: Path, quick: bool, precision: str = "fp32"
) -> tuple[list[list[Any]], dict[str, Any]]:
    """Per case: seconds of ``medseg`` (``--backend auto``) and of MONAI, and their label agreement."""
    import nibabel as nib

    from pipeline.deploy.backend import apply_backend
    from pipeline.inference import InferenceSettings, infer_cases, load_model
    from pipeline.networks import create_network
    from pipeline.networks.unetrpp.presets import TINY_UNETRPP

    overrides: dict[str, Any] = {}
    if quick:  # the tiny UNETR++ with 14 classes; load_model builds presets in (x, y, z), overrides taken as given
        tiny = {k: v for k, v in TINY_UNETRPP.items() if k != "in_channels"}
        overrides = {**tiny, "out_channels": 14, "img_size": tuple(tiny["img_size"])[::-1]}
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="medseg-backends-"))
    weights = work / "unetrpp_synapse_seed0.pt"
    torch.save(create_network("unetrpp_synapse", input_order="xyz", **overrides).state_dict(), weights)
    roi = overrides.get("img_size")  # None: the preset's window
    model = load_model("unetrpp_synapse", weights, "cpu", preprocessing="ct_abdomen", overrides=overrides, roi_size=roi)
    t0 = time.perf_counter()
    fast = apply_backend(model, "auto", precision, cache_dir=cache, threads=threads)
    info = {"backend": fast.backend, "export_s": time.perf_counter() - t0, "roi": model.roi_size}
    settings = InferenceSettings(quiet=True, overwrite=True)
    rows, totals = [], np.zeros(2)
    for item in cases:
        t0 = time.perf_counter()
        (result,) = infer_cases([item], fast, work / "medseg", settings)
        t_ours = time.perf_counter() - t0
        if result.status != "ok":
            raise RuntimeError(f"{item['case']}: {result.message}")
        ours = np.asarray(nib.load(result.output).dataobj)
        t0 = time.perf_counter()
        ref, margin = _monai_labels(model, item["image"], model.overlap, model.sw_batch_size)
        t_monai = time.perf_counter() - t0
        sidecar = json.loads((work / "medseg" / f"{item['case']}.json").read_text())
        differ = ours != ref
        agree = 1.0 - float(differ.mean())
        # how close to a tie the voxels that differ were (MONAI's top-2 probability gap): noise-level gaps mean
        # the labels differ only where fp32 rounding decides
        gap = f"{float(margin[differ].max()):.1e}" if differ.any() else "–"
        totals += (t_monai, t_ours)
        rows.append(
            [item["case"], sidecar["windows"].get("run", "–"), f"{t_monai:.1f}", f"{t_ours:.1f}"]
            + [f"{t_monai / t_ours:.2f}x", f"{100 * agree:.4f}%", int(differ.sum()), gap]
        )
        print(f"[backends] {item['case']}: monai {t_monai:.1f} s, medseg {t_ours:.1f} s, agree {agree:.6f}", flush=True)
    rows.append(["**all**", "", f"{totals[0]:.1f}", f"{totals[1]:.1f}", f"{totals[0] / totals[1]:.2f}x", "", "", ""])
    return rows, info


def trained_rows(
    threads: int,
    cache: Path,
    limit: int | None,
    paths: Sequence[tuple[str, str]] = TRAINED_PATHS,
    bundles: Sequence[str] | None = None,
) -> list[list[Any]]:
    """The bundles that ship weights (or those named), on their validation cases, one row per ``(backend,
    precision)`` of ``paths``: DSC, HD95, network seconds and the share of voxels labelled as by the first path."""
    import nibabel as nib

    from pipeline.benchmark.runner import BenchmarkOptions, run_benchmark
    from pipeline.bundles import SPECS
    from pipeline.paths import BUNDLES_DIR, find_data_root

    root = find_data_root()
    if root is None:
        return []
    work = Path(tempfile.mkdtemp(prefix="medseg-backends-trained-"))
    rows = []
    for name, spec in SPECS.items():
        if bundles is not None and name not in bundles:
            continue
        if not (BUNDLES_DIR / name / "models" / "model.pt").is_file() or not (root / spec.dataset).is_dir():
            continue
        reference: dict[str, np.ndarray] = {}
        for backend, precision in paths:
            out = work / name / f"{backend}-{precision}"
            opts = BenchmarkOptions(
                bundle=str(BUNDLES_DIR / name),
                data=str(root / spec.dataset),
                split="validation",
                limit=limit,
                out=str(out),
                table="none",
                inference={"backend": backend, "precision": precision, "cache_dir": str(cache)},
                command=f"benchmarks/backends.py (medseg benchmark --backend {backend} --precision {precision})",
            )
            report, _ = run_benchmark(opts)
            labels = {f.name: np.asarray(nib.load(f).dataobj) for f in sorted((out / "predictions").glob("*.nii.gz"))}
            reference = reference or labels
            same = [float((labels[k] == v).mean()) for k, v in reference.items()]
            scores, timing = report.mean_scores(), report.timing_summary()
            rows.append(
                [
                    name,
                    f"{backend} {precision}",
                    len(report.ok_cases),
                    f"{scores['dice']:.4f}",
                    f"{scores['hd95']:.2f}",
                    f"{timing['network']['total']:.1f}",
                    f"{100 * min(same):.3f}%",
                    f"{100 * float(np.mean(same)):.4f}%",
                ]
            )
            print(f"[backends] {name} {backend} {precision}: {rows[-1][3:]}", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.utils.environment import native_bf16

    p = script_parser(__doc__, quick="tiny networks and one CT case (seconds; figures not published)", repeats=3)
    p.add_argument("--presets", nargs="+", default=list(PRESETS), help="networks of the forward table")
    p.add_argument("--per-dataset", type=int, default=None, help="only the first N CT cases of each dataset")
    p.add_argument("--threads", type=int, default=2, help="torch and runtime threads (default 2)")
    p.add_argument("--skip-forward", action="store_true", help="no forward table")
    p.add_argument("--skip-end-to-end", action="store_true", help="no end-to-end tables")
    p.add_argument("--skip-trained", action="store_true", help="with --bf16: no trained-bundle table")
    p.add_argument(
        "--bf16", action="store_true", help="also bf16: end to end, forward and trained bundles (native bf16 only)"
    )
    p.add_argument("--trained-limit", type=int, default=None, help="with --bf16: first N validation cases per bundle")
    args = p.parse_args(argv)
    cache = Path(tempfile.mkdtemp(prefix="medseg-backend-cache-"))
    details = [f"torch and runtime threads: {args.threads}; seeded random weights (seed 0)"]
    parts: list[str] = []

    def publish_parts() -> None:  # after each part, so that a long run lands what it has measured
        publish(
            "\n\n".join(parts),
            out=args.out,
            title="CPU backends: OpenVINO and ONNX Runtime vs PyTorch (`benchmarks/backends.py`)",
            script=__file__,
            argv=argv if argv is not None else sys.argv[1:],
            details=details,
        )

    with torch_threads(args.threads):
        cases = _ct_cases(args.quick, args.per_dataset)
        bf16 = bool(args.bf16 and native_bf16())
        if args.bf16 and not bf16:
            details.append("--bf16 asked for, but this CPU has no native bf16: bf16 not measured")
        precisions = ["fp32"] + (["bf16"] if bf16 else [])
        for precision in [] if args.skip_end_to_end else precisions:
            rows, info = end_to_end_rows(cases, args.threads, cache, args.quick, precision)
            used = f"{info['backend']['name']} ({info['backend']['precision']})"
            head = ["case", "windows", "monai (s)", "medseg (s)", "speed-up", "same label", "voxels differing"]
            head += ["max top-2 gap there"]
            parts.append(
                f"End to end, `unetrpp_synapse` (seeded random weights), {len(cases)} real CT cases, window "
                f"{info['roi']}, `--backend auto --precision {precision}` ran **{used}** (export built in "
                f"{info['export_s']:.0f} s, before the timing):\n\n"
                + markdown_table(head, rows, align=["left"] + ["right"] * 7)
            )
            publish_parts()
        if not args.skip_forward:
            names = ["unetrpp_synapse", "swinunet3d"] if args.quick else args.presets
            head = ["network", "window (x y z)", "params (M)", "official (s)", "torch (s)", "openvino (s)"]
            head += ["onnxruntime (s)", "best / official", "openvino / torch", "onnxruntime / torch"]
            head += ["rel. error ov / ort"]
            if bf16:
                head += ["openvino bf16 (s)", "torch bf16 (s)", "ov bf16 / official", "ov bf16 / ov fp32"]
                head += ["rel. error ov / torch bf16"]
            rows = []
            parts.insert(0, "")
            for name in names:  # one network at a time, published after each
                repeats = 1 if args.quick else args.repeats
                rows += forward_rows([name], repeats, args.threads, cache, args.quick, bf16)
                parts[0] = f"Forward, batch 1, median of {args.repeats} (round robin):\n\n" + markdown_table(
                    head, rows, align=["left", "left"] + ["right"] * (len(head) - 2)
                )
                publish_parts()
        if bf16 and not args.quick and not args.skip_trained:
            head = ["bundle", "backend", "cases", "mean DSC", "mean HD95 (mm)", "network (s)", "same label: worst case"]
            head += ["mean"]
            rows = trained_rows(args.threads, cache, args.trained_limit)
            parts.append(
                "Trained bundles (`models/model.pt`), validation cases, `strict` protocol, fp32 and bf16 (labels "
                "compared with torch fp32, the first row of each bundle):\n\n"
                + markdown_table(head, rows, align=["left", "left"] + ["right"] * 6)
            )
            publish_parts()
    return 0


if __name__ == "__main__":
    sys.exit(main())
