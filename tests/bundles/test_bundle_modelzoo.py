"""The MONAI model zoo's CI, offline: ``ci/verify_bundle.py --mode full`` for every bundle in ``bundles/``.

Project-MONAI/model-zoo (commit dfae206), ``verify(bundle, models_path, mode="full")`` runs, in this order:

1. ``verify_bundle_directory``: download ``large_files.{yml,json,yaml}`` if any; ``configs/metadata.json`` and
   ``LICENSE`` must exist, and so must the "preferred" ``models/model.pt`` and ``configs/inference.{json,yaml,yml}``.
2. ``verify_version_changes``: ``version`` and ``changelog`` in the metadata, the version one of the changelog keys,
   and ``<bundle>_v<version>`` not yet in the zoo's ``models/model_info.json`` (not checked here: it needs the zoo's
   file, which lists none of these bundles).
3. ``verify_metadata_format``: ``monai.bundle.verify_metadata(meta_file, filepath=<bundle>/eval/schema.json)``; the
   schema is put there by ``ci/prepare_schema.py`` (here: the copy in ``../shared/schema``).
4. ``verify_bundle_properties``: for every app in the metadata's ``supported_apps`` that has a ``bundle_properties.py``
   in the zoo, ``create_workflow(workflow_type="inference", ...)`` with ``{**MetaProperties, **InferProperties}``
   and ``check_properties()``, which instantiates every required property (dataset, evaluator, network...). Our
   ``supported_apps`` is ``{}``, so the zoo skips this step; here it runs with MONAI's own ``MetaProperties`` and
   ``InferProperties`` and without data (the zoo's CI has none).
5. ``verify_data_shape``: ``monai.bundle.verify_net_in_out(net_id="network_def", meta_file, config_file,
   bundle_root)`` with its other defaults.
6. ``verify_torchscript``: ``monai.bundle.ckpt_export(net_id, filepath=models/verify_model.ts,
   ckpt_file=models/model.pt, meta_file, config_file, bundle_root)`` with its defaults (``use_trace=False``: the
   network goes through ``torch.jit.script``), then ``torch.jit.load`` of a shipped ``models/model.ts``.

Steps 3-6 run on a copy of the bundle in ``tmp_path`` (the zoo writes ``eval/`` and ``models/verify_model.ts`` into
the bundle) with ``models/model.pt``: the shipped weights, or random ones saved as the zoo's
``_produce_fake_weights`` does. Beyond the zoo, the test loads the exported TorchScript file and checks that it gives
the eager network's output and carries the metadata and config.

Sizes: the bundles in :data:`FULL_SIZE` run as configured (real network, real patch). The others are checked with
their config plus the width/patch overrides of ``SMOKE`` in ``helpers.bundles`` (Swin depths 2, so shifted windows are
compiled too) and a metadata copy with that patch, because their real forward takes 3-18 s each on one CPU thread
(BTCV/Synapse/Lung UNETR++, BTCV Swin-Unets). The reduced networks have the same module types and options as the real
ones (only widths, depths and the patch differ), so TorchScript compiles the same code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, create_workflow, verify_metadata, verify_net_in_out
from monai.bundle.properties import InferProperties, MetaProperties

from pipeline.paths import BUNDLES_DIR

from helpers.bundles import SMOKE, small_meta

# MONAI warns on every config it parses (configs run code; these are the project's own) and on a schema file checked
# without a hash (as the zoo's CI does)
pytestmark = [
    pytest.mark.filterwarnings("ignore:parsing config_file"),
    pytest.mark.filterwarnings("ignore:No hash value provided"),
]

#: every bundle folder in bundles/ (not a hand-kept list: a new bundle is checked as soon as it exists)
ALL_BUNDLES = sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs" / "metadata.json").is_file())

#: bundles checked exactly as configured: small networks (< 1 s forward) or shipped weights that fit only the real one
FULL_SIZE = (
    "unetrpp_hippocampus_mri_segmentation",
    "unetrpp_sts_ct_segmentation",
    "swinunet3d_hippocampus_mri_segmentation",
)

#: the zoo's lists (ci/verify_bundle.py)
NECESSARY_FILES = ("configs/metadata.json", "LICENSE")
PREFERRED_FILES = ("models/model.pt", "configs/inference.json")
CONFIG_SUFFIXES = ("json", "yaml", "yml")

SCHEMA_NAME = "meta_schema_20240725.json"
#: scripted vs eager outputs: the same kernels, float32 rounding at most
ATOL, RTOL = 1e-5, 1e-4


def _find_bundle_file(folder: Path, stem: str) -> Path | None:
    """The zoo's ``_find_bundle_file``: ``<stem>.json``, ``.yaml`` or ``.yml`` (the last one found wins)."""
    found = None
    for suffix in CONFIG_SUFFIXES:
        if (folder / f"{stem}.{suffix}").is_file():
            found = folder / f"{stem}.{suffix}"
    return found


def zoo_directory_problems(root: Path) -> list[str]:
    """What the zoo's ``verify_bundle_directory`` (mode "full") rejects, as messages; empty when it passes.

    The large-file download is not reproduced: a ``large_files`` file is reported instead (no network in tests).
    """
    problems = []
    large = _find_bundle_file(root, "large_files")
    if large is not None:
        problems.append(f"{large.name}: the zoo downloads these files first (not possible offline)")
    for name in NECESSARY_FILES:
        if not (root / name).is_file():
            problems.append(f"necessary file {name} is not existing")
    for name in PREFERRED_FILES:
        if name == "configs/inference.json":
            if _find_bundle_file(root / "configs", "inference") is None:
                problems.append("inference config file is not existing")
        elif not (root / name).is_file():
            problems.append(f"preferred file {name} is not existing")
    return problems


def _directory_case(name: str):  # a pytest.param
    if (BUNDLES_DIR / name / "models" / "model.pt").is_file():
        return pytest.param(name)
    reason = (
        "no models/model.pt: the zoo's verify_bundle_directory requires it (preferred_files_list) unless the bundle "
        "is on its exclusion list or ships a large_files.yml with a download URL; this bundle ships no trained weights"
    )
    return pytest.param(name, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason))


@pytest.mark.parametrize("name", [_directory_case(n) for n in ALL_BUNDLES])
def test_zoo_bundle_directory(name):
    """Step 1 on the real bundle folder."""
    assert zoo_directory_problems(BUNDLES_DIR / name) == []


def test_zoo_directory_check_reports_missing_files(tmp_path):
    root = tmp_path / "bundle"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "metadata.json").write_text("{}")
    (root / "configs" / "inference.yaml").write_text("{}")  # another suffix is accepted
    assert zoo_directory_problems(root) == [
        "necessary file LICENSE is not existing",
        "preferred file models/model.pt is not existing",
    ]
    (root / "LICENSE").write_text("Apache-2.0")
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(b"")
    assert zoo_directory_problems(root) == []


# ------------------------------------------------------------------------------------------------- the bundle copy
def _overrides(name: str) -> dict:
    """Config overrides of the size-reduced check (none for :data:`FULL_SIZE`)."""
    if name in FULL_SIZE:
        return {}
    if name not in SMOKE:
        pytest.fail(f"{name}: add a SmokeSpec to SMOKE in tests/helpers/bundles.py (or list it in FULL_SIZE)")
    override = SMOKE[name].overrides()
    if "network_def#embed_dim" in override:  # Swin-Unet: two blocks per stage, so shifted windows are compiled too
        override["network_def#depths"] = [2, 2, 2, 2]
    return override


def _bundle_copy(name: str, tmp_path: Path) -> tuple[Path, dict, Path]:
    """A copy of the bundle with ``models/model.pt`` (shipped, or random as the zoo's ``_produce_fake_weights``).

    Returns the copy, the config overrides and the metadata file to check against (a copy with the small patch
    when the check is size-reduced).
    """
    src = BUNDLES_DIR / name
    root = tmp_path / name
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("runs", "models", "eval"))
    (root / "models").mkdir()
    override = _overrides(name)
    meta = root / "configs" / "metadata.json"
    if override:
        meta = small_meta(name, tmp_path / "metadata_small.json", tuple(override["roi_size"]))
    shipped = src / "models" / "model.pt"
    if shipped.is_file() and not override:
        os.symlink(shipped, root / "models" / "model.pt")
    else:
        torch.manual_seed(0)
        net = _parse_network(root, override)
        torch.save(net.state_dict(), root / "models" / "model.pt")
    return root, override, meta


def _parse_network(root: Path, override: dict) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"bundle_root": str(root), **override})
    return parser.get_parsed_content("network_def")


# ---------------------------------------------------------------------------------------------------------- steps 2-3
@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_zoo_version_changelog_and_metadata_schema(name, shared_dir, tmp_path):
    """Steps 2 and 3: the zoo's version/changelog rules, then ``verify_metadata`` against ``eval/schema.json``."""
    schema = shared_dir / "schema" / SCHEMA_NAME
    if not schema.is_file():
        pytest.skip(f"{schema} is absent: the offline metadata check needs MONAI's schema copy in ../shared/schema")
    meta_file = BUNDLES_DIR / name / "configs" / "metadata.json"
    metadata = json.loads(meta_file.read_text())
    assert "version" in metadata and "changelog" in metadata, f"{name}: 'version' or 'changelog' is missing"
    assert metadata["version"] in metadata["changelog"], f"{name}: version {metadata['version']} not in changelog"
    # prepare_schema.py: the schema named by the metadata's URL, copied to <bundle>/eval/schema.json
    assert metadata["schema"].split("/")[-1] == SCHEMA_NAME, metadata["schema"]
    root = tmp_path / name
    shutil.copytree(BUNDLES_DIR / name / "configs", root / "configs")
    (root / "eval").mkdir()
    shutil.copyfile(schema, root / "eval" / "schema.json")
    verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(root / "eval" / "schema.json"))


# ------------------------------------------------------------------------------------------------------------- step 4
def _properties_workflow(root: Path):
    workflow = create_workflow(
        workflow_type="inference",
        bundle_root=str(root),
        config_file=str(root / "configs" / "inference.json"),
        logging_file=False,  # the zoo passes configs/logging.conf, which would reconfigure this process's logging
        meta_file=str(root / "configs" / "metadata.json"),
    )
    workflow.properties = {**MetaProperties, **InferProperties}
    return workflow


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_zoo_inference_properties(name, tmp_path, monkeypatch):
    """Step 4 with MONAI's inference and metadata properties, in the zoo's conditions: weights present, no data.

    ``check_properties`` instantiates ``dataset``, so the ``datalist`` must come from ``configs/datalist.json`` and
    not from reading the (absent) dataset folder; it still names the bundle's validation images."""
    monkeypatch.setenv("MEDSEG_DATA", str(tmp_path / "no_data"))
    root = tmp_path / name
    shutil.copytree(BUNDLES_DIR / name / "configs", root / "configs")
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(b"")  # checked for existence only: the loader is not run
    workflow = _properties_workflow(root)
    assert workflow.check_properties() == []
    validation = json.loads((root / "configs" / "datalist.json").read_text())["validation"]
    data_dir = str(workflow.parser.get_parsed_content("dataset_dir"))
    assert data_dir.startswith(str(tmp_path / "no_data"))
    expected = [os.path.normpath(os.path.join(data_dir, d["image"])) for d in validation]
    assert validation and [d["image"] for d in workflow.dataset.data] == expected


def test_zoo_properties_check_rejects_a_missing_property(tmp_path, monkeypatch):
    """MONAI 1.6's check raises (KeyError) for a required property the config lacks, rather than listing it."""
    monkeypatch.setenv("MEDSEG_DATA", str(tmp_path / "no_data"))
    name = "unetrpp_hippocampus_mri_segmentation"
    root = tmp_path / name
    shutil.copytree(BUNDLES_DIR / name / "configs", root / "configs")
    config = json.loads((root / "configs" / "inference.json").read_text())
    del config["evaluator"]  # required, and referred to by no other property
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(b"")
    workflow = _properties_workflow(root)
    with pytest.raises(KeyError, match="Property 'evaluator'"):
        workflow.check_properties()


# --------------------------------------------------------------------------------------------------------- steps 5-6
@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_zoo_net_in_out_and_torchscript_export(name, tmp_path):
    """Steps 5 and 6 with MONAI's defaults; the exported TorchScript file loads, reproduces the eager network and
    carries the bundle's metadata and inference config."""
    root, override, meta = _bundle_copy(name, tmp_path)
    config = root / "configs" / "inference.json"
    verify_net_in_out(
        net_id="network_def", meta_file=str(meta), config_file=str(config), bundle_root=str(root), **override
    )

    ts = root / "models" / "verify_model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(meta),
        config_file=str(config),
        bundle_root=str(root),
        **override,
    )
    shipped_ts = BUNDLES_DIR / name / "models" / "model.ts"
    if shipped_ts.is_file():
        torch.jit.load(str(shipped_ts))

    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(ts), _extra_files=extra)
    assert isinstance(scripted, torch.jit.ScriptModule)
    metadata = json.loads(meta.read_text())
    assert json.loads(extra["metadata.json"])["version"] == metadata["version"]
    assert json.loads(extra["inference.json"]) == json.loads(config.read_text())

    net = _parse_network(root, override)
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    image = metadata["network_data_format"]["inputs"]["image"]
    x = torch.randn(1, image["num_channels"], *image["spatial_shape"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net.eval()(x)
        got = scripted(x)
    n_classes = len(metadata["network_data_format"]["outputs"]["pred"]["channel_def"])
    assert got.shape == (1, n_classes, *image["spatial_shape"])
    assert torch.allclose(got, expected, atol=ATOL, rtol=RTOL), float((got - expected).abs().max())
