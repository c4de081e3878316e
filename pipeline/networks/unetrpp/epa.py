"""Efficient paired attention (EPA), the attention of UNETR++.

Shaker et al., "UNETR++: Delving into Efficient and Accurate 3D Medical Image Segmentation", IEEE TMI 2024
(arXiv 2212.04497). One module reproduces every official variant (shared/separate E and F, the BraTS ``EF``
parameter, concat/sum fusion, the spatial-branch permute quirk) and adds a resolution-agnostic spatial projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.networks.shapes import shape_text

__all__ = ["EPABlock", "EF_MODES", "FUSIONS"]

#: how keys/values are projected from N tokens to p tokens in the spatial branch
EF_MODES = ("shared", "separate", "param", "pool")
FUSIONS = ("concat", "sum")


def _pool_grid(proj_size: int) -> tuple[int, int, int]:
    """The 3D grid of ``proj_size`` pooled tokens used by ``ef_mode="pool"``: the most cube-like factorisation
    ``a * b * c = proj_size`` with ``a <= b <= c`` (64 -> 4x4x4, 32 -> 2x4x4, 8 -> 2x2x2)."""
    if proj_size < 1:
        raise ValueError(f"proj_size must be positive, got {proj_size}")
    best = (1, 1, proj_size)
    for a in range(1, proj_size + 1):
        if proj_size % a:
            continue
        for b in range(a, proj_size // a + 1):
            if (proj_size // a) % b:
                continue
            c = proj_size // a // b
            if c >= b and c / a < best[2] / best[0]:
                best = (a, b, c)
    return best


class EPABlock(nn.Module):
    """Efficient paired attention: a channel (transposed) branch and a Linformer-style spatial branch sharing Q and K.

    With LayerNorm-ed tokens ``x`` (B, N, C), ``h`` heads of ``d = C / h`` channels:

    * ``q, k, v_ca, v_sa = Linear(C -> 4C)(x)``, each (B, h, d, N);
    * spatial key/value projection ``k_p = E(k)``, ``v_p = F(v_sa)`` from N to p tokens (``ef_mode``);
    * ``q, k`` are L2-normalised over tokens;
    * channel branch ``softmax(tau1 q k^T) v_ca`` (B, h, d, N);
    * spatial branch ``softmax(tau2 q^T k_p) v_p^T`` (B, h, N, d);
    * fusion: ``concat(out_proj(x_sa), out_proj2(x_ca))`` or ``x_sa + x_ca``.

    Args:
        input_size: number of tokens N the E/F projections are built for. Required by the token-count dependent
            modes (``shared``, ``separate``, ``param``); ignored (may be ``None``) for ``pool``.
        hidden_size: channels C.
        proj_size: projected token count p.
        num_heads: attention heads h (C must be divisible by h).
        qkv_bias: bias of the ``qkvv`` linear (off in every official variant).
        channel_attn_drop: dropout on the channel attention map.
        spatial_attn_drop: dropout on the spatial attention map.
        ef_mode: ``"shared"`` one ``Linear(N, p)`` used as both E and F (Synapse/BTCV; the state dict lists it as
            ``E.*`` and ``F.*``), ``"separate"`` two linears (ACDC, Lung), ``"param"`` one bias-free ``EF`` (N, p)
            parameter (BraTS), ``"pool"`` resolution-agnostic: adaptive average pooling of the token grid to a
            near-cubic grid of p tokens (64 -> 4x4x4, 32 -> 2x4x4), then ``Linear(p, p)`` E = F; nothing depends on N.
        fusion: ``"concat"`` (two C/2 projections, ``out_proj`` for the spatial branch first) or ``"sum"`` (BraTS).
        permute_quirk: reproduce the official spatial-branch output layout (a (0, 3, 1, 2) permute followed by a
            row-major reshape that mixes tokens and channels, issue #62). Required for official weights; ``False``
            gives the corrected maths (B, N, h, d) layout.
        fast: compute the same maths with fewer passes over the N tokens: E/F act on the (B, N, C) projections
            directly, the L2 normalisations are folded into the small (d x d) and (p x d) factors, the spatial
            branch runs as one fused ``scaled_dot_product_attention``, and the channel branch plus ``out_proj2``
            become one (C x C/2) matmul per batch item. ``False`` runs the official op sequence.

    Examples:
        >>> import torch
        >>> epa = EPABlock(input_size=64, hidden_size=32, proj_size=16, num_heads=4)
        >>> epa(torch.randn(2, 64, 32)).shape
        torch.Size([2, 64, 32])
        >>> agnostic = EPABlock(None, 32, 8, ef_mode="pool")
        >>> agnostic(torch.randn(1, 6 * 4 * 4, 32), spatial_shape=(6, 4, 4)).shape
        torch.Size([1, 96, 32])
    """

    def __init__(
        self,
        input_size: int | None,
        hidden_size: int,
        proj_size: int,
        num_heads: int = 4,
        qkv_bias: bool = False,
        channel_attn_drop: float = 0.1,
        spatial_attn_drop: float = 0.1,
        ef_mode: str = "shared",
        fusion: str = "concat",
        permute_quirk: bool = True,
        fast: bool = True,
    ) -> None:
        super().__init__()
        if ef_mode not in EF_MODES:
            raise ValueError(f"ef_mode must be one of {EF_MODES}, got {ef_mode!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        if ef_mode != "pool" and (input_size is None or input_size < 1):
            raise ValueError(f"ef_mode={ef_mode!r} needs the token count input_size, got {input_size!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.proj_size = proj_size
        self.num_heads = num_heads
        self.ef_mode = ef_mode
        self.fusion = fusion
        self.permute_quirk = permute_quirk
        self.pool_grid = _pool_grid(proj_size) if ef_mode == "pool" else None
        self.fast = fast

        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.temperature2 = nn.Parameter(torch.ones(num_heads, 1, 1))
        if ef_mode == "param":
            bound = 1.0 / math.sqrt(proj_size)
            self.EF = nn.Parameter(torch.empty(input_size, proj_size).uniform_(-bound, bound))  # type: ignore[arg-type]
        self.qkvv = nn.Linear(hidden_size, hidden_size * 4, bias=qkv_bias)
        if ef_mode == "shared":
            self.E = self.F = nn.Linear(input_size, proj_size)  # type: ignore[arg-type]
        elif ef_mode == "separate":
            self.E = nn.Linear(input_size, proj_size)  # type: ignore[arg-type]
            self.F = nn.Linear(input_size, proj_size)  # type: ignore[arg-type]
        elif ef_mode == "pool":
            self.E = self.F = nn.Linear(proj_size, proj_size)
        self.attn_drop = nn.Dropout(channel_attn_drop)
        self.attn_drop_2 = nn.Dropout(spatial_attn_drop)
        if fusion == "concat":
            self.out_proj = nn.Linear(hidden_size, hidden_size // 2)
            self.out_proj2 = nn.Linear(hidden_size, hidden_size // 2)

    # TorchScript: the E/F modules and the EF parameter exist only in some modes, so the branches test them with
    # hasattr / ``is not None`` (resolved when the module is compiled) rather than ef_mode
    def _project(self, t: torch.Tensor, which: str, spatial_shape: list[int] | None) -> torch.Tensor:
        """Project (B, h, d, N) to (B, h, d, p) along the token axis."""
        if hasattr(self, "EF"):  # ef_mode == "param"
            return t @ self.EF
        pool_grid = self.pool_grid
        if pool_grid is not None:  # ef_mode == "pool"
            if spatial_shape is None:
                raise ValueError("ef_mode='pool' needs spatial_shape=(D, H, W) of the token grid")
            b, h, d, _ = t.shape
            pooled = F.adaptive_avg_pool3d(t.reshape([b, h * d] + list(spatial_shape)), pool_grid)
            t = pooled.reshape(b, h, d, self.proj_size)
        return self.E(t) if which == "E" else self.F(t)

    def forward(self, x: torch.Tensor, spatial_shape: list[int] | None = None) -> torch.Tensor:
        """Apply EPA to tokens ``x`` (B, N, C); ``spatial_shape`` (D, H, W) is needed by ``ef_mode="pool"``."""
        if x.ndim != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"EPABlock expects tokens (B, N, {self.hidden_size}), got {shape_text(list(x.shape))}")
        b, n, c = x.shape
        input_size = self.input_size
        if self.ef_mode != "pool" and input_size is not None and n != input_size:
            raise ValueError(f"EPABlock was built for {input_size} tokens, got {n}")
        if self.fast:
            return self._forward_fast(x, spatial_shape)
        h = self.num_heads
        d = c // h
        # (B, N, 4, h, d) -> (4, B, h, d, N): one permute gives q, k, v_ca, v_sa already transposed
        qkvv = self.qkvv(x).reshape(b, n, 4, h, d).permute(2, 0, 3, 4, 1)
        q, k, v_ca, v_sa = qkvv.unbind(0)

        k_p = self._project(k, "E", spatial_shape)  # from the unnormalised k, as the official code
        v_p = self._project(v_sa, "F", spatial_shape)

        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)

        # channel branch: (B, h, d, d) attention over channels
        attn_ca = (q @ k.transpose(-2, -1)) * self.temperature
        attn_ca = self.attn_drop(attn_ca.softmax(dim=-1))
        x_ca = (attn_ca @ v_ca).permute(0, 3, 1, 2).reshape(b, n, c)

        # spatial branch: (B, h, N, p) attention of every token over p projected tokens
        attn_sa = (q.transpose(-2, -1) @ k_p) * self.temperature2
        attn_sa = self.attn_drop_2(attn_sa.softmax(dim=-1))
        y = attn_sa @ v_p.transpose(-2, -1)  # (B, h, N, d)
        if self.permute_quirk:
            x_sa = y.permute(0, 3, 1, 2).reshape(b, n, c)
        else:
            x_sa = y.transpose(1, 2).reshape(b, n, c)

        if hasattr(self, "out_proj"):  # fusion == "concat"
            return torch.cat((self.out_proj(x_sa), self.out_proj2(x_ca)), dim=-1)
        return x_sa + x_ca

    # ------------------------------------------------------------------------------------------------ fast path
    def _project_tokens(self, t: torch.Tensor, which: str, spatial_shape: list[int] | None) -> torch.Tensor:
        """Project (B, N, C) token features to (B, p, C) along the token axis (no transposed copies)."""
        if hasattr(self, "EF"):  # ef_mode == "param"
            return self.EF.t() @ t
        lin = self.E if which == "E" else self.F
        pool_grid = self.pool_grid
        if pool_grid is not None:  # ef_mode == "pool"
            if spatial_shape is None:
                raise ValueError("ef_mode='pool' needs spatial_shape=(D, H, W) of the token grid")
            b, _, c = t.shape
            grid = t.reshape([b] + list(spatial_shape) + [c]).permute(0, 4, 1, 2, 3)  # channels-last view
            pooled = F.adaptive_avg_pool3d(grid, pool_grid).reshape(b, c, self.proj_size)
            return F.linear(pooled, lin.weight, lin.bias).transpose(1, 2)
        out = lin.weight @ t  # (p, N) @ (B, N, C) -> (B, p, C)
        return out + lin.bias.view(-1, 1)

    def _forward_fast(self, x: torch.Tensor, spatial_shape: list[int] | None) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        d = c // h
        p = self.proj_size
        q, k, v_ca, v_sa = self.qkvv(x).split(c, dim=-1)  # (B, N, C) views
        k_p = self._project_tokens(k, "E", spatial_shape)  # (B, p, C), from the unnormalised k
        v_p = self._project_tokens(v_sa, "F", spatial_shape)
        q_norm = torch.linalg.vector_norm(q, dim=1).clamp_min(1e-12).view(b, h, d)  # as F.normalize
        k_norm = torch.linalg.vector_norm(k, dim=1).clamp_min(1e-12).view(b, h, d)

        # channel branch: (q/|q|)^T (k/|k|) per head = (q^T k) / (|q| |k|^T), a (B, h, d, d) map
        qh = q.unflatten(-1, (h, d)).permute(0, 2, 3, 1)  # (B, h, d, N) view
        kh = k.unflatten(-1, (h, d)).transpose(1, 2)  # (B, h, N, d) view
        attn_ca = (qh @ kh) / (q_norm.unsqueeze(-1) * k_norm.unsqueeze(-2)) * self.temperature
        attn_ca = self.attn_drop(attn_ca.softmax(dim=-1))
        # x_ca[n, (h, i)] = sum_j attn[h, i, j] v_ca[n, (h, j)]: v_ca @ block_diag(attn_h^T), built as a zero
        # (B, h, d, h, d) tensor whose diagonal head blocks receive attn_h^T (the same values as torch.block_diag)
        mix = attn_ca.new_zeros(b, h, d, h, d)
        torch.diagonal(mix, dim1=1, dim2=3).copy_(attn_ca.permute(0, 3, 2, 1))
        mix = mix.view(b, c, c)

        # spatial branch: softmax(tau2 (q/|q|)^T k_p) v_p^T; fold tau2/|q| into the small (p, d) keys
        key = k_p.view(b, p, h, d).transpose(1, 2) * (self.temperature2 / q_norm.unsqueeze(-2))
        val = v_p.view(b, p, h, d).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q.unflatten(-1, (h, d)).transpose(1, 2),
            key,
            val,
            dropout_p=self.attn_drop_2.p if self.training else 0.0,
            scale=1.0,
        )  # (B, h, N, d)
        if self.permute_quirk:
            x_sa = y.permute(0, 3, 1, 2).reshape(b, n, c)
        else:
            x_sa = y.transpose(1, 2).reshape(b, n, c)

        if hasattr(self, "out_proj"):  # fusion == "concat"
            # out_proj2(x_ca) = v_ca @ (mix @ W2^T) + b2: one (N x C) @ (C x C/2) product
            x_ca = torch.baddbmm(self.out_proj2.bias.expand(b, 1, -1), v_ca, mix @ self.out_proj2.weight.t())
            return torch.cat((self.out_proj(x_sa), x_ca), dim=-1)
        return x_sa + v_ca @ mix
