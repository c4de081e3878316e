"""UNETR++ (Shaker et al., IEEE TMI 2024) in MONAI style: one EPA block, one network class, official presets,
official-checkpoint loading and an nnU-Net v1 importer."""

from pipeline.networks.unetrpp.blocks import TransformerBlock, UnetrPPUpBlock, interpolate_pos_embed
from pipeline.networks.unetrpp.epa import EPABlock
from pipeline.networks.unetrpp.network import UNETRPP, InputSizeError, UNETRPPEncoder

__all__ = [
    "EPABlock",
    "InputSizeError",
    "TransformerBlock",
    "UNETRPP",
    "UNETRPPEncoder",
    "UnetrPPUpBlock",
    "interpolate_pos_embed",
]
from pipeline.networks.unetrpp.checkpoint import (
    fit_state_dict,
    import_official_checkpoint,
    load_official_checkpoint,
    load_official_weights,
    plans_to_preprocessing,
    read_nnunet_plans,
)

__all__ += [
    "fit_state_dict",
    "import_official_checkpoint",
    "load_official_checkpoint",
    "load_official_weights",
    "plans_to_preprocessing",
    "read_nnunet_plans",
]
