"""The network registry: named presets are data (a factory plus keyword arguments), as in timm.

Every network of the project, UNETR++ and the Swin-Unet 3D family alike, is built by
:func:`create_network`, so bundles, the CLI and benchmarks name a preset and override what they need.

Examples:
    >>> from pipeline.networks import create_network, list_networks
    >>> "unetrpp_synapse" in list_networks()
    True
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
) -> Preset:
    """Add a preset. Re-registering a name with a different definition is an error."""
    if axes not in ("xyz", "zyx"):
        raise ValueError(f"preset {name!r}: axes must be 'xyz' or 'zyx', got {axes!r}")
    preset = Preset(name, factory, dict(kwargs or {}), description, roi_size, axes)
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
        overrides: constructor arguments that replace the preset's (e.g. ``out_channels=3``).
    """
    preset = get_preset(name)
    kwargs = {**preset.kwargs, **overrides}
    return preset.factory(**kwargs)
