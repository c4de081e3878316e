"""``medseg export``: write a bundle's or preset's network as ONNX, OpenVINO IR or TorchScript, checked against PyTorch.

Examples (shell)::

    medseg export --model bundles/unetrpp_hippocampus_mri_segmentation --format onnx --out exports/hippo.onnx
    medseg export --model unetrpp_synapse --checkpoint w.pt --format openvino --out exports/synapse.xml
    medseg export --model swinunet3d --allow-untrained --format torchscript --out exports/swin.pt

The logic is :func:`pipeline.deploy.export.export_model`; this module parses options and prints the result.
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.deploy.backend import AUTO_ORDER, BACKENDS, PRECISION_CHOICES
from pipeline.deploy.export import DEFAULT_OPSET, FP32_RTOL, PRECISIONS
from pipeline.deploy.runtimes import FORMATS

__all__ = ["add_backend_options", "backend_options", "register", "run"]


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """Add ``--backend``, ``--precision`` and ``--cache-dir`` (``medseg infer`` and ``medseg benchmark``)."""
    g = p.add_argument_group("network backend (the CPU fast path; see README 'Fast CPU inference')")
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="who runs the network on each window batch: torch (default); openvino or onnxruntime (the network "
        "exported once, checked against torch and cached); auto: the first of "
        f"{', '.join(AUTO_ORDER)} that works here and runs a window batch faster than torch on this CPU (timed "
        "once, kept in the cache), else torch",
    )
    g.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="fp32",
        help="fp32 (default); bf16 only on CPUs with native bf16 (AMX, AVX512-BF16), never emulated; auto: bf16 "
        "where native, else fp32",
    )
    g.add_argument("--cache-dir", default=None, help="export cache (default $MEDSEG_CACHE_DIR, else ~/.cache/medseg)")


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`pipeline.deploy.backend.apply_backend` given on the command line."""
    return {"backend": args.backend, "precision": args.precision, "cache_dir": args.cache_dir}


#: the description of ``medseg export --help`` (its one-line summary is in ``pipeline.cli.COMMANDS``)
DESCRIPTION = (
    "Export the network of a bundle or preset for its window and a fixed --sw-batch-size, run "
    f"PyTorch and the export on a real window (else a seeded random one), fail when max |delta logit| > "
    f"{FP32_RTOL:g} * max |logit|, and write <out>.json beside the export."
)


def register(p: argparse.ArgumentParser) -> None:
    """Add the options of ``medseg export`` to its parser."""
    p.add_argument("--model", required=True, help="bundle directory, or a network preset name (with --checkpoint)")
    p.add_argument("--checkpoint", help="weights file (state dict); default <bundle>/models/model.pt")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="export format")
    p.add_argument("--out", required=True, help="the export's file: .onnx, .xml (+ .bin beside it), .pt")
    p.add_argument("--roi", type=int, nargs=3, metavar=("X", "Y", "Z"), help="window size (default: the model's)")
    p.add_argument("--sw-batch-size", type=int, default=None, help="windows per call, fixed (default: the model's)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32", help="fp32 (default), bf16 (openvino)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, >= 17 (default {DEFAULT_OPSET})")
    p.add_argument(
        "--allow-untrained",
        action="store_true",
        help="without weights, export a seeded random initialisation (smoke tests; the JSON says untrained)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of that initialisation and of a random check window")
    p.add_argument("--threads", type=int, default=None, help="runtime threads for the check (default: torch's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export and its JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``medseg export``; prints the check and the written files."""
    from pipeline.cli import from_args
    from pipeline.deploy.export import export_model

    result = from_args(export_model, args, fmt=args.format, roi_size=args.roi)
    meta, check = result.metadata, result.metadata["check"]
    source = "a window of " + check["input"]["file"] if check["input"]["kind"] == "image" else "a seeded random window"
    print(
        f"max |delta logit| = {check['max_abs_error']:.3g} (relative {check['relative_error']:.2g}, tolerance "
        f"{check['tolerance']:.3g}; argmax agreement {check['argmax_agreement']:.4%}) on {source}"
    )
    untrained = " UNTRAINED (seeded random weights)" if meta["untrained"] else ""
    print(f"exported {meta['model']}{untrained} as {args.format}, input {tuple(meta['input']['shape'])}:")
    for f in result.files:
        print(f"  {f}")
    print(f"  {result.metadata_path}")
    return 0
