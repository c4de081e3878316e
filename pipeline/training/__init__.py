"""Training: Dice+CE (deep supervision) loss, optimizer presets and poly LR, resumable checkpoints, DDP helpers.

The bundles' ``train.json`` configs build a MONAI :class:`~monai.engines.SupervisedTrainer` from these pieces;
``medseg train --bundle DIR`` (:mod:`pipeline.training.cli`) runs them.
"""

from pipeline.training.checkpoint import ResumableCheckpoint, capture_rng_state, load_training_state, restore_rng_state
from pipeline.training.determinism import EpochSeeder
from pipeline.training.handlers import GradientClipHandler, ProgressBar, TrainingLog
from pipeline.training.losses import DiceCEDeepSupervisionLoss, build_loss, deep_supervision_weights
from pipeline.training.optim import OPTIMIZER_PRESETS, build_optimizer, build_poly_scheduler, poly_lr

__all__ = [
    "DiceCEDeepSupervisionLoss",
    "EpochSeeder",
    "GradientClipHandler",
    "OPTIMIZER_PRESETS",
    "ProgressBar",
    "ResumableCheckpoint",
    "TrainingLog",
    "build_loss",
    "build_optimizer",
    "build_poly_scheduler",
    "capture_rng_state",
    "deep_supervision_weights",
    "load_training_state",
    "poly_lr",
    "restore_rng_state",
]
