"""Sliding-window inference: the engine, mirroring TTA, model loading and the ``medseg infer`` runner.

Public API:
    * :class:`SlidingWindowEngine` (a MONAI ``Inferer``: blended logits, streaming argmax, window skipping),
      :func:`plan_windows`, :func:`channel_argmax`;
    * :class:`MirrorTTA` (nnU-Net mirroring as a predictor wrapper);
    * :func:`load_model` -> :class:`LoadedModel` (bundle directory, or preset + checkpoint + preprocessing),
      :func:`load_network_weights` (a state dict into a network, strictly);
    * :func:`infer_cases` -> :class:`InferenceResult` per case, :func:`predict_case`, :class:`InferenceSettings`,
      :func:`save_label_nifti`;
    * the ``medseg infer`` command (:mod:`pipeline.inference.cli`).
"""

from pipeline.inference.engine import SlidingWindowEngine, WindowPlan, channel_argmax, plan_windows
from pipeline.inference.loading import LoadedModel, load_model, load_network_weights
from pipeline.inference.postprocess import keep_largest_component, label_dtype
from pipeline.inference.runner import InferenceResult, InferenceSettings, infer_cases, predict_case, save_label_nifti
from pipeline.inference.tta import MirrorTTA, mirror_flips

__all__ = [
    "InferenceResult",
    "InferenceSettings",
    "LoadedModel",
    "MirrorTTA",
    "SlidingWindowEngine",
    "WindowPlan",
    "channel_argmax",
    "infer_cases",
    "keep_largest_component",
    "label_dtype",
    "load_model",
    "load_network_weights",
    "mirror_flips",
    "plan_windows",
    "predict_case",
    "save_label_nifti",
]
