"""``--backend`` / ``--precision`` of ``medseg infer`` and ``medseg benchmark``: label agreement with torch on real
data, the export cache (hit, invalidation, stale and corrupt entries), missing runtimes, failed conversions, bf16."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.deploy import backend as backend_mod
from pipeline.deploy import cache as cache_mod
from pipeline.deploy import speed as speed_mod
from pipeline.deploy.backend import ExportedNetwork, apply_backend, plan_backend
from pipeline.errors import EXIT_USAGE, ModelError, UsageError
from pipeline.inference.loading import load_model
from pipeline.paths import BUNDLES_DIR

from helpers.commands import infer_argv
from helpers.infer import make_tiny_bundle

HIPPO = BUNDLES_DIR / "unetrpp_hippocampus_mri_segmentation"
EXPORTED = ("onnxruntime", "openvino")


def _cases(shared_data: Path, n: int) -> list[Path]:
    return sorted((shared_data / "Task04_Hippocampus" / "imagesTr").glob("hippocampus_*.nii.gz"))[:n]


def _inputs(tmp_path: Path, files: list[Path]) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {f.name: np.asarray(nib.load(str(f)).dataobj) for f in sorted(folder.glob("*.nii.gz"))}


def _sidecar_backend(folder: Path) -> list[dict]:
    return [json.loads(f.read_text())["model"]["backend"] for f in sorted(folder.glob("*.json"))]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(root))
    return root


def _fixed_timing(monkeypatch, runtime_s: float, torch_s: float) -> list[tuple]:
    """``auto``'s timing against torch replaced by fixed figures (a real timing depends on the CPU); returns the
    list of the shapes it was asked to time."""
    calls: list[tuple] = []

    def timed(runtime, network, shape):
        calls.append(tuple(shape))
        return {"runtime_s": runtime_s, "torch_s": torch_s}

    monkeypatch.setattr(speed_mod, "time_against_torch", timed)
    return calls


@pytest.fixture
def exports_faster(monkeypatch) -> list[tuple]:
    return _fixed_timing(monkeypatch, runtime_s=0.5, torch_s=1.0)


@pytest.fixture(scope="module")
def mri_bundle(tmp_path_factory) -> Path:
    """A small real bundle (MONAI UNet, MRI preprocessing, 32^3 window, sw_batch_size 2): exports in seconds."""
    return make_tiny_bundle(
        tmp_path_factory.mktemp("bundle") / "tiny_mri", preset="mri_hippocampus", roi=(32, 32, 32), modality="MRI"
    )


# -------------------------------------------------------------------------------------- agreement on real data
@pytest.mark.parametrize("backend", EXPORTED)
def test_backend_labels_match_torch_on_shipped_hippocampus_model(backend, shared_data, tmp_path, cache):
    """The shipped hippocampus model through ``medseg infer``: the exported backend gives the torch labels
    (>= 99.99 % of voxels per case, the issue's bar), and the sidecar says which backend ran."""
    inputs = _inputs(tmp_path, _cases(shared_data, 2))
    assert main(infer_argv(HIPPO, inputs, tmp_path / "torch")) == 0
    assert main(infer_argv(HIPPO, inputs, tmp_path / backend, "--backend", backend)) == 0
    ref, got = _labels(tmp_path / "torch"), _labels(tmp_path / backend)
    assert sorted(ref) == sorted(got) and len(ref) == 2
    for name in ref:
        assert got[name].shape == ref[name].shape
        assert (got[name] == ref[name]).mean() >= 0.9999, name
        assert len(np.unique(ref[name])) == 3, "a trained model finds both hippocampus classes"
    records = _sidecar_backend(tmp_path / backend)
    assert [r["name"] for r in records] == [backend, backend]
    assert all(r["precision"] == "fp32" and r["cache"] == "built" for r in records)
    assert records[0]["export_check"]["relative_error"] <= 1e-3
    assert [r["name"] for r in _sidecar_backend(tmp_path / "torch")] == ["torch", "torch"]


def test_auto_picks_an_exported_backend_and_benchmark_records_it(
    shared_data, tmp_path, cache, mri_bundle, exports_faster
):
    """``auto`` on a CPU with both runtimes installed runs the first of AUTO_ORDER; ``medseg benchmark`` takes the
    same options and writes the backend into its report settings."""
    data = shared_data / "Task04_Hippocampus"
    out = tmp_path / "bench"
    argv = ["benchmark", "--bundle", str(mri_bundle), "--data", str(data), "--split", "training", "--limit", "1"]
    assert main([*argv, "--out", str(out), "--backend", "auto", "--sw-batch-size", "3", "--table", "none"]) == 0
    report = json.loads((out / "report.json").read_text())
    settings = report["inference_settings"]
    assert settings["backend"] == backend_mod.AUTO_ORDER[0] and settings["precision"] == "fp32"
    assert "--backend auto" in report["command"]
    sidecars = list((out / "predictions").glob("*.json"))
    assert len(sidecars) == 1
    record = json.loads(sidecars[0].read_text())["model"]["backend"]
    assert record["requested"] == "auto" and record["name"] == backend_mod.AUTO_ORDER[0]
    assert record["sw_batch_size"] == 3
    assert record["speed"]["runtime_s"] < record["speed"]["torch_s"] and record["speed"]["measured"]
    assert exports_faster == [(3, 1, 32, 32, 32)], "timed once, on one batch of the export's shape"


def test_auto_passes_over_exports_slower_than_torch_and_remembers_the_timing(
    shared_data, tmp_path, cache, mri_bundle, monkeypatch
):
    """An export that runs a window batch slower than torch on this CPU is not "the fastest backend": ``auto`` keeps
    torch and says why; the timing is kept in the cache entry, so the next run does not time again."""
    calls = _fixed_timing(monkeypatch, runtime_s=2.0, torch_s=1.0)
    inputs = _inputs(tmp_path, _cases(shared_data, 1))
    assert main(infer_argv(mri_bundle, inputs, tmp_path / "a", "--backend", "auto")) == 0
    record = _sidecar_backend(tmp_path / "a")[0]
    assert record["name"] == "torch"
    assert [r.split(" ")[0] for r in record["passed_over"]] == list(backend_mod.AUTO_ORDER)
    assert all("slower than torch on this CPU (2.000 s against 1.000 s" in r for r in record["passed_over"])
    assert len(calls) == len(backend_mod.AUTO_ORDER)
    speed_files = sorted(cache.glob(f"*/{speed_mod.SPEED_FILE}"))
    assert len(speed_files) == len(backend_mod.AUTO_ORDER)
    assert main(infer_argv(mri_bundle, inputs, tmp_path / "b", "--backend", "auto")) == 0
    assert len(calls) == len(backend_mod.AUTO_ORDER), "the second run reads speed.json"
    assert _sidecar_backend(tmp_path / "b")[0]["name"] == "torch"
    first, second = _labels(tmp_path / "a"), _labels(tmp_path / "b")
    assert sorted(first) == sorted(second) and all((first[f] == second[f]).all() for f in first)


def test_runtime_speed_times_for_real_and_times_again_over_an_unreadable_record(tmp_path):
    conv = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    slow = torch.nn.Sequential(*[torch.nn.Conv3d(1, 1, 3, padding=1) for _ in range(8)], conv).eval()
    first = speed_mod.runtime_speed(tmp_path, slow, conv, (1, 1, 24, 24, 24), threads=1)
    assert first["measured"] and first["cpu"] == speed_mod.speed_key(1)
    assert first["runtime_s"] > first["torch_s"] > 0, "nine convolutions take longer than one"
    saved = json.loads((tmp_path / speed_mod.SPEED_FILE).read_text())
    assert saved[speed_mod.speed_key(1)] == {k: first[k] for k in ("runtime_s", "torch_s")}
    assert speed_mod.runtime_speed(tmp_path, slow, conv, (1, 1, 24, 24, 24), threads=1)["measured"] is False
    assert speed_mod.runtime_speed(tmp_path, slow, conv, (1, 1, 24, 24, 24), threads=2)["measured"] is True
    (tmp_path / speed_mod.SPEED_FILE).write_text("{not json")
    again = speed_mod.runtime_speed(tmp_path, slow, conv, (1, 1, 24, 24, 24), threads=1)
    assert again["measured"] and speed_mod.speed_key(1) in json.loads((tmp_path / speed_mod.SPEED_FILE).read_text())


# ------------------------------------------------------------------------------------------------------ the cache
def _tiny_model(bundle: Path):
    return load_model(bundle)


def test_cache_hit_then_new_entries_for_new_weights_and_batch(tmp_path, cache, mri_bundle):
    model = _tiny_model(mri_bundle)
    first = apply_backend(model, "onnxruntime", sw_batch_size=2).backend
    again = apply_backend(model, "onnxruntime", sw_batch_size=2).backend
    assert (first["cache"], again["cache"]) == ("built", "hit")
    assert first["cache_entry"] == again["cache_entry"]
    other_batch = apply_backend(model, "onnxruntime", sw_batch_size=3).backend
    assert other_batch["cache"] == "built" and other_batch["cache_entry"] != first["cache_entry"]
    with torch.no_grad():  # other weights: another key, never the old export
        for p in model.network.parameters():
            p.add_(0.01)
    new_weights = apply_backend(model, "onnxruntime", sw_batch_size=2).backend
    assert new_weights["cache"] == "built" and new_weights["cache_entry"] != first["cache_entry"]
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 3


def test_stale_entry_with_another_runtime_version_is_rebuilt(tmp_path, cache, mri_bundle):
    model = _tiny_model(mri_bundle)
    entry = Path(apply_backend(model, "onnxruntime").backend["cache_entry"])
    meta_file = entry / "model.onnx.json"
    meta = json.loads(meta_file.read_text())
    meta["cache_key"]["runtime_version"] = "0.0.1"  # written by another ONNX Runtime
    meta_file.write_text(json.dumps(meta))
    record = apply_backend(model, "onnxruntime").backend
    assert record["cache"] == "rebuilt" and "key differs" in record["cache_reason"]
    assert json.loads(meta_file.read_text())["cache_key"]["runtime_version"] != "0.0.1"


@pytest.mark.parametrize("backend,victim", [("onnxruntime", "model.onnx"), ("openvino", "model.bin")])
def test_corrupt_entry_is_rebuilt_not_trusted(backend, victim, tmp_path, cache, mri_bundle, shared_data):
    """Flipped bytes in the weights of a cached export: the SHA-256 check catches them, the entry is rebuilt and
    the labels equal those of a fresh export."""
    inputs = _inputs(tmp_path, _cases(shared_data, 1))
    assert main(infer_argv(mri_bundle, inputs, tmp_path / "a", "--backend", backend)) == 0
    entry = Path(_sidecar_backend(tmp_path / "a")[0]["cache_entry"])
    f = entry / victim
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)
    f.write_bytes(bytes(data))
    assert main(infer_argv(mri_bundle, inputs, tmp_path / "b", "--backend", backend)) == 0
    record = _sidecar_backend(tmp_path / "b")[0]
    assert record["cache"] == "rebuilt" and "SHA-256" in record["cache_reason"]
    a, b = _labels(tmp_path / "a"), _labels(tmp_path / "b")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_entry_the_runtime_cannot_load_is_rebuilt(tmp_path, cache, mri_bundle, monkeypatch):
    """An entry whose hashes match but which the runtime rejects (e.g. written by a broken exporter) is rebuilt."""
    model = _tiny_model(mri_bundle)
    entry = Path(apply_backend(model, "onnxruntime").backend["cache_entry"])
    (entry / "model.onnx").write_bytes(b"not an onnx graph")
    meta_file = entry / "model.onnx.json"
    meta = json.loads(meta_file.read_text())
    from pipeline.utils.hashing import file_sha256

    meta["files_sha256"]["model.onnx"] = file_sha256(entry / "model.onnx")
    meta_file.write_text(json.dumps(meta))
    record = apply_backend(model, "onnxruntime").backend
    assert record["cache"] == "rebuilt" and "could not load it" in record["cache_reason"]


# ------------------------------------------------------------------------------ missing runtime, failed export
def test_missing_runtime_is_one_line_and_auto_falls_back(
    tmp_path, cache, mri_bundle, shared_data, capsys, monkeypatch, exports_faster
):
    monkeypatch.setitem(sys.modules, "openvino", None)  # "import openvino" raises ImportError, find_spec is None
    inputs = _inputs(tmp_path, _cases(shared_data, 1))
    assert main(infer_argv(mri_bundle, inputs, tmp_path / "ov", "--backend", "openvino")) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --backend openvino needs the Python package 'openvino'"), err
    assert not (tmp_path / "ov").exists() or not list((tmp_path / "ov").glob("*.nii.gz"))
    assert main(infer_argv(mri_bundle, inputs, tmp_path / "auto", "--backend", "auto")) == 0
    record = _sidecar_backend(tmp_path / "auto")[0]
    assert record["name"] == "onnxruntime"
    assert any(r.startswith("openvino") and "not installed" in r for r in record["passed_over"])


def test_failed_conversion_errors_when_explicit_and_falls_back_to_torch_under_auto(
    tmp_path, cache, mri_bundle, shared_data, capsys, monkeypatch
):
    def broken(*args, **kwargs):
        raise ModelError("onnx export of UNet failed (RuntimeError: unsupported operator)")

    monkeypatch.setattr(cache_mod, "export_loaded", broken)
    inputs = _inputs(tmp_path, _cases(shared_data, 1))
    assert main(infer_argv(mri_bundle, inputs, tmp_path / "ort", "--backend", "onnxruntime")) != 0
    assert "unsupported operator" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(infer_argv(mri_bundle, inputs, tmp_path / "auto", "--backend", "auto")) == 0
    record = _sidecar_backend(tmp_path / "auto")[0]
    assert record["name"] == "torch"
    assert [r.split(" ")[0] for r in record["passed_over"]] == list(backend_mod.AUTO_ORDER)
    assert "backend: torch (fp32)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- bf16 and devices
def test_bf16_is_refused_without_native_bf16(tmp_path, cache, mri_bundle, shared_data, capsys, monkeypatch):
    monkeypatch.setattr(backend_mod, "native_bf16", lambda: False)
    inputs = _inputs(tmp_path, _cases(shared_data, 1))
    argv = infer_argv(mri_bundle, inputs, tmp_path / "o", "--backend", "openvino", "--precision", "bf16")
    assert main(argv) == EXIT_USAGE
    assert "no native bf16" in capsys.readouterr().err
    # auto precision on such a CPU is fp32, recorded as such
    assert main(infer_argv(mri_bundle, inputs, tmp_path / "a", "--precision", "auto")) == 0
    assert _sidecar_backend(tmp_path / "a")[0]["precision"] == "fp32"


def test_plan_on_a_native_bf16_cpu_and_the_fp32_only_runtime():
    plan = plan_backend("auto", "bf16", "cpu", native=True, available=("openvino", "onnxruntime"))
    assert plan == [("openvino", "bf16"), ("torch", "bf16")]  # ONNX Runtime's CPU provider runs fp32 only
    with pytest.raises(UsageError, match="fp32 only"):
        plan_backend("onnxruntime", "bf16", "cpu", native=True, available=("onnxruntime",))
    assert plan_backend("torch", "auto", "cpu", native=False, available=()) == [("torch", "fp32")]
    assert plan_backend("auto", "auto", "cuda", native=True, available=EXPORTED) == [("torch", "fp32")]
    with pytest.raises(UsageError, match="--amp"):
        plan_backend("torch", "bf16", "cuda:0", native=True, available=())


@pytest.mark.skipif(not backend_mod.native_bf16(), reason="this CPU has no native bf16 (amx_bf16/avx512_bf16)")
@pytest.mark.parametrize("backend", ["openvino", "torch"])
def test_bf16_labels_agree_with_fp32_on_a_native_bf16_cpu(backend, shared_data, tmp_path, cache):
    inputs = _inputs(tmp_path, _cases(shared_data, 2))
    assert main(infer_argv(HIPPO, inputs, tmp_path / "fp32")) == 0
    assert main(infer_argv(HIPPO, inputs, tmp_path / "bf16", "--backend", backend, "--precision", "bf16")) == 0
    ref, got = _labels(tmp_path / "fp32"), _labels(tmp_path / "bf16")
    for name in ref:
        assert (got[name] == ref[name]).mean() >= 0.999, name
    assert all(r["precision"] == "bf16" for r in _sidecar_backend(tmp_path / "bf16"))


# ------------------------------------------------------------------------------------------ the fixed-batch wrapper
def test_exported_network_pads_the_last_batch_and_keeps_window_order():
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    calls: list[int] = []

    def fixed(x: torch.Tensor) -> torch.Tensor:
        calls.append(int(x.shape[0]))
        assert x.shape[0] == 3, "the export takes exactly its batch"
        with torch.no_grad():
            return net(x)

    wrapped = ExportedNetwork(fixed, batch=3, parameters=0, in_channels=1)
    x = torch.randn(5, 1, 6, 6, 6)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), net(x), atol=1e-6)
    assert calls == [3, 3]
