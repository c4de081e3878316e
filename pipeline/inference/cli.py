"""``medseg infer``: sliding-window inference on a file, a folder, or DICOM series, one machine or many (torchrun).

Examples (shell)::

    medseg infer --model bundles/unetrpp_sts_ct_segmentation --input scans/ --output preds/
    medseg infer --model unetrpp_synapse --checkpoint w.pt --preprocessing ct_abdomen --input ct.nii.gz --output out/
    torchrun --nproc_per_node 2 -m pipeline infer --model BUNDLE --input scans/ --output preds/ --quiet
    medseg infer --model BUNDLE --input dicom_export/ --output preds/ --series-uid 1.2.840.113619.2.55.3.4

Input problems are per case: a file that cannot be read (corrupt, a broken link or link loop, a named pipe, two files
for one case name, an unusable header geometry) fails that case with one ``error: case <name>: <file>: ...`` line and
the batch carries on (exit 1 at the end). What was assumed about an input (a NIfTI without orientation, a DICOM folder
with several series, uneven DICOM slice spacing) is printed as ``warning: case <name>: <file>: ...`` and recorded
under ``input_report`` in the ``<case>.json`` sidecar.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the cases are sharded ``cases[rank::world]`` across ranks (gloo on CPU, nccl
on GPU); every rank returns the same exit code: 0, or 1 if any case failed on any rank. A rank that stops with an
error still joins the final count exchange (with a failure flag) before re-raising it, so the other ranks never hang.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from pipeline.deploy.cli import add_backend_options, backend_options
from pipeline.errors import EXIT_CASES_FAILED, UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["register", "run"]


def _axes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(a) for a in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated axes such as 0,1,2, got {text!r}") from None


#: the description of ``medseg infer --help`` (its one-line summary is in ``pipeline.cli.COMMANDS``)
DESCRIPTION = (
    "Segment NIfTI/NRRD files or DICOM series; writes <case>.nii.gz (input shape and affine) and a "
    "<case>.json sidecar per case. Existing outputs are skipped unless --overwrite."
)


def register(p: argparse.ArgumentParser) -> None:
    """Add the options of ``medseg infer`` to its parser."""
    p.add_argument(
        "--model",
        required=True,
        help="bundle directory, or a network preset name (then --checkpoint and --preprocessing are required)",
    )
    p.add_argument(
        "--input",
        required=True,
        help="image file, folder of images, DICOM series folder, or folder of DICOM series folders",
    )
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--checkpoint", help="weights file (state dict); default <bundle>/models/model.pt")
    p.add_argument("--preprocessing", help="preprocessing preset for a preset model (e.g. ct_abdomen)")
    p.add_argument("--roi", type=int, nargs=3, metavar=("X", "Y", "Z"), help="window size (x y z)")
    p.add_argument("--device", default=None, help="network device (default: cuda:LOCAL_RANK if available, else cpu)")
    p.add_argument(
        "--stitch-device",
        default=None,
        help="device holding the stitched volume (e.g. cpu while the network runs on cuda); default: same as --device",
    )
    p.add_argument("--overlap", type=float, default=None, help="window overlap in [0, 1) (default: the model's, 0.5)")
    p.add_argument("--sw-batch-size", type=int, default=None, help="windows per network call")
    p.add_argument("--mode", choices=("gaussian", "constant"), default=None, help="blending (default: the model's)")
    p.add_argument(
        "--tta",
        action="store_true",
        help="mirroring test-time augmentation: the softmax probabilities of the mirrored windows are "
        "averaged (nnU-Net v1); flips the bundle's tta_mirror_axes (the axes flipped in training), else all",
    )
    p.add_argument(
        "--tta-axes",
        type=_axes,
        metavar="AXES",
        help="with --tta: spatial axes to mirror, e.g. 0 or 0,1,2 (x, y, z of the network input)",
    )
    p.add_argument(
        "--streaming",
        action="store_true",
        help="streaming argmax: bounded memory for large volumes (labels are resampled with nearest neighbour)",
    )
    p.add_argument(
        "--resample",
        choices=("probabilities", "labels"),
        default="probabilities",
        help="back to the original grid: resample probabilities then argmax (default), or nearest-"
        "neighbour resampling of the labels",
    )
    p.add_argument(
        "--skip-background",
        choices=("off", "auto", "air", "zero"),
        default="off",
        help="skip windows entirely outside the body: air (CT, below --air-threshold HU), zero (MRI "
        "background), auto (from the model's modality)",
    )
    p.add_argument("--air-threshold", type=float, default=-500.0, help="HU below which CT voxels are air")
    p.add_argument("--amp", action="store_true", help="fp16 autocast for the network (CUDA only; ignored on CPU)")
    add_backend_options(p)
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>_probabilities.nii.gz")
    p.add_argument(
        "--postprocess",
        choices=("largest-component",),
        default=None,
        help="keep the largest connected component of each class",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--series-uid",
        action="append",
        default=[],
        metavar="UID",
        help="DICOM SeriesInstanceUID to read from a series folder that holds several series (repeat for "
        "several folders; a folder of several series holding none of them fails; a folder of one series "
        "is read as is). Default: the series with the most slices, named on stderr and in the sidecar",
    )
    p.set_defaults(func=run)


def _distributed() -> tuple[int, int, Any]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import torch.distributed as dist

    from pipeline.training.distributed import init_distributed

    init_distributed()  # gloo on CPU; nccl on CUDA, with cuda:LOCAL_RANK as this process's current device
    return dist.get_rank(), dist.get_world_size(), dist


def _exchange_device(dist: Any) -> torch.device:
    """Where the final count exchange runs: nccl reduces CUDA tensors only (this rank's GPU), gloo CPU tensors."""
    import torch

    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def run(args: argparse.Namespace) -> int:
    """Execute ``medseg infer``; returns 0, or 1 when any case failed."""
    import torch

    rank, world, dist = _distributed()
    try:
        error: Exception | None = None
        counts = (0, 0, 0)
        try:
            counts = _run_rank(args, rank, world)
        except Exception as exc:  # noqa: BLE001 - re-raised below, after this rank has joined the final exchange
            error = exc
        ok, skipped, failed = counts
        failed_ranks = int(error is not None)
        if dist is not None:
            # every rank reaches this exchange, even one that failed: otherwise the others would wait here forever
            totals = torch.tensor([ok, skipped, failed, failed_ranks], dtype=torch.int64, device=_exchange_device(dist))
            dist.all_reduce(totals)
            ok, skipped, failed, failed_ranks = (int(v) for v in totals)
        if error is not None:
            raise error
        if rank == 0:
            print(f"infer: {ok} written, {skipped} skipped (exist), {failed} failed -> {args.output}", file=sys.stderr)
            if failed_ranks:
                print(
                    f"error: {failed_ranks} of {world} ranks stopped with an error (see their messages above)",
                    file=sys.stderr,
                )
        return EXIT_CASES_FAILED if failed or failed_ranks else 0
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()


def _backend_line(backend: dict[str, Any]) -> str:
    """One stderr line naming the backend and precision in use (and, for auto, what was passed over)."""
    line = f"backend: {backend['name']} ({backend['precision']})"
    if backend.get("cache"):
        line += f", export cache {backend['cache']}: {backend['cache_entry']}"
    for reason in backend.get("passed_over", []):
        line += f"; passed over {reason}"
    return line


def _run_rank(args: argparse.Namespace, rank: int, world: int) -> tuple[int, int, int]:
    """This rank's share of ``medseg infer``; returns its (written, skipped, failed) case counts."""
    import torch

    from pipeline.cli import from_args
    from pipeline.data.inputs import list_inference_inputs
    from pipeline.deploy.backend import apply_backend
    from pipeline.inference.loading import load_model
    from pipeline.inference.runner import InferenceSettings, infer_cases

    device = args.device
    if device is None:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    # --stitch-device holds the stitched volume (the settings' device), --device runs the network (sw_device)
    settings = from_args(
        InferenceSettings, args, device=args.stitch_device, sw_device=device, series_uids=tuple(args.series_uid)
    )
    settings.validate()
    skipped: list[str] = []
    cases = list_inference_inputs(args.input, report_problems=True, skipped=skipped)
    if rank == 0:
        for note in skipped:
            print(f"warning: {note}", file=sys.stderr)
    model = load_model(args.model, args.checkpoint, device, preprocessing=args.preprocessing, roi_size=args.roi)
    model = apply_backend(model, sw_batch_size=args.sw_batch_size, **backend_options(args))
    if rank == 0 and (model.backend["name"] != "torch" or model.backend.get("passed_over")):
        print(_backend_line(model.backend), file=sys.stderr)
    results = infer_cases(cases, model, args.output, settings, rank=rank, world_size=world)
    return (
        sum(r.status == "ok" for r in results),
        sum(r.status == "skipped" for r in results),
        sum(r.status == "failed" for r in results),
    )
