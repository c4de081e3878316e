"""The CUDA paths of ``medseg infer``, checked on a GPU: AMP parity, stitching on the CPU, torchrun with nccl.

Every test here is marked ``cuda`` and skips with a reason where ``torch.cuda.is_available()`` is false; on a CUDA
machine run them with ``pytest -m cuda tests/gpu``. They use the shipped, trained hippocampus bundle on real
validation cases of ``../shared/data/Task04_Hippocampus`` (skipped with a reason when the data or weights are absent).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.evaluation import evaluate_case
from pipeline.paths import BUNDLES_DIR, PROJECT_ROOT

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

HIPPO = BUNDLES_DIR / "unetrpp_hippocampus_mri_segmentation"
CLASSES = {1: "anterior", 2: "posterior"}
#: validation cases of the bundle's datalist (never trained on)
CASES = ("hippocampus_008", "hippocampus_038", "hippocampus_045", "hippocampus_048")
ENV = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def hippo_inputs(shared_data: Path, tmp_path_factory) -> Path:
    """A folder of links to the validation images (the weights must be there too)."""
    if not (HIPPO / "models" / "model.pt").is_file():
        pytest.skip(f"{HIPPO / 'models' / 'model.pt'} is absent: the shipped hippocampus weights are needed")
    folder = tmp_path_factory.mktemp("hippo_in")
    for case in CASES:
        (folder / f"{case}.nii.gz").symlink_to(shared_data / "Task04_Hippocampus" / "imagesTr" / f"{case}.nii.gz")
    return folder


def _infer(inputs: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    """``medseg infer`` with the hippocampus bundle; returns each case's labels."""
    argv = ["infer", "--model", str(HIPPO), "--input", str(inputs), "--output", str(out), "--quiet", *extra]
    assert main(argv) == 0
    return {case: np.asarray(nib.load(out / f"{case}.nii.gz").dataobj) for case in CASES}


def _agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Fraction of all voxels (over the cases) with the same label."""
    return sum(int((a[c] == b[c]).sum()) for c in CASES) / sum(a[c].size for c in CASES)


def _mean_dsc(labels: dict[str, np.ndarray], shared_data: Path) -> float:
    """Mean DSC of both hippocampus classes over the cases, against the reference labels."""
    scores = []
    for case, pred in labels.items():
        ref = nib.load(shared_data / "Task04_Hippocampus" / "labelsTr" / f"{case}.nii.gz")
        spacing = tuple(float(s) for s in ref.header.get_zooms()[:3])
        rows = evaluate_case(pred, np.asarray(ref.dataobj), spacing, CLASSES, protocol="strict")
        scores += [r["dice"] for r in rows]
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def fp32_cuda(hippo_inputs: Path, tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """The fp32 run on CUDA that the other runs are compared with: (output folder, labels)."""
    out = tmp_path_factory.mktemp("fp32_cuda")
    return out, _infer(hippo_inputs, out, "--device", "cuda")


def test_amp_labels_and_dsc_match_fp32(hippo_inputs, fp32_cuda, shared_data, tmp_path):
    """``--amp`` (fp16 autocast) gives the fp32 labels on >= 99.9 % of the voxels and the same DSC within 0.005."""
    fp32_dir, fp32 = fp32_cuda
    amp = _infer(hippo_inputs, tmp_path / "amp", "--device", "cuda", "--amp")
    side = json.loads((tmp_path / "amp" / f"{CASES[0]}.json").read_text())
    assert side["settings"]["amp"] is True and side["settings"]["sw_device"] == "cuda"
    assert json.loads((fp32_dir / f"{CASES[0]}.json").read_text())["settings"]["amp"] is False
    agreement = _agreement(fp32, amp)
    assert agreement >= 0.999, f"AMP labels equal fp32's on {100 * agreement:.3f} % of the voxels"
    dsc_fp32, dsc_amp = _mean_dsc(fp32, shared_data), _mean_dsc(amp, shared_data)
    assert dsc_fp32 > 0.8, dsc_fp32  # the trained model segments (validation mean Dice 0.885 in its metadata)
    assert abs(dsc_amp - dsc_fp32) <= 0.005, (dsc_fp32, dsc_amp)


def test_stitch_device_cpu_equals_cuda_stitching(hippo_inputs, fp32_cuda, tmp_path):
    """``--device cuda --stitch-device cpu`` gives the labels of ``--device cuda`` (>= 99.99 % of the voxels)."""
    _, on_gpu = fp32_cuda
    on_cpu = _infer(hippo_inputs, tmp_path / "stitch_cpu", "--device", "cuda", "--stitch-device", "cpu")
    side = json.loads((tmp_path / "stitch_cpu" / f"{CASES[0]}.json").read_text())
    assert side["settings"]["device"] == "cpu" and side["settings"]["sw_device"] == "cuda"
    agreement = _agreement(on_gpu, on_cpu)
    assert agreement >= 0.9999, f"CPU stitching equals CUDA stitching on {100 * agreement:.4f} % of the voxels"


def test_stitched_volume_lives_on_the_cpu(hippo_inputs):
    """With ``device="cpu"`` the engine's blended volume is a CPU tensor and never takes CUDA memory: the peak CUDA
    memory of the same run is lower by at least the size of that volume, and the labels are the same."""
    from pipeline.inference import InferenceSettings, load_model
    from pipeline.inference.engine import channel_argmax
    from pipeline.inference.runner import make_engine

    model = load_model(HIPPO, device="cuda")
    img = model.preprocessing({"image": str(hippo_inputs / f"{CASES[0]}.nii.gz")})["image"]
    x = img.as_tensor()[None].float().repeat(1, 1, 4, 3, 4)  # a real image tiled to a larger volume (on the CPU)
    results = {}
    for stitch in ("cuda", "cpu"):
        engine = make_engine(model, InferenceSettings(device=stitch, sw_device="cuda", quiet=True))
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            logits = engine(x, model.network)
        torch.cuda.synchronize()
        results[stitch] = (
            logits.device.type,
            torch.cuda.max_memory_allocated() - base,
            channel_argmax(logits.cpu(), 1),
        )
        del logits, engine
        torch.cuda.empty_cache()
    assert results["cuda"][0] == "cuda" and results["cpu"][0] == "cpu"
    volume_bytes = 4 * (model.out_channels or 3) * x[0, 0].numel()
    saved = results["cuda"][1] - results["cpu"][1]
    assert saved >= 0.9 * volume_bytes, (results["cuda"][1], results["cpu"][1], volume_bytes)
    equal = float((results["cuda"][2] == results["cpu"][2]).double().mean())
    assert equal >= 0.9999, equal


def _torchrun(nproc: int, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT)


NCCL_PROBE = """
import json
import torch
import torch.distributed as dist
from pipeline.training.distributed import cleanup, init_distributed

device = init_distributed()
total = torch.tensor([dist.get_rank() + 1.0], device=device)
dist.all_reduce(total)
print(json.dumps({"rank": dist.get_rank(), "world": dist.get_world_size(), "backend": dist.get_backend(),
                  "device": str(device), "current": torch.cuda.current_device(), "sum": total.item()}), flush=True)
cleanup()
"""


def test_torchrun_initialises_nccl_on_every_gpu(tmp_path):
    """``init_distributed`` under torchrun picks nccl on CUDA, gives rank r the GPU r, and an all_reduce works
    (2 processes on 2+ GPUs, else 1 process)."""
    nproc = min(2, torch.cuda.device_count())
    probe = tmp_path / "nccl_probe.py"
    probe.write_text(NCCL_PROBE)
    proc = _torchrun(nproc, str(probe), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in records) == list(range(nproc))
    for r in records:
        assert r["backend"] == "nccl" and r["world"] == nproc
        assert r["device"] == f"cuda:{r['rank']}" and r["current"] == r["rank"]
        assert r["sum"] == nproc * (nproc + 1) / 2


def test_torchrun_infer_two_gpus_equals_one_process(hippo_inputs, fp32_cuda, tmp_path):
    """``torchrun --nproc_per_node 2 -m pipeline infer`` on 2 GPUs (nccl) gives the one-process labels; both ranks
    write cases, and the final count exchange (a CUDA tensor under nccl) completes with exit 0."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA GPUs for 2 nccl processes, this machine has {torch.cuda.device_count()}")
    _, single = fp32_cuda
    out = tmp_path / "ddp"
    args = ["-m", "pipeline", "infer", "--model", str(HIPPO), "--input", str(hippo_inputs), "--output", str(out)]
    proc = _torchrun(2, *args, "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 written, 0 skipped (exist), 0 failed" in proc.stderr
    multi = {case: np.asarray(nib.load(out / f"{case}.nii.gz").dataobj) for case in CASES}
    assert _agreement(single, multi) >= 0.9999
    sidecars = [json.loads((out / f"{case}.json").read_text()) for case in CASES]
    assert {s["rank"] for s in sidecars} == {0, 1} and {s["world_size"] for s in sidecars} == {2}
    assert {s["settings"]["sw_device"] for s in sidecars} == {"cuda:0", "cuda:1"}
