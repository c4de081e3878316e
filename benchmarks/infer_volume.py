"""Benchmark: plain MONAI ``sliding_window_inference`` + ``argmax`` vs our :class:`SlidingWindowEngine`.

Same network (a small deterministic conv net, so the run takes minutes on a CPU; ``channels_last_3d`` weights by
default, one module object shared by every method; ``--no-channels-last`` keeps NCDHW), same window, overlap, Gaussian
blending and sw_batch_size. Two parts:

1. the real CT cases of ``../shared/data`` (STS_CT, BTCV_like, Task06_Lung_sample), preprocessed with the
   ``ct_abdomen`` preset (outside the timing); wall time (median of ``--repeats``, methods interleaved) and agreement
   (fraction of voxels whose label equals MONAI's);
2. a synthetic CT-like 512x512x300 volume with 14 classes; each method runs in its own subprocess, which reports its
   peak RSS (``VmHWM``) and wall time, and saves its labels for the agreement check.

Methods: ``monai`` (sliding_window_inference then argmax), ``engine`` (our blended path, labels by channel argmax),
``stream`` (our streaming argmax), ``stream+skip`` (streaming, windows entirely in air skipped: labels differ only
in air, so agreement is also reported on body voxels).

Usage::

    python benchmarks/infer_volume.py                       # full run, prints a Markdown table
    python benchmarks/infer_volume.py --quick               # smoke run (small volumes, 1 repeat)
    python benchmarks/infer_volume.py --out benchmarks/results/infer_volume.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.benchmark import markdown_table, publish, script_parser, time_paths, torch_threads  # noqa: E402

METHODS = ("monai", "engine", "stream", "stream+skip")


class SmallNet(nn.Sequential):
    """Conv3d(1->f, 3) -> ReLU -> Conv3d(f->classes, 1): cheap, deterministic from a seed."""

    def __init__(self, out_channels: int = 14, features: int = 4, seed: int = 0, channels_last: bool = False) -> None:
        torch.manual_seed(seed)
        super().__init__(nn.Conv3d(1, features, 3, padding=1), nn.ReLU(), nn.Conv3d(features, out_channels, 1))
        self.eval()
        if channels_last:  # oneDNN's channels-last 3-D convolutions; the same module is given to every method
            self.to(memory_format=torch.channels_last_3d)


def run_method(
    method: str, x: torch.Tensor, net: nn.Module, roi: Sequence[int], overlap: float, sw: int
) -> torch.Tensor:
    """Labels (spatial, uint8/int64) of ``x`` (1, 1, *spatial) with ``method``."""
    from monai.inferers import sliding_window_inference

    from pipeline.inference import SlidingWindowEngine

    with torch.inference_mode():
        if method == "monai":
            return sliding_window_inference(x, roi, sw, net, overlap=overlap, mode="gaussian").argmax(1)[0]
        engine = SlidingWindowEngine(
            roi, overlap=overlap, sw_batch_size=sw, mode="gaussian", skip_below=0.0 if method == "stream+skip" else None
        )
        return engine.predict_labels(x, net, streaming=method != "engine")[0, 0]


def real_ct_volumes(quick: bool, cases_per_dataset: int | None = None) -> list[tuple[str, str, torch.Tensor]]:
    """(dataset, case, preprocessed (1, 1, x, y, z) tensor) for the real CT cases."""
    from pipeline.paths import find_data_root
    from pipeline.transforms import build_preprocessing

    root = find_data_root()
    if root is None:
        return []
    pre = build_preprocessing("ct_abdomen", keys=("image",))
    globs = [
        ("STS_CT", "STS_CT/imagesTr/*.nii.gz"),
        ("BTCV_like", "BTCV_like/imagesTr/*.nii.gz"),
        ("Task06_Lung_sample", "Task06_Lung_sample/imagesTr/*.nii.gz"),
    ]
    out = []
    for name, pattern in globs:
        files = sorted(root.glob(pattern))
        if quick:  # the smallest case only
            files = files[1:2] if name == "BTCV_like" else []
        elif cases_per_dataset:
            files = files[:cases_per_dataset]
        for f in files:
            img = pre({"image": str(f)})["image"].as_tensor()[None].float()
            if quick:  # a central 64x64x32 block keeps the smoke run to seconds
                c = [max((s - k) // 2, 0) for s, k in zip(img.shape[2:], (64, 64, 32))]
                img = img[:, :, c[0] : c[0] + 64, c[1] : c[1] + 64, c[2] : c[2] + 32]
            out.append((name, f.name.split(".")[0], img.contiguous()))
    return out


def synthetic_ct(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """CT-like volume in ``ct_abdomen`` units (0..1): air 0 around an elliptic body with organs and noise."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.meshgrid(torch.linspace(-1, 1, shape[0]), torch.linspace(-1, 1, shape[1]), indexing="ij")
    body = ((x / 0.85) ** 2 + (y / 0.6) ** 2) <= 1.0
    vol = torch.zeros((1, 1, *shape), dtype=torch.float32)
    for z in range(shape[2]):  # slice by slice: no large temporaries
        sl = 0.4 + 0.1 * torch.rand(shape[0], shape[1], generator=g)
        organ = ((x - 0.3) ** 2 + (y + 0.1) ** 2) < 0.04 + 0.02 * np.sin(z / 20.0)
        sl = torch.where(organ, sl + 0.3, sl)
        vol[0, 0, :, :, z] = torch.where(body, sl, torch.zeros(()))
    return vol


def peak_rss_gib() -> float:
    """Peak resident set size of this process in GiB.

    ``VmHWM`` from ``/proc/self/status`` belongs to this process image; ``ru_maxrss`` is not used because Linux
    carries it over from the forking parent across ``exec``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _worker(args: argparse.Namespace) -> int:
    """Subprocess: run one method on the synthetic volume, save labels, print JSON with time and peak RSS."""
    torch.set_num_threads(args.threads)
    x = synthetic_ct(args.size)
    net = SmallNet(14, args.features, channels_last=args.channels_last)
    t = time.perf_counter()
    labels = run_method(args.worker, x, net, args.roi, args.overlap, args.sw_batch_size)
    seconds = time.perf_counter() - t
    np.save(args.labels_out, labels.to(torch.uint8).numpy())
    rss_gib = peak_rss_gib()
    print(json.dumps({"method": args.worker, "seconds": seconds, "peak_rss_gib": rss_gib}))
    return 0


def bench_real(cases, net, roi, overlap, sw, repeats) -> list[dict]:
    """Per case: each method once, untimed (a warm-up whose labels give the agreement with MONAI's), then ``repeats``
    interleaved timed rounds; the per-case medians are summed over the cases."""
    seconds = dict.fromkeys(METHODS, 0.0)
    agree, agree_body = dict.fromkeys(METHODS, 0), dict.fromkeys(METHODS, 0)
    voxels = body_voxels = 0
    for _ds, _case, x in cases:
        body = x[0, 0] > 0
        labels = {m: run_method(m, x, net, roi, overlap, sw).long() for m in METHODS}
        for m, lab in labels.items():
            agree[m] += int((lab == labels["monai"]).sum())
            agree_body[m] += int((lab == labels["monai"])[body].sum())
        voxels, body_voxels = voxels + labels["monai"].numel(), body_voxels + int(body.sum())
        paths = {m: partial(run_method, m, x, net, roi, overlap, sw) for m in METHODS}
        for m, t in time_paths(paths, repeats, warmup=0).items():
            seconds[m] += t
    return [
        {
            "method": m,
            "seconds": seconds[m],
            "speedup": seconds["monai"] / seconds[m],
            "agreement": agree[m] / voxels,
            "agreement_body": agree_body[m] / body_voxels,
        }
        for m in METHODS
    ]


def bench_large(args, tmp: Path) -> list[dict]:
    rows = []
    labels = {}
    procs = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for m in args.large_methods:
        out = tmp / f"{m.replace('+', '_')}.npy"
        opts = {
            "--worker": m,
            "--labels-out": out,
            "--overlap": args.overlap_large,
            "--sw-batch-size": args.sw_batch_size,
            "--features": args.features,
            "--threads": args.threads,
        }
        cmd = [sys.executable, str(Path(__file__).resolve()), *(str(v) for kv in opts.items() for v in kv)]
        cmd += ["--size", *map(str, args.size), "--roi", *map(str, args.roi_large)]
        cmd += [] if args.channels_last else ["--no-channels-last"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        if not args.parallel:
            proc.wait()
        procs.append((m, out, proc))
    for m, out, proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"worker {m} failed: {stderr[-1500:]}")
        res = json.loads(stdout.strip().splitlines()[-1])
        labels[m] = np.load(out)
        out.unlink()
        rows.append(res)
    ref = labels["monai"]
    body = synthetic_ct(args.size)[0, 0].numpy() > 0
    for row in rows:
        lab = labels[row["method"]]
        row["agreement"] = float((lab == ref).mean())
        row["agreement_body"] = float((lab == ref)[body].mean())
        row["rss_ratio"] = row["peak_rss_gib"] / rows[0]["peak_rss_gib"]
        row["speedup"] = rows[0]["seconds"] / row["seconds"]
    return rows


def markdown(real_rows, large_rows, args, n_cases) -> str:
    lines = []
    if real_rows:
        rows = [
            [
                r["method"],
                f"{r['seconds']:.2f}",
                f"{r['speedup']:.2f}x",
                _pct(r["agreement"]),
                _pct(r["agreement_body"]),
            ]
            for r in real_rows
        ]
        head = ["method", "wall time (s)", "speed-up vs MONAI", "agreement (all voxels)", "agreement (body)"]
        lines += [
            f"Real CT ({n_cases} cases from STS_CT, BTCV_like, Task06_Lung_sample; `ct_abdomen` preprocessing; "
            f"roi {tuple(args.roi)}, overlap {args.overlap}, Gaussian, sw_batch_size {args.sw_batch_size}; "
            f"median of {args.repeats} after a warm-up, summed over cases):",
            "",
            markdown_table(head, rows, align=[""] + ["right"] * 4),
            "",
        ]
    if large_rows:
        rows = [
            [
                r["method"], f"{r['seconds']:.1f}", f"{r['speedup']:.2f}x", f"{r['peak_rss_gib']:.2f}",
                f"{r['rss_ratio']:.2f}", _pct(r["agreement"]), _pct(r["agreement_body"]),
            ]
            for r in large_rows
        ]  # fmt: skip
        head = ["method", "wall time (s)", "speed-up vs MONAI", "peak RSS (GiB)", "RSS / MONAI", "agreement (all)"]
        lines += [
            f"Synthetic CT-like {'x'.join(map(str, args.size))}, 14 classes (roi {tuple(args.roi_large)}, overlap "
            f"{args.overlap_large}, Gaussian, sw_batch_size {args.sw_batch_size}; one subprocess per method, "
            f"{'run concurrently' if args.parallel else 'one after another'}, single run):",
            "",
            markdown_table([*head, "agreement (body)"], rows, align=[""] + ["right"] * 6),
        ]
    return "\n".join(lines) + "\n"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.4f}%"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = script_parser(__doc__, quick="smoke run: one case per dataset, a small synthetic volume")
    p.add_argument("--roi", type=int, nargs=3, default=[96, 96, 96])
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--roi-large", type=int, nargs=3, default=[96, 96, 96])
    p.add_argument("--overlap-large", type=float, default=0.25)
    p.add_argument("--sw-batch-size", type=int, default=2)
    p.add_argument("--features", type=int, default=4, help="hidden channels of the benchmark net")
    p.add_argument("--size", type=int, nargs=3, default=[512, 512, 300], help="synthetic volume size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep the benchmark net in the default NCDHW layout (default: channels_last_3d weights, "
        "applied to the one network every method uses)",
    )
    p.add_argument("--cases-per-dataset", type=int, default=None, help="first N cases of each dataset (default all)")
    p.add_argument(
        "--large-methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods run on the synthetic volume (monai first)",
    )
    p.add_argument(
        "--parallel",
        action="store_true",
        help="run the synthetic-volume workers concurrently (peak RSS stays per process; wall times are "
        "then measured under equal contention)",
    )
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--labels-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 1
        if args.size == [512, 512, 300]:
            args.size = [64, 64, 48]
        args.roi = [32, 32, 32]
        args.roi_large = [32, 32, 32]
        args.features = 2
        args.large_methods = ["monai", "stream"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return _worker(args)
    real_rows, large_rows, n_cases = [], [], 0
    with torch_threads(args.threads):
        if not args.skip_real:
            cases = real_ct_volumes(args.quick, args.cases_per_dataset)
            n_cases = len(cases)
            if cases:
                net = SmallNet(14, args.features, channels_last=args.channels_last)
                real_rows = bench_real(cases, net, args.roi, args.overlap, args.sw_batch_size, args.repeats)
        if not args.skip_large:
            with tempfile.TemporaryDirectory() as tmp:
                large_rows = bench_large(args, Path(tmp))
        publish(
            markdown(real_rows, large_rows, args, n_cases),
            out=args.out,
            title="Sliding-window inference: MONAI vs our engine (`benchmarks/infer_volume.py`)",
            script=__file__,
            argv=argv,
            details=[
                f"torch threads {args.threads} (machine shared with other jobs: compare ratios within this run only)",
                f"network: Conv3d(1->{args.features}, 3x3x3) -> ReLU -> Conv3d({args.features}->14, 1x1x1), seed 0, "
                f"{'channels_last_3d' if args.channels_last else 'NCDHW'} weights (the same module for every method)",
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
