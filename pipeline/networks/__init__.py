"""Networks: UNETR++ (EPA blocks) and the 3D Swin-Unet family, built by name through one registry."""

from pipeline.networks.cpu import optimize_for_cpu
from pipeline.networks.registry import Preset, create_network, get_preset, list_networks, register_preset

__all__ = ["Preset", "create_network", "get_preset", "list_networks", "optimize_for_cpu", "register_preset"]
