"""Mirroring test-time augmentation as a predictor wrapper (nnU-Net's flips).

nnU-Net (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation",
Nature Methods 2021) and UNETR++ (Shaker et al., IEEE TMI 2024) evaluate with "mirroring": the network is applied to
the window and to its mirror images along every subset of the spatial axes (8 for 3-D, the identity included), each
prediction is flipped back, and the mean is used. Wrapping the *predictor* keeps it composable with any sliding-window
inferer: ``engine(x, MirrorTTA(net))``.

Examples:
    >>> import torch
    >>> net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    >>> tta = MirrorTTA(net)
    >>> len(tta.flips)
    8
    >>> with torch.no_grad():
    ...     y = tta(torch.rand(1, 1, 8, 8, 8))
    >>> tuple(y.shape)
    (1, 2, 8, 8, 8)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

__all__ = ["MirrorTTA", "mirror_flips"]


def mirror_flips(spatial_dims: int = 3, axes: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """All subsets of the mirrored spatial axes as tensor dims (identity first).

    Args:
        spatial_dims: number of spatial axes.
        axes: spatial axes (0-based) to mirror; default all.

    Returns:
        a list of tuples of tensor dimensions (``2 + axis``) to pass to :func:`torch.flip`.
    """
    axes = tuple(range(spatial_dims)) if axes is None else tuple(int(a) for a in axes)
    for a in axes:
        if not 0 <= a < spatial_dims:
            raise ValueError(f"mirror axis {a} is outside 0..{spatial_dims - 1}")
    flips: list[tuple[int, ...]] = []
    for r in range(len(axes) + 1):
        for combo in itertools.combinations(axes, r):
            flips.append(tuple(2 + a for a in combo))
    return flips


class MirrorTTA(nn.Module):
    """Mean of ``flip(net(flip(x)))`` over mirror flips (default: all 2**spatial_dims of them).

    Args:
        predictor: network or callable mapping ``(N, C_in, *spatial)`` to ``(N, C_out, *spatial)`` (a list/tuple
            output, e.g. deep supervision, is reduced to its first element).
        spatial_dims: number of spatial axes.
        axes: spatial axes to mirror (default all).
        batch_flips: run all flips as one predictor batch (faster for small windows; ``len(flips)`` times the
            memory) instead of one call per flip.

    Examples:
        >>> import torch
        >>> tta = MirrorTTA(torch.nn.Identity())
        >>> x = torch.rand(2, 1, 4, 5, 6)
        >>> torch.allclose(tta(x), x)
        True
    """

    def __init__(
        self,
        predictor: Callable[..., Any],
        spatial_dims: int = 3,
        axes: Sequence[int] | None = None,
        batch_flips: bool = False,
    ) -> None:
        super().__init__()
        self.predictor = predictor
        self.spatial_dims = spatial_dims
        self.flips = mirror_flips(spatial_dims, axes)
        self.batch_flips = batch_flips

    @staticmethod
    def _first(out: Any) -> torch.Tensor:
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"MirrorTTA expects (N, C, {self.spatial_dims} spatial axes), got {tuple(x.shape)}")
        if self.batch_flips:
            n = x.shape[0]
            batch = torch.cat([torch.flip(x, f) if f else x for f in self.flips])
            out = self._first(self.predictor(batch, *args, **kwargs))
            total = None
            for i, f in enumerate(self.flips):
                y = out[i * n : (i + 1) * n]
                y = torch.flip(y, f) if f else y
                total = y.float().clone() if total is None else total.add_(y.float())
            return total / len(self.flips)
        total = None
        for f in self.flips:
            y = self._first(self.predictor(torch.flip(x, f) if f else x, *args, **kwargs))
            y = torch.flip(y, f) if f else y
            total = y.float().clone() if total is None else total.add_(y.float())
        return total / len(self.flips)
