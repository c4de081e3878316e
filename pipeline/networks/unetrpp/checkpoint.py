"""Official UNETR++ checkpoints: safe loading, strict fitting into a preset, and the nnU-Net v1 importer.

The official release saves nnU-Net v1 checkpoints (``model_final_checkpoint.model``): a dict with ``state_dict``
(keys possibly prefixed ``module.``), optimizer state, and training curves that may hold numpy scalars. Its plans
(``*_plans_3D.pkl`` or the ``.model.pkl`` next to the checkpoint, which wraps them under ``"plans"``) are pickles of
dicts, lists and numpy arrays.

Nothing here unpickles arbitrary objects unless ``trust=True``: checkpoints go through ``torch.load(weights_only=True)``
with an explicit allow-list of numpy reconstructors, plans through a restricted unpickler with the same allow-list.

Examples:
    Import an official checkpoint + plans into bundle-ready files::

        python -m pipeline.networks.unetrpp.checkpoint model_final_checkpoint.model \\
            nnFormerPlansv2.1_plans_3D.pkl --preset unetrpp_synapse --out bundles/unetrpp_synapse
"""

from __future__ import annotations

import argparse
import codecs
import collections
import io
import json
import os
import pickle
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from numpy._core import multiarray as _np_multiarray

from pipeline.errors import InputDataError, ModelError, PipelineError
from pipeline.networks.state_dict import describe_mismatch
from pipeline.utils.atomic import save_json_atomic, save_torch_atomic

__all__ = [
    "load_official_checkpoint",
    "load_official_weights",
    "fit_state_dict",
    "read_nnunet_plans",
    "plans_to_preprocessing",
    "import_official_checkpoint",
    "main",
]

# --------------------------------------------------------------------------------------------------- allow-lists
#: pickle globals (module, name) that rebuild plain numpy data; nothing executes code
_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _NUMPY_GLOBALS[(_mod, "scalar")] = _np_multiarray.scalar
    _NUMPY_GLOBALS[(_mod, "_reconstruct")] = _np_multiarray._reconstruct
_NUMPY_GLOBALS[("numpy", "ndarray")] = np.ndarray
_NUMPY_GLOBALS[("numpy", "dtype")] = np.dtype
for _t in (
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
):
    _dt = type(np.dtype(_t))
    _NUMPY_GLOBALS[("numpy.dtypes", _dt.__name__)] = _dt
_PLAIN_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles store bytes (numpy buffers) through it
}
_SAFE_PICKLE_GLOBALS = {**_NUMPY_GLOBALS, **_PLAIN_GLOBALS}


def _torch_safe_globals() -> list:
    return [(obj, f"{mod}.{name}") for (mod, name), obj in _NUMPY_GLOBALS.items()] + [collections.defaultdict]


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed") from None


# ----------------------------------------------------------------------------------------------------- checkpoints
def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "network_weights", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            "no state dict found (expected a dict with 'state_dict' of tensors, or a plain state dict)", path=path
        )
    prefix = "module."
    return collections.OrderedDict((k[len(prefix) :] if k.startswith(prefix) else k, v) for k, v in obj.items())


def load_official_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read an official UNETR++ (nnU-Net v1) checkpoint, or a plain state dict, and return its state dict.

    Loads with ``torch.load(weights_only=True)`` and an allow-list of numpy reconstructors (the training curves in
    nnU-Net v1 checkpoints hold numpy scalars); ``module.`` prefixes (DataParallel) are stripped.

    Args:
        path: the checkpoint file (``model_final_checkpoint.model``, ``model_best.model``, ``model.pt``...).
        trust: unpickle arbitrary objects (``weights_only=False``). Only for files from a source you trust.

    Raises:
        ModelError: missing/unreadable file, objects outside the allow-list (the message names them and the
            ``trust`` flag), or no state dict inside.

    Examples:
        >>> import tempfile, torch, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "ck.model"
        >>> torch.save({"state_dict": {"module.w": torch.ones(2)}, "epoch": 3}, p)
        >>> list(load_official_checkpoint(p))
        ['w']
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError("checkpoint file not found", path=path)
    try:
        if trust:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(_torch_safe_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        detail = f"it needs {', '.join(dict.fromkeys(found))}" if found else " ".join(str(exc).split())[:160]
        raise ModelError(
            f"refusing to unpickle objects outside the allow-list ({detail}); "
            "pass trust=True (CLI: --trust) only if you trust the file",
            path=path,
        ) from exc
    except Exception as exc:  # corrupt / truncated / not a torch file
        raise ModelError(
            f"unreadable checkpoint ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})", path=path
        ) from exc
    return _extract_state_dict(obj, path)


def fit_state_dict(net: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: object = "state dict") -> None:
    """``net.load_state_dict(state_dict, strict=True)`` with a one-line :class:`ModelError` listing the mismatches.

    Tied tensors (the Synapse E=F module) appear under both names in official files and load as they are.
    """
    own = net.state_dict()
    if set(own) != set(state_dict) or any(tuple(state_dict[k].shape) != tuple(v.shape) for k, v in own.items()):
        raise ModelError(f"checkpoint does not fit the network: {describe_mismatch(net, state_dict)}", path=source)
    net.load_state_dict(state_dict, strict=True)


def load_official_weights(net: nn.Module, path: str | os.PathLike, *, trust: bool = False) -> nn.Module:
    """Load an official checkpoint into ``net`` (strict); returns ``net``.

    Examples:
        >>> from pipeline.networks import create_network
        >>> net = create_network("unetrpp_synapse")  # doctest: +SKIP
        >>> load_official_weights(net, "model_final_checkpoint.model")  # doctest: +SKIP
    """
    fit_state_dict(net, load_official_checkpoint(path, trust=trust), source=path)
    return net


# ----------------------------------------------------------------------------------------------------------- plans
def read_nnunet_plans(path: str | os.PathLike, *, trust: bool = False) -> dict[str, Any]:
    """Read nnU-Net v1 plans: a ``*_plans_3D.pkl``, a ``*.model.pkl`` (plans under ``"plans"``) or a JSON dump.

    Pickles go through a restricted unpickler (dicts, lists, numpy arrays/scalars only) unless ``trust=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError("plans file not found", path=path)
    data = path.read_bytes()
    try:
        if path.suffix == ".json":
            plans = json.loads(data)
        elif trust:
            plans = pickle.loads(data)  # noqa: S301 - explicit opt-in
        else:
            plans = _RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise InputDataError(
            f"refusing to unpickle plans ({exc}); pass trust=True (CLI: --trust) only if you trust the file", path=path
        ) from exc
    except Exception as exc:
        raise InputDataError(f"unreadable plans file ({type(exc).__name__}: {exc})", path=path) from exc
    if isinstance(plans, Mapping) and "plans" in plans and isinstance(plans["plans"], Mapping):
        plans = plans["plans"]  # model_final_checkpoint.model.pkl wraps them
    if not isinstance(plans, Mapping) or "plans_per_stage" not in plans:
        raise InputDataError("not nnU-Net v1 plans (no 'plans_per_stage')", path=path)
    return dict(plans)


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def plans_to_preprocessing(
    plans: Mapping[str, Any], *, stage: int | None = None, source: object = "plans"
) -> dict[str, Any]:
    """Convert nnU-Net v1 plans into our preprocessing settings (a ``pipeline.transforms`` preset dict plus extras).

    * target spacing: the stage's ``current_spacing`` is in nnU-Net's transposed (z, y, x) order; it is mapped back
      with ``transpose_backward`` and reversed into MONAI (x, y, z) ``spacing``;
    * patch size in both orders (``patch_size_zyx`` for the network, ``roi_size_xyz`` for MONAI inferers);
    * CT normalisation (channel 0 ``intensityproperties``): clip to the foreground 0.5/99.5 percentiles, z-score with
      the foreground mean/std (``{"type": "nnunet_ct", ...}``); other modalities: per-image z-score
      (non-zero voxels when ``use_mask_for_norm``).

    The returned ``preprocessing`` dict can be passed straight to ``pipeline.transforms.build_preprocessing``.
    """
    stages = plans["plans_per_stage"]
    keys = sorted(int(k) for k in stages)
    stage_key = keys[-1] if stage is None else stage
    if stage_key not in keys:
        raise InputDataError(f"plans have stages {keys}, not {stage_key}", path=source)
    sp = stages[stage_key] if stage_key in stages else stages[str(stage_key)]
    tb = [int(v) for v in plans.get("transpose_backward", [0, 1, 2])]
    tf = [int(v) for v in plans.get("transpose_forward", [0, 1, 2])]
    spacing_t = _floats(sp["current_spacing"])
    patch_t = [int(v) for v in _floats(sp["patch_size"])]
    spacing_zyx = [spacing_t[i] for i in tb]
    patch_zyx = patch_t  # the network sees the transposed array; identical when transpose_forward = [0, 1, 2]
    modalities = {int(k): str(v) for k, v in dict(plans.get("modalities", {0: "CT"})).items()}
    schemes = {int(k): str(v) for k, v in dict(plans.get("normalization_schemes", {})).items()}
    scheme = schemes.get(0, "CT" if modalities.get(0, "").upper() == "CT" else "nonCT")
    use_mask = {int(k): bool(v) for k, v in dict(plans.get("use_mask_for_norm", {})).items()}
    fingerprint: dict[str, Any] = {"median_spacing": spacing_zyx[::-1]}
    if scheme == "CT":
        props = dict(plans.get("dataset_properties", {}).get("intensityproperties", {}) or {})
        ch0 = props.get(0, props.get("0"))
        if ch0 is None:
            raise InputDataError("CT plans without dataset_properties.intensityproperties[0]", path=source)
        stats = {k: float(ch0[k]) for k in ("mean", "sd", "percentile_00_5", "percentile_99_5")}
        intensity = {
            "type": "nnunet_ct",
            "lower": stats["percentile_00_5"],
            "upper": stats["percentile_99_5"],
            "mean": stats["mean"],
            "std": stats["sd"],
        }
        fingerprint["foreground_intensity"] = {
            "0": {
                "mean": stats["mean"],
                "std": stats["sd"],
                "percentile_00_5": stats["percentile_00_5"],
                "percentile_99_5": stats["percentile_99_5"],
            }
        }
    else:
        intensity = {"type": "zscore", "nonzero": use_mask.get(0, False), "clip_percentiles": None}
    preprocessing = {
        "description": f"nnU-Net v1 plans (stage {stage_key}): native orientation, spacing "
        f"{spacing_zyx[::-1]} (x,y,z), {scheme} normalisation",
        "source": str(source),
        "modality": "CT" if scheme == "CT" else "MRI",
        "orientation": None,  # nnU-Net v1 does not reorient
        "spacing": spacing_zyx[::-1],
        "intensity": intensity,
        "crop_foreground": False,
    }
    return {
        "preprocessing": preprocessing,
        "stage": stage_key,
        "network_axis_order": "zyx",
        "monai_axis_order": "xyz",
        "transpose_forward": tf,
        "transpose_backward": tb,
        "target_spacing_zyx": spacing_zyx,
        "target_spacing_xyz": spacing_zyx[::-1],
        "patch_size_zyx": patch_zyx,
        "roi_size_xyz": patch_zyx[::-1],
        "normalization_scheme": scheme,
        "modalities": {str(k): v for k, v in modalities.items()},
        "num_classes": int(plans["num_classes"]) + 1 if "num_classes" in plans else None,
        "fingerprint": fingerprint,
    }


# -------------------------------------------------------------------------------------------------------- importer
def import_official_checkpoint(
    checkpoint: str | os.PathLike,
    plans: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    preset: str = "unetrpp_synapse",
    stage: int | None = None,
    trust: bool = False,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Turn an official checkpoint + its nnU-Net v1 plans into bundle-ready files.

    Writes (atomically) ``out_dir/models/model.pt`` (a plain state dict that loads strictly into ``preset``) and
    ``out_dir/configs/preprocessing.json`` (:func:`plans_to_preprocessing` output plus the preset, its network
    overrides for MONAI tensors, ``input_order="xyz"``, and the source files).

    Raises:
        ModelError: the checkpoint does not fit ``preset`` (mismatched layers listed), or the plans' patch differs
            from the preset's fixed patch.
        InputDataError: unreadable plans.
        FileExistsError: outputs exist and ``overwrite`` is False.
    """
    from pipeline.networks.registry import create_network, get_preset

    out_dir = Path(out_dir)
    weights_path = out_dir / "models" / "model.pt"
    json_path = out_dir / "configs" / "preprocessing.json"
    if not overwrite:
        for p in (weights_path, json_path):
            if p.exists():
                raise FileExistsError(f"{p}: exists (pass --overwrite to replace it)")
    info = plans_to_preprocessing(read_nnunet_plans(plans, trust=trust), stage=stage, source=plans)
    spec = get_preset(preset)
    net = create_network(preset)
    if spec.roi_size is not None and tuple(info["patch_size_zyx"]) != tuple(spec.roi_size):
        raise ModelError(
            f"plans patch {info['patch_size_zyx']} (z,y,x) differs from preset {preset}'s {list(spec.roi_size)}",
            path=plans,
        )
    fit_state_dict(net, load_official_checkpoint(checkpoint, trust=trust), source=checkpoint)
    if info["num_classes"] is not None and info["num_classes"] != net.out_channels:
        raise ModelError(
            f"plans have {info['num_classes']} classes (with background) but {preset} has {net.out_channels} outputs",
            path=plans,
        )
    save_torch_atomic(net.state_dict(), weights_path)
    record = {
        "preset": preset,
        "network_overrides": {"input_order": "xyz"},
        "source_checkpoint": str(checkpoint),
        "source_plans": str(plans),
        **info,
    }
    save_json_atomic(record, json_path)
    return {"weights": weights_path, "preprocessing": json_path}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m pipeline.networks.unetrpp.checkpoint CHECKPOINT PLANS --preset NAME --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.networks.unetrpp.checkpoint",
        description="Import an official UNETR++ checkpoint + nnU-Net v1 plans.",
    )
    parser.add_argument("checkpoint")
    parser.add_argument("plans")
    parser.add_argument("--preset", default="unetrpp_synapse")
    parser.add_argument("--out", required=True, help="bundle folder (models/model.pt, configs/preprocessing.json)")
    parser.add_argument("--stage", type=int, default=None, help="plans stage (default: the last, 3d_fullres)")
    parser.add_argument("--trust", action="store_true", help="allow arbitrary pickled objects (trusted files only)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        written = import_official_checkpoint(
            args.checkpoint,
            args.plans,
            args.out,
            preset=args.preset,
            stage=args.stage,
            trust=args.trust,
            overwrite=args.overwrite,
        )
    except (PipelineError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
