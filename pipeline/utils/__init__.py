"""Small helpers shared by every stage: atomic file output."""

from pipeline.utils.atomic import atomic_path, save_json_atomic, save_nifti_atomic, save_torch_atomic

__all__ = ["atomic_path", "save_json_atomic", "save_nifti_atomic", "save_torch_atomic"]
