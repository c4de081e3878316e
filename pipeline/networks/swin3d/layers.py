"""MONAI-style norm and activation specs for the convolutional parts of the 3D Swin-Unet family.

A spec is what MONAI's ``get_norm_layer`` / ``get_act_layer`` take: a name (``"batch"``, ``"instance"``, ``"relu"``)
or a ``(name, {arguments})`` pair (a list in bundle JSON). :func:`fit_norm` adapts a group-norm spec to a width
(``num_groups`` becomes ``gcd(num_groups, channels)``, so one spec works for every width and for batch 1), and
:func:`conv_norm` builds the layer; every GroupNorm of the family is built this way.

Examples:
    >>> fit_norm(("group", {"num_groups": 8}), 12)
    ('group', {'num_groups': 4})
    >>> conv_norm(DEFAULT_NORM, 12)
    GroupNorm(4, 12, eps=1e-05, affine=True, bias=True)
    >>> from monai.networks.layers import get_act_layer
    >>> get_act_layer(DEFAULT_CNN_ACT)
    LeakyReLU(negative_slope=0.01, inplace=True)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from monai.networks.layers import DropPath as _MonaiDropPath
from monai.networks.layers.factories import split_args
from monai.networks.layers.utils import get_norm_layer

__all__ = ["DEFAULT_CNN_ACT", "DEFAULT_FUSION_ACT", "DEFAULT_NORM", "DropPath", "conv_norm", "fit_norm"]

#: norm of the convolutional parts (CNN branch, BiFusion): GroupNorm with up to 8 groups
DEFAULT_NORM: tuple[str, dict[str, Any]] = ("group", {"num_groups": 8})
#: activation of the CNN branch (stem and MONAI ``UnetResBlock``\ s)
DEFAULT_CNN_ACT: tuple[str, dict[str, Any]] = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
#: activation inside BiFusion (TransFuse)
DEFAULT_FUSION_ACT: tuple[str, dict[str, Any]] = ("relu", {"inplace": True})


def fit_norm(name: tuple | list | str, channels: int) -> tuple[str, dict[str, Any]] | str:
    """The norm spec ``name`` for a layer of ``channels`` channels.

    A group norm gets ``num_groups = gcd(num_groups, channels)`` (default 8 groups when none is given); other specs
    are returned unchanged (a list becomes a tuple).

    Raises:
        TypeError: ``name`` is not a string or a (name, dict) pair.
    """
    norm, args = split_args(tuple(name) if isinstance(name, list) else name)
    if not isinstance(norm, str) or norm.lower() != "group":
        return name if isinstance(name, str) else (norm, dict(args))
    args = dict(args)
    args["num_groups"] = math.gcd(int(args.get("num_groups", 8)), channels)
    return (norm, args)


def conv_norm(name: tuple | list | str, channels: int, spatial_dims: int = 3) -> nn.Module:
    """MONAI's ``get_norm_layer`` for :func:`fit_norm`'s spec: a channels-first norm layer of ``channels``."""
    return get_norm_layer(name=fit_norm(name, channels), spatial_dims=spatial_dims, channels=channels)


class DropPath(_MonaiDropPath):
    """MONAI's ``DropPath`` (stochastic depth per sample) with a ``forward`` that TorchScript compiles.

    MONAI builds the mask shape as ``(B,) + (1,) * (ndim - 1)``, a tuple whose length TorchScript cannot infer; this
    ``forward`` builds it as a list. Same arguments, same random draws (one ``bernoulli_`` of shape
    ``(B, 1, ..., 1)``) and the same result; an identity in eval mode or with ``drop_prob=0``.

    Examples:
        >>> import torch
        >>> x = torch.ones(4, 2, 3)
        >>> bool(torch.equal(DropPath(0.5).eval()(x), x))
        True
        >>> y = DropPath(0.5).train()(x)  # each sample is dropped (0) or kept and scaled by 1 / 0.5
        >>> sorted({float(v) for v in y.unique()} - {0.0, 2.0})
        []
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        random_tensor = x.new_empty([x.shape[0]] + [1] * (x.ndim - 1)).bernoulli_(keep_prob)
        if keep_prob > 0.0 and self.scale_by_keep:
            random_tensor.div_(keep_prob)
        return x * random_tensor
