"""The network as exported: an unoptimised copy of a loaded network, with only its full-resolution head.

``load_model`` applies :func:`pipeline.networks.optimize_for_cpu` on CPU, which swaps MONAI ``UnetResBlock`` s for
:class:`~pipeline.networks.cpu.FoldedResBlock` s (oneDNN kernels, BatchNorm folded at run time). An exporter must see
the plain blocks: :func:`plain_network` returns a deep copy with every ``FoldedResBlock`` turned back into the
``UnetResBlock`` it came from (same submodules, so the same state dict), leaving the loaded network untouched.

Examples:
    >>> import torch
    >>> from monai.networks.blocks import UnetResBlock
    >>> from pipeline.networks import optimize_for_cpu
    >>> fast = optimize_for_cpu(torch.nn.Sequential(UnetResBlock(3, 2, 4, 3, 1, "batch")).eval())
    >>> plain = plain_network(fast)
    >>> type(fast[0]).__name__, type(plain[0]).__name__
    ('FoldedResBlock', 'UnetResBlock')
    >>> x = torch.randn(1, 2, 4, 4, 4)
    >>> bool(torch.allclose(plain(x), fast(x), atol=1e-5))
    True
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
from monai.networks.blocks.dynunet_block import UnetResBlock

from pipeline.networks.cpu import FoldedResBlock

__all__ = ["FullResolutionHead", "full_resolution", "plain_network"]


def _unfold(block: FoldedResBlock) -> UnetResBlock:
    """The ``UnetResBlock`` holding ``block``'s submodules, registered in MONAI's order (same state dict)."""
    plain = UnetResBlock.__new__(UnetResBlock)
    nn.Module.__init__(plain)
    for name in ("conv1", "conv2", "lrelu", "norm1", "norm2"):
        setattr(plain, name, getattr(block, name))
    plain.downsample = block.downsample
    for name in ("conv3", "norm3"):
        if hasattr(block, name):
            setattr(plain, name, getattr(block, name))
    plain.train(block.training)
    return plain


def plain_network(network: nn.Module, *, copy_network: bool = True) -> nn.Module:
    """``network`` in eval mode without the CPU kernels of ``optimize_for_cpu``: a deep copy by default.

    Args:
        network: a network, optimised for CPU or not.
        copy_network: False changes ``network`` itself (when nothing else uses it) instead of a copy.

    Returns:
        the plain network; its state dict (keys, order, values) equals ``network``'s.

    Raises:
        RuntimeError: the state dict changed (a block this function does not know how to undo).
    """
    before = network.state_dict()
    plain = copy.deepcopy(network) if copy_network else network
    if isinstance(plain, FoldedResBlock):
        plain = _unfold(plain)
    for parent in list(plain.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FoldedResBlock):
                setattr(parent, name, _unfold(child))
    plain.eval()
    after = plain.state_dict()
    if list(before) != list(after) or not all(torch.equal(before[k], after[k]) for k in before):
        raise RuntimeError(f"the plain copy of {type(network).__name__} does not keep its state dict")
    return plain


def full_resolution(out: Any) -> torch.Tensor:
    """The logits the sliding-window engine uses from a network output (``SlidingWindowEngine._call_network``'s
    rule): a dict gives its first key in sorted order, a list/tuple its first element (deep supervision's
    full-resolution head).

    Examples:
        >>> full_resolution([torch.ones(1), torch.zeros(1)]).item(), full_resolution({"b": 2, "a": torch.ones(1)})
        (1.0, tensor([1.]))
    """
    if isinstance(out, dict):
        out = out[sorted(out)[0]]
    if isinstance(out, (list, tuple)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the network returned a {type(out).__name__}, not logits")
    return out.as_subclass(torch.Tensor)


class FullResolutionHead(nn.Module):
    """Wraps a network whose output is a list/tuple/dict so that an exporter sees one output: the logits.

    Examples:
        >>> class Two(nn.Module):
        ...     def forward(self, x):
        ...         return [x + 1, x[:, :, ::2]]
        >>> FullResolutionHead(Two())(torch.zeros(1, 1, 2)).tolist()
        [[[1.0, 1.0]]]
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return full_resolution(self.network(x))
