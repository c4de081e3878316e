"""Export a bundle's or preset's network for a fixed window and batch, check it against PyTorch, describe it in JSON.

:func:`export_model` loads the model with :func:`pipeline.inference.load_model`, takes an unoptimised copy of its
network (:func:`~pipeline.deploy.plain.plain_network`), writes it in one of :data:`~pipeline.deploy.runtimes.FORMATS`
for input ``(sw_batch_size, C, x, y, z)``, runs PyTorch and the exported file on the check input
(:func:`~pipeline.deploy.window.check_window`) and keeps the export only when

    max |delta logit| <= ``FP32_RTOL`` * max |logit|   (fp32; ``FP32_RTOL`` = 1e-3)

It writes ``<out>.json`` beside the export: weights hashes, shapes, format, opset, runtime and torch versions, the
check's input kind and errors, precision, creation time and the :class:`ExportKey` (the fields that decide whether
a cached export still fits: weights, config, window, batch, precision, runtime version). Every file is written
atomically; nothing the user had is overwritten without ``overwrite=True``.

UNETR++ exports its official op sequence (``set_fast(False)``) to ONNX/OpenVINO: its channels-last token path uses
memory formats, which ONNX cannot express. Same maths, same weights.

Examples:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "hippo.pt"
    >>> result = export_model("unetrpp_hippocampus", "torchscript", out, allow_untrained=True,
    ...                       overrides={"dims": (8, 8, 16, 16), "feature_size": 8, "depths": (1, 1, 1, 1),
    ...                                  "proj_size": (8, 8, 8, 8), "decoder_proj_size": 8, "img_size": (16, 16, 16)},
    ...                       roi_size=(16, 16, 16), sw_batch_size=2)
    >>> result.metadata["input"]["shape"], result.metadata["check"]["passed"], result.metadata["untrained"]
    ([2, 1, 16, 16, 16], True, True)
    >>> sorted(p.name for p in out.parent.iterdir())
    ['hippo.pt', 'hippo.pt.json']
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pipeline import __version__
from pipeline.deploy.plain import FullResolutionHead, full_resolution, plain_network
from pipeline.deploy.runtimes import (
    FORMATS,
    OPENVINO_BF16,
    OPENVINO_FP32_CONFIGS,
    load_exported,
    require_runtime,
    runtime_version,
)
from pipeline.deploy.window import check_window
from pipeline.errors import ModelError, UsageError
from pipeline.inference.loading import LoadedModel, load_model
from pipeline.utils.atomic import save_json_atomic
from pipeline.utils.environment import native_bf16, package_version
from pipeline.utils.hashing import file_sha256, state_dict_sha256

__all__ = [
    "BF16_RTOL",
    "DEFAULT_OPSET",
    "EXPORT_VERSION",
    "FP32_RTOL",
    "PRECISIONS",
    "ExportKey",
    "ExportResult",
    "compare",
    "export_key",
    "export_loaded",
    "export_model",
]

#: bump when the way exports are written changes: cached exports with another value are rebuilt
EXPORT_VERSION = 1
#: ONNX opset of the exports (``torch.onnx.export``, TorchScript exporter); 17 has LayerNormalization
DEFAULT_OPSET = 17
#: fp32 check: max |delta logit| <= FP32_RTOL * max |logit|
FP32_RTOL = 1e-3
#: bf16 check (OpenVINO on a CPU with native bf16): bf16 keeps 8 mantissa bits (relative rounding 2**-8 = 0.4 % per
#: operation), so the logits of a deep network move by a few percent of their range; 5 % of max |logit| bounds that
BF16_RTOL = 5e-2
#: the precisions an export runs in, and the formats that can run each (bf16: OpenVINO's CPU plugin on AMX /
#: AVX512-BF16 hardware; ONNX Runtime's CPU provider and a traced TorchScript file run fp32)
PRECISIONS: dict[str, tuple[str, ...]] = {"fp32": ("onnx", "openvino", "torchscript"), "bf16": ("openvino",)}
_INPUT_NAME, _OUTPUT_NAME = "image", "logits"


@dataclass(frozen=True)
class ExportKey:
    """What an export depends on; two exports with equal keys are interchangeable (the cache key).

    Examples:
        >>> k = ExportKey("m", "c" * 64, "w" * 64, (32, 48, 32), 4, 1, "onnx", "fp32", "onnxruntime", "1.31.1",
        ...               "2.13.0", 17)
        >>> len(k.digest()), k.digest() == ExportKey(**k.as_dict()).digest()
        (64, True)
    """

    model: str
    config_sha256: str
    state_dict_sha256: str
    roi_size: tuple[int, ...]
    sw_batch_size: int
    in_channels: int
    format: str
    precision: str
    runtime: str
    runtime_version: str | None
    torch_version: str
    opset: int | None
    export_version: int = EXPORT_VERSION

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-friendly values (``roi_size`` a list)."""
        d = asdict(self)
        d["roi_size"] = list(self.roi_size)
        return d

    def digest(self) -> str:
        """SHA-256 of the fields (hex): a file name for a cache entry."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()


@dataclass
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        path: the export (``.onnx``, ``.xml``, ``.pt``).
        files: every file of the export (OpenVINO: ``.xml`` and ``.bin``).
        metadata_path: the JSON beside it (``<path>.json``).
        metadata: its content.
        key: the cache key fields.
    """

    path: Path
    files: list[Path]
    metadata_path: Path
    metadata: dict[str, Any]
    key: ExportKey


def compare(reference: torch.Tensor, exported: torch.Tensor, rtol: float = FP32_RTOL) -> dict[str, Any]:
    """The check's figures: max |delta|, max |reference|, their ratio, the tolerance and the argmax agreement.

    Examples:
        >>> r = compare(torch.tensor([[[1.0]], [[3.0]]]), torch.tensor([[[1.001]], [[3.0]]]))
        >>> round(r["max_abs_error"], 4), r["tolerance"], r["passed"], r["argmax_agreement"]
        (0.001, 0.003, True, 1.0)
    """
    if tuple(exported.shape) != tuple(reference.shape):
        raise ModelError(f"the export returns shape {tuple(exported.shape)}, PyTorch {tuple(reference.shape)}")
    ref, got = reference.double(), exported.double()
    max_err = float((got - ref).abs().max())
    scale = float(ref.abs().max())
    tolerance = rtol * max(scale, 1e-6)
    agree = float((got.argmax(1) == ref.argmax(1)).double().mean()) if ref.ndim > 1 else 1.0
    return {
        "max_abs_error": max_err,
        "max_abs_logit": scale,
        "relative_error": max_err / max(scale, 1e-12),
        "tolerance": tolerance,
        "rule": f"max |delta logit| <= {rtol:g} * max |logit|",
        "passed": bool(max_err <= tolerance) and bool(torch.isfinite(got).all()),
        "argmax_agreement": agree,
    }


# ---------------------------------------------------------------------------------------------------- checking --out
def _check_out(out: Path, fmt: str, overwrite: bool) -> None:
    spec = FORMATS[fmt]
    if out.suffix not in spec.suffixes:
        raise UsageError(f"--out {out}: --format {fmt} writes a file ending in {' or '.join(spec.suffixes)}")
    if out.is_dir():
        raise UsageError(
            f"--out {out}: is a folder; give the export's file name (e.g. {out / ('model' + spec.suffixes[0])})"
        )
    if not overwrite:
        for f in [*spec.files(out), _metadata_path(out)]:
            if f.exists():
                raise UsageError(f"{f}: exists (pass --overwrite to replace it)")
    folder = out.parent.absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"{folder}: cannot create the output folder: a file is in the way") from None
    except OSError as exc:
        raise UsageError(f"{folder}: cannot create the output folder ({exc.strerror or type(exc).__name__})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{folder}: the output folder is not writable")


def _metadata_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


# ------------------------------------------------------------------------------------------------------ the model
def _preset(name: str) -> Any:
    from pipeline.networks import get_preset, list_networks

    try:
        return get_preset(name)
    except KeyError:
        raise UsageError(
            f"--model {name!r} is neither a bundle directory nor a network preset; "
            f"known presets: {', '.join(list_networks())}"
        ) from None


def _load(
    model: str | os.PathLike,
    checkpoint: str | os.PathLike | None,
    roi_size: Sequence[int] | None,
    overrides: Mapping[str, Any] | None,
    allow_untrained: bool,
    seed: int,
) -> tuple[LoadedModel, Path | None, bool]:
    """Load ``model`` on CPU; returns ``(loaded, bundle folder or None, untrained)``."""
    from monai.transforms import Compose

    path = Path(model).expanduser()
    if path.is_dir():
        loaded = load_model(path, checkpoint, "cpu", roi_size=roi_size, allow_untrained=allow_untrained, seed=seed)
        return loaded, path.resolve(), loaded.checkpoint is None
    no_data = Compose([])  # the check window of a preset is random: its preprocessing is not needed
    if checkpoint is not None or os.sep in str(model) or str(model).startswith("."):
        loaded = load_model(model, checkpoint, "cpu", preprocessing=no_data, roi_size=roi_size, overrides=overrides)
        return loaded, None, False
    preset = _preset(str(model))
    if not allow_untrained:
        raise UsageError(
            f"--model {model} is a preset: pass --checkpoint FILE with its weights "
            "(or --allow-untrained to export seeded random weights)"
        )
    kwargs = dict(overrides or {})
    if preset.axes != "xyz":
        kwargs.setdefault("input_order", "xyz")
    from pipeline.networks import create_network

    torch.manual_seed(seed)
    try:
        state = create_network(str(model), **kwargs).state_dict()
    except (TypeError, ValueError) as exc:
        raise ModelError(f"preset {model}: {' '.join(str(exc).split())}") from exc
    with tempfile.TemporaryDirectory(prefix="medseg-export-") as tmp:  # the seeded weights take the one loading path
        weights = Path(tmp) / "seeded.pt"
        torch.save(state, weights)
        loaded = load_model(model, weights, "cpu", preprocessing=no_data, roi_size=roi_size, overrides=overrides)
    loaded.checkpoint = None
    return loaded, None, True


def _in_channels(network: nn.Module) -> int:
    value = getattr(network, "in_channels", None)
    if isinstance(value, int):
        return value
    for module in network.modules():
        if isinstance(module, (nn.Conv3d, nn.Conv2d, nn.Conv1d)):
            return int(module.in_channels)
    raise ModelError(f"cannot tell how many input channels {type(network).__name__} takes")


def _config_sha256(loaded: LoadedModel, bundle: Path | None, overrides: Mapping[str, Any] | None) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps({"name": loaded.name, "overrides": dict(overrides or {})}, sort_keys=True, default=str).encode()
    )
    if bundle is not None:
        for name in ("inference.json", "metadata.json"):
            f = bundle / "configs" / name
            if f.is_file():
                h.update(f.read_bytes())
    else:
        from pipeline.networks import get_preset

        h.update(json.dumps(dict(get_preset(loaded.name).kwargs), sort_keys=True, default=str).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------- writers
def _export_module(network: nn.Module, x: torch.Tensor, fmt: str) -> tuple[nn.Module, torch.Tensor]:
    """The module an exporter sees (the plain network, official op sequence for ONNX, one output) and its logits
    on ``x`` (the check's reference)."""
    set_fast = getattr(network, "set_fast", None)
    if fmt != "torchscript" and callable(set_fast):
        set_fast(False)
    with torch.no_grad():
        out = network(x)
    module = network if isinstance(out, torch.Tensor) else FullResolutionHead(network).eval()
    return module, full_resolution(out).float()


def _write_onnx(module: nn.Module, x: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy-exporter notice and TracerWarnings on the fixed-shape checks
        torch.onnx.export(
            module,
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[_INPUT_NAME],
            output_names=[_OUTPUT_NAME],
            do_constant_folding=True,
        )


def _write_openvino(module: nn.Module, x: torch.Tensor, xml: Path, opset: int) -> None:
    import openvino as ov

    onnx_file = xml.with_name(xml.stem + ".onnx")
    _write_onnx(module, x, onnx_file, opset)
    model = ov.Core().read_model(str(onnx_file))  # ~50x faster than ov.convert_model here, same IR after compile
    ov.save_model(model, str(xml), compress_to_fp16=False)  # fp32 weights (the default halves them)
    onnx_file.unlink()


def _write_torchscript(module: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings: the shape checks become constants of the fixed shape
        traced = torch.jit.trace(module, (x,), check_trace=False)
    torch.jit.save(traced, str(path))


def _write(module: nn.Module, x: torch.Tensor, fmt: str, path: Path, opset: int) -> None:
    try:
        if fmt == "onnx":
            _write_onnx(module, x, path, opset)
        elif fmt == "openvino":
            _write_openvino(module, x, path, opset)
        else:
            _write_torchscript(module, x, path)
    except Exception as exc:  # an exporter failure is one line naming the network and the format
        msg = " ".join(str(exc).split())[:300]
        raise ModelError(f"{fmt} export of {type(module).__name__} failed ({type(exc).__name__}: {msg})") from exc


def _run_check(
    path: Path, fmt: str, x: torch.Tensor, reference: torch.Tensor, threads: int | None, precision: str = "fp32"
) -> dict[str, Any]:
    """Run the export on ``x`` and compare it with ``reference``. OpenVINO is tried with each of
    ``OPENVINO_FP32_CONFIGS`` (bf16: ``OPENVINO_BF16``) until one passes; the result names it (``runtime_config``)
    and lists the ``attempts``.

    Raises:
        ModelError: the runtime cannot load or run the export with any setting.
    """
    configs: tuple[dict[str, str] | None, ...] = (None,)
    if fmt == "openvino":
        configs = (OPENVINO_BF16,) if precision == "bf16" else OPENVINO_FP32_CONFIGS
    rtol = BF16_RTOL if precision == "bf16" else FP32_RTOL
    attempts: list[dict[str, Any]] = []
    result: dict[str, Any] | None = None
    for config in configs:
        try:
            got = full_resolution(load_exported(path, fmt, threads=threads, config=config)(x))
        except Exception as exc:  # noqa: BLE001 - a runtime failure is reported (and the next setting tried)
            attempts.append({"runtime_config": config, "error": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]})
            continue
        result = compare(reference, got, rtol)
        attempts.append({"runtime_config": config, "max_abs_error": result["max_abs_error"]})
        if result["passed"]:
            break
    if result is None:
        raise ModelError(f"{FORMATS[fmt].runtime} cannot run the {fmt} export: {attempts[-1]['error']}")
    if fmt == "openvino":
        result["runtime_config"] = attempts[-1]["runtime_config"] if result["passed"] else None
        result["attempts"] = attempts
    return result


# ------------------------------------------------------------------------------------------------------- export
def export_model(
    model: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    roi_size: Sequence[int] | None = None,
    sw_batch_size: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    allow_untrained: bool = False,
    seed: int = 0,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    threads: int | None = None,
    precision: str = "fp32",
) -> ExportResult:
    """Export a bundle's or preset's network, check it against PyTorch, and write ``<out>.json`` beside it.

    Args:
        model: a bundle directory, or a network preset name (then ``checkpoint``, or ``allow_untrained``).
        fmt: ``onnx``, ``openvino`` or ``torchscript``.
        out: the export's path (``.onnx``; ``.xml``, with the ``.bin`` beside it; ``.pt`` or ``.ts``).
        checkpoint: weights; default ``<bundle>/models/model.pt`` for bundles.
        roi_size: window (x, y, z); default the bundle's or preset's.
        sw_batch_size: windows per call, fixed in the export; default the bundle's inferer's (else 1).
        overrides: constructor arguments for a preset network (e.g. smaller widths).
        allow_untrained: without weights, export a seeded random initialisation (the JSON says ``untrained``).
        seed: the seed of that initialisation and of a random check window.
        opset: ONNX opset (>= 17) for ``onnx``/``openvino``.
        overwrite: replace an existing export and JSON.
        threads: runtime threads for the check (default ``torch.get_num_threads()``).
        precision: ``fp32`` (default), or ``bf16`` (``openvino`` only: OpenVINO compiles the fp32 IR with bf16
            inference precision; needs a CPU with native bf16, see :mod:`pipeline.deploy.backend`).

    Returns:
        an :class:`ExportResult`.

    Raises:
        UsageError: unknown format/preset, missing runtime, bad ``--out`` (suffix, exists, unwritable folder), a
            preset without weights.
        ModelError: bad bundle/checkpoint, exporter failure, or a check above the tolerance (nothing is written).
    """
    require_runtime(fmt)
    _check_precision(fmt, precision)
    _check_out(Path(out).expanduser(), fmt, overwrite)
    if fmt != "torchscript" and int(opset) < 17:
        raise UsageError(f"--opset {opset}: the exports need opset 17 or later")
    if sw_batch_size is not None and int(sw_batch_size) < 1:
        raise UsageError(f"--sw-batch-size {sw_batch_size}: must be at least 1")
    loaded, bundle, untrained = _load(model, checkpoint, roi_size, overrides, allow_untrained, seed)
    return export_loaded(
        loaded,
        fmt,
        out,
        bundle=bundle,
        untrained=untrained,
        overrides=overrides,
        sw_batch_size=sw_batch_size,
        seed=seed,
        opset=opset,
        overwrite=overwrite,
        threads=threads,
        precision=precision,
        copy_network=False,  # loaded here, used by nothing else
    )


def export_key(
    loaded: LoadedModel,
    fmt: str,
    *,
    bundle: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    sw_batch_size: int | None = None,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
) -> ExportKey:
    """The :class:`ExportKey` of exporting ``loaded`` as ``fmt``: computed without exporting (a cache looks it up).

    Examples:
        >>> from pipeline.inference import load_model
        >>> import tempfile, pathlib
        >>> from pipeline.networks import create_network
        >>> from pipeline.networks.unetrpp.presets import TINY_UNETRPP
        >>> w = pathlib.Path(tempfile.mkdtemp()) / "w.pt"
        >>> torch.save(create_network("unetrpp_hippocampus", **TINY_UNETRPP).state_dict(), w)
        >>> m = load_model("unetrpp_hippocampus", w, preprocessing="mri_hippocampus", overrides=TINY_UNETRPP,
        ...                roi_size=(16, 32, 32))
        >>> k = export_key(m, "onnx", overrides=TINY_UNETRPP, sw_batch_size=2)
        >>> k.sw_batch_size, k.precision, k.runtime, k == export_key(m, "onnx", overrides=TINY_UNETRPP, sw_batch_size=2)
        (2, 'fp32', 'onnxruntime', True)
    """
    return ExportKey(
        model=loaded.name,
        config_sha256=_config_sha256(loaded, bundle, overrides),
        state_dict_sha256=state_dict_sha256(loaded.network.state_dict()),
        roi_size=tuple(loaded.roi_size),
        sw_batch_size=int(sw_batch_size or loaded.sw_batch_size or 1),
        in_channels=_in_channels(loaded.network),
        format=fmt,
        precision=precision,
        runtime=FORMATS[fmt].runtime,
        runtime_version=runtime_version(fmt),
        torch_version=torch.__version__,
        opset=None if fmt == "torchscript" else int(opset),
    )


def _check_precision(fmt: str, precision: str) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if fmt not in PRECISIONS[precision]:
        raise UsageError(
            f"--precision {precision}: the {fmt} format runs "
            f"{' or '.join(p for p, f in PRECISIONS.items() if fmt in f)} only ({precision}: "
            f"{', '.join(PRECISIONS[precision])})"
        )


def export_loaded(
    loaded: LoadedModel,
    fmt: str,
    out: str | os.PathLike,
    *,
    bundle: Path | None = None,
    untrained: bool = False,
    overrides: Mapping[str, Any] | None = None,
    sw_batch_size: int | None = None,
    seed: int = 0,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    threads: int | None = None,
    precision: str = "fp32",
    copy_network: bool = True,
) -> ExportResult:
    """Export an already loaded model (what :func:`export_model` does after loading; the backend cache calls it).

    Args:
        loaded: from :func:`pipeline.inference.load_model` (CPU).
        fmt, out, sw_batch_size, seed, opset, overwrite, threads: as :func:`export_model`.
        bundle: the bundle folder ``loaded`` came from (its dataset gives the check window; its configs the key).
        untrained: the weights are a seeded initialisation (recorded in the JSON).
        overrides: the preset overrides ``loaded`` was built with (part of the key).
        precision: ``fp32``, or ``bf16`` (OpenVINO; checked with :data:`BF16_RTOL`).
        copy_network: export a copy (default), leaving ``loaded.network`` as it was; False changes it in place.
    """
    require_runtime(fmt)
    _check_precision(fmt, precision)
    if precision == "bf16" and not native_bf16():
        raise UsageError(
            "--precision bf16: this CPU has no native bf16 (no amx_bf16 or avx512_bf16 flag in /proc/cpuinfo); "
            "bf16 is never emulated"
        )
    out = Path(out).expanduser()
    _check_out(out, fmt, overwrite)
    batch = int(sw_batch_size or loaded.sw_batch_size or 1)
    network = plain_network(loaded.network, copy_network=copy_network)
    channels = _in_channels(network)
    # the key (and its state-dict hash) once, before the export: plain_network keeps the state dict as it is
    key = export_key(
        loaded, fmt, bundle=bundle, overrides=overrides, sw_batch_size=batch, precision=precision, opset=opset
    )
    x, check_input = check_window(loaded, batch, channels, bundle=bundle, seed=seed)
    module, reference = _export_module(network, x, fmt)

    spec = FORMATS[fmt]
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # same file system: renames are atomic
    try:
        staged = staging / out.name
        _write(module, x, fmt, staged, opset)
        seconds = time.perf_counter() - started
        check = _run_check(staged, fmt, x, reference, threads, precision)
        if not check["passed"]:
            raise ModelError(
                f"{fmt} export check failed: max |delta logit| {check['max_abs_error']:.3g} > tolerance "
                f"{check['tolerance']:.3g} ({check['rule']}) on a {check_input['kind']} window; nothing written",
                path=out,
            )
        if not overwrite:  # another process may have written meanwhile
            _check_out(out, fmt, overwrite)
        files_sha256 = {dst.name: file_sha256(src) for src, dst in zip(spec.files(staged), spec.files(out))}
        for src, dst in reversed(list(zip(spec.files(staged), spec.files(out)))):  # the main file last
            os.replace(src, dst)  # atomic: the staging folder is on the same file system
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    check["input"] = check_input
    metadata: dict[str, Any] = {
        "format": fmt,
        "files": [f.name for f in spec.files(out)],
        "files_sha256": files_sha256,
        "model": loaded.name,
        "bundle": str(bundle) if bundle is not None else None,
        "preset": None if bundle is not None else loaded.name,
        "checkpoint": loaded.checkpoint,
        "weights_sha256": file_sha256(loaded.checkpoint) if loaded.checkpoint else None,
        "state_dict_sha256": key.state_dict_sha256,
        "untrained": untrained,
        "seed": seed if untrained else None,
        "network": loaded.architecture,
        "parameters": int(sum(p.numel() for p in network.parameters())),
        "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in dict(overrides or {}).items()},
        "input": {"name": _INPUT_NAME, "shape": [batch, channels, *loaded.roi_size], "axes": "N C x y z"},
        "output": {"name": _OUTPUT_NAME, "shape": [int(s) for s in reference.shape], "dtype": "float32"},
        "roi_size": list(loaded.roi_size),
        "sw_batch_size": batch,
        "precision": precision,
        "opset": key.opset,
        "runtime": {"name": spec.runtime, "version": key.runtime_version},
        "onnx_version": package_version("onnx") if fmt != "torchscript" else None,
        "torch_version": torch.__version__,
        "medseg_version": __version__,
        "export_seconds": round(seconds, 2),
        "check": check,
        "cache_key": key.as_dict(),
        "cache_digest": key.digest(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta_path = save_json_atomic(metadata, _metadata_path(out))
    return ExportResult(out, spec.files(out), meta_path, metadata, key)
