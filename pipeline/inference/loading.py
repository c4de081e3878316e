"""Loading a model for inference: a MONAI bundle directory, or a network preset + checkpoint + preprocessing preset.

A bundle supplies everything through ``configs/inference.json`` (``network_def``, ``preprocessing``, ``inferer``)
plus ``configs/metadata.json`` (``channel_def``, modality) and the weights ``models/model.pt``. A preset needs the
checkpoint and the preprocessing preset named explicitly; its window comes from the preset (or ``roi_size=``).

Examples:
    >>> from pipeline.inference import load_model
    >>> from pipeline.paths import BUNDLES_DIR
    >>> m = load_model(BUNDLES_DIR / "unetrpp_hippocampus_mri_segmentation")
    >>> m.roi_size, m.out_channels
    ((32, 48, 32), 3)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from monai.transforms import Compose

from pipeline.errors import ModelError, UsageError
from pipeline.networks.state_dict import describe_mismatch

__all__ = ["LoadedModel", "load_model", "load_network_weights"]

logger = logging.getLogger(__name__)

_STATE_KEYS = ("model", "state_dict", "network", "model_state_dict", "net")


@dataclass
class LoadedModel:
    """A network ready for inference and everything needed to run it on raw images.

    Attributes:
        network: the network in eval mode on ``device``; takes MONAI (x, y, z) tensors.
        preprocessing: a Compose that starts with ``LoadImaged`` for key ``image`` and is invertible with
            ``Invertd(keys="pred", transform=preprocessing, orig_keys="image")``.
        roi_size: window size in MONAI (x, y, z) order.
        overlap, sw_batch_size, mode: sliding-window defaults (from the bundle's inferer, else 0.5 / 1 / gaussian).
        out_channels: number of output classes, when known.
        channel_def: class index -> name, when known.
        modality: "CT", "MRI"... when known (chooses the window-skipping criterion).
        mirror_axes: spatial axes (of the network input, x y z = 0 1 2) that mirroring TTA may flip: the axes the
            model was trained with flips on (a bundle's ``tta_mirror_axes``). None: all axes, as nnU-Net, whose
            training mirrors every axis. Flipping an axis the model never saw flipped gives nonsense (measured on
            the hippocampus bundle, trained with left-right flips only: 8-flip TTA predicted background everywhere).
        name: bundle folder name or preset name.
        source: where it came from (bundle path, or "preset:<name>").
        checkpoint: the weights file used.
        device: where the network lives.
        architecture: the network's class name, recorded in sidecars (kept when ``network`` is later wrapped, e.g.
            for timing); empty means ``type(network).__name__``.
        backend: who runs ``network`` and in which precision (``{"name": "torch", "precision": "fp32"}`` unless
            :func:`pipeline.deploy.backend.apply_backend` chose another), recorded in sidecars.
    """

    network: nn.Module
    preprocessing: Compose
    roi_size: tuple[int, ...]
    overlap: float = 0.5
    sw_batch_size: int = 1
    mode: str = "gaussian"
    out_channels: int | None = None
    channel_def: dict[int, str] = field(default_factory=dict)
    modality: str | None = None
    mirror_axes: tuple[int, ...] | None = None
    name: str = ""
    source: str = ""
    checkpoint: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    architecture: str = ""
    backend: dict[str, Any] = field(default_factory=lambda: {"name": "torch", "precision": "fp32"})

    def __post_init__(self) -> None:
        if not self.architecture:
            self.architecture = type(self.network).__name__

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary for sidecars."""
        return {
            "name": self.name,
            "source": self.source,
            "checkpoint": self.checkpoint,
            "roi_size": list(self.roi_size),
            "out_channels": self.out_channels,
            "channel_def": {str(k): v for k, v in self.channel_def.items()},
            "modality": self.modality,
            "mirror_axes": list(self.mirror_axes) if self.mirror_axes is not None else None,
            "network": self.architecture,
            "parameters": int(
                getattr(self.network, "parameter_count", sum(p.numel() for p in self.network.parameters()))
            ),
            "backend": dict(self.backend),
        }


def _unwrap_state(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ModelError(f"checkpoint holds a {type(obj).__name__}, expected a state dict", path=path)
    for key in _STATE_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            return _unwrap_state(obj[key], path)
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"checkpoint is not a state dict (keys: {', '.join(list(map(str, obj))[:6])})", path=path)
    if obj and all(str(k).startswith("module.") for k in obj):  # saved from DistributedDataParallel
        return {str(k)[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_network_weights(network: nn.Module, checkpoint: str | os.PathLike) -> nn.Module:
    """Load a plain (optionally nested under ``model``/``state_dict``) state dict into ``network`` strictly.

    Raises:
        ModelError: the file is missing, unreadable, or its keys/shapes do not fit the network.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise ModelError("checkpoint not found", path=path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure is a bad checkpoint
        with open(path, "rb") as f:
            head = f.read(2)
        if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # neither torch's zip format nor a pickle
            raise ModelError(
                "unreadable checkpoint: not a PyTorch file (an HTML error page or a truncated download?)", path=path
            ) from exc
        reason = " ".join(str(exc).split())[:200]
        raise ModelError(f"unreadable checkpoint ({type(exc).__name__}: {reason})", path=path) from exc
    state = _unwrap_state(obj, path)
    try:
        result = network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"checkpoint does not fit {type(network).__name__}: {describe_mismatch(network, state)} "
            "(another preset, number of classes or ROI?)",
            path=path,
        ) from exc
    del result
    return network


def _bundle_config_file(bundle: Path) -> Path | None:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        f = bundle / "configs" / name
        if f.is_file():
            return f
    return None


def _load_bundle(
    bundle: Path,
    checkpoint: str | os.PathLike | None,
    device: torch.device,
    *,
    roi_size: Sequence[int] | None = None,
    allow_untrained: bool = False,
    seed: int = 0,
) -> LoadedModel:
    from monai.bundle import ConfigParser

    cfg = _bundle_config_file(bundle)
    if cfg is None:
        raise ModelError("not a MONAI bundle: configs/inference.json is missing", path=bundle)
    parser = ConfigParser()
    try:
        parser.read_config(str(cfg))
        meta_file = bundle / "configs" / "metadata.json"
        if meta_file.is_file():
            parser.read_meta(str(meta_file))
    except Exception as exc:  # config errors surface as one line naming the file
        raise ModelError(
            f"cannot read the bundle config ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})", path=cfg
        ) from exc
    config: dict[str, Any] = parser.get()  # the whole config, as read (parser.config is typed ConfigItem | None)
    for key in ("network_def", "preprocessing"):
        if key not in config:
            raise ModelError(
                f"config has no {key!r} (id not found: a bundle's inference config must define "
                "network_def and preprocessing)",
                path=cfg,
            )
    parser["bundle_root"] = str(bundle)
    parser["device"] = f"$torch.device('{device}')"
    if roi_size is not None:  # networks whose size follows the bundle's roi_size are rebuilt for the new window
        window = [int(r) for r in roi_size]
        if "roi_size" in config:
            parser["roi_size"] = window
        if isinstance(config.get("inferer"), Mapping):
            parser["inferer"]["roi_size"] = window
    if allow_untrained:
        torch.manual_seed(seed)  # a reproducible random initialisation when no weights are loaded
    try:
        network = parser.get_parsed_content("network_def")
        preprocessing = parser.get_parsed_content("preprocessing")
        inferer = parser.get_parsed_content("inferer") if "inferer" in parser else None
    except Exception as exc:  # config errors surface as one line naming the file
        raise ModelError(
            f"cannot build the bundle's network/preprocessing/inferer ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]})",
            path=cfg,
        ) from exc
    if not isinstance(network, nn.Module):
        raise ModelError(f"network_def builds a {type(network).__name__}, not a torch module", path=cfg)
    ckpt = Path(checkpoint) if checkpoint else bundle / "models" / "model.pt"
    untrained = False
    if ckpt.is_file():
        load_network_weights(network, ckpt)
    elif allow_untrained and not checkpoint:
        untrained = True  # smoke tests only: the seeded random initialisation is kept
    else:
        raise ModelError("no weights: models/model.pt is missing (train the bundle or pass --checkpoint)", path=ckpt)
    roi = getattr(inferer, "roi_size", None)
    if roi is None:
        shape = parser.get("_meta_#network_data_format#inputs#image#spatial_shape")
        if shape and all(isinstance(s, int) for s in shape):
            roi = shape
    if roi is None:
        raise ModelError("the bundle names no window size (inferer roi_size or metadata spatial_shape)", path=cfg)
    meta = parser.get("_meta_", {}) or {}
    fmt = (meta.get("network_data_format") or {}) if isinstance(meta, Mapping) else {}
    out = (fmt.get("outputs") or {}).get("pred") or {}
    inp = (fmt.get("inputs") or {}).get("image") or {}
    channel_def = {int(k): str(v) for k, v in (out.get("channel_def") or {}).items()}
    out_channels = out.get("num_channels") or (len(channel_def) or None)
    overlap = getattr(inferer, "overlap", 0.5)
    mode = getattr(inferer, "mode", "gaussian")
    axes = parser.get("tta_mirror_axes")
    if axes is not None and not (isinstance(axes, list) and all(isinstance(a, int) and 0 <= a < 3 for a in axes)):
        raise ModelError(f"tta_mirror_axes must be a list of spatial axes 0..2, got {axes!r}", path=cfg)
    return LoadedModel(
        network=network.to(device).eval(),
        preprocessing=preprocessing,
        roi_size=tuple(int(r) for r in roi),
        overlap=float(overlap[0] if isinstance(overlap, Sequence) else overlap),
        sw_batch_size=int(getattr(inferer, "sw_batch_size", 1) or 1),
        mode=str(getattr(mode, "value", mode)),
        out_channels=int(out_channels) if out_channels else None,
        channel_def=channel_def,
        modality=inp.get("modality"),
        mirror_axes=tuple(axes) if axes is not None else None,
        name=bundle.name,
        source=str(bundle),
        checkpoint=None if untrained else str(ckpt),
        device=device,
    )


def _load_preset(
    name: str,
    checkpoint: str | os.PathLike | None,
    device: torch.device,
    preprocessing: str | Mapping[str, Any] | Compose | None,
    roi_size: Sequence[int] | None,
    overrides: Mapping[str, Any] | None,
) -> LoadedModel:
    from pipeline.networks import create_network, get_preset, list_networks

    try:
        preset = get_preset(name)
    except KeyError:
        raise UsageError(
            f"--model {name!r} is neither a bundle directory nor a network preset; "
            f"known presets: {', '.join(list_networks())}"
        ) from None
    if checkpoint is None:
        raise UsageError(f"--model {name} is a preset: pass --checkpoint FILE with its trained weights")
    if preprocessing is None:
        raise UsageError(f"--model {name} is a preset: pass --preprocessing PRESET (e.g. ct_abdomen, mri_hippocampus)")
    kwargs = dict(overrides or {})
    if preset.axes != "xyz":
        kwargs.setdefault("input_order", "xyz")  # MONAI (x, y, z) tensors and arguments, same state_dict keys
    if roi_size is None:
        roi = preset.roi_size_in("xyz")
        if roi is None:
            raise UsageError(f"preset {name} has no fixed window: pass --roi X Y Z")
    else:
        roi = tuple(int(r) for r in roi_size)
    try:
        network = create_network(name, **kwargs)
    except (TypeError, ValueError) as exc:  # the network rejects an argument: one line
        raise ModelError(f"preset {name}: {' '.join(str(exc).split())}") from exc
    load_network_weights(network, checkpoint)
    if isinstance(preprocessing, Compose):
        pre = preprocessing
        pre_name = "custom"
    else:
        from pipeline.transforms import build_preprocessing

        pre = build_preprocessing(preprocessing, keys=("image",))
        pre_name = preprocessing if isinstance(preprocessing, str) else "custom"
    modality = None
    if isinstance(preprocessing, str):
        from pipeline.transforms import PREPROCESSING_PRESETS

        modality = PREPROCESSING_PRESETS.get(preprocessing, {}).get("modality")
    out_channels = kwargs.get("out_channels", preset.kwargs.get("out_channels"))
    return LoadedModel(
        network=network.to(device).eval(),
        preprocessing=pre,
        roi_size=roi,
        out_channels=int(out_channels) if out_channels else None,
        modality=modality,
        name=name,
        source=f"preset:{name} preprocessing:{pre_name}",
        checkpoint=str(checkpoint),
        device=device,
    )


def load_model(
    model: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    preprocessing: str | Mapping[str, Any] | Compose | None = None,
    roi_size: Sequence[int] | None = None,
    overrides: Mapping[str, Any] | None = None,
    allow_untrained: bool = False,
    seed: int = 0,
) -> LoadedModel:
    """Load a bundle directory, or a preset name with a checkpoint and a preprocessing preset.

    Args:
        model: a bundle directory (holding ``configs/inference.json``) or a network preset name.
        checkpoint: weights; default ``<bundle>/models/model.pt`` for bundles, required for presets.
        device: where the network runs.
        preprocessing: preprocessing preset name/dict (or a ready Compose) for presets; ignored for bundles.
        roi_size: window size (x, y, z); overrides the bundle's/preset's.
        overrides: constructor arguments for the preset network (e.g. ``{"out_channels": 3}``).
        allow_untrained: bundles only: when no weights file exists, keep the random initialisation (seeded with
            ``seed``) instead of failing. For smoke tests and ``medseg benchmark --allow-untrained`` only.
        seed: the seed of that initialisation.

    Returns:
        a :class:`LoadedModel`.

    On CPU the network gets the CPU kernels of :func:`pipeline.networks.optimize_for_cpu`.

    Raises:
        UsageError: unknown preset, a missing option, or a ``roi_size`` the network cannot run.
        ModelError: bad bundle config or checkpoint, or a bundle window the network cannot run.
    """
    device = torch.device(device)
    path = Path(model).expanduser()
    if path.is_dir():
        loaded = _load_bundle(path, checkpoint, device, roi_size=roi_size, allow_untrained=allow_untrained, seed=seed)
    elif os.sep in str(model) or str(model).startswith("."):
        raise UsageError(f"--model {model}: no such bundle directory")
    else:
        loaded = _load_preset(str(model), checkpoint, device, preprocessing, roi_size, overrides)
    if roi_size is not None:
        loaded.roi_size = tuple(int(r) for r in roi_size)
    if len(loaded.roi_size) != 3:
        raise UsageError(f"window size {loaded.roi_size} must have 3 values (x y z)")
    check = getattr(loaded.network, "check_input_size", None)
    if callable(check):  # the network's ValueError becomes the CLI's one-line error, before any case runs
        try:
            check(loaded.roi_size)
        except ValueError as exc:
            error = UsageError if roi_size is not None else ModelError
            raise error(f"--model {loaded.name}: window {loaded.roi_size} (x y z): {exc}") from exc
    if device.type == "cpu":
        from pipeline.networks import optimize_for_cpu

        optimize_for_cpu(loaded.network)  # folded BatchNorm + oneDNN convs; same state dict
    return loaded
