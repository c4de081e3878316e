"""Helpers for the inference tests: a tiny deterministic MONAI bundle written into a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: a small 3-class MONAI UNet: fast on CPU, deterministic from a seed
NETWORK_DEF = {
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}


def make_tiny_bundle(
    root: Path,
    *,
    preset: str = "ct_abdomen",
    roi=(32, 32, 32),
    seed: int = 0,
    modality: str = "CT",
    sw_batch_size: int = 2,
    overlap: float = 0.5,
    drop=(),
) -> Path:
    """Write ``root`` as a minimal bundle (inference.json, metadata.json, models/model.pt) and return it.

    ``drop`` removes top-level ids from inference.json (a bundle config missing a key).
    """
    from monai.networks.nets import UNet

    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    cfg = {
        "imports": ["$import pipeline.transforms"],
        "bundle_root": str(root),
        "device": "$torch.device('cpu')",
        "network_def": NETWORK_DEF,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "pipeline.transforms.build_preprocessing", "preset": preset, "keys": ["image"]},
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(roi),
            "sw_batch_size": sw_batch_size,
            "overlap": overlap,
            "mode": "gaussian",
        },
    }
    for key in drop:
        cfg.pop(key)
    meta = {
        "version": "0.0.1",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "modality": modality, "num_channels": 1, "spatial_shape": list(roi)}},
            "outputs": {
                "pred": {"type": "image", "num_channels": 3, "channel_def": {"0": "background", "1": "a", "2": "b"}}
            },
        },
    }
    (root / "configs" / "inference.json").write_text(json.dumps(cfg, indent=1))
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1))
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in NETWORK_DEF.items() if k != "_target_"}
    net = UNet(**kwargs)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root
