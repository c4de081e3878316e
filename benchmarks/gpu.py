#!/usr/bin/env python
"""GPU benchmark: UNETR++ official op sequence vs ours, MONAI sliding window vs our engine, fp32 vs AMP, on CUDA.

On a CUDA machine one run measures three things, each a median of ``--repeats`` timed calls after warm-up calls,
with ``torch.cuda.synchronize()`` before and after every timed call and the compared paths interleaved:

1. **UNETR++ forward** of ``unetrpp_synapse`` at the official input 1x1x64x128x128 (z, y, x: the official preset
   keeps nnU-Net's order), the same network and weights on two code paths: *reference* = ``set_fast(False)``, the
   official UNETR++ op sequence (see ``benchmarks/unetrpp_forward.py``); *ours* = ``set_fast(True)``, plus
   ``optimize_for_cpu`` when run on the CPU (what ``medseg infer`` runs);
2. **sliding window** on a 1x1x256x256x128 (x, y, z) volume with the same preset built for MONAI (x, y, z) tensors
   (``input_order="xyz"``, window 128x128x64; one network object for every method), overlap 0.5, Gaussian blending,
   sw_batch_size 2, the volume and the network on the GPU: MONAI ``sliding_window_inference(...).argmax(1)`` vs
   our :class:`SlidingWindowEngine` ``predict_labels`` (blended and streaming; on CUDA also with ``amp=True``). Each
   method's labels are compared with MONAI's (fraction of equal voxels) and its peak CUDA memory is recorded;
3. **fp32 vs AMP** for the network forward (ours): fp32 and ``torch.autocast(float16)``, with the largest absolute
   logit difference and the fraction of voxels whose argmax is unchanged.

It writes its section to ``benchmarks/results/gpu.md`` (``--out`` to change) and exits 1 when the blended or
streaming engine's labels differ from MONAI's on more than 0.01 % of the voxels. Without CUDA it prints ``no CUDA
device: nothing measured`` and exits 0, writing nothing.
``--device cpu`` runs the same code on the CPU (no synchronize; ``--quick``: a tiny UNETR++ and volume, the tests'
smoke run); a CPU or ``--quick`` run writes a section only where ``--out`` says.

This script is not part of the speed suite: ``benchmarks/run_all.py`` runs the ``benchmarks/*.py`` that define
``main`` on the machine it runs on, so this one's entry point is ``run_cli``. After a GPU run,
``python benchmarks/run_all.py --no-run`` adds its section to RESULTS.md.

Usage::

    python benchmarks/gpu.py                          # on a CUDA machine: writes benchmarks/results/gpu.md
    python benchmarks/gpu.py --repeats 20 --out /tmp/gpu.md
    python benchmarks/gpu.py --device cpu --quick     # smoke run of the same code on the CPU
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.benchmark import PeakMemory, markdown_table, publish, script_parser, time_paths, torch_threads
from pipeline.inference import SlidingWindowEngine
from pipeline.networks import create_network, optimize_for_cpu
from pipeline.networks.unetrpp import UNETRPP
from pipeline.networks.unetrpp.presets import TINY_UNETRPP

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.md"
NO_CUDA = "no CUDA device: nothing measured"
#: the engine's labels (blended, streaming) must equal MONAI's on at least this fraction of the voxels
MIN_AGREEMENT = 0.9999
#: the full run: the Synapse preset, its official patch (z, y, x) and the sliding-window volume (x, y, z)
PRESET = "unetrpp_synapse"
VOLUME = (256, 256, 128)
#: the quick run: a tiny UNETR++ (x, y, z input, 3 classes) and a volume a few windows wide
QUICK_NET = dict(TINY_UNETRPP)
QUICK_VOLUME = (32, 48, 40)
OVERLAP = 0.5
SW_BATCH_SIZE = 2


def synchronizer(device: torch.device) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` for a CUDA device (timings then cover the queued kernels), else None."""
    return partial(torch.cuda.synchronize, device) if device.type == "cuda" else None


def ours(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Our inference path of ``net``'s weights (a copy): ``set_fast(True)``, plus ``optimize_for_cpu`` on the CPU."""
    fast = copy.deepcopy(net).set_fast(True)
    return optimize_for_cpu(fast) if device.type == "cpu" else fast


def build_networks(quick: bool, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(official-order network, MONAI-order network)`` in eval mode on ``device``, seeded.

    The full run builds ``unetrpp_synapse`` twice: as the official preset ((z, y, x) input, for the forward tables)
    and with ``input_order="xyz"`` (for the sliding window on an (x, y, z) volume). The quick run uses one tiny
    (x, y, z) UNETR++ for both.
    """
    torch.manual_seed(0)
    if quick:
        net = UNETRPP(**QUICK_NET).eval().to(device)
        return net, net
    official = create_network(PRESET).eval().to(device)
    torch.manual_seed(0)
    return official, create_network(PRESET, input_order="xyz").eval().to(device)


def synthetic_volume(shape: Sequence[int], device: torch.device, seed: int = 0) -> torch.Tensor:
    """A ``(1, 1, *shape)`` image-like volume: smooth random structures (trilinear upsampling) plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, *[max(2, s // 16) for s in shape], generator=g)
    smooth = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=False)
    return (smooth + 0.05 * torch.randn(1, 1, *shape, generator=g)).to(device)


def forward_times(net: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> dict[str, Any]:
    """Median seconds of one forward of ``x``: the official op sequence (``set_fast(False)``) vs ours, interleaved.

    Returns:
        ``reference`` and ``ours`` (seconds), and ``max_abs_diff`` between their outputs.
    """
    sync = synchronizer(x.device)
    paths = {"reference": copy.deepcopy(net).set_fast(False), "ours": ours(net, x.device)}
    with torch.inference_mode():
        times: dict[str, Any] = time_paths({k: partial(p, x) for k, p in paths.items()}, repeats, warmup, sync=sync)
        times["max_abs_diff"] = float((paths["reference"](x).float() - paths["ours"](x).float()).abs().max())
    return times


def sliding_window_methods(
    net: torch.nn.Module, roi: Sequence[int], *, amp: bool
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The compared sliding-window paths; each maps a ``(1, 1, *spatial)`` volume to ``(*spatial)`` labels.

    Every path runs the same network object with the same window, overlap, Gaussian blending and sw_batch_size, on
    the volume's device. ``amp`` adds our engine with CUDA autocast (it is a no-op on the CPU, so leave it out there).
    """
    from monai.inferers import sliding_window_inference

    def monai(x: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(x, roi, SW_BATCH_SIZE, net, overlap=OVERLAP, mode="gaussian").argmax(1)[0]

    def engine(streaming: bool, use_amp: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        eng = SlidingWindowEngine(roi, overlap=OVERLAP, sw_batch_size=SW_BATCH_SIZE, mode="gaussian", amp=use_amp)
        return lambda x: eng.predict_labels(x, net, streaming=streaming)[0, 0]

    methods = {"monai": monai, "engine": engine(False, False), "stream": engine(True, False)}
    if amp:
        methods["engine, AMP"] = engine(False, True)
    return methods


def sliding_window_rows(
    methods: Mapping[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, repeats: int, warmup: int
) -> list[dict[str, Any]]:
    """Per method: median seconds, speed-up over ``monai`` (the first method), label agreement and peak CUDA memory.

    Each method first runs once untimed (its labels give the agreement with MONAI's; on CUDA its peak allocated
    memory, weights and input included, is measured then), then the timed rounds run the methods interleaved.
    """
    device = str(x.device)
    labels, peaks = {}, {}
    with torch.inference_mode():
        for name, fn in methods.items():
            with PeakMemory(device=device) as mem:
                labels[name] = fn(x).long()
                sync = synchronizer(x.device)
                if sync is not None:
                    sync()
            peaks[name] = mem.cuda_peak_bytes
        times = time_paths(
            {k: partial(fn, x) for k, fn in methods.items()}, repeats, warmup, sync=synchronizer(x.device)
        )
    ref = labels[next(iter(methods))]
    return [
        {
            "method": name,
            "seconds": times[name],
            "speedup": times[next(iter(methods))] / times[name],
            "agreement": float((labels[name] == ref).double().mean()),
            "cuda_peak_mib": None if peaks[name] is None else peaks[name] / 2**20,
        }
        for name in methods
    ]


def amp_times(net: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> dict[str, Any]:
    """Our forward of ``x`` in fp32 and under ``torch.autocast(float16)``: median seconds, interleaved.

    Returns:
        ``fp32`` and ``amp`` (seconds), ``max_abs_diff`` of the logits and ``argmax_agreement`` (fraction of voxels).
    """
    fast = ours(net, x.device)

    def amp_forward() -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=torch.float16):
            return fast(x)

    paths = {"fp32": partial(fast, x), "amp": amp_forward}
    with torch.inference_mode():
        out: dict[str, Any] = time_paths(paths, repeats, warmup, sync=synchronizer(x.device))
        full, half = fast(x).float(), amp_forward().float()
    out["max_abs_diff"] = float((full - half).abs().max())
    out["argmax_agreement"] = float((full.argmax(1) == half.argmax(1)).double().mean())
    return out


def measure(device: torch.device, quick: bool, repeats: int, warmup: int) -> dict[str, Any]:
    """Run the three comparisons on ``device``; returns what :func:`render` prints."""
    official, monai_order = build_networks(quick, device)
    patch = tuple(official.img_size)
    torch.manual_seed(0)
    x = torch.randn(1, official.in_channels, *patch, device=device)
    forward = forward_times(official, x, repeats, warmup)
    print(f"# forward: {forward}", file=sys.stderr, flush=True)
    fp = amp_times(official, x, repeats, warmup)
    print(f"# fp32 vs AMP: {fp}", file=sys.stderr, flush=True)
    roi = tuple(monai_order.img_size)
    volume = synthetic_volume(QUICK_VOLUME if quick else VOLUME, device)
    methods = sliding_window_methods(ours(monai_order, device), roi, amp=device.type == "cuda")
    window = sliding_window_rows(methods, volume, repeats, warmup)
    print(f"# sliding window: {window}", file=sys.stderr, flush=True)
    return {
        "network": "tiny UNETR++ (quick)" if quick else PRESET,
        "classes": official.out_channels,
        "patch": patch,
        "roi": roi,
        "volume": tuple(volume.shape[2:]),
        "forward": forward,
        "amp": fp,
        "window": window,
    }


def render(result: Mapping[str, Any], quick: bool) -> str:
    """The section's tables."""
    fw, fp = result["forward"], result["amp"]
    name = f"`{result['network']}`" if not quick else result["network"]
    text = "QUICK smoke run: a tiny UNETR++, a small volume, one repeat; not the benchmark.\n\n" if quick else ""
    order = "x,y,z" if quick else "z,y,x"
    text += f"UNETR++ forward, official op sequence vs ours (input 1x1x{_shape(result['patch'])}, {order}):\n\n"
    text += markdown_table(
        ["network", "reference (ms)", "ours (ms)", "ours / reference", "max abs difference"],
        [
            [
                name,
                f"{1e3 * fw['reference']:.2f}",
                f"{1e3 * fw['ours']:.2f}",
                f"{fw['ours'] / fw['reference']:.2f}",
                f"{fw['max_abs_diff']:.1e}",
            ]
        ],
        align=["", "right", "right", "right", "right"],
    )
    text += "\n\nfp32 vs AMP (autocast float16), our forward, same input:\n\n"
    text += markdown_table(
        ["network", "fp32 (ms)", "AMP (ms)", "AMP speed-up", "max abs logit difference", "argmax agreement"],
        [
            [
                name,
                f"{1e3 * fp['fp32']:.2f}",
                f"{1e3 * fp['amp']:.2f}",
                f"{fp['fp32'] / fp['amp']:.2f}x",
                f"{fp['max_abs_diff']:.1e}",
                _pct(fp["argmax_agreement"]),
            ]
        ],
        align=["", "right", "right", "right", "right", "right"],
    )
    text += (
        f"\n\nSliding window on a 1x1x{_shape(result['volume'])} (x,y,z) volume, {result['classes']} classes, window "
        f"{_shape(result['roi'])}, overlap {OVERLAP}, Gaussian, sw_batch_size {SW_BATCH_SIZE}; agreement = voxels "
        "whose label equals MONAI's:\n\n"
    )
    rows = [
        [
            r["method"],
            f"{r['seconds']:.3f}",
            f"{r['speedup']:.2f}x",
            _pct(r["agreement"]),
            "–" if r["cuda_peak_mib"] is None else f"{r['cuda_peak_mib']:.0f}",
        ]
        for r in result["window"]
    ]
    text += markdown_table(
        ["method", "wall time (s)", "speed-up vs MONAI", "agreement", "peak CUDA memory (MiB)"],
        rows,
        align=["", "right", "right", "right", "right"],
    )
    return text + "\n"


def disagreements(result: Mapping[str, Any]) -> list[str]:
    """The fp32 engine methods whose labels equal MONAI's on fewer than :data:`MIN_AGREEMENT` of the voxels."""
    return [
        f"{r['method']} ({_pct(r['agreement'])})"
        for r in result["window"]
        if r["method"] in ("engine", "stream") and r["agreement"] < MIN_AGREEMENT
    ]


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.4f}%"


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0, or 1 when our engine's labels differ from MONAI's (see :data:`MIN_AGREEMENT`)."""
    parser = script_parser(__doc__, quick="smoke run: a tiny UNETR++ and volume, 1 repeat (not published)", repeats=10)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (the same code, no sync)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each path first (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: leave as is)")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device}: expected cuda, cuda:N or cpu")
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device {args.device}: expected cuda, cuda:N or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    repeats, warmup = (1, 1) if args.quick else (args.repeats, args.warmup)
    out = args.out if args.out or args.quick or device.type != "cuda" else RESULTS
    with torch_threads(args.threads):
        result = measure(device, args.quick, repeats, warmup)
    cuda = device.type == "cuda"
    publish(
        render(result, args.quick),
        out=out,
        title="GPU: UNETR++ forward, sliding window, fp32 vs AMP (`benchmarks/gpu.py`)",
        script=__file__,
        argv=argv,
        device=str(device),
        details=[
            f"median of {repeats} after {warmup} warm-up call(s), compared paths interleaved"
            + (", `torch.cuda.synchronize()` around every timed call" if cuda else "; CPU run (no synchronize)"),
            "reference = the same network with `set_fast(False)`: the official UNETR++ op sequence; ours = "
            "`set_fast(True)`" + ("" if cuda else " + `optimize_for_cpu`") + "; random weights, seed 0",
            *(
                [
                    f"fp32 settings: cuDNN TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 "
                    f"{torch.backends.cuda.matmul.allow_tf32}, cudnn.benchmark {torch.backends.cudnn.benchmark}"
                ]
                if cuda
                else []
            ),
        ],
    )
    if out == RESULTS:
        print(f"wrote {out}; `python benchmarks/run_all.py --no-run` adds it to RESULTS.md", file=sys.stderr)
    bad = disagreements(result)
    if bad:
        print(f"error: our engine's labels differ from MONAI's: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli())
