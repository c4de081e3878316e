"""Deployment: export a network for a fixed window and batch (ONNX, OpenVINO IR, TorchScript), cache the exports, and
run them as the ``--backend`` of ``medseg infer`` / ``medseg benchmark``."""

from pipeline.deploy.backend import BACKENDS, ExportedNetwork, apply_backend, plan_backend
from pipeline.deploy.cache import cache_root, cached_export
from pipeline.deploy.export import ExportKey, ExportResult, export_loaded, export_model
from pipeline.deploy.runtimes import FORMATS, load_exported, require_runtime, runtime_version

__all__ = [
    "BACKENDS",
    "FORMATS",
    "ExportKey",
    "ExportResult",
    "ExportedNetwork",
    "apply_backend",
    "cache_root",
    "cached_export",
    "export_loaded",
    "export_model",
    "load_exported",
    "plan_backend",
    "require_runtime",
    "runtime_version",
]
