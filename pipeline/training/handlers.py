"""Small ignite handlers used by the bundles' training configs: gradient clipping, a JSON-lines training log and a
progress bar."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

__all__ = ["GradientClipHandler", "ProgressBar", "TrainingLog"]


class GradientClipHandler:
    """Clip the global gradient norm after ``backward`` and before ``optimizer.step`` (nnU-Net clips at 12).

    Works with MONAI's :class:`~monai.engines.SupervisedTrainer` (it fires ``IterationEvents.BACKWARD_COMPLETED``);
    with AMP the gradients are unscaled first.

    Args:
        max_norm: the clipping threshold; ``None`` or ``<= 0`` disables clipping.
    """

    def __init__(self, max_norm: float | None = 12.0) -> None:
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        if self.max_norm and self.max_norm > 0:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.max_norm or self.max_norm <= 0:  # disabled (attach() does not register it then)
            return
        optimizer: torch.optim.Optimizer = engine.optimizer  # type: ignore[attr-defined]  # MONAI's Trainer has one
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.max_norm)


class ProgressBar:
    """A tqdm progress bar over the iterations of each epoch (trainer: with the running loss; evaluator: cases).

    Wraps :class:`ignite.handlers.ProgressBar`; shown only where it helps: on the main process (rank 0 under
    ``torch.distributed``) and, by default, only when stderr is a terminal, so logs of background runs stay clean.
    ``MEDSEG_PROGRESS=1`` forces it on, ``MEDSEG_PROGRESS=0`` off.

    Args:
        enabled: ``True``/``False`` to force; ``None`` (default) decides as above.
        desc: label in front of the bar (the epoch is appended by ignite).

    Examples:
        >>> from ignite.engine import Engine
        >>> engine = Engine(lambda e, b: {"loss": 0.5})
        >>> ProgressBar(enabled=False).attach(engine)  # a no-op; enabled=True would draw the bar
    """

    def __init__(self, enabled: bool | None = None, desc: str = "") -> None:
        self.enabled = enabled
        self.desc = desc

    def is_enabled(self) -> bool:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return False
        env = os.environ.get("MEDSEG_PROGRESS", "").strip().lower()
        if env in ("0", "false", "no", "off"):
            return False
        if env in ("1", "true", "yes", "on"):
            return True
        if self.enabled is not None:
            return bool(self.enabled)
        return sys.stderr.isatty()

    def attach(self, engine: Engine) -> None:
        if not self.is_enabled():
            return
        from ignite.handlers import ProgressBar as _IgniteBar

        def loss_of(output: object) -> dict[str, float]:
            loss = output.get("loss") if isinstance(output, dict) else None
            return {"loss": float(loss)} if loss is not None else {}

        _IgniteBar(persist=False, desc=self.desc).attach(engine, output_transform=loss_of)


class TrainingLog:
    """Append one JSON line per iteration (``loss``, ``lr``) and per epoch (mean loss, metrics) to ``path``.

    The log is what the bundle README's learning curve is drawn from, and what the resume test compares.

    Args:
        path: the ``.jsonl`` file (appended to, so a resumed run continues it).
        every_iteration: also log each iteration's loss.
        main_process: only this process writes (pass ``rank == 0`` under DDP).
        evaluator: when given, its ``state.metrics`` are added to the epoch record after validation.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        every_iteration: bool = True,
        main_process: bool = True,
        evaluator: Engine | None = None,
    ) -> None:
        self.path = Path(path)
        self.every_iteration = every_iteration
        self.main_process = main_process
        self.evaluator = evaluator
        self._losses: list[float] = []
        self._t0 = time.time()

    def attach(self, engine: Engine) -> None:
        if not self.main_process:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        # after the ValidationHandler (attached earlier) so that the validation metrics exist
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def _epoch_started(self, engine: Engine) -> None:
        self._losses = []
        self._t0 = time.time()

    @staticmethod
    def _loss(engine: Engine) -> float:
        out: Any = engine.state.output
        if isinstance(out, list):  # decollated output: the loss is repeated per item
            out = out[0]
        loss = out["loss"] if isinstance(out, dict) else out
        return float(loss.item() if isinstance(loss, torch.Tensor) else loss)

    def _iteration(self, engine: Engine) -> None:
        loss = self._loss(engine)
        self._losses.append(loss)
        if self.every_iteration:
            lr = engine.optimizer.param_groups[0]["lr"] if hasattr(engine, "optimizer") else None
            self._write({"epoch": engine.state.epoch, "iteration": engine.state.iteration, "loss": loss, "lr": lr})

    def _epoch(self, engine: Engine) -> None:
        record = {
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "epoch_loss": sum(self._losses) / max(len(self._losses), 1),
            "seconds": round(time.time() - self._t0, 2),
        }
        if self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch:
            record.update({k: float(v) for k, v in self.evaluator.state.metrics.items() if isinstance(v, (int, float))})
        self._write(record)
