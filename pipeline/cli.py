"""The ``medseg`` / ``python -m pipeline`` command line.

Each sub-command lives next to the stage it drives (:data:`COMMANDS` lists them) and exposes ``DESCRIPTION`` and
``register(parser)``, which adds its options and sets ``func(args) -> int`` as the default. Errors derived from
:class:`pipeline.errors.PipelineError` are printed as one line (``error: <file>: <problem>``) with their exit code;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pipeline import __version__
from pipeline.errors import EXIT_INTERRUPTED, EXIT_RESOURCE, PipelineError

T = TypeVar("T")


def from_args(target: Callable[..., T], args: argparse.Namespace, **given: Any) -> T:
    """Call ``target`` (a function or a dataclass) with the command-line values whose names are its parameters.

    ``given`` adds or overrides values (options whose name or form differs from the parameter's).

    Examples:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class Opts:
        ...     overlap: float = 0.5
        ...     quiet: bool = False
        ...     uids: tuple = ()
        >>> from_args(Opts, argparse.Namespace(overlap=0.25, quiet=True, unrelated=1, uids=["a"]), uids=("a",))
        Opts(overlap=0.25, quiet=True, uids=('a',))
    """
    names = inspect.signature(target).parameters
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return target(**{**values, **given})


#: the sub-commands, in the order ``--help`` lists them: (name, module, one-line summary). A module defines
#: ``DESCRIPTION`` (its ``--help`` text), optionally ``FORMATTER`` (an argparse formatter class), and
#: ``register(parser)``, which adds its options and sets ``func(args) -> int`` as the default.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("datasets", "pipeline.data.cli", "check, fingerprint and inspect datasets"),
    ("infer", "pipeline.inference.cli", "segment images with a bundle or a preset + checkpoint (sliding window)"),
    (
        "evaluate",
        "pipeline.evaluation.cli",
        "DSC/HD95 of predicted label maps against labels, under an explicit protocol",
    ),
    ("train", "pipeline.training.cli", "train a bundle (resumable; torchrun for several processes)"),
    (
        "benchmark",
        "pipeline.benchmark.cli",
        "infer a bundle on a dataset split, evaluate under a protocol, write a paper-style report",
    ),
    (
        "export",
        "pipeline.deploy.cli",
        "export a network (ONNX, OpenVINO, TorchScript) for a fixed window and batch, checked against PyTorch",
    ),
    ("demo", "pipeline.demo", "run a trained bundle on its validation cases (DSC/HD95 table, PNG overlays)"),
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
    for name, module_name, summary in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a stage that is not installed in this build
            if exc.name == module_name:
                continue
            raise
        formatter = getattr(module, "FORMATTER", argparse.HelpFormatter)
        module.register(sub.add_parser(name, help=summary, description=module.DESCRIPTION, formatter_class=formatter))
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
