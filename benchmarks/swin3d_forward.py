#!/usr/bin/env python
"""Speed and size of the 3D Swin-Unet family against MONAI's SwinUNETR, measured side by side in one run.

Four tables (inference: ``eval()`` + ``torch.inference_mode()``, fp32, CPU unless ``--device``):

1. **Window attention at equal maths.** Our :class:`~pipeline.networks.swin3d.SwinAttention3D` (SDPA, windows folded
   into the batch, cached bias + mask) against MONAI SwinUNETR's ``WindowAttention`` with the same dim, heads, window
   and grid, both including the cyclic roll and window partition/reverse (MONAI's ``window_partition``,
   ``window_reverse``, ``compute_mask``). MONAI's weights are copied into ours and the outputs compared ("max diff").
   The qkv and output projections are the same two ``Linear`` layers on the same tokens in both, so the table also
   gives their time ("linears", timed once) and the speed-up of the attention core (module time minus linears).
2. **All window attentions of one network forward.** Every ``SwinAttention3D`` of ``swinunet3d`` at both ROIs, each
   timed on the activation it really receives (captured with a forward hook) against a MONAI twin with the same grid,
   window, shift and weights; the sums are the window-attention time of one forward pass.
3. **Whole network per window.** ``swinunet3d`` against ``SwinUNETR(feature_size=48)`` at a 96^3 ROI.
4. **Presets.** Parameters, GMACs (``torch.utils.flop_counter`` with the math SDPA backend so the attention matmuls
   count; 1 MAC = 2 FLOPs) and forward time of every preset at the 96^3 and Synapse-style 128x128x64 (x, y, z) ROIs.

Usage::

    python benchmarks/swin3d_forward.py [--quick] [--repeats 3] [--threads N] [--out FILE]

``--quick`` shrinks everything for a smoke run (64^3 network comparison against ``SwinUNETR(feature_size=12)``,
32^3 presets, one repeat); its figures are not the published ones.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.benchmark import markdown_table, median_time, publish, script_parser, torch_threads
from pipeline.networks import create_network
from pipeline.networks.swin3d import SwinAttention3D
from pipeline.networks.swin3d.presets import BTCV_ROI, SYNAPSE_ROI

PRESETS = ("swinunet3d", "swinunet3d_lgt", "swinunet3d_ag", "swinunet3d_pamcam", "swinunet3d_transfuse")
#: (label, grid, dim, heads, window): stage 0/1 of swinunet3d at 96^3 and 128x128x64, and a MONAI-style 7^3 window
ATTN_CASES = (
    ("96^3 stage 0", (24, 24, 24), 48, 3, (4, 4, 4)),
    ("128x128x64 stage 0", (32, 32, 32), 48, 3, (4, 4, 4)),
    ("96^3 stage 1", (12, 12, 12), 96, 6, (4, 4, 4)),
    ("window 7^3", (14, 14, 14), 96, 6, (7, 7, 7)),
)
QUICK_ATTN_CASES = (("quick", (8, 8, 8), 24, 3, (4, 4, 4)),)


def _time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    return median_time(fn, repeats, warmup)["median_s"]


class _MonaiShiftedWindowAttention(torch.nn.Module):
    """MONAI SwinUNETR's window attention with the same roll/partition/reverse as its ``SwinTransformerBlock``."""

    def __init__(self, dim: int, heads: int, grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> None:
        super().__init__()
        from monai.networks.nets.swin_unetr import WindowAttention, compute_mask

        self.attn = WindowAttention(dim, heads, window, qkv_bias=True)
        self.window, self.shift = tuple(window), tuple(shift)
        self.register_buffer("mask", compute_mask(list(grid), self.window, self.shift, None) if any(shift) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from monai.networks.nets.swin_unetr import window_partition, window_reverse

        b, d, h, w, c = x.shape
        if any(self.shift):
            x = torch.roll(x, shifts=tuple(-s for s in self.shift), dims=(1, 2, 3))
        win = self.attn(window_partition(x, self.window), mask=self.mask)
        x = window_reverse(win.view(-1, *self.window, c), self.window, [b, d, h, w])
        if any(self.shift):
            x = torch.roll(x, shifts=self.shift, dims=(1, 2, 3))
        return x


def _ours_from_monai(ref: _MonaiShiftedWindowAttention, dim: int, heads: int, grid, window, shift) -> SwinAttention3D:
    ours = SwinAttention3D(dim, heads, grid, window, shift)
    state = {
        "qkv.weight": ref.attn.qkv.weight,
        "qkv.bias": ref.attn.qkv.bias,
        "proj.weight": ref.attn.proj.weight,
        "proj.bias": ref.attn.proj.bias,
        "attn.relative_position_bias_table": ref.attn.relative_position_bias_table,
    }
    ours.load_state_dict(state)
    return ours.eval()


def _monai_from_ours(ours: SwinAttention3D) -> _MonaiShiftedWindowAttention:
    """MONAI twin of one of our (built, possibly trained) attention modules: same grid, window, shift, weights."""
    a = ours.attn
    ref = _MonaiShiftedWindowAttention(ours.qkv.in_features, a.num_heads, a.grid, a.window_size, a.shift_size)
    with torch.no_grad():
        for name in ("qkv", "proj"):
            getattr(ref.attn, name).weight.copy_(getattr(ours, name).weight)
            getattr(ref.attn, name).bias.copy_(getattr(ours, name).bias)
        ref.attn.relative_position_bias_table.copy_(a.relative_position_bias_table)
    return ref.eval()


def _linears_time(ours: SwinAttention3D, x: torch.Tensor, repeats: int) -> float:
    """Time of the qkv and output ``Linear`` layers on the windowed tokens (the same GEMMs run in MONAI's module)."""
    tokens = ours.attn.partition(x)
    out = tokens.clone()
    return _time(lambda: ours.qkv(tokens), repeats) + _time(lambda: ours.proj(out), repeats)


def _attention_row(label: str, ref: torch.nn.Module, ours: SwinAttention3D, x: torch.Tensor, repeats: int) -> dict:
    a = ours.attn
    with torch.inference_mode():
        diff = float((ours(x) - ref(x)).abs().max())
        t_ref = _time(lambda: ref(x), repeats)
        t_ours = _time(lambda: ours(x), repeats)
        t_lin = _linears_time(ours, x, repeats)
    core_ref, core_ours = t_ref - t_lin, t_ours - t_lin
    return {
        "case": label, "grid": a.grid, "dim": ours.qkv.in_features, "heads": a.num_heads, "window": a.window_size,
        "shift": a.shift_size, "monai_ms": 1e3 * t_ref, "ours_ms": 1e3 * t_ours, "speedup": t_ref / t_ours,
        "linears_ms": 1e3 * t_lin,
        "core_speedup": core_ref / core_ours if core_ours > 0 and core_ref > 0 else float("nan"), "max_diff": diff,
    }  # fmt: skip


def bench_attention(cases, repeats: int) -> list[dict]:
    rows = []
    for label, grid, dim, heads, window in cases:
        for kind, shift in (("W-MSA", (0, 0, 0)), ("SW-MSA", tuple(w // 2 for w in window))):
            torch.manual_seed(0)
            ref = _MonaiShiftedWindowAttention(dim, heads, grid, window, shift).eval()
            ours = _ours_from_monai(ref, dim, heads, grid, window, shift)
            x = torch.randn(1, *grid, dim)
            rows.append(_attention_row(f"{label} {kind}", ref, ours, x, repeats))
    return rows


def bench_network_attention(name: str, roi: Sequence[int], repeats: int) -> dict:
    """Every window attention of one forward of preset ``name``, on its real input, ours vs a MONAI twin."""
    torch.manual_seed(0)
    net = create_network(name, roi_size=tuple(roi)).eval()
    captured: list[tuple[str, SwinAttention3D, torch.Tensor]] = []
    modules = [(n, m) for n, m in net.named_modules() if isinstance(m, SwinAttention3D)]
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: captured.append((n, mod, inp[0].detach().clone())))
        for n, m in modules
    ]
    with torch.inference_mode():
        net(torch.randn(1, 1, *roi))
    for h in hooks:
        h.remove()
    rows = [_attention_row(n, _monai_from_ours(m), m, x, repeats) for n, m, x in captured]
    monai_ms = sum(r["monai_ms"] for r in rows)
    ours_ms = sum(r["ours_ms"] for r in rows)
    return {
        "preset": name, "roi": tuple(roi), "modules": len(rows), "monai_ms": monai_ms, "ours_ms": ours_ms,
        "speedup": monai_ms / ours_ms, "linears_ms": sum(r["linears_ms"] for r in rows),
        "max_diff": max(r["max_diff"] for r in rows), "rows": rows,
    }  # fmt: skip


def bench_network(roi: Sequence[int], repeats: int, out_channels: int = 14, feature_size: int = 48) -> dict:
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    x = torch.randn(1, 1, *roi)
    ours = create_network("swinunet3d", roi_size=tuple(roi), out_channels=out_channels).eval()
    ref = SwinUNETR(in_channels=1, out_channels=out_channels, feature_size=feature_size).eval()
    with torch.inference_mode():
        t_ref = _time(lambda: ref(x), repeats)
        t_ours = _time(lambda: ours(x), repeats)
    return {
        "roi": tuple(roi),
        "feature_size": feature_size,
        "monai_s": t_ref,
        "ours_s": t_ours,
        "speedup": t_ref / t_ours,
        "monai_params": sum(p.numel() for p in ref.parameters()) / 1e6,
        "ours_params": sum(p.numel() for p in ours.parameters()) / 1e6,
    }


def count_gmacs(net: torch.nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates of one forward (GMACs), attention matmuls included (math SDPA backend)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        net(x)
    return counter.get_total_flops() / 2e9


def bench_presets(names: Sequence[str], rois: Sequence[Sequence[int]], repeats: int) -> list[dict]:
    rows = []
    for name in names:
        for roi in rois:
            torch.manual_seed(0)
            net = create_network(name, roi_size=tuple(roi)).eval()
            x = torch.randn(1, 1, *roi)
            with torch.inference_mode():
                t = _time(partial(net, x), repeats)
            rows.append(
                {"preset": name, "roi": tuple(roi), "params": sum(p.numel() for p in net.parameters()) / 1e6,
                 "gmacs": count_gmacs(net, x), "seconds": t}
            )  # fmt: skip
    return rows


def _fmt_t(t: Sequence[int]) -> str:
    return "x".join(map(str, t))


def _attention_table(rows: list[dict], first: str = "case") -> str:
    head = [first, "grid", "dim / heads", "window / shift", "MONAI ms", "ours ms", "speed-up", "linears ms"]
    cells = [
        [
            r["case"], _fmt_t(r["grid"]), f"{r['dim']} / {r['heads']}", f"{_fmt_t(r['window'])} / {_fmt_t(r['shift'])}",
            f"{r['monai_ms']:.1f}", f"{r['ours_ms']:.1f}", f"{r['speedup']:.2f}x", f"{r['linears_ms']:.1f}",
            f"{r['core_speedup']:.2f}x", f"{r['max_diff']:.1e}",
        ]
        for r in rows
    ]  # fmt: skip
    return markdown_table([*head, "core speed-up", "max diff"], cells, align=[""] * 4 + ["right"] * 6)


def tables(attn: list[dict], net: dict, presets: list[dict], net_attn: Sequence[dict] = ()) -> str:
    lines = [
        "**Window attention, ours (SDPA, cached bias+mask) vs MONAI SwinUNETR `WindowAttention`, same weights "
        "(inference, batch 1; linears = the qkv + output projections both run, core = module minus linears)**",
        "",
        _attention_table(attn),
    ]
    for agg in net_attn:
        lines += [
            "",
            f"**All {agg['modules']} window attentions of one `{agg['preset']}` forward at "
            f"{_fmt_t(agg['roi'])} (x,y,z), each on its real input, vs MONAI twins: MONAI {agg['monai_ms']:.1f} ms, "
            f"ours {agg['ours_ms']:.1f} ms, speed-up {agg['speedup']:.2f}x (linears {agg['linears_ms']:.1f} ms)**",
            "",
            _attention_table(agg["rows"], first="module"),
        ]
    net_head = ["ROI (x,y,z)", "SwinUNETR s", "swinunet3d s", "speed-up", "SwinUNETR M params", "swinunet3d M params"]
    net_row = [
        _fmt_t(net["roi"]), f"{net['monai_s']:.2f}", f"{net['ours_s']:.2f}", f"{net['speedup']:.1f}x",
        f"{net['monai_params']:.2f}", f"{net['ours_params']:.2f}",
    ]  # fmt: skip
    preset_rows = [
        [f"`{r['preset']}`", _fmt_t(r["roi"]), f"{r['params']:.2f}", f"{r['gmacs']:.1f}", f"{r['seconds']:.2f}"]
        for r in presets
    ]
    lines += [
        "",
        f"**Whole network per window: `swinunet3d` vs MONAI `SwinUNETR(feature_size={net['feature_size']})` "
        "(inference, batch 1, 14 classes)**",
        "",
        markdown_table(net_head, [net_row], align=[""] + ["right"] * 5),
        "",
        "**Presets (14 classes, 1 input channel, embed_dim 48; GMACs with the math SDPA backend)**",
        "",
        markdown_table(
            ["preset", "ROI (x,y,z)", "M params", "GMACs", "forward s"], preset_rows, align=["", ""] + ["right"] * 3
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = script_parser(__doc__, quick="smoke run: 64^3 vs SwinUNETR(feature_size=12), 32^3 presets, one repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    with torch_threads(args.threads):
        if args.quick:
            attn = bench_attention(QUICK_ATTN_CASES, repeats)
            net_attn = [bench_network_attention("swinunet3d", (32, 32, 32), repeats)]
            net = bench_network((64, 64, 64), repeats, feature_size=12)
            presets = bench_presets(PRESETS[:2], [(32, 32, 32)], repeats)
        else:
            attn = bench_attention(ATTN_CASES, repeats)
            net_attn = [bench_network_attention("swinunet3d", roi, repeats) for roi in (BTCV_ROI, SYNAPSE_ROI)]
            net = bench_network(BTCV_ROI, repeats)
            presets = bench_presets(PRESETS, [BTCV_ROI, SYNAPSE_ROI], repeats)
        publish(
            tables(attn, net, presets, net_attn),
            out=args.out,
            title="3D Swin-Unet family: speed and size (`benchmarks/swin3d_forward.py`)",
            script=__file__,
            argv=argv,
            notes=[
                f"repeats: median of {repeats} (after one warm-up run); the machine is shared, so compare ratios "
                "measured in the same run"
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
