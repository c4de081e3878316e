"""3D window utilities: partition/reverse, relative position index, shift masks, window clamping.

Tokens are channels-last ``(B, S0, S1, S2, C)`` where ``(S0, S1, S2)`` is the token grid in the network's spatial order
(MONAI x, y, z for :class:`~pipeline.networks.swin3d.SwinUnet3D`). The relative position index follows MONAI
SwinUNETR's (correct) formula ``(d0 + w0 - 1)(2w1 - 1)(2w2 - 1) + (d1 + w1 - 1)(2w2 - 1) + (d2 + w2 - 1)``, which has
exactly ``(2w0 - 1)(2w1 - 1)(2w2 - 1)`` distinct values (nnFormer's multipliers alias offsets).

Examples:
    >>> import torch
    >>> x = torch.randn(2, 8, 8, 8, 5)
    >>> w = window_partition(x, (4, 4, 4))
    >>> tuple(w.shape)
    (16, 64, 5)
    >>> bool((window_reverse(w, (4, 4, 4), (2, 8, 8, 8)) == x).all())
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Int3 = tuple[int, int, int]

#: value added to the logits of token pairs from different shifted regions (as in Swin and MONAI: -100, not -inf)
MASK_VALUE = -100.0


def as_triple(value: int | Sequence[int], name: str = "value") -> Int3:
    """``4 -> (4, 4, 4)``; a 3-sequence is returned as a tuple of ints."""
    if isinstance(value, int):
        return (value, value, value)
    vals = tuple(int(v) for v in value)
    if len(vals) != 3:
        raise ValueError(f"{name} must be an int or 3 ints, got {value!r}")
    return vals


def clamp_window(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> tuple[Int3, Int3]:
    """Swin's rule per axis: where the grid is no larger than the window, the window becomes the grid, the shift 0."""
    w = tuple(g if g <= wi else wi for g, wi in zip(grid, window))
    s = tuple(0 if g <= wi else si for g, wi, si in zip(grid, window, shift))
    return w, s  # type: ignore[return-value]


def window_partition(x: torch.Tensor, window: Int3) -> torch.Tensor:
    """``(B, S0, S1, S2, C) -> (B * nW, w0 * w1 * w2, C)``; windows ordered batch-major then S0, S1, S2."""
    b, s0, s1, s2, c = x.shape
    w0, w1, w2 = window
    x = x.view(b, s0 // w0, w0, s1 // w1, w1, s2 // w2, w2, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, w0 * w1 * w2, c)


def window_reverse(windows: torch.Tensor, window: Int3, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, N, C) -> (B, S0, S1, S2, C)``, ``shape = (B, S0, S1, S2)``."""
    b, s0, s1, s2 = shape
    w0, w1, w2 = window
    c = windows.shape[-1]
    x = windows.view(b, s0 // w0, s1 // w1, s2 // w2, w0, w1, w2, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, s0, s1, s2, c)


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """``(N, N)`` long tensor mapping each query/key pair of a window to its row in the bias table."""
    w0, w1, w2 = window
    coords = torch.stack(torch.meshgrid(torch.arange(w0), torch.arange(w1), torch.arange(w2), indexing="ij"))
    flat = coords.flatten(1)  # (3, N)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()  # (N, N, 3)
    rel[..., 0] += w0 - 1
    rel[..., 1] += w1 - 1
    rel[..., 2] += w2 - 1
    rel[..., 0] *= (2 * w1 - 1) * (2 * w2 - 1)
    rel[..., 1] *= 2 * w2 - 1
    return rel.sum(-1)


def num_relative_positions(window: Sequence[int]) -> int:
    """Rows of the bias table: ``(2w0 - 1)(2w1 - 1)(2w2 - 1)``."""
    w0, w1, w2 = window
    return (2 * w0 - 1) * (2 * w1 - 1) * (2 * w2 - 1)


def shift_region_ids(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> torch.Tensor:
    """Region label of every token of the *rolled* grid (up to 27 regions), shape ``grid``.

    Tokens of one shifted window may only attend to each other when they carry the same label.
    """
    ids = torch.zeros(tuple(grid), dtype=torch.long)
    label = 0
    spans = []
    for w, s in zip(window, shift):
        spans.append([slice(0, None)] if s == 0 else [slice(0, -w), slice(-w, -s), slice(-s, None)])
    for a in spans[0]:
        for b in spans[1]:
            for c in spans[2]:
                ids[a, b, c] = label
                label += 1
    return ids


def shift_attention_mask(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> torch.Tensor | None:
    """``(nW, N, N)`` float mask (0 or :data:`MASK_VALUE`) for shifted windows; ``None`` when nothing is shifted."""
    if not any(shift):
        return None
    ids = shift_region_ids(grid, window, shift)
    win = window_partition(ids[None, ..., None].float(), as_triple(window, "window")).squeeze(-1)  # (nW, N)
    diff = win[:, :, None] - win[:, None, :]
    return torch.zeros_like(diff).masked_fill(diff != 0, MASK_VALUE)
