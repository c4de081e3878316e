"""The one hardware/software stamp (pipeline/utils/environment.py): sidecars and reports name the same versions."""

from __future__ import annotations

import importlib.metadata

import pipeline
from pipeline.utils.environment import package_version, software_versions, stamp_line, system_stamp


def test_sidecar_versions_and_report_stamp_agree():
    versions = software_versions()  # what every inference sidecar records under "versions"
    stamp = system_stamp("cpu")  # what benchmark reports and RESULTS.md sections record
    assert list(versions) == ["medseg", "python", "torch", "monai", "numpy", "nibabel", "platform"]
    assert versions["medseg"] == stamp["medseg"] == pipeline.__version__
    assert {k: stamp[k] for k in versions} == versions
    assert f"torch {versions['torch']}, monai {versions['monai']}" in stamp_line(stamp)


def test_package_version_without_importing():
    assert package_version("SimpleITK") == importlib.metadata.version("SimpleITK")
    assert package_version("no_such_module_here") is None
