"""medseg: a MONAI-based 3D medical image segmentation pipeline (UNETR++, 3D Swin-Unet family).

Sub-packages follow the data flow: :mod:`pipeline.data` (readers, checks, fingerprints), :mod:`pipeline.transforms`
(MONAI preprocessing presets), :mod:`pipeline.networks` (UNETR++, Swin-Unet 3D, the preset registry),
:mod:`pipeline.inference` (sliding-window engine), :mod:`pipeline.evaluation` (DSC/HD95 protocols),
:mod:`pipeline.training` (losses, optimisers, resumable checkpoints) and :mod:`pipeline.benchmark`.
"""

__version__ = "0.1.0"
