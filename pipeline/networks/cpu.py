"""Opt-in CPU kernels for inference: :func:`optimize_for_cpu` swaps them into a built network.

The networks' own ``forward`` is plain PyTorch on any device. On CPU, eval-mode residual conv blocks with BatchNorm
(MONAI's ``UnetResBlock``, e.g. UNETR++'s ``conv51``/``conv52``) run much faster with

* the eval-mode BatchNorm folded into the convolution weights (one pass over the output instead of two), and
* channels-last oneDNN convolutions (``torch.mkldnn_convolution``): PyTorch's heuristic sends batch-1 3D convs on
  small grids (C*D*H <= 20480) to its slow im2col kernel; oneDNN is 1.5-2x faster there and keeps the channels-last
  layout.

:func:`optimize_for_cpu` replaces each such block by a :class:`FoldedResBlock` that shares its submodules, so the
state dict (keys, order, tensors) is unchanged; training-mode blocks, gradients, tracing and ``torch.compile``
fall back to the plain conv, and ``torch.jit.script`` compiles the plain ``UnetResBlock`` sequence (a scripted
optimised network computes what the plain one does). ``pipeline.inference.load_model`` applies it on CPU.

Examples:
    >>> import torch
    >>> from monai.networks.blocks import UnetResBlock
    >>> net = torch.nn.Sequential(UnetResBlock(3, 8, 8, kernel_size=3, stride=1, norm_name="batch")).eval()
    >>> x = torch.randn(1, 8, 6, 6, 6)
    >>> ref = net(x)
    >>> fast = optimize_for_cpu(net)
    >>> type(fast[0]).__name__, bool(torch.allclose(ref, fast(x), atol=1e-5))
    ('FoldedResBlock', True)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetResBlock

__all__ = ["FoldedResBlock", "optimize_for_cpu"]

_CL = torch.channels_last_3d
#: the BatchNorm classes whose eval-mode statistics can be folded into a preceding conv
_BATCH_NORMS = (nn.BatchNorm3d, nn.SyncBatchNorm)


def _conv_weight_bias(conv: nn.Conv3d, norm: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """The conv's weight/bias, with an eval-mode BatchNorm folded in. Returns (weight, bias, norm_folded)."""
    w, b = conv.weight, conv.bias
    if (
        isinstance(norm, _BATCH_NORMS)
        and not norm.training
        and norm.running_mean is not None
        and norm.running_var is not None  # both are None together (track_running_stats=False)
    ):
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        if b is not None:
            shift = shift + b * scale
        return w * scale.view(-1, *([1] * (w.ndim - 1))), shift, True
    return w, b, False


def _use_onednn(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.ndim == 5
        and torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
        and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    )


def _conv_norm(conv: nn.Conv3d, norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """conv then norm with channels-last conv kernels; an eval-mode BatchNorm is folded into the conv."""
    w, b, folded = _conv_weight_bias(conv, norm)
    w = w.contiguous(memory_format=_CL)
    if not isinstance(conv.padding, str) and _use_onednn(x, w):  # padding='same' has no oneDNN form
        y = torch.mkldnn_convolution(
            x.contiguous(memory_format=_CL), w, b, conv.padding, conv.stride, conv.dilation, conv.groups
        )
    else:
        y = F.conv3d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    return y if folded or norm is None else norm(y)


def _foldable(block: nn.Module) -> bool:
    """A MONAI ``UnetResBlock`` with BatchNorm, LeakyReLU and ungrouped convs (what :class:`FoldedResBlock` runs)."""
    return (
        type(block) is UnetResBlock
        and isinstance(block.lrelu, nn.LeakyReLU)
        and isinstance(block.norm1, _BATCH_NORMS)
        and isinstance(block.conv1.conv, nn.Conv3d)
        and block.conv1.conv.groups == 1
    )


class FoldedResBlock(nn.Module):
    """A MONAI ``UnetResBlock`` (BatchNorm, LeakyReLU) run with folded BatchNorm and channels-last oneDNN convs.

    Built from an existing block whose submodules it adopts, under the same names and in the same order, so the
    state dict is the block's. Same maths as the block's ``forward``: ``lrelu(norm2(conv2(lrelu(norm1(conv1(x)))))
    + residual)`` with ``residual = norm3(conv3(x))`` when the block downsamples.

    Args:
        block: the ``UnetResBlock`` to replace.

    Examples:
        >>> from monai.networks.blocks import UnetResBlock
        >>> blk = UnetResBlock(3, 4, 8, kernel_size=3, stride=2, norm_name="batch").eval()
        >>> x = torch.randn(1, 4, 8, 8, 8)
        >>> bool(torch.allclose(FoldedResBlock(blk)(x), blk(x), atol=1e-5))
        True
    """

    def __init__(self, block: UnetResBlock) -> None:
        super().__init__()
        if not _foldable(block):
            raise TypeError(f"FoldedResBlock needs a UnetResBlock with BatchNorm and LeakyReLU, got {block!r}")
        self.conv1 = block.conv1
        self.conv2 = block.conv2
        self.lrelu = block.lrelu
        self.norm1 = block.norm1
        self.norm2 = block.norm2
        self.downsample = block.downsample
        if hasattr(block, "conv3"):
            self.conv3 = block.conv3
        if hasattr(block, "norm3"):
            self.norm3 = block.norm3
        self.negative_slope = float(getattr(self.lrelu, "negative_slope", 0.01))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        # TorchScript leaves the is_scripting() branch out: a scripted block runs the plain sequence below
        if not torch.jit.is_scripting() and inp.ndim == 5:
            out = F.leaky_relu_(_conv_norm(self.conv1.conv, self.norm1, inp), self.negative_slope)
            out = _conv_norm(self.conv2.conv, self.norm2, out)
            residual = _conv_norm(self.conv3.conv, getattr(self, "norm3", None), inp) if hasattr(self, "conv3") else inp
            return F.leaky_relu_(out.add_(residual), self.negative_slope)  # in place, as MONAI's forward
        # the plain UnetResBlock sequence
        out = self.lrelu(self.norm1(self.conv1(inp)))
        out = self.norm2(self.conv2(out))
        residual = self.norm3(self.conv3(inp)) if hasattr(self, "conv3") else inp
        return self.lrelu(out + residual)


def optimize_for_cpu(network: nn.Module) -> nn.Module:
    """Swap the CPU fast path into ``network`` (in place) and return it.

    Every MONAI ``UnetResBlock`` with BatchNorm and LeakyReLU becomes a :class:`FoldedResBlock` sharing its
    parameters; nothing else changes, so the state dict and the outputs (up to float rounding, ~1e-6 relative) stay
    those of the plain network. Idempotent. Meant for CPU inference: the blocks fall back to plain convs on other
    devices, in training mode (no folding) and under autograd, tracing or ``torch.compile``.

    Args:
        network: any module (blocks are found at any depth; a bare ``UnetResBlock`` is returned wrapped).

    Returns:
        ``network`` with the blocks replaced (or the new block when ``network`` itself is one).
    """
    if _foldable(network):
        return FoldedResBlock(network)  # type: ignore[arg-type]
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if _foldable(child):
                setattr(parent, name, FoldedResBlock(child))  # type: ignore[arg-type]
    return network
