"""TorchScript module interfaces of the 3D Swin-Unet family.

TorchScript indexes an ``nn.ModuleList`` with a loop variable (``self.decoder[i]``, needed to walk the decoder from
the deepest stage up) only when the result is annotated with a module interface, and then calls it through
``.forward``. Every module stored in such a list matches one of these signatures, argument names included:

* :class:`TokenModule` ``forward(x) -> tokens``: the stages (:class:`~pipeline.networks.swin3d.blocks.SwinStage3D`),
  patch merging and patch expanding;
* :class:`SkipFusion` ``forward(x, skip, coarse=None) -> tokens``: the skip fusions of
  :mod:`pipeline.networks.swin3d.fusion`.

An interface method's body must be ``pass`` (TorchScript rejects anything else), and a ``# type: ignore`` comment must
end its line (TorchScript reads other ``# type:`` comments as signatures).

Examples:
    >>> import torch
    >>> from pipeline.networks.swin3d.sampling import PatchExpand3D
    >>> layers = torch.nn.ModuleList([PatchExpand3D(8)])
    >>> expand: TokenModule = layers[0]  # what TorchScript needs to index with a variable
    >>> tuple(expand.forward(torch.randn(1, 2, 2, 2, 8)).shape)
    (1, 4, 4, 4, 4)
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

__all__ = ["SkipFusion", "TokenModule"]


# torch 2.13 deprecates TorchScript: torch.jit.interface warns (DeprecationWarning) each time it runs, here at
# import; MONAI's ckpt_export still scripts bundle networks, so the interfaces stay, defined without the warning
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)

    @torch.jit.interface
    class TokenModule(nn.Module):
        """A module from channels-last tokens ``(B, S0, S1, S2, C)`` to tokens."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[empty-body]
            pass

    @torch.jit.interface
    class SkipFusion(nn.Module):
        """A skip fusion: the decoder feature ``x``, the encoder ``skip`` and the ``coarse`` decoder feature."""

        def forward(  # type: ignore[empty-body]
            self, x: torch.Tensor, skip: torch.Tensor, coarse: torch.Tensor | None = None
        ) -> torch.Tensor:
            pass
