"""A bundle without ``models/model.pt`` refuses to run inference/evaluation unless untrained weights are asked for.

``python -m monai.bundle run`` used to disable the ``CheckpointLoader`` when the weights were missing and wrote label
maps and metrics from a randomly initialised network. Every bundle's loader now calls
:func:`pipeline.training.bundle.require_weights`: one ``error:`` line naming the file and the ``--allow_untrained``
override, exit code 4, nothing written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from pipeline.paths import BUNDLES_DIR
from pipeline.training.bundle import MissingWeightsExit, require_weights

from helpers.bundles import SMOKE, bundle_dir, run_bundle_inference, write_cases

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
EXPR = "$not pipeline.training.bundle.require_weights(@ckpt_path, @allow_untrained)"
#: every bundle folder of the project, also ones added after this test was written
ALL_BUNDLES = sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs" / "inference.json").is_file())


def _loader_index(handlers: list[dict]) -> int:
    found = [i for i, h in enumerate(handlers) if h.get("_target_") == "CheckpointLoader"]
    assert len(found) == 1, handlers
    return found[0]


def _parser(name: str, which: str) -> tuple[ConfigParser, str]:
    """The bundle's inference config, or ``[train.json, evaluate.json]``, and the id of its loader's ``_disabled_``."""
    configs = bundle_dir(name) / "configs"
    parser = ConfigParser()
    if which == "inference":
        parser.read_config(str(configs / "inference.json"))
        prefix = "handlers"
    else:
        parser.read_config([str(configs / "train.json"), str(configs / "evaluate.json")])
        prefix = "validate#handlers"
    return parser, f"{prefix}#{_loader_index(parser[prefix])}#_disabled_"


@pytest.mark.parametrize("which", ["inference", "evaluate"])
@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_every_bundle_config_checks_its_weights(name, which, tmp_path, capsys):
    parser, disabled = _parser(name, which)
    assert parser[disabled] == EXPR and parser["allow_untrained"] is False
    missing = tmp_path / "models" / "model.pt"
    parser["ckpt_path"] = str(missing)
    with pytest.raises(MissingWeightsExit) as info:
        parser.get_parsed_content(disabled)
    assert info.value.code == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {missing}: no trained weights")
    assert "--allow_untrained true" in err[0]

    parser, disabled = _parser(name, which)  # untrained weights asked for: the loader is disabled, with a warning
    parser.update({"ckpt_path": str(missing), "allow_untrained": "true"})
    assert parser.get_parsed_content(disabled) is True
    assert capsys.readouterr().err.startswith(f"warning: {missing}: no trained weights")

    weights = tmp_path / "model.pt"  # weights present: the loader runs, silently
    torch.save({}, weights)
    parser, disabled = _parser(name, which)
    parser["ckpt_path"] = str(weights)
    assert parser.get_parsed_content(disabled) is False
    assert capsys.readouterr().err == ""


def test_flag_values(tmp_path, capsys):
    assert require_weights(tmp_path / "none.pt", True) is False
    assert require_weights(tmp_path / "none.pt", "True") is False
    with pytest.raises(MissingWeightsExit):
        require_weights(tmp_path / "none.pt", "false")
    with pytest.raises(SystemExit) as info:
        require_weights(tmp_path / "none.pt", "maybe")
    assert info.value.code == 2 and "allow_untrained must be true or false" in capsys.readouterr().err


def _copy_without_weights(tmp_path: Path) -> Path:
    """The hippocampus bundle's configs in a folder of their own, without ``models/``: a bundle that ships none."""
    root = tmp_path / "hippo_untrained"
    shutil.copytree(bundle_dir("unetrpp_hippocampus_mri_segmentation") / "configs", root / "configs")
    return root


def _run(root: Path, case: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_bundle_inference(root / "configs" / "inference.json", case, out, *extra, cwd=root.parent)


def test_monai_bundle_run_refuses_without_weights(tmp_path):
    """``python -m monai.bundle run`` on a bundle without weights: one line, exit 4, no output, no traceback; with
    ``--allow_untrained true`` it runs and says so."""
    root = _copy_without_weights(tmp_path)
    spec = SMOKE["unetrpp_hippocampus_mri_segmentation"]
    case = write_cases(tmp_path / "data", spec, n=1)[0]["image"]
    out = tmp_path / "out"
    res = _run(root, case, out)
    assert res.returncode == 4, res.stderr[-2000:]
    weights = root / "models" / "model.pt"
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {weights}: no trained weights (file not found): the bundle would run with a randomly "
        f"initialised network. Train it (medseg train --bundle {root}), pass the weights with "
        "--ckpt_path FILE, or add --allow_untrained true for a smoke test"
    ]
    assert res.stderr.rstrip().splitlines()[-1] == errors[0]
    assert "Traceback" not in res.stderr
    assert not out.exists() or not any(out.iterdir())

    res = _run(root, case, out, "--allow_untrained", "true")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"warning: {weights}: no trained weights; running with a randomly initialised network" in res.stderr
    pred = nib.load(str(out / Path(case).name))
    assert pred.shape == spec.shape and pred.get_data_dtype() == np.uint8
