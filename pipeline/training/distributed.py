r"""DDP helpers for ``torchrun`` training: gloo on CPU, nccl on CUDA.

Used by the bundles' ``multi_gpu_train.json``::

    torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run \
        --config_file "['configs/train.json','configs/multi_gpu_train.json']"
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "distributed_device", "get_rank", "get_world_size", "is_main_process", "cleanup"]


def distributed_device() -> torch.device:
    """``cuda:$LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(backend: str | None = None, timeout_minutes: float = 30) -> torch.device:
    """Initialise the default process group from the ``torchrun`` environment and return this process's device.

    Args:
        backend: ``"gloo"``, ``"nccl"`` or None (nccl with CUDA, else gloo).
        timeout_minutes: collective timeout.

    Returns the device to train on (and sets the current CUDA device). A no-op if already initialised.
    """
    device = distributed_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise RuntimeError("init_distributed: RANK/WORLD_SIZE are not set; launch with torchrun")
        dist.init_process_group(
            backend=backend or ("nccl" if device.type == "cuda" else "gloo"), timeout=timedelta(minutes=timeout_minutes)
        )
    return device


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    return (
        dist.get_world_size() if dist.is_available() and dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))
    )


def is_main_process() -> bool:
    return get_rank() == 0


def cleanup() -> None:
    """Destroy the process group if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
