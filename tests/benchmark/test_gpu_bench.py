"""``benchmarks/gpu.py`` on the CPU: without CUDA it says so, exits 0 and writes nothing; ``--device cpu --quick``
runs the code the GPU run uses (minus synchronize) and writes its section; the write policy and the label check."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """The section files (size, mtime) of a results folder (its subfolders belong to long-running jobs)."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.glob("*") if p.is_file()}


def test_without_cuda_it_says_so_exits_0_and_writes_nothing():
    results = PROJECT_ROOT / "benchmarks" / "results"
    before = _snapshot(results)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "no CUDA device: nothing measured"
    assert _snapshot(results) == before and not (results / "gpu.md").exists()


def test_not_in_the_cpu_speed_suite():
    """run_all.py runs the scripts defining ``main`` on its own machine: the GPU script (``run_cli``) is left out, so
    a CPU suite run neither runs it nor reports it as failed for not writing a section."""
    from pipeline.benchmark.suite import BENCH_DIR, discover_scripts

    stems = [p.stem for p in discover_scripts(BENCH_DIR)]
    assert "gpu" not in stems and "infer_volume" in stems


def test_without_cuda_an_explicit_out_is_not_written(gpu_bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_bench.run_cli(["--out", str(tmp_path / "gpu.md"), "--device", "cuda:1"]) == 0
    assert capsys.readouterr().out.strip() == gpu_bench.NO_CUDA
    assert not (tmp_path / "gpu.md").exists()


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(f"| {first_cell} |")
    ]


def test_quick_cpu_run_measures_and_writes_its_section(gpu_bench, tmp_path, monkeypatch):
    """The same functions as on the GPU: reference vs ours agree, AMP is close, MONAI and our engine give the same
    labels; the section goes where --out says, never to benchmarks/results."""
    monkeypatch.setattr(gpu_bench, "RESULTS", tmp_path / "results" / "gpu.md")
    out = tmp_path / "section.md"
    assert gpu_bench.run_cli(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("## GPU: UNETR++ forward, sliding window, fp32 vs AMP")
    assert "- command: `python benchmarks/gpu.py --device cpu --quick --out" in text
    assert "device cpu" in text and "QUICK smoke run" in text
    assert not (tmp_path / "results").exists()
    forward, amp = _table_rows(text, "tiny UNETR++ (quick)")
    assert float(forward[4]) < 1e-4  # the official op sequence and ours compute the same function
    assert float(amp[4]) < 0.05 and float(amp[5].rstrip("%")) >= 99.0  # fp16 autocast stays close to fp32
    for method in ("monai", "engine", "stream"):  # MONAI's labels, reproduced exactly by both engine paths
        [row] = _table_rows(text, method)
        assert row[3] == "100.0000%" and row[4] == "–", row
    assert not _table_rows(text, "engine, AMP")  # the engine's autocast is CUDA-only: no such row on the CPU


def test_monai_and_engine_labels_are_equal_on_a_volume(gpu_bench):
    """The sliding-window paths of the benchmark, called directly: identical labels on a multi-window volume."""
    device = torch.device("cpu")
    net, _ = gpu_bench.build_networks(quick=True, device=device)
    fast = gpu_bench.ours(net, device)
    methods = gpu_bench.sliding_window_methods(fast, tuple(net.img_size), amp=False)
    x = gpu_bench.synthetic_volume((40, 48, 40), device, seed=3)
    with torch.inference_mode():
        labels = {name: fn(x) for name, fn in methods.items()}
    assert list(labels) == ["monai", "engine", "stream"]
    assert labels["monai"].shape == (40, 48, 40) and len(torch.unique(labels["monai"])) > 1
    for name in ("engine", "stream"):
        assert torch.equal(labels[name].long(), labels["monai"].long()), name
    assert gpu_bench.synchronizer(device) is None and gpu_bench.synchronizer(torch.device("cuda", 0)) is not None


def _canned(agreement: float) -> dict:
    row = {"seconds": 1.0, "speedup": 1.0, "agreement": 1.0, "cuda_peak_mib": 10.0}
    return {
        "network": "unetrpp_synapse",
        "classes": 14,
        "patch": (64, 128, 128),
        "roi": (128, 128, 64),
        "volume": (256, 256, 128),
        "forward": {"reference": 0.05, "ours": 0.04, "max_abs_diff": 1e-6},
        "amp": {"fp32": 0.04, "amp": 0.02, "max_abs_diff": 1e-2, "argmax_agreement": 0.9999},
        "window": [
            {**row, "method": "monai"},
            {**row, "method": "engine", "agreement": agreement},
            {**row, "method": "stream"},
            {**row, "method": "engine, AMP", "agreement": 0.99},
        ],
    }


def test_write_policy_and_label_check(gpu_bench, tmp_path, monkeypatch, capsys):
    """A full CUDA run writes benchmarks/results/gpu.md; quick or CPU runs write only to --out; a disagreement of the
    fp32 engine with MONAI exits 1 (AMP's own agreement is reported, not checked)."""
    results = tmp_path / "results" / "gpu.md"
    monkeypatch.setattr(gpu_bench, "RESULTS", results)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    agreement = {"value": 1.0}
    monkeypatch.setattr(gpu_bench, "measure", lambda device, quick, repeats, warmup: _canned(agreement["value"]))
    for argv in (["--quick"], ["--device", "cpu"]):
        assert gpu_bench.run_cli(argv) == 0
        assert not results.exists(), argv
    assert gpu_bench.run_cli([]) == 0
    text = results.read_text()
    assert "GPU Test GPU" in text and "cuDNN TF32" in text and "| engine, AMP |" in text
    assert "`torch.cuda.synchronize()` around every timed call" in text
    agreement["value"] = 0.999
    assert gpu_bench.run_cli(["--out", str(tmp_path / "bad.md")]) == 1
    assert "error: our engine's labels differ from MONAI's: engine (99.9000%)" in capsys.readouterr().err
