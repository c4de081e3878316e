"""What one bundle chooses (:class:`BundleSpec`, :class:`TrainRecipe`); everything else comes from the template.

A spec holds the dataset-dependent choices, like an nnU-Net plan: the dataset folder and split, the patch, the
preprocessing preset, the classes, the registered network preset, and the training recipe. The template
(:mod:`pipeline.bundles.template`) turns it into the bundle's MONAI configs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BundleSpec", "TrainRecipe", "OfficialSplit"]


@dataclass(frozen=True)
class OfficialSplit:
    """A bundle's ``configs/datalist.json`` written by the generator from an official split file in ``data/``.

    The datalist names every case of the split, so the bundle's configs read only that JSON when they are parsed (not
    the dataset folder), and a folder that lacks some of the cases is reported when they are loaded.

    Args:
        name: the split file (:func:`pipeline.data.readers.load_split_file`: ``synapse``, ``btcv``, ``lung``).
        image: a case's image path relative to ``dataset_dir``; ``{id}`` stands for the case id of the split file.
        label: the case's label path, likewise.
        keys: datalist key (``training``, ``validation``) -> the split file's key.

    Examples:
        >>> split = OfficialSplit("synapse", "Training/img/img{id}.nii.gz", "Training/label/label{id}.nii.gz",
        ...                       {"training": "train", "validation": "test"})
        >>> split.image.format(id="0005")
        'Training/img/img0005.nii.gz'
    """

    name: str
    image: str
    label: str
    keys: Mapping[str, str] = field(default_factory=lambda: {"training": "training", "validation": "validation"})


@dataclass(frozen=True)
class TrainRecipe:
    """The training choices of ``train.json``.

    Args:
        optimizer: a :func:`pipeline.training.build_optimizer` preset (``"sgd_nnunet"``, ``"adamw"``).
        lr: initial learning rate (poly schedule over ``max_epochs``).
        weight_decay: the optimizer's weight decay.
        max_epochs: ``train#trainer#max_epochs``.
        val_interval: validate every this many epochs.
        augmentation: either keyword arguments of :func:`pipeline.transforms.build_train_transforms` (a mapping:
            patch sampling and the nnU-Net-style augmentations) or a list of MONAI random transform configs applied
            after the deterministic preprocessing (``train#random_transforms``).
        batch_size: training batch size.
        max_norm: gradient-norm clip of :class:`pipeline.training.GradientClipHandler` (None: no clipping).
        auxiliary_loss: add the network's ``auxiliary_loss`` to the Dice+CE loss (guided-attention variants).

    Examples:
        >>> TrainRecipe("adamw", 2e-3, 1e-4, max_epochs=70, val_interval=5, augmentation={"num_samples": 2}).max_norm
        12.0
    """

    optimizer: str
    lr: float
    weight_decay: float
    max_epochs: int
    val_interval: int
    augmentation: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    batch_size: int = 1
    max_norm: float | None = 12.0
    auxiliary_loss: bool = False


@dataclass(frozen=True)
class BundleSpec:
    """One bundle: its folder name and the choices that depend on its dataset and network.

    Args:
        name: the bundle folder, ``<model>_<dataset>_segmentation``.
        dataset: the dataset folder under the data root (``dataset_dir``).
        roi_size: the network's patch, (x, y, z); also the sliding-window size.
        preprocessing: a preset of :mod:`pipeline.transforms.presets`.
        num_classes: output channels, background included.
        network: a registered network preset (:func:`pipeline.networks.list_networks`).
        train: the training recipe.
        network_args: ``create_network`` arguments written into ``network_def`` after the name (``"@roi_size"``,
            ``"@num_classes"`` references, and the overrides of the preset this bundle uses).
        network_preset_id: write the preset name as the top-level id ``network_preset`` (``network_def`` then reads
            ``"@network_preset"``), so that ``--network_preset NAME`` swaps the variant.
        split: the official split the generator writes to ``configs/datalist.json``; None: the bundle's
            ``configs/datalist.json`` is its own (written by hand, like ``metadata.json``). Every bundle's configs
            load their cases from that file.
        tta_mirror_axes: the spatial axes mirrored by ``medseg infer --tta`` (the augmentation's flips), if set.
        sw_batch_size: windows per network call in ``inference.json``.

    Examples:
        >>> recipe = TrainRecipe("adamw", 2e-3, 1e-4, max_epochs=70, val_interval=5, augmentation={})
        >>> spec = BundleSpec("x_segmentation", "Task04_Hippocampus", (32, 48, 32), "mri_hippocampus", 3,
        ...                   "unetrpp_hippocampus", recipe)
        >>> spec.split is None  # the bundle ships its own configs/datalist.json
        True
    """

    name: str
    dataset: str
    roi_size: tuple[int, int, int]
    preprocessing: str
    num_classes: int
    network: str
    train: TrainRecipe
    network_args: Mapping[str, Any] = field(default_factory=dict)
    network_preset_id: bool = False
    split: OfficialSplit | None = None
    tta_mirror_axes: tuple[int, ...] | None = None
    sw_batch_size: int = 1

    def __post_init__(self) -> None:
        if len(self.roi_size) != 3:
            raise ValueError(f"bundle spec {self.name}: roi_size needs 3 values (x, y, z), got {self.roi_size}")
