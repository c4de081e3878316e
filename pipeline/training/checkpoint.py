"""Resumable training checkpoints: model, optimizer, scheduler, epoch, iteration and RNG state in one file.

MONAI's model-zoo bundles save only the network weights (``CheckpointSaver(save_dict={'model': net})``), so a stopped
run cannot continue. :class:`ResumableCheckpoint` is an ignite handler that, every ``save_interval`` epochs, writes
``checkpoint.pt`` atomically: the new file is written completely to a temporary name first; only then is the old
``checkpoint.pt`` renamed to ``checkpoint_prev.pt`` and the new one moved into place, so a kill at any moment leaves a
complete checkpoint behind. With ``resume=True`` it restores everything at ``Events.STARTED`` and the engine carries on
with the next epoch.

All entries are tensors, numbers, strings or containers of them, so ``torch.load(weights_only=True)`` reads them.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from pipeline.errors import ModelError
from pipeline.utils.atomic import atomic_path

__all__ = ["ResumableCheckpoint", "capture_rng_state", "restore_rng_state", "unwrap_module", "load_training_state"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint_prev.pt"


def unwrap_module(obj: Any) -> Any:
    """The wrapped module of a ``DistributedDataParallel``/``DataParallel``, else ``obj`` itself."""
    return obj.module if isinstance(obj, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else obj


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) random states, as ``weights_only``-loadable values.

    Examples:
        >>> import torch
        >>> state = capture_rng_state(); a = torch.rand(1)
        >>> restore_rng_state(state); bool(torch.rand(1) == a)
        True
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state(
        (nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["cached"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def load_training_state(save_dir: str | os.PathLike) -> tuple[dict[str, Any], Path] | None:
    """Load the resumable training state of ``save_dir``: ``checkpoint.pt``, falling back to ``checkpoint_prev.pt``;
    None when there is none.

    Raises:
        ModelError: a checkpoint exists but neither file can be read.
    """
    errors = []
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        path = Path(save_dir) / name
        if not path.is_file():
            continue
        try:
            return torch.load(path, map_location="cpu", weights_only=True), path
        except Exception as exc:  # noqa: BLE001 - try the previous checkpoint, report both if neither works
            errors.append(f"{path}: {type(exc).__name__}: {exc}")
    if errors:
        raise ModelError("cannot read the training checkpoint: " + "; ".join(errors), path=save_dir)
    return None


class ResumableCheckpoint:
    """Save and restore a full training state (ignite handler).

    Args:
        save_dir: folder for ``checkpoint.pt`` / ``checkpoint_prev.pt``.
        save_dict: objects with ``state_dict``/``load_state_dict``, e.g.
            ``{"model": net, "optimizer": opt, "lr_scheduler": sched}``; DDP wrappers are unwrapped so the weights
            load into a plain network.
        save_interval: save every this many epochs (and always when training completes).
        resume: at ``Events.STARTED``, restore the latest checkpoint in ``save_dir`` if there is one.
        save_final: also save at ``Events.COMPLETED``.
        main_process: only this process writes (pass ``rank == 0`` under DDP); every process loads.

    Examples:
        >>> import tempfile, torch
        >>> from ignite.engine import Engine
        >>> net = torch.nn.Linear(2, 1); opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> engine = Engine(lambda e, b: None)
        >>> ResumableCheckpoint(tempfile.mkdtemp(), {"model": net, "optimizer": opt}).attach(engine)
        >>> _ = engine.run([0, 1], max_epochs=2)
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        save_interval: int = 1,
        resume: bool = False,
        save_final: bool = True,
        main_process: bool = True,
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}")
        for key, obj in save_dict.items():
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise TypeError(f"save_dict[{key!r}] ({type(obj).__name__}) has no state_dict/load_state_dict")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = int(save_interval)
        self.resume = bool(resume)
        self.save_final = save_final
        self.main_process = main_process
        self.loaded_from: Path | None = None
        self._last_saved: int | None = None

    def attach(self, engine: Engine) -> None:
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        if self.save_final:
            engine.add_event_handler(Events.COMPLETED, self.save)

    def state(self, engine: Engine) -> dict[str, Any]:
        """The dictionary that :meth:`save` writes."""
        out: dict[str, Any] = {k: unwrap_module(obj).state_dict() for k, obj in self.save_dict.items()}
        out["trainer"] = {
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            "epoch_length": None if engine.state.epoch_length is None else int(engine.state.epoch_length),
            "max_epochs": None if engine.state.max_epochs is None else int(engine.state.max_epochs),
        }
        out["rng"] = capture_rng_state()
        return out

    def save(self, engine: Engine) -> None:
        if not self.main_process:
            return
        if self._last_saved == engine.state.iteration:  # EPOCH_COMPLETED then COMPLETED: already on disk
            return
        final = self.save_dir / CHECKPOINT_NAME
        with atomic_path(final) as tmp:
            torch.save(self.state(engine), tmp)
            if final.exists():  # the new file is complete: keep the old one as the previous checkpoint
                os.replace(final, self.save_dir / PREVIOUS_NAME)
        self._last_saved = engine.state.iteration
        logger.info("saved %s (epoch %d, iteration %d)", final, engine.state.epoch, engine.state.iteration)

    def load(self, engine: Engine) -> None:
        found = load_training_state(self.save_dir)
        if found is None:
            logger.warning("resume requested but %s holds no checkpoint: starting from scratch", self.save_dir)
            return
        ckpt, path = found
        for key, obj in self.save_dict.items():
            if key not in ckpt:
                raise ModelError(f"checkpoint has no {key!r} entry (it has {', '.join(ckpt)})", path=path)
            try:
                unwrap_module(obj).load_state_dict(ckpt[key])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise ModelError(
                    f"checkpoint entry {key!r} does not fit: {' '.join(str(exc).split())[:300]}", path=path
                ) from exc
        trainer = ckpt["trainer"]
        if trainer.get("epoch_length") and engine.state.epoch_length not in (None, trainer["epoch_length"]):
            raise ModelError(
                f"checkpoint was made with {trainer['epoch_length']} iterations per epoch, this run has "
                f"{engine.state.epoch_length}: resume with the same data and batch size",
                path=path,
            )
        engine.state.epoch = trainer["epoch"]
        engine.state.iteration = trainer["iteration"]
        restore_rng_state(ckpt["rng"])
        self.loaded_from = path
        self._last_saved = trainer["iteration"]
        logger.info("resumed from %s at epoch %d, iteration %d", path, trainer["epoch"], trainer["iteration"])
