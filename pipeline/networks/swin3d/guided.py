"""Position and channel attention (DANet / Sinha & Dolz) and the guided bottleneck of the 3D Swin-Unet.

Sinha & Dolz, "Multi-scale self-guided attention for medical image segmentation", IEEE JBHI 2020
(``sinAshish/Multi-Scale-Attention``). Official forms, on channels-last tokens ``(B, S0, S1, S2, C)``:

* PAM: ``q, k = Linear(C, C/8)``, ``v = Linear(C, C)``, ``A = softmax(q k^T)`` **without** 1/sqrt(d) scaling,
  ``y = gamma * (A v) + x`` with a scalar ``gamma`` initialised to 0. O(N^2): only for grids <= 4096 tokens.
* CAM: ``E = X X^T`` (C x C), ``E' = softmax(max_row(E) - E)``, ``y = gamma * (E' X) + x``, ``gamma = 0`` at init.

:class:`GuidedAttentionBottleneck` **[reconstruction]** applies both in parallel, ``x + gamma_p PAM' + gamma_c CAM'``
(= PAM(x) + CAM(x) - x, so the block is the identity at initialisation). With ``guided_aux=True`` it runs two passes,
each gated by a small token-wise auto-encoder's semantic map ``sigmoid(sem(recon))``, and in training mode stores the
official auxiliary losses in ``self.aux_losses``: ``guided = 0.25 * MSE(latent_1, latent_2)`` and
``reconstruction = 0.1 * (MSE(in_1, recon_1) + MSE(in_2, recon_2))``. The auto-encoder is token-wise (Linear layers)
because 3D bottleneck grids (3^3-4^3) are too small for the official conv/pool auto-encoder.

Examples:
    >>> import torch
    >>> m = GuidedAttentionBottleneck(32, guided_aux=True).train()
    >>> y = m(torch.randn(2, 2, 2, 2, 32))
    >>> sorted(m.aux_losses)
    ['guided', 'reconstruction']
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PositionAttention3D(nn.Module):
    """PAM (official form): returns ``gamma * softmax(q k^T) v + x``."""

    def __init__(self, dim: int, reduction: int = 8) -> None:
        super().__init__()
        qk = max(dim // reduction, 1)
        self.query, self.key, self.value = nn.Linear(dim, qk), nn.Linear(dim, qk), nn.Linear(dim, dim)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention_output(self, x: torch.Tensor) -> torch.Tensor:
        """``softmax(q k^T) v`` without the residual, same shape as ``x``."""
        t = x.flatten(1, 3)  # (B, N, C)
        attn = torch.softmax(self.query(t) @ self.key(t).transpose(1, 2), dim=-1)
        return (attn @ self.value(t)).view_as(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * self.attention_output(x) + x


class ChannelAttention3D(nn.Module):
    """CAM (official form): returns ``gamma * softmax(max_row(E) - E) X + x`` with ``E = X X^T``."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention_output(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(1, 3)  # (B, N, C)
        energy = t.transpose(1, 2) @ t  # (B, C, C)
        energy = energy.amax(-1, keepdim=True).expand_as(energy) - energy
        return (t @ torch.softmax(energy, dim=-1).transpose(1, 2)).view_as(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * self.attention_output(x) + x


class _PamCam(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pam = PositionAttention3D(dim)
        self.cam = ChannelAttention3D()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pam.gamma * self.pam.attention_output(x) + self.cam.gamma * self.cam.attention_output(x)


class _TokenAutoEncoder(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        mid, lat = max(dim // 2, 1), max(dim // 4, 1)
        self.encoder = nn.Sequential(nn.Linear(dim, mid), nn.GELU(), nn.Linear(mid, lat))
        self.decoder = nn.Sequential(nn.Linear(lat, mid), nn.GELU(), nn.Linear(mid, dim))
        self.semantic = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        recon = self.decoder(z)
        return z, recon, torch.sigmoid(self.semantic(recon))


class GuidedAttentionBottleneck(nn.Module):
    """PAM + CAM at the bottleneck, optionally two guided passes with auxiliary losses.

    Args:
        dim: token channels.
        guided_aux: two passes with auto-encoder guidance; training-mode forwards fill ``self.aux_losses``.
        guided_weight: weight of the latent-consistency loss (official 0.25).
        reconstruction_weight: weight of the reconstruction loss (official 0.1).
    """

    def __init__(
        self, dim: int, guided_aux: bool = False, guided_weight: float = 0.25, reconstruction_weight: float = 0.1
    ) -> None:
        super().__init__()
        self.guided_aux = guided_aux
        self.guided_weight, self.reconstruction_weight = guided_weight, reconstruction_weight
        self.passes = nn.ModuleList([_PamCam(dim) for _ in range(2 if guided_aux else 1)])
        self.autoencoders = nn.ModuleList([_TokenAutoEncoder(dim) for _ in range(2)]) if guided_aux else None
        self.aux_losses = dict[str, torch.Tensor]()  # not an annotated {}: TorchScript warns about those

    #: training-only state: a scripted (TorchScript) bottleneck runs the same passes but keeps no losses
    __jit_ignored_attributes__ = ["aux_losses"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # the branches on is_scripting() are left out of a TorchScript model
            self.aux_losses = {}
        if self.autoencoders is None:
            return self.passes[0](x)
        latents: list[torch.Tensor] = []
        recon_loss = x.new_zeros(())
        for attn, ae in zip(self.passes, self.autoencoders):
            z, recon, sem = ae(x)
            latents.append(z)
            recon_loss = recon_loss + F.mse_loss(recon, x)
            x = attn(x) * sem
        if not torch.jit.is_scripting():
            if self.training:
                self.aux_losses = {
                    "guided": self.guided_weight * F.mse_loss(latents[0], latents[1]),
                    "reconstruction": self.reconstruction_weight * recon_loss,
                }
        return x
