"""The bundles' configs are generated (``python -m pipeline.bundles.build``): the committed files must be what the
generator writes, every network is a registered preset, handlers are addressed by name, and ``bundle_root`` comes
from the ``monai.bundle`` command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import monai.bundle
import pytest
import torch
from monai.bundle import ConfigParser

from pipeline.bundles import SPECS
from pipeline.bundles.build import find_drift, write_bundles
from pipeline.networks import create_network, list_networks
from pipeline.paths import BUNDLES_DIR
from pipeline.training.bundle import bundle_root, command_line_config

from helpers.bundles import BUNDLES, bundle_dir

GENERATED = ("inference.json", "train.json", "evaluate.json", "multi_gpu_train.json", "logging.conf")
MONAI_MAIN = str(Path(monai.bundle.__file__).parent / "__main__.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _copy_configs(dest: Path) -> Path:
    """The project's bundle folders with their configs only (no weights), for the generator to check or rewrite."""
    for name in SPECS:
        shutil.copytree(BUNDLES_DIR / name / "configs", dest / name / "configs")
    return dest


def _build(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.bundles.build", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)


def test_every_bundle_has_a_spec_and_the_committed_configs_are_generated():
    assert sorted(SPECS) == sorted(BUNDLES)
    assert find_drift(BUNDLES_DIR) == []
    # every bundle takes its cases from configs/datalist.json: generated from an official split, or its own
    for name in SPECS:
        assert (bundle_dir(name) / "configs" / "datalist.json").is_file(), name
    assert sorted(n for n, spec in SPECS.items() if spec.split) == sorted(row[0] for row in OFFICIAL_SPLITS)


def test_check_names_an_edited_config_and_a_rebuild_restores_it(tmp_path):
    root = _copy_configs(tmp_path / "bundles")
    ok = _build("--check", "--bundles-dir", str(root))
    assert ok.returncode == 0, ok.stderr

    edited = root / "unetrpp_sts_ct_segmentation" / "configs" / "train.json"
    cfg = json.loads(edited.read_text())
    cfg["train"]["trainer"]["max_epochs"] = 151  # a hand edit the spec does not know about
    edited.write_text(json.dumps(cfg, indent=4) + "\n")
    (root / "unetrpp_lung_ct_segmentation" / "configs" / "logging.conf").unlink()
    stray = root / "my_unspecified_segmentation" / "configs"
    stray.mkdir(parents=True)
    res = _build("--check", "--bundles-dir", str(root))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{root / 'unetrpp_lung_ct_segmentation' / 'configs' / 'logging.conf'}: missing")
    assert lines[1].startswith(f"{edited}: differs from what python -m pipeline.bundles.build writes")
    assert lines[2].startswith(f"{stray.parent}: no spec")
    assert "wrote" not in res.stdout and json.loads(edited.read_text())["train"]["trainer"]["max_epochs"] == 151

    shutil.rmtree(stray.parent)
    rebuilt = _build("--bundles-dir", str(root))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert edited.read_bytes() == (BUNDLES_DIR / "unetrpp_sts_ct_segmentation" / "configs" / "train.json").read_bytes()
    assert find_drift(root) == []


def test_unknown_bundle_name_is_a_usage_error(tmp_path):
    res = _build("--check", "--bundles-dir", str(tmp_path), "no_such_bundle")
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: no bundle spec named no_such_bundle; known: ")


def test_shared_files_are_identical_and_generated_files_are_the_only_ones_written(tmp_path):
    written = write_bundles(tmp_path, ["unetrpp_hippocampus_mri_segmentation", "swinunet3d_btcv_ct_segmentation"])
    by_bundle = {name: sorted(p.name for p in written if p.parent.parent.name == name) for name in SPECS}
    # the hippocampus split is the bundle's own file; the BTCV one is written from data/btcv_split.json
    assert by_bundle["unetrpp_hippocampus_mri_segmentation"] == sorted(GENERATED)
    assert by_bundle["swinunet3d_btcv_ct_segmentation"] == sorted((*GENERATED, "datalist.json"))
    for name in ("evaluate.json", "multi_gpu_train.json", "logging.conf"):
        texts = {(BUNDLES_DIR / b / "configs" / name).read_text() for b in SPECS}
        assert len(texts) == 1, name


#: bundles whose datalist.json is written from an official split: (training, validation) sizes, a shared sample folder
#: in the bundle's layout, and the cases of each list that sample holds
OFFICIAL_SPLITS = [
    ("unetrpp_synapse_ct_segmentation", (18, 12), "Synapse_like/RawData", {"validation": ["img0001", "img0002"]}),
    ("unetrpp_btcv_ct_segmentation", (24, 6), "BTCV_like", {"training": ["img0001", "img0002"]}),
    ("swinunet3d_btcv_ct_segmentation", (24, 6), "BTCV_like", {"training": ["img0001", "img0002"]}),
    ("swinunet3d_lgt_btcv_ct_segmentation", (24, 6), "BTCV_like", {"training": ["img0001", "img0002"]}),
    ("unetrpp_lung_ct_segmentation", (50, 13), "Task06_Lung_sample", {"validation": ["lung_001"]}),
]


@pytest.mark.parametrize("name, sizes, sample, present", OFFICIAL_SPLITS)
def test_official_split_datalist_lists_the_split_in_the_layouts_file_names(name, sizes, sample, present, shared_data):
    """The generated ``configs/datalist.json`` holds every case of the official split file, each once, under the
    bundle's keys; its paths are the layout's: the cases a sample folder of that layout holds are found, with their
    labels, when the list is loaded as the configs load it."""
    from monai.data import load_decathlon_datalist

    from pipeline.data.readers import case_number, load_split_file

    split = SPECS[name].split
    assert split is not None
    datalist_file = str(bundle_dir(name) / "configs" / "datalist.json")
    official = load_split_file(split.name)["splits"]
    folder = shared_data / sample
    listed: dict[str, list[int | None]] = {}
    for key, size in zip(("training", "validation"), sizes):
        items = load_decathlon_datalist(datalist_file, True, key, str(folder))
        assert len(items) == size, key
        listed[key] = [case_number(Path(d["image"]).name.split(".")[0]) for d in items]
        assert listed[key] == [case_number(i) for i in official[split.keys[key]]], key
        held = [d for d in items if Path(d["image"]).is_file()]
        assert [Path(d["image"]).name.split(".")[0] for d in held] == present.get(key, []), key
        assert all(Path(d["label"]).is_file() for d in held), key
    assert not set(listed["training"]) & set(listed["validation"])


@pytest.mark.parametrize("name", BUNDLES)
def test_every_network_is_a_registered_preset(name):
    for config in ("inference.json", "train.json"):
        parser = ConfigParser()
        parser.read_config(str(bundle_dir(name) / "configs" / config))
        net = parser["network_def"]
        assert net["_target_"] == "pipeline.networks.create_network"
        preset = parser.get_parsed_content("network_def#name")
        assert preset in list_networks(), preset


@pytest.mark.parametrize("name", ["unetrpp_hippocampus_mri_segmentation", "unetrpp_sts_ct_segmentation"])
def test_shipped_weights_load_into_the_registered_preset(name):
    """The presets registered for the trained bundles have exactly the state dict of the shipped ``model.pt``."""
    weights = bundle_dir(name) / "models" / "model.pt"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net = create_network(SPECS[name].network)
    assert net.load_state_dict(state, strict=True).missing_keys == []
    assert net.img_size == SPECS[name].roi_size


def test_multi_gpu_config_addresses_handlers_by_name(monkeypatch):
    """train.json + multi_gpu_train.json, merged as ``monai.bundle run`` does: the rank-dependent settings land on the
    named handlers; ranks > 0 leave out the loss loggers."""
    configs = bundle_dir("unetrpp_hippocampus_mri_segmentation") / "configs"
    multi = json.loads((configs / "multi_gpu_train.json").read_text())
    assert not [k for k in multi if "#handlers#" in k], "a handler patched by list position"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "multi_gpu_train.json")])
    handlers = parser["train#handlers_by_name"]
    assert handlers["checkpoint"]["_target_"] == "pipeline.training.ResumableCheckpoint"
    assert handlers["checkpoint"]["main_process"] == handlers["log"]["main_process"] == "$dist.get_rank() == 0"
    assert handlers["seeder"]["rank"] == "$dist.get_rank()"
    assert parser["train#trainer#train_handlers"] == "$list(@train#handlers_by_name.values())"
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    assert parser.get_parsed_content("train#handlers_by_name#seeder").rank == 1
    assert parser.get_parsed_content("train#handlers_by_name#stats#_disabled_") is True
    assert parser.get_parsed_content("train#handlers_by_name#tensorboard#_disabled_") is True
    # a disabled entry is left out of the trainer's list (MONAI drops disabled components from a resolved dict)
    toy = ConfigParser(
        {
            "rank": 1,
            "d": {"a": {"_target_": "builtins.dict"}, "b": {"_target_": "builtins.list", "_disabled_": "$@rank > 0"}},
            "l": "$list(@d.values())",
        }
    )
    assert toy.get_parsed_content("l") == [{}]


def test_bundle_root_reads_the_monai_bundle_command_line(tmp_path, monkeypatch):
    bundle = tmp_path / "copy_of_a_bundle"
    (bundle / "configs").mkdir(parents=True)
    config = bundle / "configs" / "inference.json"
    config.write_text("{}")
    monkeypatch.chdir(tmp_path)
    cases = [
        [MONAI_MAIN, "run", "--config_file", str(config)],
        [MONAI_MAIN, "run", "--config_file=copy_of_a_bundle/configs/inference.json"],  # relative to the cwd
        [MONAI_MAIN, "run", "--config_file", "['copy_of_a_bundle/configs/inference.json', 'other.json']"],
        [MONAI_MAIN, "verify_net_in_out", "--config_file", "copy_of_a_bundle/configs/inference.json,x.json"],
    ]
    for argv in cases:
        monkeypatch.setattr(sys, "argv", argv)
        assert bundle_root("unetrpp_sts_ct_segmentation") == str(bundle.resolve()), argv
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"config_file": str(config)}))
    monkeypatch.setattr(sys, "argv", [MONAI_MAIN, "run", "--args_file", str(args)])
    assert command_line_config() == config
    # not a monai.bundle process, or no such file: the project's bundle of that name, else the working directory
    monkeypatch.setattr(sys, "argv", ["medseg", "--config_file", str(config)])
    assert bundle_root("unetrpp_sts_ct_segmentation") == str(BUNDLES_DIR / "unetrpp_sts_ct_segmentation")
    monkeypatch.setattr(sys, "argv", [MONAI_MAIN, "run", "--config_file", str(tmp_path / "missing.json")])
    assert bundle_root("no_such_bundle") == str(tmp_path)
