"""Deployment: export a network for a fixed window and batch (ONNX, OpenVINO IR, TorchScript) and run the export."""

from pipeline.deploy.export import ExportKey, ExportResult, export_model
from pipeline.deploy.runtimes import FORMATS, load_exported, require_runtime, runtime_version

__all__ = [
    "FORMATS",
    "ExportKey",
    "ExportResult",
    "export_model",
    "load_exported",
    "require_runtime",
    "runtime_version",
]
