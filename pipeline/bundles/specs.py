"""The bundles of ``bundles/``, one :class:`~pipeline.bundles.spec.BundleSpec` each; ``python -m
pipeline.bundles.build`` writes their configs.

To add a bundle, add a spec here (and its ``metadata.json``, ``docs/README.md`` and ``LICENSE``, and a
``configs/datalist.json`` unless the spec names an official ``split``), then run the generator. The training recipes
shared by several bundles are named once below.

Examples:
    >>> SPECS["unetrpp_hippocampus_mri_segmentation"].network
    'unetrpp_hippocampus'
    >>> sorted({spec.train.optimizer for spec in SPECS.values()})
    ['adamw', 'sgd_nnunet']
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pipeline.bundles.spec import BundleSpec, OfficialSplit, TrainRecipe

__all__ = ["SPECS", "NNUNET_AUGMENTATION", "HIPPOCAMPUS_AUGMENTATION"]

#: patch sampling and augmentation of :func:`pipeline.transforms.build_train_transforms` (nnU-Net style)
NNUNET_AUGMENTATION = {
    "num_samples": 2,
    "pos": 1.0,
    "neg": 1.0,
    "flip_prob": 0.2,
    "rot90_prob": 0.2,
    "intensity_prob": 0.5,
}

#: the hippocampus recipe: pad and crop to the patch, mild affine, left-right flips, intensity jitter
HIPPOCAMPUS_AUGMENTATION: list[dict[str, Any]] = [
    {"_target_": "SpatialPadd", "keys": ["image", "label"], "spatial_size": "@roi_size"},
    {"_target_": "RandSpatialCropd", "keys": ["image", "label"], "roi_size": "@roi_size", "random_size": False},
    {
        "_target_": "RandAffined",
        "keys": ["image", "label"],
        "prob": 0.25,
        "rotate_range": [0.26, 0.26, 0.26],
        "scale_range": [0.1, 0.1, 0.1],
        "mode": ["bilinear", "nearest"],
        "padding_mode": "zeros",
    },
    {"_target_": "RandFlipd", "keys": ["image", "label"], "spatial_axis": 0, "prob": 0.5},
    {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.3},
    {"_target_": "RandShiftIntensityd", "keys": "image", "offsets": 0.1, "prob": 0.3},
    {"_target_": "RandGaussianNoised", "keys": "image", "std": 0.05, "prob": 0.1},
]

#: the official UNETR++ recipe (SGD, 1000 epochs)
UNETRPP_CT = TrainRecipe("sgd_nnunet", 0.01, 3e-05, max_epochs=1000, val_interval=10, augmentation=NNUNET_AUGMENTATION)
#: the 3D Swin-Unet CT recipe (AdamW, no gradient clipping)
SWIN_CT = TrainRecipe(
    "adamw", 0.0002, 1e-05, max_epochs=500, val_interval=5, augmentation=NNUNET_AUGMENTATION, max_norm=None
)
HIPPOCAMPUS = TrainRecipe(
    "adamw", 0.002, 0.0001, max_epochs=70, val_interval=5, augmentation=HIPPOCAMPUS_AUGMENTATION, batch_size=2
)

#: UNETR++ official presets are (z, y, x): build them for MONAI (x, y, z) tensors at the bundle's patch
_UNETRPP_OFFICIAL = {"img_size": "@roi_size", "input_order": "xyz"}
_UNETRPP_PROJECT = {"img_size": "@roi_size", "out_channels": "@num_classes"}
_SWIN = {"roi_size": "@roi_size", "in_channels": 1, "out_channels": "@num_classes"}

# The official splits of data/ with each layout's file names, for the generated configs/datalist.json.
#: Synapse RawData, official 18/12 split: the 12 "test" cases are the validation set, as in the official UNETR++ code
SYNAPSE_SPLIT = OfficialSplit(
    "synapse",
    "Training/img/img{id}.nii.gz",
    "Training/label/label{id}.nii.gz",
    {"training": "train", "validation": "test"},
)
#: BTCV in MONAI's layout, 24/6: the training/validation lists of MONAI's dataset_0.json
BTCV_SPLIT = OfficialSplit("btcv", "imagesTr/img{id}.nii.gz", "labelsTr/label{id}.nii.gz")
#: MSD Task06_Lung, the UNETR++ 50/13 split (its 13 validation cases are those of the published lung Dice)
LUNG_SPLIT = OfficialSplit(
    "lung", "imagesTr/{id}.nii.gz", "labelsTr/{id}.nii.gz", {"training": "train", "validation": "validation"}
)

_SPECS = [
    BundleSpec(
        "unetrpp_synapse_ct_segmentation",
        "Synapse_like/RawData",
        (128, 128, 64),
        "ct_abdomen",
        14,
        "unetrpp_synapse",
        UNETRPP_CT,
        network_args=_UNETRPP_OFFICIAL,
        split=SYNAPSE_SPLIT,
    ),
    BundleSpec(
        "unetrpp_btcv_ct_segmentation",
        "BTCV_like",
        (128, 128, 64),
        "ct_abdomen",
        14,
        "unetrpp_btcv",
        UNETRPP_CT,
        network_args=_UNETRPP_OFFICIAL,
        split=BTCV_SPLIT,
    ),
    BundleSpec(
        "unetrpp_lung_ct_segmentation",
        "Task06_Lung",
        (192, 192, 32),
        "ct_lung",
        2,
        "unetrpp_lung",
        UNETRPP_CT,
        network_args=_UNETRPP_OFFICIAL,
        split=LUNG_SPLIT,
    ),
    BundleSpec(
        "unetrpp_sts_ct_segmentation",
        "STS_CT",
        (64, 64, 32),
        "ct_sts",
        2,
        "unetrpp_sts",
        TrainRecipe(
            "adamw",
            0.002,
            0.0001,
            max_epochs=150,
            val_interval=10,
            augmentation={**NNUNET_AUGMENTATION, "affine_prob": 0.2},
        ),
        network_args=_UNETRPP_PROJECT,
    ),
    BundleSpec(
        "unetrpp_hippocampus_mri_segmentation",
        "Task04_Hippocampus",
        (32, 48, 32),
        "mri_hippocampus",
        3,
        "unetrpp_hippocampus",
        HIPPOCAMPUS,
        network_args=_UNETRPP_PROJECT,
        tta_mirror_axes=(0,),
        sw_batch_size=4,
    ),
    BundleSpec(
        "swinunet3d_btcv_ct_segmentation",
        "BTCV_like",
        (96, 96, 96),
        "ct_abdomen",
        14,
        "swinunet3d",
        SWIN_CT,
        network_args=_SWIN,
        split=BTCV_SPLIT,
    ),
    BundleSpec(
        "swinunet3d_lgt_btcv_ct_segmentation",
        "BTCV_like",
        (96, 96, 96),
        "ct_abdomen",
        14,
        "swinunet3d_lgt",
        SWIN_CT,
        network_args=_SWIN,
        split=BTCV_SPLIT,
    ),
    # the Swin ablation's bundle: the UNETR++ hippocampus recipe, the variant chosen with --network_preset
    BundleSpec(
        "swinunet3d_hippocampus_mri_segmentation",
        "Task04_Hippocampus",
        (32, 48, 32),
        "mri_hippocampus",
        3,
        # the best variant of benchmarks/ablation_hippocampus.py so far (its shipped weights); --network_preset swaps
        "swinunet3d_transfuse",
        replace(HIPPOCAMPUS, auxiliary_loss=True),
        network_args={
            **_SWIN,
            "patch_size": 2,
            "embed_dim": 48,
            "depths": [2, 2, 2, 2],
            "num_heads": [3, 6, 12, 24],
            "window_size": [4, 4, None, None],
            "drop_path_rate": 0.1,
        },
        network_preset_id=True,
        tta_mirror_axes=(0,),
        sw_batch_size=4,
    ),
]

#: bundle folder name -> spec
SPECS: dict[str, BundleSpec] = {spec.name: spec for spec in _SPECS}
