"""``medseg export`` (pipeline/deploy): every network preset exports to ONNX, OpenVINO and TorchScript and runs like
PyTorch; the hippocampus bundle's export labels a real window as PyTorch does; bad requests give one line.

Presets run at small widths and windows (``helpers.export.SMALL_EXPORTS``) with ``sw_batch_size`` 2, so the batch
paths (e.g. the shifted-window mask applied per sample) are part of each export. Runtimes that do not import skip
their tests with the reason.
"""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from pipeline.deploy import export_model, load_exported
from pipeline.deploy.plain import plain_network
from pipeline.deploy.window import image_windows
from pipeline.errors import ModelError
from pipeline.inference import load_model
from pipeline.networks import create_network, get_preset, list_networks
from pipeline.paths import BUNDLES_DIR
from pipeline.utils.hashing import state_dict_sha256

from helpers.bad_inputs import assert_clean_error, cli
from helpers.export import SMALL_EXPORTS, small_export

HIPPO = BUNDLES_DIR / "unetrpp_hippocampus_mri_segmentation"
JSON_FIELDS = set(
    "format files model bundle preset checkpoint weights_sha256 state_dict_sha256 untrained input output roi_size "
    "sw_batch_size precision opset runtime onnx_version torch_version check cache_key cache_digest created".split()
)


def _need(fmt: str) -> None:
    for module in {"onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino"), "torchscript": ()}[fmt]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            pytest.skip(
                f"--format {fmt} needs {module!r}, which does not import here ({exc}); pip install -r requirements.txt"
            )


def test_every_preset_has_a_small_export_config():
    # the package's presets (other test modules register test-only presets in the same process)
    project = [n for n in list_networks() if get_preset(n).factory.__module__.startswith("pipeline.")]
    assert sorted(SMALL_EXPORTS) == project


SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".pt"}


@pytest.mark.parametrize("fmt", sorted(SUFFIX))
@pytest.mark.parametrize("name", sorted(SMALL_EXPORTS))
def test_preset_exports_and_runs_like_pytorch(name, fmt, tmp_path):
    """The export passes its own check, holds the seeded weights it names, and (ONNX, TorchScript: OpenVINO's compile
    costs a second per preset) gives PyTorch's logits on an input that is not the check's."""
    _need(fmt)
    overrides, roi = small_export(name)
    result = export_model(
        name,
        fmt,
        tmp_path / f"net{SUFFIX[fmt]}",
        roi_size=roi,
        sw_batch_size=2,
        overrides=overrides,
        allow_untrained=True,
        seed=3,
    )
    meta = json.loads(result.metadata_path.read_text())
    assert meta["check"]["passed"] and meta["check"]["max_abs_error"] <= 1e-3 * meta["check"]["max_abs_logit"]
    assert meta["untrained"] and meta["seed"] == 3 and meta["check"]["input"]["kind"] == "random"
    if fmt == "openvino":  # the compile settings that passed, for the runtime to reuse
        assert meta["check"]["runtime_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    torch.manual_seed(3)
    kwargs = dict(overrides, input_order="xyz") if get_preset(name).axes != "xyz" else dict(overrides)
    net = plain_network(create_network(name, **kwargs))
    assert meta["state_dict_sha256"] == state_dict_sha256(net.state_dict())
    assert meta["input"]["shape"] == [2, net.in_channels, *roi] and meta["output"]["shape"][:2] == [2, net.out_channels]
    if fmt != "openvino":
        x = torch.randn(2, net.in_channels, *roi, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            reference = net(x)
        err = float((load_exported(result.path, fmt)(x) - reference).abs().max())
        assert err <= 1e-3 * float(reference.abs().max()), err


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_runtimes_are_installed(fmt):
    """CI installs requirements.txt, so the runtimes are there; elsewhere this says which one is missing."""
    _need(fmt)


def test_hippocampus_bundle_export_labels_a_real_window_like_pytorch(shared_data, tmp_path):
    _need("onnx")
    out = tmp_path / "hippo.onnx"
    result = export_model(HIPPO, "onnx", out)
    meta = json.loads((tmp_path / "hippo.onnx.json").read_text())
    assert JSON_FIELDS <= set(meta)
    assert meta["weights_sha256"] and meta["untrained"] is False and meta["bundle"].endswith(HIPPO.name)
    assert meta["input"]["shape"] == [4, 1, 32, 48, 32] and meta["output"]["shape"] == [4, 3, 32, 48, 32]
    assert meta["opset"] == 17 and meta["precision"] == "fp32" and meta["runtime"]["name"] == "onnxruntime"
    assert meta["check"]["input"]["kind"] == "image" and meta["check"]["input"]["case"] == "hippocampus_001"
    assert meta["cache_key"]["state_dict_sha256"] == meta["state_dict_sha256"] and len(meta["cache_digest"]) == 64
    # another real case, through the bundle's preprocessing; PyTorch as `medseg infer` runs it (CPU kernels)
    model = load_model(HIPPO)
    image = model.preprocessing({"image": str(shared_data / "Task04_Hippocampus/imagesTr/hippocampus_003.nii.gz")})
    windows = image_windows(image["image"], model.roi_size, 4, model.overlap)
    with torch.no_grad():
        torch_labels = model.network(windows).argmax(1)
    onnx_labels = load_exported(result.path, "onnx")(windows).argmax(1)
    assert torch_labels.unique().tolist() == [0, 1, 2]  # a window holding both hippocampus classes
    assert torch.equal(onnx_labels, torch_labels)


def test_refusals_are_one_line_and_keep_existing_files(tmp_path, capsys):
    rc, _, err = cli(capsys, "export", "--model", "no_such_preset", "--format", "onnx", "--out", tmp_path / "a.onnx")
    assert rc == 2 and assert_clean_error(err, "no_such_preset", "neither a bundle directory nor a network preset")
    rc, _, err = cli(capsys, "export", "--model", "unetrpp_sts", "--format", "onnx", "--out", tmp_path / "a.onnx")
    assert rc == 2 and assert_clean_error(err, "unetrpp_sts", "--checkpoint", "--allow-untrained")
    existing = tmp_path / "old.pt"
    existing.write_text("keep me")
    rc, _, err = cli(
        capsys, "export", "--model", "unetrpp_sts", "--allow-untrained", "--format", "torchscript", "--out", existing
    )
    assert rc == 2 and assert_clean_error(err, existing, "exists", "--overwrite")
    assert existing.read_text() == "keep me"
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, _, err = cli(
        capsys,
        "export",
        "--model",
        "unetrpp_sts",
        "--allow-untrained",
        "--format",
        "torchscript",
        "--out",
        blocker / "a.pt",
    )
    assert rc == 2 and assert_clean_error(err, blocker, "cannot create the output folder")
    rc, _, err = cli(
        capsys, "export", "--model", tmp_path / "no_bundle", "--format", "onnx", "--out", tmp_path / "b.onnx"
    )
    assert rc == 2 and assert_clean_error(err, tmp_path / "no_bundle", "no such bundle directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "old.pt"]


def test_failed_check_writes_nothing(tmp_path, monkeypatch):
    """An export above the tolerance is refused with one line (exit 4) and leaves no file behind."""
    _need("onnx")
    import pipeline.deploy.export as export

    strict = export.compare
    monkeypatch.setattr(export, "compare", lambda ref, got, rtol=0.0: strict(ref, got, rtol=0.0))  # rounding fails
    overrides, roi = small_export("swinunet3d")
    out = tmp_path / "out" / "swin.onnx"
    with pytest.raises(ModelError) as info:
        export_model("swinunet3d", "onnx", out, roi_size=roi, overrides=overrides, allow_untrained=True)
    assert info.value.exit_code == 4 and "\n" not in str(info.value)
    assert (
        str(out) in str(info.value)
        and "export check failed" in str(info.value)
        and "nothing written" in str(info.value)
    )
    assert list((tmp_path / "out").iterdir()) == []
