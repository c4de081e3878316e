"""Optimizer presets (pure data) and the polynomial learning-rate schedule.

``sgd_nnunet`` is the official UNETR++ / nnU-Net v1 recipe (SGD, lr 1e-2, momentum 0.99, Nesterov, weight decay 3e-5,
gradient-norm clip 12, poly decay with exponent 0.9); ``adamw`` is a common transformer alternative.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import PolynomialLR

__all__ = ["OPTIMIZER_PRESETS", "build_optimizer", "poly_lr", "build_poly_scheduler"]

#: name -> {"optimizer": torch.optim class name, "kwargs": constructor arguments}; data, not code
OPTIMIZER_PRESETS: dict[str, dict[str, Any]] = {
    "sgd_nnunet": {
        "optimizer": "SGD",
        "kwargs": {"lr": 1e-2, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5},
        "grad_clip": 12.0,
    },
    "adamw": {
        "optimizer": "AdamW",
        "kwargs": {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 1e-2},
        "grad_clip": None,
    },
}


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | torch.nn.Module,
    preset: str | Mapping[str, Any] = "sgd_nnunet",
    **overrides: Any,
) -> torch.optim.Optimizer:
    """Build the optimizer of ``preset`` with keyword ``overrides`` (e.g. ``lr=3e-3``).

    Args:
        params: parameters, or a module whose ``parameters()`` are used.
        preset: a key of :data:`OPTIMIZER_PRESETS` or a mapping of the same shape.
        overrides: replace the preset's constructor arguments.

    Examples:
        >>> import torch
        >>> opt = build_optimizer(torch.nn.Linear(2, 2), "sgd_nnunet", lr=0.1)
        >>> type(opt).__name__, opt.param_groups[0]["lr"], opt.param_groups[0]["nesterov"]
        ('SGD', 0.1, True)
    """
    spec = OPTIMIZER_PRESETS.get(preset) if isinstance(preset, str) else preset
    if spec is None:
        raise ValueError(f"unknown optimizer preset {preset!r}; known: {', '.join(OPTIMIZER_PRESETS)}")
    cls = getattr(torch.optim, spec["optimizer"])
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    return cls(params, **{**spec["kwargs"], **overrides})


def poly_lr(epoch: int, max_epochs: int, initial_lr: float, exponent: float = 0.9) -> float:
    """nnU-Net's poly schedule ``initial_lr * (1 - epoch / max_epochs) ** exponent``.

    Examples:
        >>> poly_lr(0, 100, 0.01), round(poly_lr(50, 100, 0.01), 6)
        (0.01, 0.005359)
    """
    return initial_lr * (1 - min(epoch, max_epochs) / max_epochs) ** exponent


def build_poly_scheduler(optimizer: torch.optim.Optimizer, max_epochs: int, exponent: float = 0.9) -> PolynomialLR:
    """A per-epoch :class:`torch.optim.lr_scheduler.PolynomialLR` equal to :func:`poly_lr` (step it once per epoch).

    Examples:
        >>> import torch
        >>> opt = build_optimizer(torch.nn.Linear(2, 2), "sgd_nnunet")
        >>> sched = build_poly_scheduler(opt, max_epochs=10)
        >>> opt.step(); sched.step(); round(opt.param_groups[0]["lr"], 8) == round(poly_lr(1, 10, 1e-2), 8)
        True
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    return PolynomialLR(optimizer, total_iters=max_epochs, power=exponent)
