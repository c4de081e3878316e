#!/usr/bin/env python
"""UNETR++ forward benchmark: every preset at its official input, ours vs the official op sequence, CPU (+ CUDA).

For each preset (``unetrpp_btcv`` is the Synapse network) at the official input (B = 1, nnU-Net z,y,x patch) it
prints the parameter count, FLOPs (``torch.utils.flop_counter``; GMAC = FLOP / 2, fvcore's unit) and the median
forward time in ``torch.inference_mode`` at 1 and 2 CPU threads (and on CUDA when present), for two code paths of
the SAME network and weights, interleaved in the same run:

* **reference**: ``net.set_fast(False)``, the official UNETR++ op sequence (Amshaker/unetr_plus_plus ``dcba1c6``:
  MONAI ``UnetResBlock`` conv blocks with separate BatchNorm, the official EPA tensor ops). It reproduces the official
  parity fixtures to 1e-6, so it is the official network's maths and op order; the official code itself cannot be
  downloaded here.
* **ours**: ``net.set_fast(True)`` (the default) plus, on CPU, ``optimize_for_cpu`` (what ``medseg infer`` runs):
  channels-last oneDNN convs with eval BatchNorm folded in, the 1x1x1 conv as a token linear, EPA with folded L2
  norms, fused ``scaled_dot_product_attention`` and one matmul for the channel branch + ``out_proj2``.

A second table measures the resolution-agnostic mode (``ef_mode="pool"``) against the fixed-size Synapse network.

Usage::

    python benchmarks/unetrpp_forward.py                      # all presets, median of 3
    python benchmarks/unetrpp_forward.py --presets unetrpp_synapse --repeats 5 --out /tmp/unetrpp_synapse.md
    python benchmarks/unetrpp_forward.py --quick              # smoke run on reduced configurations (not the presets)
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.benchmark import markdown_table, median_time, publish, script_parser, time_paths, torch_threads
from pipeline.networks import create_network, get_preset, optimize_for_cpu
from pipeline.networks.unetrpp import UNETRPP
from pipeline.networks.unetrpp.presets import TINY_UNETRPP

PRESETS = ("unetrpp_synapse", "unetrpp_acdc", "unetrpp_lung", "unetrpp_tumor")
#: fvcore GMACs of the official networks, measured upstream (docs/unetr_pp.md section 1)
OFFICIAL_FVCORE_GMACS = {
    "unetrpp_synapse": 47.89,
    "unetrpp_acdc": 43.63,
    "unetrpp_lung": 125.62,
    "unetrpp_tumor": 73.55,
}
#: quick smoke configurations: the three EPA variants on a small network and patch
QUICK = {
    "small_shared_concat": dict(ef_mode="shared", fusion="concat", n_conv_blocks=1),
    "small_separate_conv52": dict(ef_mode="separate", fusion="concat", n_conv_blocks=2),
    "small_param_sum": dict(ef_mode="param", fusion="sum", n_conv_blocks=1),
}
QUICK_BASE = dict(TINY_UNETRPP)


def count_flops(net: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward of the reference path (matmul/conv/attention ops, as torch.utils.flop_counter counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    net.set_fast(False)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops()


def fast_copy(net: torch.nn.Module, device: str) -> torch.nn.Module:
    """The inference path of the same weights: ``set_fast(True)``, plus ``optimize_for_cpu`` on CPU (a copy)."""
    fast = copy.deepcopy(net).set_fast(True)
    return optimize_for_cpu(fast) if device == "cpu" else fast


def reference_vs_ours(net: torch.nn.Module, x: torch.Tensor, repeats: int, device: str) -> dict[str, float]:
    """Median seconds of the reference and the fast path, interleaved (warm-up once each)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    paths = {"reference": net.set_fast(False), "ours": fast_copy(net, device)}
    with torch.inference_mode():
        times = time_paths({name: partial(path, x) for name, path in paths.items()}, repeats, sync=sync)
    net.set_fast(True)
    return times


def bench(
    nets: dict[str, tuple[torch.nn.Module, torch.Tensor]], threads: Sequence[int], repeats: int, cuda: bool
) -> list[dict]:
    rows = []
    for name, (net, x) in nets.items():
        net.eval()
        row = {
            "name": name,
            "input": tuple(x.shape),
            "params": sum(p.numel() for p in net.parameters()),
            "flops": count_flops(net, x),
            "times": {},
        }
        for t in threads:
            with torch_threads(t):
                row["times"][f"cpu {t}T"] = reference_vs_ours(net, x, repeats, "cpu")
            print(f"# {name} cpu {t} thread(s): {row['times'][f'cpu {t}T']}", file=sys.stderr, flush=True)
        if cuda:
            net_c, x_c = net.cuda(), x.cuda()
            row["times"]["cuda"] = reference_vs_ours(net_c, x_c, repeats, "cuda")
            net.cpu()
        rows.append(row)
    return rows


def agnostic_rows(threads: int, repeats: int) -> list[dict]:
    """The resolution-agnostic Synapse network (ef_mode='pool') vs the fixed one: size, FLOPs, time, other patches."""
    kwargs = dict(get_preset("unetrpp_synapse").kwargs)
    fixed = UNETRPP(**kwargs).eval()
    pool = UNETRPP(**{**kwargs, "ef_mode": "pool"}).eval()
    rows = []
    for label, net, patch in (
        ("fixed (official)", fixed, (64, 128, 128)),
        ("agnostic pool", pool, (64, 128, 128)),
        ("agnostic pool", pool, (32, 128, 128)),
        ("agnostic pool", pool, (64, 160, 160)),
    ):
        x = torch.randn(1, 1, *patch)
        flops = count_flops(net, x)
        fast = fast_copy(net, "cpu")
        with torch.inference_mode(), torch_threads(threads):
            t = median_time(partial(fast, x), repeats)["median_s"]
        rows.append(
            {
                "name": label,
                "patch": patch,
                "params": sum(p.numel() for p in net.parameters()),
                "flops": flops,
                "seconds": t,
            }
        )
    return rows


def render(rows: list[dict], agn: list[dict], quick: bool) -> str:
    cols = list(rows[0]["times"]) if rows else []
    head = ["network", "input (B,C,z,y,x)", "params", "GMAC (flop_counter / 2)", "official fvcore GMAC"]
    for c in cols:
        head += [f"reference {c} (s)", f"ours {c} (s)", f"ours / reference {c}"]
    body = []
    for r in rows:
        fv = OFFICIAL_FVCORE_GMACS.get(r["name"])
        line = [f"`{r['name']}`", _shape(r["input"]), f"{r['params']:,}", f"{r['flops'] / 2e9:.2f}", fv or "-"]
        for c in cols:
            t = r["times"][c]
            line += [f"{t['reference']:.2f}", f"{t['ours']:.2f}", f"{t['ours'] / t['reference']:.2f}"]
        body.append(line)
    text = markdown_table(head, body, align=["", ""] + ["right"] * (len(head) - 2)) + "\n"
    if quick:
        text = "QUICK smoke run: reduced configurations on a 16x32x32 patch, one repeat; not the presets.\n\n" + text
    if agn:
        text += (
            '\nResolution-agnostic mode (`ef_mode="pool"`, Synapse configuration, fast path, '
            f"{agn[0].get('threads', 1)} thread(s)):\n\n"
        )
        cells = [
            [r["name"], _shape(r["patch"]), f"{r['params']:,}", f"{r['flops'] / 2e9:.2f}", f"{r['seconds']:.2f}"]
            for r in agn
        ]
        head = ["network", "patch (z,y,x)", "params", "GMAC", "time (s)"]
        text += markdown_table(head, cells, align=["", ""] + ["right"] * 3) + "\n"
    if not quick:
        text += NOTES
    return text


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


NOTES = """
Notes:

- The official network itself was timed upstream on this CPU (docs/unetr_pp.md section 11, not in this run):
  Synapse 1x1x64x128x128 about 3.3 s at 2 threads and 5.0 s at 1 thread. Compare ratios measured in the same run,
  not absolute seconds: the machine is shared, and absolute times vary by 2-3x with the load.
- Where the time goes (Synapse, profiled): about half of it is the two full-resolution paths (`encoder1`,
  `decoder2`: 16-channel 3x3x3 convs + instance norm on 1M voxels). They run the reference ops in both paths:
  PyTorch's channels-last instance/group-norm kernels accumulate 1M-voxel statistics with ~1e-3 error (breaks the
  1e-4 parity), and layout conversions around an exact norm cost as much as the faster channels-last conv saves.
  The speed-up therefore comes from the transformer stages (BatchNorm folding, oneDNN convs on small grids that
  PyTorch sends to its im2col kernel, fused attention, fewer token copies).
- Resolution-agnostic mode (`ef_mode="pool"`): E/F become `Linear(p, p)` after adaptive average pooling of the
  token grid to p tokens, so the N x p matrices disappear (Synapse: -14.3 M parameters); positional embeddings keep
  their reference-grid size and are trilinearly interpolated to other grids. FLOPs and time stay about the same at
  the training patch and scale with the patch elsewhere. Trade-off: the spatial keys/values are a fixed average
  summary of the grid instead of a learned token mixing, and E/F of official checkpoints cannot be loaded into it
  (all other tensors keep their names and shapes). Accuracy on real data was not measured here; the unit test
  trains it on a toy task at two patch sizes and checks it segments a third, unseen size.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = script_parser(__doc__, quick="smoke run: reduced configurations, 1 repeat, 1 thread")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts (default 1 2)")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="presets to run")
    parser.add_argument("--no-agnostic", action="store_true", help="skip the resolution-agnostic table")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.quick:
        repeats, threads = 1, [1]
        nets = {k: (UNETRPP(**{**QUICK_BASE, **v}), torch.randn(1, 1, 16, 32, 32)) for k, v in QUICK.items()}
    else:
        repeats, threads = args.repeats, args.threads
        nets = {}
        for name in args.presets:
            net = create_network(name)
            nets[name] = (net, torch.randn(1, net.in_channels, *net.img_size))
    rows = bench(nets, threads, repeats, cuda=torch.cuda.is_available() and not args.quick)
    agn = [] if (args.quick or args.no_agnostic) else agnostic_rows(min(threads), repeats)
    for r in agn:
        r["threads"] = min(threads)
    publish(
        render(rows, agn, args.quick),
        out=args.out,
        title="UNETR++ forward (official presets, CPU)",
        script=__file__,
        argv=argv,
        details=[
            f"fp32, batch 1, `torch.inference_mode`, median of {repeats}, paths interleaved; the table measures "
            f"{', '.join(map(str, threads))} thread(s)",
            "reference = the same network with `set_fast(False)`: the official UNETR++ op sequence (reproduces the "
            "official parity fixtures); ours = `set_fast(True)` (default) + `optimize_for_cpu` on CPU",
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
