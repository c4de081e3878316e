"""Time our DSC/HD95 evaluator against MONAI's ``compute_hausdorff_distance`` and medpy's ``hd95`` in one run.

The case is synthetic and abdominal-CT sized: a 512x512x150 label map at 0.76x0.76x3 mm with 13 ellipsoidal organs
(14 classes with the background, volumes from a few hundred voxels to a liver-sized ~1.5 M), and a prediction made of
shifted, rescaled ellipsoids plus small false-positive islands. Every class is present in both, so all three tools
give finite values and they are compared: our max-of-directed HD95 against MONAI, our pooled HD95 against medpy
(relative tolerance 1e-6).

Timed (median of ``--repeats``; medpy, at ~1 min per class here, is run ``--medpy-repeats`` times, default 1):

* ours: :func:`pipeline.evaluation.evaluate_case` on the two label maps (all 13 classes: Dice, HD95, counts);
* MONAI: ``compute_hausdorff_distance(one_hot_pred, one_hot_gt, percentile=95, spacing=...)`` on boolean one-hot
  tensors (building the one-hot is *not* timed, which favours MONAI), and ``DiceMetric(num_classes=14)`` on the label
  maps;
* medpy: ``medpy.metric.binary.hd95(pred == c, gt == c, voxelspacing=...)`` per class on the full volume.

Usage::

    python benchmarks/eval_speed.py [--quick] [--repeats 3] [--medpy-repeats 1] [--out FILE]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.benchmark import markdown_table, median_time, publish, script_parser
from pipeline.utils.environment import package_version

SPACING = (0.76, 0.76, 3.0)

# (centre as fractions of the shape, radii in voxels (x, y, z)) for 13 organs, liver (id 6) the largest
_ORGANS = {
    1: ((0.72, 0.62, 0.55), (45, 40, 14)),  # spleen
    2: ((0.36, 0.68, 0.45), (28, 30, 16)),  # right kidney
    3: ((0.66, 0.70, 0.45), (28, 30, 16)),  # left kidney
    4: ((0.38, 0.42, 0.50), (14, 12, 6)),  # gallbladder
    5: ((0.52, 0.60, 0.80), (7, 7, 20)),  # esophagus
    6: ((0.32, 0.50, 0.60), (110, 90, 28)),  # liver
    7: ((0.66, 0.40, 0.62), (50, 38, 14)),  # stomach
    8: ((0.52, 0.62, 0.50), (10, 10, 45)),  # aorta
    9: ((0.45, 0.60, 0.50), (10, 9, 40)),  # inferior vena cava
    10: ((0.50, 0.52, 0.47), (20, 6, 5)),  # portal and splenic vein
    11: ((0.55, 0.52, 0.40), (40, 10, 6)),  # pancreas
    12: ((0.42, 0.66, 0.62), (6, 5, 3)),  # right adrenal
    13: ((0.60, 0.66, 0.62), (6, 5, 3)),  # left adrenal
}


def _paint(vol: np.ndarray, label: int, centre: Sequence[float], radii: Sequence[float]) -> None:
    lo = [max(0, int(np.floor(c - r))) for c, r in zip(centre, radii)]
    hi = [min(n, int(np.ceil(c + r)) + 1) for c, r, n in zip(centre, radii, vol.shape)]
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0
    vol[tuple(slice(a, b) for a, b in zip(lo, hi))][inside] = label


def make_case(shape: Sequence[int] = (512, 512, 150), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(pred, gt)`` uint8 label maps with 13 organs; organ sizes scale with ``shape``.

    Examples:
        >>> pred, gt = make_case((64, 64, 20))
        >>> sorted(set(np.unique(gt)) - {0}) == list(range(1, 14)) == sorted(set(np.unique(pred)) - {0})
        True
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    factor = np.asarray(shape, float) / np.array([512.0, 512.0, 150.0])
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    # large organs first, so that small ones stay visible where they overlap
    for label, (frac, radii) in sorted(_ORGANS.items(), key=lambda kv: -float(np.prod(kv[1][1]))):
        centre = np.asarray(frac) * np.asarray(shape)
        r = np.maximum(np.asarray(radii, float) * factor, 1.5)
        _paint(gt, label, centre, r)
        shift = rng.uniform(-0.12, 0.12, 3) * r
        _paint(pred, label, centre + shift, r * rng.uniform(0.9, 1.1, 3))
    for label in (6, 7, 1):  # false-positive islands, far from their organ
        size = np.maximum((np.array([10, 10, 4]) * factor).astype(int), 1)
        corner = (rng.uniform(0.05, 0.2, 3) * np.asarray(shape)).astype(int)
        pred[tuple(slice(c, c + s) for c, s in zip(corner, size))] = label
    return pred, gt


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls (no warm-up: every tool starts cold alike) and the last result."""
    t = median_time(fn, repeats, warmup=0)
    return t["median_s"], t["result"]


def _float32_hd95(pred: np.ndarray, gt: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """Our directed distances, combined as MONAI does: float32 values, float32 ``torch.quantile``."""
    import torch
    from scipy import ndimage

    from pipeline.evaluation.surface import surface_distances

    out = []
    for c in ids:
        box = ndimage.find_objects(((pred == c) | (gt == c)).view(np.uint8))[0]
        d = surface_distances(pred[box] == c, gt[box] == c, SPACING)
        out.append(max(torch.quantile(torch.from_numpy(x).float(), 0.95).item() for x in (d.pred_to_gt, d.gt_to_pred)))
    return np.array(out)


def run(shape: Sequence[int], repeats: int, medpy_repeats: int, with_medpy: bool = True) -> dict:
    """Time the tools on one synthetic case; return timings (s) and the largest relative value differences."""
    import warnings

    import torch
    from monai.metrics import DiceMetric, compute_hausdorff_distance

    warnings.filterwarnings("ignore", module="monai")  # deprecation noise from MONAI's own internals

    from pipeline.evaluation import evaluate_case

    pred, gt = make_case(shape)
    ids = list(range(1, 14))
    res: dict = {"shape": tuple(pred.shape), "classes": len(ids) + 1, "repeats": repeats}

    res["ours_max"], rows = _time(lambda: evaluate_case(pred, gt, SPACING, ids, "strict"), repeats)
    ours_max = np.array([r["hd95"] for r in rows])
    ours_dice = np.array([r["dice"] for r in rows])
    pooled = {"hd95_definition": "pooled", "units": "mm"}
    from pipeline.evaluation.protocols import get_protocol

    proto_pooled = get_protocol("strict", **pooled)
    res["ours_pooled"], rows_p = _time(lambda: evaluate_case(pred, gt, SPACING, ids, proto_pooled), repeats)
    ours_pooled = np.array([r["hd95"] for r in rows_p])

    tp, tg = torch.from_numpy(pred), torch.from_numpy(gt)
    oh_p = torch.stack([tp == c for c in ids])[None]
    oh_g = torch.stack([tg == c for c in ids])[None]
    res["monai_hd"], monai_hd = _time(
        partial(compute_hausdorff_distance, oh_p, oh_g, include_background=True, percentile=95, spacing=SPACING),
        repeats,
    )
    monai_hd = monai_hd[0].double().numpy()
    del oh_p, oh_g

    def monai_dice():
        metric = DiceMetric(include_background=False, num_classes=14, reduction="none")
        return metric(tp[None, None], tg[None, None])

    res["monai_dice"], mdice = _time(monai_dice, repeats)
    mdice = mdice[0].double().numpy()
    res["max_rel_monai_hd95"] = float(np.max(np.abs(ours_max - monai_hd) / np.maximum(monai_hd, 1e-12)))
    # MONAI keeps distances in float32 and takes torch.quantile in float32; doing the same with our distances
    # shows that any difference above float64 round-off is MONAI's float32 arithmetic, not the definition
    res["max_rel_monai_hd95_f32"] = float(
        np.max(np.abs(_float32_hd95(pred, gt, ids) - monai_hd) / np.maximum(monai_hd, 1e-12))
    )
    res["max_abs_monai_dice"] = float(np.max(np.abs(ours_dice - mdice)))
    res["hd95_max_directed"] = ours_max.tolist()
    res["hd95_pooled"] = ours_pooled.tolist()
    if with_medpy:
        from medpy.metric.binary import hd95

        res["medpy"], med = _time(lambda: [hd95(pred == c, gt == c, voxelspacing=SPACING) for c in ids], medpy_repeats)
        med = np.array(med)
        res["medpy_repeats"] = medpy_repeats
        res["max_rel_medpy_hd95"] = float(np.max(np.abs(ours_pooled - med) / np.maximum(med, 1e-12)))
    return res


def table(res: dict) -> str:
    """The Markdown table of one :func:`run` result."""
    rows = [
        ["ours (`evaluate_case`, strict)", "Dice + HD95 max-directed, 13 classes", f"{res['ours_max']:.3f}", "1.0", ""],
        ["ours (`evaluate_case`, pooled)", "Dice + HD95 pooled, 13 classes", f"{res['ours_pooled']:.3f}", "1.0", ""],
        [
            "MONAI `compute_hausdorff_distance`",
            "HD95 (one-hot given)",
            f"{res['monai_hd']:.3f}",
            f"{res['monai_hd'] / res['ours_max']:.1f}x",
            f"{res['max_rel_monai_hd95']:.1e} ({res['max_rel_monai_hd95_f32']:.1e} with MONAI's float32 percentile)",
        ],
        [
            "MONAI `DiceMetric(num_classes=14)`",
            "Dice only",
            f"{res['monai_dice']:.3f}",
            f"{res['monai_dice'] / res['ours_max']:.1f}x",
            f"{res['max_abs_monai_dice']:.1e} (abs)",
        ],
    ]
    if "medpy" in res:
        rows.append(
            [
                f"medpy `hd95` (x{res['medpy_repeats']})",
                "HD95 pooled, full volume",
                f"{res['medpy']:.3f}",
                f"{res['medpy'] / res['ours_pooled']:.1f}x",
                f"{res['max_rel_medpy_hd95']:.1e}",
            ]
        )
    head = ["tool", "what", "time (s)", "speed-up of ours", "max rel. difference"]
    return markdown_table(head, rows, align=["", "", "right", "right", "right"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = script_parser(__doc__, quick="small 128x128x40 case, one repeat (smoke run)")
    parser.add_argument("--medpy-repeats", type=int, default=1, help="runs of medpy (slow; default 1)")
    parser.add_argument("--no-medpy", action="store_true", help="skip medpy")
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 150), metavar=("X", "Y", "Z"))
    args = parser.parse_args(argv)
    shape = (128, 128, 40) if args.quick else tuple(args.shape)
    repeats = 1 if args.quick else args.repeats
    res = run(shape, repeats, 1 if args.quick else args.medpy_repeats, with_medpy=not args.no_medpy)
    medpy = f", medpy {res['medpy_repeats']} run(s)" if "medpy" in res else ""
    publish(
        table(res),
        out=args.out,
        title=f"Evaluator speed: DSC + HD95 on a {'x'.join(map(str, res['shape']))} {res['classes']}-class case",
        script=__file__,
        argv=argv,
        details=[
            f"other versions: medpy {package_version('medpy')}",
            f"spacing {SPACING} mm; median of {repeats} run(s){medpy}; values compared class by class (relative "
            "difference); the machine is shared with other jobs: only ratios within this run are meaningful",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
