"""The network registry: named presets are data (a factory plus keyword arguments), as in timm.

Every network of the project, UNETR++ and the Swin-Unet 3D family alike, is built by
:func:`create_network`, so bundles, the CLI and benchmarks name a preset and override what they need.

A preset records the spatial order its arguments use (``axes``). Networks take MONAI (x, y, z) tensors by default;
the official UNETR++ presets keep nnU-Net's (z, y, x) (``axes="zyx"``). For such a preset, passing
``input_order="xyz"`` to :func:`create_network` reverses the preset's per-axis arguments (``spatial_keys``), so the
network, its arguments and the overrides are all in (x, y, z) while the state dict stays the official one.

Examples:
    >>> from pipeline.networks import create_network, get_preset, list_networks
    >>> "unetrpp_synapse" in list_networks()
    True
    >>> get_preset("unetrpp_synapse").roi_size_in("xyz")
    (128, 128, 64)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

#: modules whose import registers presets; imported on first use of the registry
PRESET_MODULES: tuple[str, ...] = (
    "pipeline.networks.unetrpp.presets",
    "pipeline.networks.swin3d.presets",
)


@dataclass(frozen=True)
class Preset:
    """A named network configuration: ``factory(**kwargs)`` builds it."""

    name: str
    factory: Callable[..., nn.Module]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    #: the preset's input patch in the network's own spatial order (see ``axes``), when it has a fixed one
    roi_size: tuple[int, ...] | None = None
    #: spatial order the network expects: "xyz" (MONAI/nibabel) or "zyx" (nnU-Net/official UNETR++ layout)
    axes: str = "xyz"
    #: keyword arguments holding one value per spatial axis (in ``axes`` order); reversed when the preset is built
    #: for the other order (``input_order=...``)
    spatial_keys: tuple[str, ...] = ()

    def roi_size_in(self, axes: str) -> tuple[int, ...] | None:
        """``roi_size`` in the spatial order ``axes`` ("xyz" or "zyx")."""
        if self.roi_size is None:
            return None
        roi = tuple(self.roi_size)
        return roi if axes == self.axes else roi[::-1]

    def kwargs_in(self, axes: str) -> dict[str, Any]:
        """The constructor arguments for a network that takes tensors in ``axes`` order.

        For the preset's own order these are ``kwargs``; for the other one the ``spatial_keys`` are reversed and
        ``input_order`` is set to ``axes``. A preset without ``spatial_keys`` supports only its own order.

        Raises:
            ValueError: ``axes`` is not "xyz"/"zyx", or the preset cannot be built for that order.
        """
        if axes not in AXES:
            raise ValueError(f"axes must be one of {AXES}, got {axes!r}")
        kwargs = dict(self.kwargs)
        if axes == self.axes:
            return kwargs
        if not self.spatial_keys:
            raise ValueError(f"network preset {self.name!r} takes {self.axes} tensors only, not {axes}")
        for key in self.spatial_keys:
            value = kwargs.get(key)
            if isinstance(value, (list, tuple)):
                kwargs[key] = type(value)(value[::-1])
        kwargs["input_order"] = axes
        return kwargs


#: the spatial orders a preset can declare
AXES = ("xyz", "zyx")

_PRESETS: dict[str, Preset] = {}
_loaded = False


def register_preset(
    name: str,
    factory: Callable[..., nn.Module],
    kwargs: Mapping[str, Any] | None = None,
    *,
    description: str = "",
    roi_size: tuple[int, ...] | None = None,
    axes: str = "xyz",
    spatial_keys: tuple[str, ...] = (),
) -> Preset:
    """Add a preset. Re-registering a name with a different definition is an error.

    Args:
        name: the preset name.
        factory: builds the network from keyword arguments.
        kwargs: the preset's constructor arguments.
        description: one line for listings.
        roi_size: the fixed input patch in ``axes`` order, if any.
        axes: the spatial order of the tensors and of the per-axis arguments ("xyz" or "zyx").
        spatial_keys: the per-axis arguments, reversed when the preset is built for the other order (the factory
            must then take ``input_order``).
    """
    if axes not in AXES:
        raise ValueError(f"preset {name!r}: axes must be 'xyz' or 'zyx', got {axes!r}")
    preset = Preset(name, factory, dict(kwargs or {}), description, roi_size, axes, tuple(spatial_keys))
    old = _PRESETS.get(name)
    if old is not None and (old.factory is not factory or dict(old.kwargs) != dict(preset.kwargs)):
        raise ValueError(f"network preset {name!r} is already registered with a different definition")
    _PRESETS[name] = preset
    return preset


def _load() -> None:
    global _loaded
    if _loaded:
        return
    for module in PRESET_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module and not module.startswith(str(exc.name)):
                raise
    _loaded = True


def list_networks() -> list[str]:
    """Names of all registered presets, sorted."""
    _load()
    return sorted(_PRESETS)


def get_preset(name: str) -> Preset:
    """The :class:`Preset` called ``name``; a clear ``KeyError`` lists the known names otherwise."""
    _load()
    try:
        return _PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown network preset {name!r}; known presets: {', '.join(sorted(_PRESETS))}") from None


def create_network(name: str, **overrides: Any) -> nn.Module:
    """Build the preset ``name``, with keyword ``overrides`` replacing its defaults.

    Args:
        name: a registered preset, e.g. ``"unetrpp_synapse"`` or ``"swinunet3d"``.
        overrides: constructor arguments that replace the preset's (e.g. ``out_channels=3``). An ``input_order``
            other than the preset's ``axes`` builds the preset for that order (see :meth:`Preset.kwargs_in`); the
            other overrides are then read in that order too.

    Raises:
        KeyError: unknown preset. ValueError/TypeError: arguments the network rejects.
    """
    preset = get_preset(name)
    order = overrides.get("input_order", preset.axes)
    base = preset.kwargs_in(order) if preset.spatial_keys else dict(preset.kwargs)
    return preset.factory(**{**base, **overrides})
