"""How a state dict fits a network: one description of the mismatches, shared by every loader.

Examples:
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Conv3d(1, 4, 3), nn.Conv3d(4, 2, 1))
    >>> describe_mismatch(net, net.state_dict())
    'load_state_dict refused it'
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn


def describe_mismatch(network: nn.Module, state: Mapping[str, torch.Tensor], limit: int = 3) -> str:
    """Name the layers of ``state`` that do not fit ``network``: other shapes first, then missing/unexpected keys.

    Examples:
        >>> net = nn.Sequential(nn.Conv3d(1, 4, 3), nn.Conv3d(4, 2, 1))
        >>> other = nn.Sequential(nn.Conv3d(1, 8, 3), nn.Conv3d(8, 2, 1)).state_dict()
        >>> describe_mismatch(net, other, limit=1)
        '3 layer(s) with another shape: 0.weight [8, 1, 3, 3, 3] (network [4, 1, 3, 3, 3]) ...'
    """
    own = network.state_dict()

    def listed(items: list[str]) -> str:
        return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "")

    shapes = [
        f"{k} {list(v.shape)} (network {list(own[k].shape)})"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} layer(s) with another shape: {listed(shapes)}")
    if missing:
        parts.append(f"{len(missing)} layer(s) missing from the checkpoint: {listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected layer(s): {listed(unexpected)}")
    return "; ".join(parts) or "load_state_dict refused it"
