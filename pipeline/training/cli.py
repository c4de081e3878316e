"""``medseg train``: run a bundle's training config (one process, or one per ``torchrun`` rank).

Examples::

    medseg train --bundle bundles/unetrpp_hippocampus_mri_segmentation
    medseg train --bundle bundles/unetrpp_hippocampus_mri_segmentation --resume --epochs 40
    medseg train --bundle DIR --set val_interval=2 --set "train#dataloader#batch_size=4"
    torchrun --standalone --nnodes=1 --nproc_per_node=2 -m pipeline train --bundle DIR --multi-gpu

``--resume`` restores model, optimizer, LR scheduler, epoch/iteration and RNG state from ``<train_dir>/checkpoint.pt``
(written every epoch by :class:`pipeline.training.ResumableCheckpoint`) and carries on with the next epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Literal, overload

from pipeline.errors import ModelError, UsageError

__all__ = ["register", "parse_overrides", "run_bundle_workflow"]

logger = logging.getLogger(__name__)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["a#b=3", "name=text"]`` -> ``{"a#b": 3, "name": "text"}``; values are JSON when they parse as JSON.

    Examples:
        >>> parse_overrides(["train#trainer#max_epochs=2", "device=$torch.device('cpu')", "roi_size=[16,16,16]"])
        {'train#trainer#max_epochs': 2, 'device': "$torch.device('cpu')", 'roi_size': [16, 16, 16]}
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _bundle_configs(bundle: Path, names: list[str]) -> list[str]:
    files = []
    for name in names:
        path = Path(name)
        if not path.is_absolute() and not path.exists():
            path = bundle / "configs" / name
        if not path.is_file():
            raise UsageError(f"config file not found: {path}", path=path)
        files.append(str(path))
    return files


def run_bundle_workflow(bundle: str | Path, configs: list[str], workflow_type: str = "train", **overrides: Any) -> int:
    """Build a MONAI ``ConfigWorkflow`` from ``bundle/configs/<configs...>``, check its properties, run it.

    Raises:
        UsageError: the bundle folder or a config file is missing.
        ModelError: the config cannot be parsed/instantiated or misses required properties.
    """
    from monai.bundle import ConfigWorkflow

    bundle = Path(bundle)
    if not (bundle / "configs").is_dir():
        raise UsageError("not a bundle folder (no configs/ inside)", path=bundle)
    files = _bundle_configs(bundle, configs)
    overrides.setdefault("bundle_root", str(bundle.resolve()))  # a config cannot see its own folder
    workflow = ConfigWorkflow(config_file=files, workflow_type=workflow_type, **overrides)
    try:
        workflow.initialize()
        missing = workflow.check_properties()
    except Exception as exc:  # config errors surface as one line
        err = _one_line(exc, files[0], "cannot initialise the workflow")
        if err.__cause__ is not None:
            raise err  # noqa: B904 - a PipelineError from the chain keeps its own cause
        raise err from exc
    if missing:
        raise ModelError(f"bundle config misses required properties: {', '.join(missing)}", path=files[0])
    try:
        workflow.run()
    except Exception as exc:  # MONAI wraps everything in RuntimeError("Failed to ...")
        run_err = _one_line(exc, files[0], "the workflow failed", config_only=True)
        if run_err is None:
            raise
        if run_err.__cause__ is not None:
            raise run_err  # noqa: B904 - a PipelineError from the chain keeps its own cause
        raise run_err from exc
    finally:
        workflow.finalize()
    return 0


#: phrases of monai.bundle's resolver errors: a config that names an id it does not define
_CONFIG_ERRORS = ("is not defined in the config content", "is not found in the config resolver", "query key:")


@overload
def _one_line(exc: BaseException, config: str, what: str, *, config_only: Literal[False] = False) -> Exception: ...
@overload
def _one_line(exc: BaseException, config: str, what: str, *, config_only: bool) -> Exception | None: ...
def _one_line(exc: BaseException, config: str, what: str, *, config_only: bool = False) -> Exception | None:
    """The user-facing error behind ``exc``: a PipelineError found in its cause chain (an unreadable case names its
    file, a checkpoint that does not fit names its layers), else a :class:`ModelError` naming ``config`` for config
    resolution errors; ``config_only`` returns None for anything else (a genuine bug keeps its traceback)."""
    from pipeline.errors import PipelineError

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, PipelineError):
            cur.__suppress_context__ = True
            return cur
        text = " ".join(str(cur).split())
        if isinstance(cur, (KeyError, ValueError)) and any(p in text for p in _CONFIG_ERRORS):
            return ModelError(f"{what}: bundle config error: {text[:300]}", path=config)
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    if config_only:
        return None
    return ModelError(f"{what}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}", path=config)


def _cmd_train(args: argparse.Namespace) -> int:
    configs = ["train.json"]
    if args.multi_gpu:
        configs.append("multi_gpu_train.json")
    configs += args.config or []
    overrides = parse_overrides(args.set)
    if args.resume:
        overrides["resume"] = True
    if args.epochs is not None:
        if args.epochs < 1:
            raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
        overrides["train#trainer#max_epochs"] = args.epochs
    if args.device:
        overrides["device"] = f"$torch.device({args.device!r})"
    return run_bundle_workflow(args.bundle, configs, "train", **overrides)


#: the description of ``medseg train --help`` (its one-line summary is in ``pipeline.cli.COMMANDS``)
DESCRIPTION = (
    "Run a MONAI bundle's configs/train.json with resumable checkpoints. Under torchrun, add "
    "--multi-gpu to merge configs/multi_gpu_train.json (DDP: gloo on CPU, nccl on CUDA)."
)


def register(p: argparse.ArgumentParser) -> None:
    """Add the options of ``medseg train`` to its parser."""
    p.add_argument("--bundle", required=True, help="bundle folder (holds configs/train.json)")
    p.add_argument("--resume", action="store_true", help="continue from <train_dir>/checkpoint.pt")
    p.add_argument("--epochs", type=int, help="override train#trainer#max_epochs")
    p.add_argument("--device", help="e.g. cpu or cuda:0 (default: cuda:0 when available)")
    p.add_argument("--multi-gpu", action="store_true", help="merge configs/multi_gpu_train.json (run under torchrun)")
    p.add_argument(
        "--config",
        action="append",
        metavar="FILE",
        help="extra override config (a file name in configs/ or a path); repeatable",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config ID, e.g. --set val_interval=2 (JSON values); repeatable",
    )
    p.set_defaults(func=_cmd_train)
