"""Data layer: readers for every supported layout, volume I/O (NIfTI, NRRD/MHA, DICOM series), inference input
listing, dataset checks and fingerprints, and the TransUNet label-map derivation tool.

Modules: :mod:`~pipeline.data.io` (``load_volume``, ``SimpleITKReader``), :mod:`~pipeline.data.inputs`
(``list_inference_inputs``), :mod:`~pipeline.data.readers` (``read_dataset``, ``DatasetInfo``),
:mod:`~pipeline.data.check`, :mod:`~pipeline.data.fingerprint`, :mod:`~pipeline.data.transunet` (``derive_label_map``),
:mod:`~pipeline.data.cli` (``medseg datasets ...``), :mod:`~pipeline.data.geometry` (NIfTI geometry rule,
``spacing_from_affine``), :mod:`~pipeline.data.naming` (case names, the pairing rules of images, labels and
predictions).
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> defining module (imported on first use, so ``import pipeline.data`` stays cheap for the CLI)
_EXPORTS = {
    "SimpleITKReader": "pipeline.data.io",
    "load_volume": "pipeline.data.io",
    "image_readers": "pipeline.data.io",
    "make_load_imaged": "pipeline.data.io",
    "list_inference_inputs": "pipeline.data.inputs",
    "DatasetInfo": "pipeline.data.readers",
    "read_dataset": "pipeline.data.readers",
    "detect_layout": "pipeline.data.readers",
    "load_split_file": "pipeline.data.readers",
    "CaseReport": "pipeline.data.check",
    "CheckReport": "pipeline.data.check",
    "check_case": "pipeline.data.check",
    "check_dataset": "pipeline.data.check",
    "compute_fingerprint": "pipeline.data.fingerprint",
    "derive_label_map": "pipeline.data.transunet",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline.data' has no attribute {name!r}")
