"""The input an export is checked on: the first windows of a real image, else a seeded random window.

For a bundle whose dataset is found (its ``dataset_dir``: ``$MEDSEG_DATA/<name>`` or ``../shared/data/<name>``),
the first case of the dataset (by case name) goes through the bundle's own preprocessing, is padded as the
sliding-window engine pads it (constant 0 up to the window), and its first ``batch`` windows in MONAI's order are
stacked (repeated when the image has fewer). Otherwise the window is standard normal noise from a seeded generator,
the scale of z-scored or ``ct_nnunet``-normalised intensities.

Examples:
    >>> x, info = random_window(2, 1, (8, 8, 4), seed=0, reason="no dataset")
    >>> tuple(x.shape), info["kind"], info["seed"]
    ((2, 1, 8, 8, 4), 'random', 0)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.inference.engine import plan_windows
from pipeline.inference.loading import LoadedModel

__all__ = ["bundle_dataset", "check_window", "image_windows", "random_window"]

logger = logging.getLogger(__name__)


def random_window(
    batch: int, channels: int, roi_size: Sequence[int], *, seed: int = 0, reason: str = ""
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(batch, channels, *roi_size)`` standard normal values from ``torch.Generator().manual_seed(seed)``."""
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(int(batch), int(channels), *[int(r) for r in roi_size], generator=g)
    return x, {"kind": "random", "distribution": "standard normal", "seed": int(seed), "reason": reason}


def image_windows(image: torch.Tensor, roi_size: Sequence[int], batch: int, overlap: float) -> torch.Tensor:
    """The first ``batch`` sliding windows of a ``(C, *spatial)`` image, stacked (padded as the engine pads).

    Examples:
        >>> img = torch.arange(2 * 6 * 4 * 4, dtype=torch.float32).view(2, 6, 4, 4)
        >>> w = image_windows(img, (4, 4, 4), 2, 0.5)
        >>> tuple(w.shape), bool(torch.equal(w[0], img[:, :4])), bool(torch.equal(w[1], img[:, 2:6]))
        ((2, 2, 4, 4, 4), True, True)
    """
    image = image.as_subclass(torch.Tensor).float()
    plan = plan_windows(image.shape[1:], roi_size, overlap)
    if any(plan.pad):
        image = F.pad(image[None], pad=plan.pad, mode="constant", value=0.0)[0]
    picks = [plan.slices[i % len(plan.slices)] for i in range(int(batch))]
    return torch.stack([image[(slice(None),) + tuple(s)] for s in picks])


def bundle_dataset(bundle: Path) -> Path | None:
    """The dataset folder a bundle's ``inference.json`` names (``dataset_dir``), when it exists here."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config(str(bundle / "configs" / "inference.json"))
        if "dataset_dir" not in parser:
            return None
        folder = Path(str(parser.get_parsed_content("dataset_dir")))
    except Exception as exc:  # noqa: BLE001 - a config without a usable dataset_dir: the check uses a random window
        logger.debug("bundle %s: no dataset_dir (%s)", bundle, exc)
        return None
    return folder if folder.is_dir() else None


def _first_image(dataset: Path) -> dict[str, Any] | None:
    from pipeline.data.readers import read_dataset

    info = read_dataset(dataset)
    items = [it for items in info.splits.values() for it in items if it.get("image") and not it.get("error")]
    return min(items, key=lambda it: str(it.get("case", it["image"]))) if items else None


def check_window(
    model: LoadedModel, batch: int, channels: int, *, bundle: Path | None = None, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The check input ``(batch, channels, *model.roi_size)`` and a JSON-friendly description of it.

    Args:
        model: the loaded model (its preprocessing, window and overlap are used).
        batch: windows per call (the export's fixed ``sw_batch_size``).
        channels: input channels of the network.
        bundle: the bundle folder, when the model is a bundle (its dataset is looked for).
        seed: seed of the random window.

    Returns:
        ``(windows, info)``; ``info["kind"]`` is ``"image"`` (with ``file``, ``case``, ``dataset``) or ``"random"``
        (with ``seed`` and the ``reason``).
    """
    if bundle is None:
        return random_window(batch, channels, model.roi_size, seed=seed, reason="a preset names no dataset")
    dataset = bundle_dataset(bundle)
    if dataset is None:
        return random_window(batch, channels, model.roi_size, seed=seed, reason="the bundle's dataset is not here")
    try:
        item = _first_image(dataset)
        if item is None:
            return random_window(batch, channels, model.roi_size, seed=seed, reason=f"no images in {dataset}")
        image = model.preprocessing({"image": item["image"]})["image"]
    except Exception as exc:  # noqa: BLE001 - an unreadable dataset must not stop the export: the JSON says so
        reason = f"the first image of {dataset} could not be preprocessed ({type(exc).__name__}: {exc})"
        return random_window(batch, channels, model.roi_size, seed=seed, reason=" ".join(reason.split())[:300])
    if image.shape[0] != channels:
        reason = f"the preprocessed image has {image.shape[0]} channels, the network takes {channels}"
        return random_window(batch, channels, model.roi_size, seed=seed, reason=reason)
    windows = image_windows(image, model.roi_size, batch, model.overlap)
    return windows, {
        "kind": "image",
        "dataset": str(dataset),
        "case": str(item.get("case", "")),
        "file": str(item["image"]),
        "preprocessed_shape": [int(s) for s in image.shape],
        "windows": "the first sw_batch_size sliding windows (MONAI order), after the bundle's preprocessing",
    }
