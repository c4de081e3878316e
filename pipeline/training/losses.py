"""Segmentation losses: Dice + cross-entropy, wrapped for deep supervision when the network has extra heads.

The recipe follows nnU-Net v1 as used by UNETR++ (Shaker et al., "UNETR++: Delving into Efficient and Accurate 3D
Medical Image Segmentation", IEEE TMI 2024): soft Dice without background plus cross-entropy, weighted 1:1, and deep
supervision weights ``1/2**i`` normalised to sum 1 (``[4/7, 2/7, 1/7]`` for three outputs). Lower-resolution targets
are made by nearest-neighbour resizing (MONAI's :class:`~monai.losses.DeepSupervisionLoss`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch.nn.modules.loss import _Loss

__all__ = ["deep_supervision_weights", "build_loss", "DiceCEDeepSupervisionLoss"]


def deep_supervision_weights(n: int) -> list[float]:
    """Weights ``1/2**i`` for ``n`` outputs (full resolution first), normalised to sum 1.

    Examples:
        >>> [round(w * 7, 6) for w in deep_supervision_weights(3)]
        [4.0, 2.0, 1.0]
    """
    if n < 1:
        raise ValueError(f"deep supervision needs at least one output, got n={n}")
    raw = [0.5**i for i in range(n)]
    total = sum(raw)
    return [w / total for w in raw]


class DiceCEDeepSupervisionLoss(_Loss):
    """Dice + CE on one prediction, or the weighted sum over a list/tuple of deep-supervision predictions.

    Args:
        include_background: count the background channel in the Dice term (nnU-Net: False).
        batch: compute Dice over the whole batch (nnU-Net "batch Dice") instead of per sample.
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        ds_weights: weights for the deep-supervision outputs (full resolution first); ``None`` uses
            :func:`deep_supervision_weights` for however many outputs the network returns.
        smooth: numerator and denominator smoothing of the soft Dice.
        auxiliary: a callable returning a network's extra training losses (a tensor or ``0.0``), added to every
            result, e.g. ``net.auxiliary_loss`` of a Swin-Unet 3D with guided PAM/CAM attention, whose losses exist
            only after a training-mode forward. In a bundle: ``"auxiliary": "$@network_def.auxiliary_loss"``.

    Inputs are logits ``(B, C, *spatial)`` (or a sequence of them, coarser ones may be smaller) and an integer label
    map ``(B, 1, *spatial)``.

    Examples:
        >>> import torch
        >>> loss = DiceCEDeepSupervisionLoss()
        >>> label = torch.randint(0, 3, (2, 1, 8, 8, 8))
        >>> preds = [torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 4, 4, 4)]
        >>> loss(preds, label).ndim
        0
        >>> with_aux = DiceCEDeepSupervisionLoss(auxiliary=lambda: torch.tensor(0.5))
        >>> float(with_aux(preds, label) - loss(preds, label))
        0.5
    """

    def __init__(
        self,
        include_background: bool = False,
        batch: bool = False,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        ds_weights: Sequence[float] | None = None,
        smooth: float = 1e-5,
        auxiliary: Callable[[], torch.Tensor | float] | None = None,
    ) -> None:
        super().__init__()
        self.base = DiceCELoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            batch=batch,
            smooth_nr=smooth,
            smooth_dr=smooth,
            lambda_dice=lambda_dice,
            lambda_ce=lambda_ce,
        )
        self.ds_weights = None if ds_weights is None else [float(w) for w in ds_weights]
        if auxiliary is not None and not callable(auxiliary):
            raise TypeError(f"auxiliary must be callable (e.g. net.auxiliary_loss), got {type(auxiliary).__name__}")
        self.auxiliary = auxiliary

    def forward(self, input: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        loss = self._segmentation(input, target)
        return loss if self.auxiliary is None else loss + self.auxiliary()

    def _segmentation(self, input: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.Tensor):
            self._check(input, target)
            return self.base(input, target)
        if len(input) == 0:
            raise ValueError("deep supervision loss got an empty list of predictions")
        weights = self.ds_weights or deep_supervision_weights(len(input))
        if len(weights) < len(input):
            raise ValueError(f"{len(input)} deep-supervision outputs but only {len(weights)} weights")
        self._check(input[0], target)
        if not target.is_floating_point():  # nearest resizing of the target needs a float tensor
            target = target.float()
        return DeepSupervisionLoss(self.base, weights=list(weights[: len(input)]))(list(input), target)

    @staticmethod
    def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.ndim != target.ndim or target.shape[1] != 1:
            raise ValueError(
                f"loss expects logits (B, C, *spatial) and a label map (B, 1, *spatial); got {tuple(pred.shape)} "
                f"and {tuple(target.shape)}"
            )
        if pred.shape[0] != target.shape[0]:
            raise ValueError(f"batch sizes differ: prediction {pred.shape[0]} vs label {target.shape[0]}")


def build_loss(name: str = "dice_ce", **kwargs: Any) -> _Loss:
    """Build a loss by name: ``"dice_ce"`` (Dice + CE, deep-supervision aware).

    Examples:
        >>> type(build_loss("dice_ce")).__name__
        'DiceCEDeepSupervisionLoss'
    """
    if name in ("dice_ce", "dice_ce_ds"):
        return DiceCEDeepSupervisionLoss(**kwargs)
    raise ValueError(f"unknown loss {name!r}; known: dice_ce")
