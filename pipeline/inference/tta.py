"""Mirroring test-time augmentation as a predictor wrapper (nnU-Net's flips).

nnU-Net (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation",
Nature Methods 2021) and UNETR++ (Shaker et al., IEEE TMI 2024) evaluate with "mirroring": the network is applied to
the window and to its mirror images along every subset of the spatial axes (8 for 3-D, the identity included), each
prediction is flipped back, and the mean is used. Wrapping the *predictor* keeps it composable with any sliding-window
inferer: ``engine(x, MirrorTTA(net))``.

What is averaged matters. nnU-Net v1 (``_internal_maybe_mirror_and_pred_3D``, which UNETR++'s evaluation uses)
averages the **softmax probabilities** of the flips; nnU-Net v2 averages logits. Averaging logits lets one confident
flip outvote several hesitant ones, and the mean of logits is not the logit of any mean probability. The default here
is nnU-Net v1's: the wrapper returns ``log(mean_k softmax(y_k))``, the log of the mean probability, so that the
engine's blending and the pipeline's final softmax stay in logit space (``softmax`` of this output is exactly the mean
of the flips' probabilities) and skipped-window filling works unchanged. ``average="logits"`` gives nnU-Net v2's mean.

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
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

__all__ = ["MirrorTTA", "mirror_flips"]

_AVERAGES = ("probabilities", "logits")


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
        predictor: network or callable mapping ``(N, C_in, *spatial)`` to ``(N, C_out, *spatial)`` logits (a
            list/tuple output, e.g. deep supervision, is reduced to its first element).
        spatial_dims: number of spatial axes.
        axes: spatial axes to mirror (default all).
        batch_flips: run all flips as one predictor batch (faster for small windows; ``len(flips)`` times the
            memory) instead of one call per flip.
        average: ``"probabilities"`` (default, nnU-Net v1 / UNETR++): return ``log`` of the mean softmax over the
            channel axis (dim 1), so a later softmax gives the mean probabilities; ``"logits"`` (nnU-Net v2): the
            mean of the logits.

    Examples:
        >>> import torch
        >>> x = torch.randn(2, 3, 4, 5, 6)
        >>> tta = MirrorTTA(torch.nn.Identity())  # flips of the identity give x back: the mean is x's softmax
        >>> torch.allclose(tta(x).softmax(1), x.softmax(1), atol=1e-6)
        True
        >>> torch.allclose(MirrorTTA(torch.nn.Identity(), average="logits")(x), x)
        True
    """

    def __init__(
        self,
        predictor: Callable[..., Any],
        spatial_dims: int = 3,
        axes: Sequence[int] | None = None,
        batch_flips: bool = False,
        average: str = "probabilities",
    ) -> None:
        super().__init__()
        if average not in _AVERAGES:
            raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
        self.average = average
        self.predictor = predictor
        self.spatial_dims = spatial_dims
        self.flips = mirror_flips(spatial_dims, axes)
        self.batch_flips = batch_flips

    @staticmethod
    def _first(out: Any) -> torch.Tensor:
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out

    def _term(self, y: torch.Tensor) -> torch.Tensor:
        """One flip's contribution: its log-probabilities (``average="probabilities"``) or its logits, in float32."""
        y = y.float()
        return torch.log_softmax(y, dim=1) if self.average == "probabilities" else y.clone()

    def _reduce(self, total: torch.Tensor) -> torch.Tensor:
        """Mean over the flips of what :meth:`_term` gave; ``total`` is the stacked-by-logaddexp or summed value."""
        n = len(self.flips)
        if self.average == "probabilities":
            return total - math.log(n)  # log(sum_k p_k / n) = logsumexp_k(log p_k) - log n
        return total / n

    def _accumulate(self, total: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        term = self._term(y)
        if total is None:
            return term
        return torch.logaddexp(total, term, out=total) if self.average == "probabilities" else total.add_(term)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"MirrorTTA expects (N, C, {self.spatial_dims} spatial axes), got {tuple(x.shape)}")
        total = None
        if self.batch_flips:
            n = x.shape[0]
            batch = torch.cat([torch.flip(x, f) if f else x for f in self.flips])
            out = self._first(self.predictor(batch, *args, **kwargs))
            for i, f in enumerate(self.flips):
                y = out[i * n : (i + 1) * n]
                total = self._accumulate(total, torch.flip(y, f) if f else y)
            assert total is not None  # self.flips holds at least the identity
            return self._reduce(total)
        for f in self.flips:
            y = self._first(self.predictor(torch.flip(x, f) if f else x, *args, **kwargs))
            total = self._accumulate(total, torch.flip(y, f) if f else y)
        assert total is not None  # self.flips holds at least the identity
        return self._reduce(total)
