"""The one bundle template: a :class:`~pipeline.bundles.spec.BundleSpec` in, the MONAI config files out.

:func:`render_bundle` returns the text of ``inference.json``, ``train.json``, ``evaluate.json``,
``multi_gpu_train.json`` and ``logging.conf`` (the last three are the same for every bundle), and of
``datalist.json`` for a bundle whose spec names an official split (:func:`datalist_json`). Every bundle's configs take
their cases from ``configs/datalist.json``, so parsing them reads no dataset folder. Training handlers are
keyed by name (``train#handlers_by_name#checkpoint``...) so that ``multi_gpu_train.json`` and ``--set`` overrides
address them by id; the trainer takes them in that order (``$list(@train#handlers_by_name.values())``), and a
disabled one (``_disabled_``) is left out. There is no ``train#handlers`` list id: MONAI's
``ConfigWorkflow.check_properties`` iterates ``train#handlers`` as a list of handler dicts, so it cannot be an
expression.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pipeline.bundles.spec import BundleSpec, OfficialSplit

__all__ = [
    "render_bundle",
    "inference_config",
    "train_config",
    "datalist_json",
    "format_json",
    "EVALUATE",
    "MULTI_GPU_TRAIN",
]

IMPORTS = [
    "$import glob",
    "$import os",
    "$import pipeline",
    "$import pipeline.training",
    "$import pipeline.training.bundle",
    "$import pipeline.transforms",
    "$import pipeline.networks",
]
DEVICE = "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"
#: the CPU kernels (pipeline.networks.optimize_for_cpu) on CPU, the plain network elsewhere
NETWORK = (
    "$pipeline.networks.optimize_for_cpu(@network_def.to(@device)) if @device.type == 'cpu' "
    "else @network_def.to(@device)"
)
#: the CheckpointLoader runs only with trained weights (or --allow_untrained true), see require_weights
WEIGHTS_CHECK = "$not pipeline.training.bundle.require_weights(@ckpt_path, @allow_untrained)"
FROM_ENGINE = "$monai.handlers.from_engine(['pred', 'label'])"
LOSS_OUTPUT = "$lambda out: out['loss']"
TENSORBOARD_DIR = "$@train_dir + '/tensorboard'"


#: every bundle's cases: MSD-style lists with paths relative to ``dataset_dir``. Parsing a config reads this file
#: only (the model zoo's CI has no data); the dataset's files are read when the cases are loaded.
DATALIST_FILE = "$@bundle_root + '/configs/datalist.json'"


def _cases(split: str) -> str:
    """The Python expression (without ``$``) listing the labelled cases of ``split`` (training/validation)."""
    return f"monai.data.load_decathlon_datalist(@datalist_file, True, '{split}', @dataset_dir)"


def _header(spec: BundleSpec) -> dict[str, Any]:
    return {
        "imports": list(IMPORTS),
        "bundle_root": f"$pipeline.training.bundle.bundle_root('{spec.name}')",
    }


def _model(spec: BundleSpec, *, inference: bool) -> dict[str, Any]:
    """``roi_size`` ... ``network``: the patch, the preprocessing preset, the classes and the network (and, for
    inference, the mirror axes of ``medseg infer --tta``)."""
    out: dict[str, Any] = {"roi_size": list(spec.roi_size)}
    if inference and spec.tta_mirror_axes is not None:
        out["tta_mirror_axes"] = list(spec.tta_mirror_axes)
    out["preprocessing_preset"] = spec.preprocessing
    out["num_classes"] = spec.num_classes
    if spec.network_preset_id:
        out["network_preset"] = spec.network
    name = "@network_preset" if spec.network_preset_id else spec.network
    out["network_def"] = {"_target_": "pipeline.networks.create_network", "name": name, **spec.network_args}
    out["network"] = NETWORK
    return out


def _preprocessing(keys: list[str]) -> dict[str, Any]:
    return {"_target_": "pipeline.transforms.build_preprocessing", "preset": "@preprocessing_preset", "keys": keys}


def _loader(dataset: str, batch_size: int, shuffle: bool) -> dict[str, Any]:
    return {
        "_target_": "DataLoader",
        "dataset": dataset,
        "batch_size": batch_size,
        "shuffle": shuffle,
        "num_workers": "@num_workers",
    }


def _postprocessing(*transforms: dict[str, Any]) -> dict[str, Any]:
    """A ``Compose`` of the softmax over the network's output channels, then ``transforms``."""
    softmax = {"_target_": "Activationsd", "keys": "pred", "softmax": True}
    return {"_target_": "Compose", "transforms": [softmax, *transforms]}


def _window(sw_batch_size: int, **extra: Any) -> dict[str, Any]:
    return {
        "_target_": "SlidingWindowInferer",
        "roi_size": "@roi_size",
        "sw_batch_size": sw_batch_size,
        "overlap": 0.5,
        "mode": "gaussian",
        **extra,
    }


def inference_config(spec: BundleSpec) -> dict[str, Any]:
    """``configs/inference.json``: sliding-window inference on the validation images, inverted to each image's grid.

    Examples:
        >>> from pipeline.bundles.specs import SPECS
        >>> cfg = inference_config(SPECS["unetrpp_hippocampus_mri_segmentation"])
        >>> cfg["network_def"]["name"], cfg["roi_size"], cfg["inferer"]["sw_batch_size"]
        ('unetrpp_hippocampus', [32, 48, 32], 4)
    """
    return {
        **_header(spec),
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": f"$pipeline.training.bundle.dataset_dir('{spec.dataset}')",
        "datalist_file": DATALIST_FILE,
        "datalist": f"$[{{'image': d['image']}} for d in {_cases('validation')}]",
        "device": DEVICE,
        "use_amp": "$@device.type == 'cuda'",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "allow_untrained": False,
        "num_workers": 0,
        **_model(spec, inference=True),
        "preprocessing": _preprocessing(["image"]),
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": _loader("@dataset", 1, False),
        "inferer": _window(spec.sw_batch_size, cache_roi_weight_map=True),
        "postprocessing": _postprocessing(
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "nearest_interp": False,
                "to_tensor": True,
            },
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            _save_predictions(),
        ),
        "handlers": [_weights_loader(), {"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": "@use_amp",
        },
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@evaluator.run()"],
    }


def _save_predictions(**extra: Any) -> dict[str, Any]:
    return {
        "_target_": "SaveImaged",
        "keys": "pred",
        **extra,
        "output_dir": "@output_dir",
        "output_postfix": "",
        "separate_folder": False,
        "output_dtype": "$numpy.uint8",
        "resample": False,
        "print_log": False,
    }


def _weights_loader() -> dict[str, Any]:
    return {
        "_target_": "CheckpointLoader",
        "_disabled_": WEIGHTS_CHECK,
        "load_path": "@ckpt_path",
        "load_dict": {"model": "@network"},
        "map_location": "@device",
    }


def _train_preprocessing(spec: BundleSpec) -> dict[str, Any]:
    """``train#preprocessing`` (and ``train#deterministic_transforms``/``random_transforms`` for a transform list)."""
    augmentation = spec.train.augmentation
    if isinstance(augmentation, Mapping):
        return {
            "preprocessing": {
                "_target_": "pipeline.transforms.build_train_transforms",
                "preset": "@preprocessing_preset",
                "roi_size": "@roi_size",
                **augmentation,
            }
        }
    return {
        "deterministic_transforms": _preprocessing(["image", "label"]),
        "random_transforms": [dict(t) for t in augmentation],
        "preprocessing": {
            "_target_": "Compose",
            "transforms": "$list(@train#deterministic_transforms.transforms) + @train#random_transforms",
        },
    }


def _train_handlers(spec: BundleSpec) -> dict[str, Any]:
    """The training handlers by name, in the order the trainer attaches them."""
    return {
        "lr_schedule": {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": True},
        "validation": {
            "_target_": "ValidationHandler",
            "validator": "@validate#evaluator",
            "epoch_level": True,
            "interval": "@val_interval",
        },
        "checkpoint": {
            "_target_": "pipeline.training.ResumableCheckpoint",
            "save_dir": "@train_dir",
            "save_dict": {"model": "@network", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler"},
            "save_interval": 1,
            "resume": "@resume",
        },
        "seeder": {"_target_": "pipeline.training.EpochSeeder", "seed": "@seed"},
        "grad_clip": {"_target_": "pipeline.training.GradientClipHandler", "max_norm": spec.train.max_norm},
        "log": {
            "_target_": "pipeline.training.TrainingLog",
            "path": "$@train_dir + '/training_log.jsonl'",
            "evaluator": "@validate#evaluator",
        },
        "progress": {"_target_": "pipeline.training.ProgressBar", "desc": "train"},
        "stats": {"_target_": "StatsHandler", "tag_name": "train_loss", "output_transform": LOSS_OUTPUT},
        "tensorboard": {
            "_target_": "TensorBoardStatsHandler",
            "log_dir": TENSORBOARD_DIR,
            "tag_name": "train_loss",
            "output_transform": LOSS_OUTPUT,
        },
    }


def train_config(spec: BundleSpec) -> dict[str, Any]:
    """``configs/train.json``: supervised training with resumable checkpoints and sliding-window validation.

    Examples:
        >>> from pipeline.bundles.specs import SPECS
        >>> cfg = train_config(SPECS["unetrpp_sts_ct_segmentation"])
        >>> list(cfg["train"]["handlers_by_name"])[:3], cfg["train"]["trainer"]["train_handlers"]
        (['lr_schedule', 'validation', 'checkpoint'], '$list(@train#handlers_by_name.values())')
    """
    recipe = spec.train
    loss: dict[str, Any] = {
        "_target_": "pipeline.training.DiceCEDeepSupervisionLoss",
        "include_background": False,
        "batch": False,
    }
    if recipe.auxiliary_loss:
        loss["auxiliary"] = "$@network_def.auxiliary_loss"
    return {
        **_header(spec),
        "ckpt_dir": "$@bundle_root + '/models'",
        "train_dir": "$@bundle_root + '/runs'",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": f"$pipeline.training.bundle.dataset_dir('{spec.dataset}')",
        "datalist_file": DATALIST_FILE,
        "train_datalist": f"${_cases('training')}",
        "val_datalist": f"${_cases('validation')}",
        "device": DEVICE,
        "use_amp": "$@device.type == 'cuda'",
        "seed": 0,
        "resume": False,
        "val_interval": recipe.val_interval,
        "num_workers": 0,
        **_model(spec, inference=False),
        "loss": loss,
        "optimizer": {
            "_target_": "pipeline.training.build_optimizer",
            "params": "$@network.parameters()",
            "preset": recipe.optimizer,
            "lr": recipe.lr,
            "weight_decay": recipe.weight_decay,
        },
        "lr_scheduler": {
            "_target_": "pipeline.training.build_poly_scheduler",
            "optimizer": "@optimizer",
            "max_epochs": "@train#trainer#max_epochs",
            "exponent": 0.9,
        },
        "train": {
            **_train_preprocessing(spec),
            "dataset": {
                "_target_": "CacheDataset",
                "data": "@train_datalist",
                "transform": "@train#preprocessing",
                "cache_rate": 1.0,
                "num_workers": "@num_workers",
            },
            "dataloader": _loader("@train#dataset", recipe.batch_size, True),
            "inferer": {"_target_": "SimpleInferer"},
            "handlers_by_name": _train_handlers(spec),
            "trainer": {
                "_target_": "SupervisedTrainer",
                "max_epochs": recipe.max_epochs,
                "device": "@device",
                "train_data_loader": "@train#dataloader",
                "network": "@network",
                "loss_function": "@loss",
                "optimizer": "@optimizer",
                "inferer": "@train#inferer",
                "amp": "@use_amp",
                "train_handlers": "$list(@train#handlers_by_name.values())",
                "decollate": False,
            },
        },
        "validate": {
            "preprocessing": _preprocessing(["image", "label"]),
            "dataset": {
                "_target_": "CacheDataset",
                "data": "@val_datalist",
                "transform": "@validate#preprocessing",
                "cache_rate": 1.0,
                "num_workers": "@num_workers",
            },
            "dataloader": _loader("@validate#dataset", 1, False),
            "inferer": _window(4),
            "postprocessing": _postprocessing(
                {
                    "_target_": "AsDiscreted",
                    "keys": ["pred", "label"],
                    "argmax": [True, False],
                    "to_onehot": "$[@num_classes, @num_classes]",
                },
            ),
            "handlers": [
                {"_target_": "pipeline.training.ProgressBar", "desc": "validate"},
                {"_target_": "StatsHandler", "iteration_log": False},
                {"_target_": "TensorBoardStatsHandler", "log_dir": TENSORBOARD_DIR, "iteration_log": False},
                {
                    "_target_": "CheckpointSaver",
                    "save_dir": "@ckpt_dir",
                    "save_dict": {"model": "@network"},
                    "save_key_metric": True,
                    "key_metric_filename": "model.pt",
                },
            ],
            "key_metric": {
                "val_mean_dice": {"_target_": "MeanDice", "include_background": False, "output_transform": FROM_ENGINE}
            },
            "additional_metrics": {
                "val_hd95_voxels": {
                    "_target_": "HausdorffDistance",
                    "include_background": False,
                    "percentile": 95,
                    "output_transform": FROM_ENGINE,
                }
            },
            "evaluator": {
                "_target_": "SupervisedEvaluator",
                "device": "@device",
                "val_data_loader": "@validate#dataloader",
                "network": "@network",
                "inferer": "@validate#inferer",
                "postprocessing": "@validate#postprocessing",
                "key_val_metric": "@validate#key_metric",
                "additional_metrics": "@validate#additional_metrics",
                "val_handlers": "@validate#handlers",
                "amp": "@use_amp",
            },
        },
        "initialize": ["$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@train#trainer.run()"],
    }


#: ``configs/evaluate.json`` (merged over ``train.json``): the validation cases scored with the trained weights, in
#: each image's own grid (``metrics.csv``...), predictions saved with ``--save_predictions true``
EVALUATE: dict[str, Any] = {
    "validate#postprocessing": _postprocessing(
        {
            "_target_": "Invertd",
            "keys": ["pred", "label"],
            "transform": "@validate#preprocessing",
            "orig_keys": "image",
            "nearest_interp": [False, True],
            "to_tensor": True,
        },
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        _save_predictions(_disabled_="$not @save_predictions"),
        {"_target_": "AsDiscreted", "keys": ["pred", "label"], "to_onehot": "$[@num_classes, @num_classes]"},
    ),
    "save_predictions": False,
    "ckpt_path": "$@ckpt_dir + '/model.pt'",
    "allow_untrained": False,
    "validate#handlers": [
        {"_target_": "pipeline.training.ProgressBar", "desc": "evaluate"},
        _weights_loader(),
        {"_target_": "StatsHandler", "iteration_log": False},
        {
            "_target_": "MetricsSaver",
            "save_dir": "@output_dir",
            "metrics": ["val_mean_dice", "val_hd95_voxels"],
            "metric_details": ["val_mean_dice", "val_hd95_voxels"],
            "batch_transform": "$lambda x: [xx['image'].meta for xx in x]",
            "summary_ops": "*",
        },
    ],
    "initialize": ["$monai.utils.set_determinism(seed=123)"],
    "run": ["$@validate#evaluator.run()"],
}

_RANK0 = "$dist.get_rank() == 0"

#: ``configs/multi_gpu_train.json`` (merged over ``train.json``, under torchrun): DDP, sharded data, and the
#: rank-dependent handler settings addressed by handler name; ranks > 0 log no loss and validate without handlers
MULTI_GPU_TRAIN: dict[str, Any] = {
    "+imports": ["$import torch.distributed as dist", "$import pipeline.training.distributed"],
    "device": "$pipeline.training.distributed.distributed_device()",
    "network": {
        "_target_": "torch.nn.parallel.DistributedDataParallel",
        "module": "$@network_def.to(@device)",
        "device_ids": "$[@device] if @device.type == 'cuda' else None",
    },
    "train#sampler": {
        "_target_": "DistributedSampler",
        "dataset": "@train#dataset",
        "even_divisible": True,
        "shuffle": True,
    },
    "train#dataloader#sampler": "@train#sampler",
    "train#dataloader#shuffle": False,
    "train#handlers_by_name#checkpoint#main_process": _RANK0,
    "train#handlers_by_name#seeder#rank": "$dist.get_rank()",
    "train#handlers_by_name#log#main_process": _RANK0,
    "train#handlers_by_name#stats#_disabled_": "$dist.get_rank() > 0",
    "train#handlers_by_name#tensorboard#_disabled_": "$dist.get_rank() > 0",
    "validate#sampler": {
        "_target_": "DistributedSampler",
        "dataset": "@validate#dataset",
        "even_divisible": False,
        "shuffle": False,
    },
    "validate#dataloader#sampler": "@validate#sampler",
    "validate#evaluator#val_handlers": "$None if dist.get_rank() > 0 else @validate#handlers",
    "initialize": ["$pipeline.training.distributed.init_distributed()", "$monai.utils.set_determinism(seed=@seed)"],
    "run": ["$@train#trainer.run()"],
    "finalize": ["$pipeline.training.distributed.cleanup()"],
}

#: ``configs/logging.conf``, read by ``ConfigWorkflow``
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""

#: lists of scalars up to this many characters stay on one line
_INLINE = 60


def _inline(items: list) -> str | None:
    if any(isinstance(x, (dict, list)) for x in items):
        return None
    text = "[" + ", ".join(json.dumps(x) for x in items) + "]"
    if all(not isinstance(x, str) for x in items):
        return text
    return text if len(text) <= _INLINE and not any(x.startswith("$") for x in items) else None


def format_json(obj: Any, indent: int = 4) -> str:
    """JSON with ``indent`` spaces, short lists of numbers or plain strings on one line, and a final newline.

    ``json.loads(format_json(x)) == x`` for any JSON value ``x``.

    Examples:
        >>> print(format_json({"roi_size": [32, 48, 32], "run": ["$@evaluator.run()"]}), end="")
        {
            "roi_size": [32, 48, 32],
            "run": [
                "$@evaluator.run()"
            ]
        }
    """

    def fmt(value: Any, level: int) -> str:
        pad, end = " " * indent * (level + 1), " " * indent * level
        if isinstance(value, dict) and value:
            items = [f"{pad}{json.dumps(k)}: {fmt(v, level + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{end}}}"
        if isinstance(value, list) and value:
            one_line = _inline(value)
            if one_line is not None:
                return one_line
            return "[\n" + ",\n".join(f"{pad}{fmt(v, level + 1)}" for v in value) + f"\n{end}]"
        return json.dumps(value)

    return fmt(obj, 0) + "\n"


def datalist_json(split: OfficialSplit) -> dict[str, Any]:
    """``configs/datalist.json`` of a bundle with an official split: every case of the split file in ``data/``, with
    the layout's paths relative to ``dataset_dir``, whether or not a given dataset folder holds it.

    Raises:
        ValueError: the split file has no list under one of ``split.keys``.

    Examples:
        >>> from pipeline.bundles.specs import SPECS
        >>> lists = datalist_json(SPECS["unetrpp_synapse_ct_segmentation"].split)
        >>> len(lists["training"]), len(lists["validation"]), lists["validation"][0]
        (18, 12, {'image': 'Training/img/img0001.nii.gz', 'label': 'Training/label/label0001.nii.gz'})
    """
    from pipeline.data.readers import SPLIT_FILES, load_split_file

    data = load_split_file(split.name)
    source = f"data/{SPLIT_FILES.get(split.name, split.name)}"
    lists = {}
    for key, file_key in split.keys.items():
        ids = data["splits"].get(file_key)
        if not isinstance(ids, list):
            raise ValueError(f"{source}: no '{file_key}' list in its 'splits' (needed for the datalist's '{key}')")
        lists[key] = [{"image": split.image.format(id=i), "label": split.label.format(id=i)} for i in ids]
    counts = ", ".join(f"{key} = its '{split.keys[key]}' ({len(items)} cases)" for key, items in lists.items())
    description = (
        f"{data.get('description', data.get('name', split.name))}. Written by python -m pipeline.bundles.build from "
        f"{source}: {counts}; paths are relative to dataset_dir."
    )
    return {"description": description, **lists}


def render_bundle(spec: BundleSpec) -> dict[str, str]:
    """The generated files of a bundle: ``configs/<file name>`` -> text (``datalist.json`` when the spec names an
    official split).

    Examples:
        >>> from pipeline.bundles.specs import SPECS
        >>> sorted(render_bundle(SPECS["unetrpp_btcv_ct_segmentation"]))
        ['datalist.json', 'evaluate.json', 'inference.json', 'logging.conf', 'multi_gpu_train.json', 'train.json']
        >>> "datalist.json" in render_bundle(SPECS["unetrpp_sts_ct_segmentation"])  # its own, written by hand
        False
    """
    files = {
        "inference.json": format_json(inference_config(spec)),
        "train.json": format_json(train_config(spec)),
        "evaluate.json": format_json(EVALUATE),
        "multi_gpu_train.json": format_json(MULTI_GPU_TRAIN),
        "logging.conf": LOGGING_CONF,
    }
    if spec.split is not None:
        files["datalist.json"] = format_json(datalist_json(spec.split))
    return files
