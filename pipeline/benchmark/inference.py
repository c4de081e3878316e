"""Build a bundle's network for ``medseg benchmark``, with a timer on the network callable.

The bundle's ``configs/inference.json`` gives ``network_def``, ``preprocessing`` and the ``inferer``'s window settings
(:func:`pipeline.inference.loading.load_model`; ``--roi-size`` rebuilds networks whose size follows the ROI, and
untrained smoke runs keep the seeded random initialisation). The benchmark then runs
:func:`pipeline.inference.infer_cases` (the code of ``medseg infer``) with :meth:`TimedNetwork.measure` as its
``timing_hook``, so each case's sidecar records the seconds spent inside the network. :func:`stage_timings` turns a
sidecar's ``timings_s`` into the report's stages (seconds, per case):

* ``preprocessing``: loading and the bundle's preprocessing (and the foreground mask, when windows are skipped);
* ``network``: time spent inside the network's forward calls (summed over windows; CUDA synchronised);
* ``stitching``: the rest of the sliding-window call (window extraction, padding, Gaussian blending);
* ``postprocessing``: softmax, inversion to the original grid, argmax, optional post-processing and the save.

Examples:
    >>> stage_timings({"load_preprocess": 0.5, "network": 2.0, "sliding_window": 2.25, "invert": 0.25, "save": 0.25})
    {'preprocessing': 0.5, 'network': 2.0, 'stitching': 0.25, 'postprocessing': 0.5}
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

INFERENCE_CONFIG = Path("configs") / "inference.json"


class TimedNetwork(torch.nn.Module):
    """Wraps a network and sums the wall time spent in its forward calls (``seconds``; reset it per case)."""

    def __init__(self, net: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.net = net
        self.sync_cuda = device.type == "cuda"  # not `cuda`: that would hide nn.Module.cuda()
        self.seconds = 0.0

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.sync_cuda:
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        y = self.net(x, *args, **kwargs)
        if self.sync_cuda:
            torch.cuda.synchronize(x.device)
        self.seconds += time.perf_counter() - t0
        return y

    @contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        """Time one case: yields a dict that holds ``{"network": seconds}`` once the block exits (the
        ``timing_hook`` of :func:`pipeline.inference.infer_cases`)."""
        self.seconds = 0.0
        stages: dict[str, float] = {}
        try:
            yield stages
        finally:
            stages["network"] = self.seconds


def stage_timings(raw: Mapping[str, float]) -> dict[str, float]:
    """The report's stages from an inference sidecar's ``timings_s`` (see the module docstring)."""
    network = float(raw.get("network", 0.0))
    return {
        "preprocessing": raw.get("load_preprocess", 0.0) + raw.get("foreground_mask", 0.0),
        "network": network,
        "stitching": max(0.0, raw.get("sliding_window", 0.0) - network),
        "postprocessing": raw.get("invert", 0.0) + raw.get("postprocess", 0.0) + raw.get("save", 0.0),
    }


@dataclass
class BundleModel:
    """A bundle's network and recipe as a :class:`pipeline.inference.loading.LoadedModel`, plus run settings."""

    loaded: Any  # pipeline.inference.loading.LoadedModel whose network is a TimedNetwork
    inference_settings: Any  # pipeline.inference.runner.InferenceSettings
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def timer(self) -> TimedNetwork:
        return self.loaded.network

    def warmup(self) -> float:
        """One untimed forward pass on a zero ROI-sized window (first-call allocations and kernel selection stay
        out of the first case's timings). Returns its seconds."""
        channels = int(getattr(self.timer.net, "in_channels", 1) or 1)
        t0 = time.perf_counter()
        with torch.no_grad():
            self.timer.net(torch.zeros((1, channels, *self.loaded.roi_size), device=self.loaded.device))
        return time.perf_counter() - t0


def open_model(
    bundle_dir: str | Path,
    weights: str | Path | None,
    *,
    device: str = "cpu",
    roi_size: Sequence[int] | None = None,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    tta: bool = False,
    seed: int = 0,
    backend: str = "torch",
    precision: str = "fp32",
    cache_dir: str | Path | None = None,
) -> BundleModel:
    """Build the bundle's network and preprocessing from ``configs/inference.json``.

    Args:
        bundle_dir: the bundle folder.
        weights: ``models/model.pt`` (a plain state dict, or ``{"model": state_dict}``); None keeps the random
            initialisation (seeded with ``seed``) for smoke tests.
        device: torch device.
        roi_size: override of the bundle's ``roi_size`` (x, y, z); networks whose size depends on it are rebuilt.
        overlap, sw_batch_size: overrides of the inferer's settings.
        tta: nnU-Net mirroring test-time augmentation (8 flips).
        backend, precision, cache_dir: who runs the network (:func:`pipeline.deploy.backend.apply_backend`).

    Raises:
        ModelError: missing/invalid config, a network that cannot be built, or weights that do not fit.
    """
    from pipeline.deploy.backend import apply_backend
    from pipeline.inference.loading import load_model
    from pipeline.inference.runner import InferenceSettings

    bundle = Path(bundle_dir).resolve()
    cfg_file = bundle / INFERENCE_CONFIG
    dev = torch.device(device)
    notes: list[str] = []
    if roi_size is not None:
        notes.append(
            f"--roi-size {[int(r) for r in roi_size]} overrides the bundle's window (networks sized by it are rebuilt)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(bundle, weights, dev, roi_size=roi_size, allow_untrained=weights is None, seed=seed)
        loaded = apply_backend(loaded, backend, precision, sw_batch_size=sw_batch_size, cache_dir=cache_dir)
    net = loaded.network
    loaded.network = TimedNetwork(net, dev)
    try:
        preset = json.loads(cfg_file.read_text()).get("preprocessing_preset", "see inference.json")
    except (OSError, ValueError, AttributeError):
        preset = "see inference.json"
    run = InferenceSettings(overlap=overlap, sw_batch_size=sw_batch_size, tta=bool(tta), quiet=True)
    run.validate()
    n_params = loaded.describe()["parameters"]
    settings: dict[str, Any] = {
        "device": str(dev),
        "roi_size": list(loaded.roi_size),
        "overlap": loaded.overlap if overlap is None else float(overlap),
        "sw_batch_size": loaded.sw_batch_size if sw_batch_size is None else int(sw_batch_size),
        "blend_mode": loaded.mode,
        "tta": bool(tta),
        "resample": run.resample,
        "preprocessing": preset,
        "engine": "pipeline.inference (SlidingWindowEngine)",
        "torch_threads": torch.get_num_threads(),
        "backend": loaded.backend["name"],
        "precision": loaded.backend["precision"],
    }
    desc = f"{loaded.architecture} ({n_params / 1e6:.2f} M parameters) from {bundle.name}/{INFERENCE_CONFIG}"
    return BundleModel(loaded, run, settings, notes, desc)
