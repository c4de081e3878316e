"""Small helpers shared by every stage.

* :mod:`pipeline.utils.atomic`: atomic file output (text, JSON, torch, NIfTI).
* :mod:`pipeline.utils.tables`: the Markdown table writer of every report.
* :mod:`pipeline.utils.environment`: the hardware/software stamp and package versions.
"""

from pipeline.utils.atomic import atomic_path, save_json_atomic, save_nifti_atomic, save_torch_atomic

__all__ = ["atomic_path", "save_json_atomic", "save_nifti_atomic", "save_torch_atomic"]
