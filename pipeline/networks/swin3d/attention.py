"""3D (shifted) window attention: the Swin W-MSA/SW-MSA and Med-Former's Local-Global attention (LGT).

:class:`WindowAttention3D` is the core: it takes the ``qkv`` projection of a token grid, rolls it for SW-MSA, folds
the windows into the batch and attends inside each window with a learned relative position bias (Liu et al., "Swin
Transformer", ICCV 2021) and the shift mask. Two implementations give the same maths:

* ``attn_impl="sdpa"``: the cyclic roll and the window partition are one precomputed gather (``index_select``),
  then :func:`torch.nn.functional.scaled_dot_product_attention` on 4-D ``(B * nW, heads, N, d)``
  tensors (5-D inputs silently fall back to the slow math kernel), bias and shift mask passed as one float
  ``attn_mask``. In eval mode (and when no gradient to the bias table is needed) the combined bias + mask is cached per
  (grid, dtype, device, table version). With a shift mask and a batch > 1 the batch is looped over, so the mask is
  never materialised for the whole batch.
* ``attn_impl="naive"``: the readable oracle, written like Swin/MONAI (``torch.roll``, window partition,
  ``softmax(q k^T * scale + bias + mask) v``, window reverse, roll back).

Examples:
    >>> import torch
    >>> attn = SwinAttention3D(dim=24, num_heads=3, grid=(8, 8, 8), window_size=(4, 4, 4), shift_size=(2, 2, 2))
    >>> tuple(attn(torch.randn(2, 8, 8, 8, 24)).shape)
    (2, 8, 8, 8, 24)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.networks.shapes import shape_text
from pipeline.networks.swin3d.windows import (
    as_triple,
    clamp_window,
    num_relative_positions,
    relative_position_index,
    shift_attention_mask,
    window_partition,
    window_reverse,
)

ATTN_IMPLS = ("sdpa", "naive")


def _check_tiles(grid: Sequence[int], window: Sequence[int], where: str) -> None:
    for axis, (g, w) in enumerate(zip(grid, window)):
        if w < 1 or g % w:
            raise ValueError(
                f"{where}: window {tuple(window)} does not tile the token grid {tuple(grid)} (axis {axis})"
            )


class WindowAttention3D(nn.Module):
    """Attention inside (shifted) 3D windows of a fixed token grid, given the ``qkv`` projection.

    Args:
        num_heads: attention heads.
        head_dim: channels per head.
        grid: token grid ``(S0, S1, S2)`` this module runs on.
        window_size: window per axis; clamped to the grid where the grid is smaller (Swin's rule).
        shift_size: cyclic shift per axis for SW-MSA (0 = W-MSA); forced to 0 on clamped axes.
        attn_impl: ``"sdpa"`` (fast) or ``"naive"`` (oracle).

    Input ``(B, S0, S1, S2, 3 * heads * head_dim)`` (q, k, v stacked on the last axis), output
    ``(B, S0, S1, S2, heads * head_dim)`` before the output projection.
    """

    if TYPE_CHECKING:  # buffers (register_buffer in __init__); hidden from TorchScript, which would read these
        # class annotations (strings here) as attribute types
        relative_position_index: torch.Tensor
        shift_mask: torch.Tensor
        window_order: torch.Tensor
        grid_order: torch.Tensor

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        grid: Sequence[int],
        window_size: int | Sequence[int],
        shift_size: int | Sequence[int] = 0,
        attn_impl: str = "sdpa",
    ) -> None:
        super().__init__()
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.grid = as_triple(grid, "grid")
        window, shift = clamp_window(self.grid, as_triple(window_size, "window_size"), as_triple(shift_size, "shift"))
        _check_tiles(self.grid, window, "WindowAttention3D")
        for w, s in zip(window, shift):
            if not 0 <= s < w:
                raise ValueError(f"shift {shift} must satisfy 0 <= shift < window {window} on every axis")
        self.window_size, self.shift_size = window, shift
        self.num_heads, self.head_dim = num_heads, head_dim
        self.scale = head_dim**-0.5
        self.attn_impl = attn_impl
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_relative_positions(window), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        mask = shift_attention_mask(self.grid, window, shift)
        self.register_buffer("shift_mask", mask if mask is not None else torch.zeros(0), persistent=False)
        # roll + window partition as one gather: window-ordered slot -> flat grid index of the token it holds
        tokens = torch.arange(self.grid[0] * self.grid[1] * self.grid[2]).view(*self.grid, 1)
        rolled = torch.roll(tokens, shifts=tuple(-s for s in shift), dims=(0, 1, 2)) if any(shift) else tokens
        order = window_partition(rolled[None], window).reshape(-1)
        self.register_buffer("window_order", order, persistent=False)
        self.register_buffer("grid_order", torch.argsort(order), persistent=False)
        self.shifted = any(shift)
        self._cache = dict[tuple, torch.Tensor]()  # not an annotated {}: TorchScript warns about those

    @property
    def num_tokens(self) -> int:
        """Tokens per window."""
        return self.window_size[0] * self.window_size[1] * self.window_size[2]

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, window={self.window_size}, shift={self.shift_size}, impl={self.attn_impl}"

    def train(self, mode: bool = True) -> WindowAttention3D:
        self._cache.clear()
        return super().train(mode)

    def relative_bias(self) -> torch.Tensor:
        """``(heads, N, N)`` bias gathered from the table."""
        n = self.num_tokens
        idx = self.relative_position_index.reshape(-1)
        return self.relative_position_bias_table[idx].view(n, n, self.num_heads).permute(2, 0, 1).contiguous()

    def _combined_mask(self, dtype: torch.dtype) -> torch.Tensor:
        bias = self.relative_bias().unsqueeze(0)  # (1, heads, N, N)
        if self.shift_mask.numel():
            bias = bias + self.shift_mask.unsqueeze(1)  # (nW, heads, N, N)
        return bias.to(dtype)

    def _attn_mask(self, dtype: torch.dtype) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript leaves the cache out: a scripted model gathers every call
            return self._cached_attn_mask(dtype)
        return self._combined_mask(dtype)

    def _cached_attn_mask(self, dtype: torch.dtype) -> torch.Tensor:
        table = self.relative_position_bias_table
        if self.training or (torch.is_grad_enabled() and table.requires_grad):
            return self._combined_mask(dtype)
        key = (dtype, table.device, table._version, table.data_ptr())
        mask = self._cache.get(key)
        if mask is None:
            with torch.no_grad():
                mask = self._combined_mask(dtype)
            self._cache.clear()
            self._cache[key] = mask
        return mask

    def _check(self, x: torch.Tensor, what: str) -> None:
        s0, s1, s2 = self.grid
        if x.ndim != 5 or list(x.shape[1:4]) != [s0, s1, s2]:
            raise ValueError(f"expected {what} of shape (B, {s0}, {s1}, {s2}, C), got {shape_text(list(x.shape))}")

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """Roll (SW-MSA) and partition a grid in one gather: ``(B, S0, S1, S2, C) -> (B * nW, N, C)``."""
        self._check(x, "tokens")
        b, c = x.shape[0], x.shape[-1]
        return x.reshape(b, -1, c).index_select(1, self.window_order).view(-1, self.num_tokens, c)

    def reverse(self, windows: torch.Tensor, batch: int) -> torch.Tensor:
        """Inverse of :meth:`partition`: ``(B * nW, N, C) -> (B, S0, S1, S2, C)``."""
        c = windows.shape[-1]
        s0, s1, s2 = self.grid
        return windows.reshape(batch, -1, c).index_select(1, self.grid_order).view(batch, s0, s1, s2, c)

    def attend(self, qkv: torch.Tensor, batch: int) -> torch.Tensor:
        """Attention inside windows: ``(B * nW, N, 3 * heads * d) -> (B * nW, N, heads * d)``."""
        bnw, n, _ = qkv.shape
        q, k, v = qkv.view(bnw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = self._attend_naive(q, k, v, batch) if self.attn_impl == "naive" else self._attend_sdpa(q, k, v, batch)
        return out.transpose(1, 2).reshape(bnw, n, self.num_heads * self.head_dim)

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        self._check(qkv, "qkv")
        b = qkv.shape[0]
        if self.attn_impl == "sdpa":
            return self.reverse(self.attend(self.partition(qkv), b), b)
        # the readable oracle: cyclic roll, window partition, attention, reverse, roll back (as Swin / MONAI)
        shift, (s0, s1, s2) = self.shift_size, self.grid
        if self.shifted:
            qkv = torch.roll(qkv, shifts=(-shift[0], -shift[1], -shift[2]), dims=(1, 2, 3))
        x = window_reverse(self.attend(window_partition(qkv, self.window_size), b), self.window_size, (b, s0, s1, s2))
        if self.shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x

    def _attend_sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: int) -> torch.Tensor:
        mask = self._attn_mask(q.dtype)
        if mask.shape[0] == 1 or batch == 1:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        nw = q.shape[0] // batch  # shifted windows, batch > 1: one sample at a time, the mask stays (nW, heads, N, N)
        outs = []
        for i in range(batch):
            lo, hi = i * nw, (i + 1) * nw
            outs.append(F.scaled_dot_product_attention(q[lo:hi], k[lo:hi], v[lo:hi], attn_mask=mask, scale=self.scale))
        return torch.cat(outs)

    def _attend_naive(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: int) -> torch.Tensor:
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B * nW, heads, N, N)
        attn = attn + self.relative_bias().unsqueeze(0)
        if self.shift_mask.numel():
            nw, n = self.shift_mask.shape[0], attn.shape[-1]
            attn = attn.view(batch, nw, self.num_heads, n, n) + self.shift_mask[None, :, None].to(attn.dtype)
            attn = attn.view(-1, self.num_heads, n, n)
        return attn.softmax(dim=-1) @ v


class SwinAttention3D(nn.Module):
    """W-MSA / SW-MSA: ``proj(WindowAttention3D(qkv(x)))`` on a ``(B, S0, S1, S2, C)`` token grid.

    Args:
        dim: token channels ``C``; must be divisible by ``num_heads``.
        num_heads: attention heads.
        grid: token grid.
        window_size: window per axis (clamped to the grid).
        shift_size: shift per axis (0 for W-MSA, usually ``window // 2`` for SW-MSA).
        qkv_bias: bias in the qkv projection.
        attn_impl: ``"sdpa"`` or ``"naive"``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: Sequence[int],
        window_size: int | Sequence[int],
        shift_size: int | Sequence[int] = 0,
        qkv_bias: bool = True,
        attn_impl: str = "sdpa",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn = WindowAttention3D(num_heads, dim // num_heads, grid, window_size, shift_size, attn_impl)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn.attn_impl == "naive":
            return self.proj(self.attn(self.qkv(x)))
        # per-token projections commute with the window gather: partition the C-channel input, not the 3C qkv
        b = x.shape[0]
        return self.attn.reverse(self.proj(self.attn.attend(self.qkv(self.attn.partition(x)), b)), b)


LGT_MODES = ("sum", "head_split")


class LocalGlobalAttention3D(nn.Module):
    """Med-Former's Local-Global attention in 3D **[reconstruction]**: a global path (window ``m``) and a local path
    (window ``n < m``) over the same tokens, combined before one output projection.

    Chowdary & Yin, "Med-Former: A Transformer-based Architecture for Medical Image Classification", MICCAI 2024. The
    paper gives no code; our reading (documented choices):

    * ``mode="sum"`` (paper): both paths use all heads and their outputs are **summed**. With ``share_qkv=True``
      (default) one ``Linear(C, 3C)`` feeds both paths (each path has its own relative bias table); with
      ``share_qkv=False`` each path has its own qkv (+3C^2 parameters).
    * ``mode="head_split"`` (cheaper ablation, CSWin/Focal style): the first ``heads // 2`` heads attend in the global
      windows, the rest in the local ones; outputs are concatenated.
    * ``shifted=True`` (the second block of a pair) shifts the global path by ``m // 2`` and the local path by
      ``n // 2``; rolling qkv is exact because a per-token projection commutes with rolling.
    * where both windows clamp to the same window (the grid), a single path is used.

    Args:
        dim: token channels.
        num_heads: heads (``>= 2`` for ``head_split``).
        grid: token grid.
        windows: ``(global_window, local_window)``, each an int or 3 ints.
        shifted: SW-MSA variant (block ``l + 1`` of the pair).
        share_qkv: one qkv for both paths (``mode="sum"`` only).
        mode: ``"sum"`` or ``"head_split"``.
        qkv_bias: bias in qkv.
        attn_impl: ``"sdpa"`` or ``"naive"``.

    Examples:
        >>> import torch
        >>> lgt = LocalGlobalAttention3D(24, 3, grid=(8, 8, 8), windows=(8, 4), shifted=True)
        >>> tuple(lgt(torch.randn(1, 8, 8, 8, 24)).shape)
        (1, 8, 8, 8, 24)
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: Sequence[int],
        windows: Sequence[int | Sequence[int]],
        shifted: bool = False,
        share_qkv: bool = True,
        mode: str = "sum",
        qkv_bias: bool = True,
        attn_impl: str = "sdpa",
    ) -> None:
        super().__init__()
        if mode not in LGT_MODES:
            raise ValueError(f"lgt_mode must be one of {LGT_MODES}, got {mode!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if len(windows) != 2:
            raise ValueError(f"LGT needs (global_window, local_window), got {windows!r}")
        grid = as_triple(grid, "grid")
        wins = []
        for w in windows:
            cw, _ = clamp_window(grid, as_triple(w, "lgt window"), (0, 0, 0))
            _check_tiles(grid, cw, "LocalGlobalAttention3D")
            wins.append(cw)
        if wins[0] == wins[1]:
            wins = wins[:1]
        elif any(g < lo for g, lo in zip(*wins)):
            raise ValueError(f"LGT global window {wins[0]} must be >= the local window {wins[1]} on every axis")
        self.mode = mode if len(wins) == 2 else "sum"
        self.share_qkv = share_qkv or len(wins) == 1 or self.mode == "head_split"
        head_dim = dim // num_heads
        if self.mode == "head_split":
            if num_heads < 2:
                raise ValueError("lgt_mode='head_split' needs at least 2 heads")
            heads = [num_heads // 2, num_heads - num_heads // 2]
        else:
            heads = [num_heads] * len(wins)
        self.heads_per_path = heads
        self.num_heads = sum(heads)
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.qkv_local = None if self.share_qkv else nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.paths = nn.ModuleList(
            WindowAttention3D(h, head_dim, grid, w, tuple(wi // 2 for wi in w) if shifted else 0, attn_impl)
            for h, w in zip(heads, wins)
        )
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the paths are a ModuleList of 1 or 2 entries: looped over (TorchScript indexes them with literals only)
        qkv = self.qkv(x)
        outs: list[torch.Tensor] = []
        if self.mode == "head_split":
            shape = list(qkv.shape[:-1])
            qkv = qkv.view(shape + [3, self.num_heads, self.head_dim])
            h0 = self.heads_per_path[0]
            parts = [qkv[..., :h0, :].reshape(shape + [-1]), qkv[..., h0:, :].reshape(shape + [-1])]
            for i, path in enumerate(self.paths):
                outs.append(path(parts[i]))
            return self.proj(torch.cat(outs, dim=-1))
        qkv_local = qkv if self.qkv_local is None else self.qkv_local(x)
        for i, path in enumerate(self.paths):
            outs.append(path(qkv if i == 0 else qkv_local))
        return self.proj(outs[0] if len(outs) == 1 else outs[0] + outs[1])
