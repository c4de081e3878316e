"""The export formats, the runtimes that run them, and a callable that runs an exported file on torch tensors.

=============  ====================  ===============  =====================================================
format         file(s)               runtime          how it is written
=============  ====================  ===============  =====================================================
``onnx``       ``PATH.onnx``         ONNX Runtime     ``torch.onnx.export`` (TorchScript exporter, opset >= 17)
``openvino``   ``PATH.xml`` + .bin   OpenVINO         the ONNX graph read by OpenVINO, saved as IR in fp32
``torchscript``  ``PATH.pt``         PyTorch          ``torch.jit.trace`` at the fixed input shape
=============  ====================  ===============  =====================================================

:func:`load_exported` returns a callable ``(n, C, x, y, z)`` float tensor -> logits tensor: what
``SlidingWindowEngine._call_network`` calls (see ARCHITECTURE.md, "Add a backend").

Examples:
    >>> sorted(FORMATS)
    ['onnx', 'openvino', 'torchscript']
    >>> FORMATS["openvino"].suffixes, FORMATS["openvino"].runtime
    (('.xml',), 'openvino')
    >>> runtime_version("torchscript") == __import__("torch").__version__
    True
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UsageError
from pipeline.utils.environment import package_version

__all__ = [
    "FORMATS",
    "OPENVINO_BF16",
    "OPENVINO_FP32",
    "OPENVINO_FP32_CONFIGS",
    "OPENVINO_FP32_NO_SNIPPETS",
    "ExportFormat",
    "load_exported",
    "require_runtime",
    "runtime_version",
]


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes:
        name: ``onnx``, ``openvino`` or ``torchscript``.
        suffixes: the accepted suffixes of ``--out`` (the first is the default).
        runtime: the module that runs the file.
        needs: the modules writing and running it needs (``pip`` names in ``requirements.txt``).
        companions: suffixes of files written beside the main one (OpenVINO's weights ``.bin``).
    """

    name: str
    suffixes: tuple[str, ...]
    runtime: str
    needs: tuple[str, ...]
    companions: tuple[str, ...] = ()

    def files(self, path: Path) -> list[Path]:
        """The main file and its companions."""
        return [path] + [path.with_suffix(s) for s in self.companions]


FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat("onnx", (".onnx",), "onnxruntime", ("onnx", "onnxruntime")),
    "openvino": ExportFormat("openvino", (".xml",), "openvino", ("onnx", "openvino"), companions=(".bin",)),
    "torchscript": ExportFormat("torchscript", (".pt", ".ts"), "torch", ()),
}

#: OpenVINO CPU settings for fp32: full fp32 precision (no bf16/fp16 downcast)
OPENVINO_FP32: dict[str, str] = {"INFERENCE_PRECISION_HINT": "f32"}
#: the same without the CPU plugin's JIT "snippets" (fused MHA/eltwise subgraphs). Neither setting fits every network
#: (OpenVINO 2026.4.1, this CPU): with snippets the Med-Former LGT block (swinunet3d_lgt) gave max |delta logit| at
#: 0.5 % of max |logit|; without them the hippocampus UNETR++ at batch 4 failed to compile (a oneDNN post-op check).
#: The export check tries them in this order and records the one that passed (``check.runtime_config``).
OPENVINO_FP32_NO_SNIPPETS: dict[str, str] = {**OPENVINO_FP32, "SNIPPETS_MODE": "DISABLE"}
OPENVINO_FP32_CONFIGS: tuple[dict[str, str], ...] = (OPENVINO_FP32, OPENVINO_FP32_NO_SNIPPETS)
#: bf16 inference precision: only asked for on CPUs with native bf16 (AMX / AVX512-BF16); OpenVINO would emulate it
#: elsewhere, which the product never does (see pipeline.deploy.backend)
OPENVINO_BF16: dict[str, str] = {"INFERENCE_PRECISION_HINT": "bf16"}


def require_runtime(fmt: str, option: str = "--format") -> None:
    """Raise a one-line :class:`UsageError` unless ``fmt`` is known and its packages import.

    Examples:
        >>> require_runtime("torchscript")
        >>> try:
        ...     require_runtime("tflite")
        ... except UsageError as exc:
        ...     print(exc)
        --format tflite: unknown format; choose one of onnx, openvino, torchscript
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: unknown format; choose one of {', '.join(sorted(FORMATS))}")
    for module in FORMATS[fmt].needs:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(
                f"{option} {fmt} needs the Python package {module!r}, which does not import here "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); install the pins of requirements.txt "
                "(pip install -r requirements.txt)"
            ) from None


def runtime_version(fmt: str) -> str | None:
    """The version of the runtime that runs ``fmt`` (None when it is not installed)."""
    return package_version(FORMATS[fmt].runtime)


def _threads(threads: int | None) -> int:
    return max(1, int(threads if threads is not None else torch.get_num_threads()))


def _onnxruntime(path: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])

    return run


def _openvino(path: Path, threads: int, config: Mapping[str, str] | None) -> Callable[[torch.Tensor], torch.Tensor]:
    import openvino as ov

    settings = {**(config if config is not None else OPENVINO_FP32), "INFERENCE_NUM_THREADS": str(threads)}
    compiled = ov.Core().compile_model(str(path), "CPU", settings)
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x: torch.Tensor) -> torch.Tensor:
        result = request.infer([x.detach().cpu().numpy()])
        return torch.from_numpy(result[output].copy())  # the request reuses its output buffer

    return run


def _torchscript(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


def load_exported(
    path: str | os.PathLike,
    fmt: str,
    *,
    threads: int | None = None,
    config: Mapping[str, str] | None = None,
) -> Callable[[torch.Tensor], Any]:
    """A callable that runs an exported network on a float32 CPU tensor and returns the logits as a tensor.

    Args:
        path: the exported file (``.onnx``, ``.xml``, ``.pt``).
        fmt: its format (a key of :data:`FORMATS`).
        threads: intra-op threads of the runtime (default ``torch.get_num_threads()``).
        config: OpenVINO compile settings (default :data:`OPENVINO_FP32`); ignored by the other runtimes.

    Raises:
        UsageError: unknown format or runtime not installed.

    Examples:
        >>> import tempfile, pathlib
        >>> net = torch.nn.Conv3d(1, 2, 1).eval()
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "n.pt"
        >>> torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, 2, 2, 2)), str(f))
        >>> run = load_exported(f, "torchscript")
        >>> x = torch.randn(1, 1, 2, 2, 2)
        >>> bool(torch.allclose(run(x), net(x)))
        True
    """
    require_runtime(fmt)
    path = Path(path)
    if fmt == "onnx":
        return _onnxruntime(path, _threads(threads))
    if fmt == "openvino":
        return _openvino(path, _threads(threads), config)
    return _torchscript(path)
