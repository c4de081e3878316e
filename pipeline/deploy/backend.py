"""``--backend`` and ``--precision`` of ``medseg infer`` and ``medseg benchmark``: who runs the network on each window.

=================  =========================================================================================
``torch``          the loaded PyTorch network (the default); ``bf16`` runs it under CPU autocast
``openvino``       the network exported to OpenVINO IR (cached), compiled for this CPU; ``bf16`` sets OpenVINO's
                   inference precision
``onnxruntime``    the network exported to ONNX (cached), run by ONNX Runtime's CPU provider (fp32 only)
``auto``           the first of :data:`AUTO_ORDER` whose runtime imports, whose export passes its check and which
                   runs a window batch faster than torch on this CPU (timed once per export and CPU,
                   :mod:`pipeline.deploy.speed`), else torch; on a CUDA device: torch
=================  =========================================================================================

Precision: ``fp32`` (default); ``bf16`` only on a CPU with native bf16 (``amx_bf16`` or ``avx512_bf16`` in
``/proc/cpuinfo``), never emulated: asked for elsewhere it is a usage error; ``auto`` is bf16 where the CPU has it
natively and the backend can run it, else fp32. On CUDA, use ``--amp`` instead.

Only the network changes: preprocessing, window planning, blending, streaming, TTA, window skipping, inversion and the
atomic writes stay the pipeline's own (:class:`ExportedNetwork` is what ``SlidingWindowEngine._call_network`` calls).
An explicit backend that cannot run (missing runtime, failed conversion or check) is one error line; only ``auto``
falls back, and says why. The choice is recorded in every sidecar (``model.backend``).

Examples:
    >>> plan_backend("auto", "fp32", "cpu", native=False, available=("onnxruntime",))
    [('onnxruntime', 'fp32'), ('torch', 'fp32')]
    >>> plan_backend("auto", "auto", "cpu", native=True, available=("openvino", "onnxruntime"))
    [('openvino', 'bf16'), ('onnxruntime', 'fp32'), ('torch', 'bf16')]
    >>> plan_backend("openvino", "fp32", "cuda:0", native=False, available=("openvino",))
    Traceback (most recent call last):
    ...
    pipeline.errors.UsageError: --backend openvino runs on the CPU; with --device cuda:0 use --backend torch (and --amp)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pipeline.deploy import speed as speed_mod
from pipeline.deploy.cache import cached_export
from pipeline.deploy.runtimes import FORMATS, load_exported, require_runtime
from pipeline.errors import ModelError, PipelineError, UsageError
from pipeline.inference.loading import LoadedModel
from pipeline.utils.environment import native_bf16

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "BACKEND_FORMATS",
    "PRECISION_CHOICES",
    "Bf16Autocast",
    "ExportedNetwork",
    "apply_backend",
    "available_backends",
    "plan_backend",
]

logger = logging.getLogger(__name__)

#: the backends an exported file runs in, and its export format
BACKEND_FORMATS: dict[str, str] = {"openvino": "openvino", "onnxruntime": "onnx"}
BACKENDS: tuple[str, ...] = ("torch", *BACKEND_FORMATS, "auto")
PRECISION_CHOICES: tuple[str, ...] = ("fp32", "bf16", "auto")
#: ``auto``'s preference, fastest first, as measured by ``benchmarks/backends.py`` (RESULTS.md, "CPU backends"):
#: OpenVINO was the fastest runtime on both CPUs seen (AMD EPYC AVX2, Intel Xeon AMX), ONNX Runtime second; each is
#: still timed against torch on this CPU before it is kept (:mod:`pipeline.deploy.speed`)
AUTO_ORDER: tuple[str, ...] = ("openvino", "onnxruntime")
#: the backends that run bf16 (OpenVINO's inference precision; torch's CPU autocast)
_BF16_BACKENDS = ("openvino", "torch")


def available_backends() -> tuple[str, ...]:
    """The exported-file backends whose Python packages are installed (``torch`` is always there)."""
    return tuple(
        b for b in BACKEND_FORMATS if all(importlib.util.find_spec(m) for m in FORMATS[BACKEND_FORMATS[b]].needs)
    )


def _precision_for(backend: str, precision: str, native: bool) -> str:
    if precision == "auto":
        return "bf16" if native and backend in _BF16_BACKENDS else "fp32"
    return precision


def plan_backend(
    backend: str, precision: str, device: str | torch.device, *, native: bool, available: Sequence[str]
) -> list[tuple[str, str]]:
    """The ``(backend, precision)`` pairs to try, in order (one for an explicit backend).

    Args:
        backend: one of :data:`BACKENDS`.
        precision: one of :data:`PRECISION_CHOICES`.
        device: the network's device (exported backends run on the CPU).
        native: whether the CPU has native bf16 (:func:`pipeline.utils.environment.native_bf16`).
        available: the exported-file backends installed (:func:`available_backends`).

    Raises:
        UsageError: an unknown choice, an exported backend on CUDA, bf16 without native bf16 or on a backend that
            cannot run it.
    """
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISION_CHOICES:
        raise UsageError(f"--precision {precision}: choose one of {', '.join(PRECISION_CHOICES)}")
    on_cpu = torch.device(device).type == "cpu"
    if not on_cpu:
        if backend not in ("torch", "auto"):
            raise UsageError(
                f"--backend {backend} runs on the CPU; with --device {device} use --backend torch (and --amp)"
            )
        if precision == "bf16":
            raise UsageError(f"--precision bf16 is for CPUs; with --device {device} use --amp")
        return [("torch", "fp32")]
    if precision == "bf16" and not native:
        raise UsageError(
            "--precision bf16: this CPU has no native bf16 (no amx_bf16 or avx512_bf16 flag in /proc/cpuinfo); "
            "bf16 is never emulated (use fp32)"
        )
    if backend == "auto":
        candidates = [b for b in AUTO_ORDER if b in available] + ["torch"]
        if precision == "bf16":
            candidates = [b for b in candidates if b in _BF16_BACKENDS]
        return [(b, _precision_for(b, precision, native)) for b in candidates]
    if precision == "bf16" and backend not in _BF16_BACKENDS:
        raise UsageError(f"--backend {backend} runs fp32 only (bf16: {' or '.join(_BF16_BACKENDS)})")
    return [(backend, _precision_for(backend, precision, native))]


class ExportedNetwork(nn.Module):
    """Runs an exported network, whose batch size is fixed, on window batches of any size.

    A batch is cut into chunks of ``batch`` windows; the last chunk is padded with zero windows and their outputs
    dropped. Inputs go to the CPU as contiguous float32 and the logits come back on the input's device.

    Args:
        run: a callable ``(batch, C, *roi) -> logits`` (:func:`pipeline.deploy.runtimes.load_exported`).
        batch: the export's fixed batch size.
        parameters: the source network's parameter count (for sidecars).
        in_channels: its input channels.

    Examples:
        >>> double = ExportedNetwork(lambda x: torch.cat([x, 2 * x], 1), batch=2, parameters=0, in_channels=1)
        >>> double(torch.ones(3, 1, 2, 2, 2)).shape
        torch.Size([3, 2, 2, 2, 2])
    """

    def __init__(
        self, run: Callable[[torch.Tensor], torch.Tensor], batch: int, parameters: int, in_channels: int
    ) -> None:
        super().__init__()
        if int(batch) < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.run = run
        self.batch = int(batch)
        self.parameter_count = int(parameters)
        self.in_channels = int(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = []
        for start in range(0, x.shape[0], self.batch):
            part = x[start : start + self.batch].detach().to("cpu", torch.float32)
            n = part.shape[0]
            if n < self.batch:
                part = torch.cat([part, part.new_zeros((self.batch - n, *part.shape[1:]))])
            chunks.append(self.run(part.contiguous())[:n])
        return torch.cat(chunks).to(x.device)


class Bf16Autocast(nn.Module):
    """A CPU network run under ``torch.autocast("cpu", torch.bfloat16)``, returning float32 logits.

    Examples:
        >>> net = Bf16Autocast(nn.Conv3d(1, 2, 1))
        >>> net(torch.ones(1, 1, 2, 2, 2)).dtype
        torch.float32
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> Any:
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            out = self.network(x)
        if isinstance(out, torch.Tensor):
            return out.float()
        if isinstance(out, (list, tuple)):
            return type(out)(o.float() for o in out)
        return {k: v.float() for k, v in out.items()}


def _one_line(what: str, exc: BaseException) -> str:
    return f"{what}: {type(exc).__name__}: {' '.join(str(exc).split())[:240]}"


def _bundle_of(model: LoadedModel) -> Path | None:
    path = Path(model.source)
    return path if not model.source.startswith("preset:") and (path / "configs").is_dir() else None


def _exported(
    model: LoadedModel, backend: str, precision: str, batch: int, root: str | os.PathLike | None, threads: int
) -> tuple[ExportedNetwork, dict[str, Any]]:
    """The export of ``model`` for ``backend``, loaded: from the cache, rebuilt once when the runtime cannot load
    an entry that looked valid."""
    fmt = BACKEND_FORMATS[backend]
    require_runtime(fmt, option="--backend")
    bundle = _bundle_of(model)
    entry = cached_export(model, fmt, bundle=bundle, sw_batch_size=batch, precision=precision, root=root)
    config = entry.metadata.get("check", {}).get("runtime_config")
    try:
        run = load_exported(entry.path, fmt, threads=threads, config=config)
    except Exception as exc:  # noqa: BLE001 - an entry the runtime rejects is corrupt: rebuild it once
        why = _one_line(f"{FORMATS[fmt].runtime} could not load it", exc)
        entry = cached_export(
            model, fmt, bundle=bundle, sw_batch_size=batch, precision=precision, root=root, force=True, reason=why
        )
        config = entry.metadata.get("check", {}).get("runtime_config")
        run = load_exported(entry.path, fmt, threads=threads, config=config)
    parameters = int(sum(p.numel() for p in model.network.parameters()))
    info = {
        "cache": entry.status,
        "cache_entry": str(entry.path.parent),
        "cache_reason": entry.reason or None,
        "runtime": FORMATS[fmt].runtime,
        "runtime_version": entry.key.runtime_version,
        "runtime_config": config,
        "export_check": {k: entry.metadata["check"].get(k) for k in ("max_abs_error", "relative_error", "rule")},
        "sw_batch_size": batch,
    }
    return ExportedNetwork(run, batch, parameters, entry.key.in_channels), info


def apply_backend(
    model: LoadedModel,
    backend: str = "torch",
    precision: str = "fp32",
    *,
    sw_batch_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> LoadedModel:
    """``model`` with its network run by ``backend`` in ``precision`` (a copy; ``model`` is not changed).

    Args:
        model: from :func:`pipeline.inference.load_model`.
        backend: one of :data:`BACKENDS`.
        precision: one of :data:`PRECISION_CHOICES`.
        sw_batch_size: windows per network call (the export's fixed batch); default the model's.
        cache_dir: the export cache (default :func:`pipeline.deploy.cache.cache_root`).
        threads: runtime threads (default ``torch.get_num_threads()``).

    Returns:
        a :class:`LoadedModel` whose ``backend`` records the backend and precision actually used (and, for
        ``auto``, what was tried and why it was passed over, and the timing against torch: ``speed``).

    Raises:
        UsageError: see :func:`plan_backend`; an explicit backend whose runtime is missing.
        ModelError: an explicit backend whose export or check failed.

    Examples:
        >>> from pipeline.networks import create_network
        >>> from pipeline.networks.unetrpp.presets import TINY_UNETRPP
        >>> m = LoadedModel(create_network("unetrpp_hippocampus", **TINY_UNETRPP).eval(), None, (16, 16, 16))
        >>> apply_backend(m, "torch", "fp32").backend
        {'name': 'torch', 'precision': 'fp32', 'requested': 'torch', 'requested_precision': 'fp32'}
    """
    installed = available_backends()
    plan = plan_backend(backend, precision, model.device, native=native_bf16(), available=installed)
    batch = int(sw_batch_size or model.sw_batch_size or 1)
    threads = max(1, int(threads or torch.get_num_threads()))
    passed_over = [
        f"{b}: not installed (pip install -r requirements.txt)"
        for b in AUTO_ORDER
        if backend == "auto" and b not in installed and model.device.type == "cpu"
    ]
    for name, prec in plan:
        record: dict[str, Any] = {
            "name": name,
            "precision": prec,
            "requested": backend,
            "requested_precision": precision,
        }
        if passed_over:
            record["passed_over"] = list(passed_over)
        if name == "torch":
            network = Bf16Autocast(model.network) if prec == "bf16" else model.network
            return dataclasses.replace(model, network=network, backend=record)
        try:
            network, info = _exported(model, name, prec, batch, cache_dir, threads)
        except Exception as exc:  # explicit backend: one error line; auto: the next candidate
            error = exc if isinstance(exc, PipelineError) else ModelError(_one_line(f"--backend {name}", exc))
            if backend != "auto":
                if error is exc:
                    raise
                raise error from exc
            passed_over.append(f"{name} ({prec}): {error}")
            logger.warning("--backend auto: %s not used: %s", name, error)
            continue
        if backend == "auto":  # the fastest for this CPU: an export slower than torch here is passed over
            plain = Bf16Autocast(model.network) if prec == "bf16" else model.network
            shape = (batch, network.in_channels, *model.roi_size)
            info["speed"] = speed = speed_mod.runtime_speed(info["cache_entry"], network, plain, shape, threads)
            if speed["runtime_s"] > speed["torch_s"]:
                why = (
                    f"{name} ({prec}): slower than torch on this CPU ({speed['runtime_s']:.3f} s against "
                    f"{speed['torch_s']:.3f} s per batch of {batch} window(s), {speed['cpu']})"
                )
                passed_over.append(why)
                logger.warning("--backend auto: %s", why)
                continue
        return dataclasses.replace(model, network=network, backend={**record, **info})
    raise AssertionError("unreachable: the plan of 'auto' ends with torch")  # pragma: no cover
