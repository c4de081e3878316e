"""The ``medseg`` / ``python -m pipeline`` command line.

Each sub-command lives next to the stage it drives and exposes ``register(subparsers)``, which adds its parser and
sets ``func(args) -> int`` as the default. Errors derived from :class:`pipeline.errors.PipelineError` are printed as
one line (``error: <file>: <problem>``) with their exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import traceback
from collections.abc import Sequence

from pipeline import __version__
from pipeline.errors import EXIT_INTERRUPTED, EXIT_RESOURCE, PipelineError

#: sub-command modules, in the order ``--help`` lists them
COMMAND_MODULES = (
    "pipeline.data.cli",  # datasets check | fingerprint | derive-label-map
    "pipeline.inference.cli",  # infer
    "pipeline.evaluation.cli",  # evaluate
    "pipeline.training.cli",  # train (bundle training wrapper)
    "pipeline.benchmark.cli",  # benchmark
    "pipeline.deploy.cli",  # export (ONNX, OpenVINO, TorchScript)
    "pipeline.demo",  # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="MONAI-based 3D medical image segmentation: UNETR++ and 3D Swin-Unet models, "
        "sliding-window inference, DSC/HD95 evaluation under explicit protocols.",
    )
    parser.add_argument("--version", action="version", version=f"medseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a stage that is not installed in this build
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def _raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM (e.g. ``kill``, a batch scheduler's time limit) unwinds like Ctrl-C: temporary files are removed."""
    raise KeyboardInterrupt(f"signal {signum}")


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread (e.g. main() called from a worker thread): keep the default
        pass
    try:
        return int(args.func(args) or 0)
    except PipelineError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, no traceback
        if debug:
            traceback.print_exc()
        if _is_oom(exc):
            print(
                f"error: out of memory ({exc}); use --streaming, a smaller --sw-batch-size, or --device cpu",
                file=sys.stderr,
            )
            return EXIT_RESOURCE
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {type(exc).__name__}: {msg} (re-run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
