"""``medseg infer`` end to end: every real image (NIfTI + DICOM) keeps shape and affine, batch behaviour, torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.paths import PROJECT_ROOT

from helpers.commands import infer_argv
from helpers.infer import make_tiny_bundle

FAST = ["--quiet", "--overlap", "0.25", "--sw-batch-size", "4"]


@pytest.fixture(scope="module")
def ct_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny_ct", preset="ct_abdomen", roi=(64, 64, 64))


@pytest.fixture(scope="module")
def mri_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(
        tmp_path_factory.mktemp("bundle") / "tiny_mri", preset="mri_hippocampus", roi=(32, 32, 32), modality="MRI"
    )


def _link_inputs(folder: Path, files) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / Path(f).name).symlink_to(f)
    return folder


def _check_same_grid(src_shape, src_affine, out_file: Path) -> np.ndarray:
    out = nib.load(str(out_file))
    assert out.shape == tuple(src_shape), out_file
    assert np.allclose(out.affine, src_affine, atol=1e-4), out_file
    assert np.allclose(out.get_qform(), src_affine, atol=1e-4), out_file
    assert np.allclose(out.get_sform(), src_affine, atol=1e-4), out_file
    assert int(out.header["qform_code"]) > 0 and int(out.header["sform_code"]) > 0
    assert out.get_data_dtype() == np.uint8
    return np.asarray(out.dataobj)


def _ct_images(shared: Path) -> list[Path]:
    return sorted(
        [
            *shared.glob("STS_CT/imagesTr/*.nii.gz"),
            *shared.glob("BTCV_like/imagesTr/*.nii.gz"),
            *shared.glob("Synapse_like/RawData/Training/img/*.nii.gz"),
            *shared.glob("Task06_Lung_sample/imagesTr/*.nii.gz"),
        ]
    )


def test_every_real_ct_nifti_keeps_shape_and_affine(shared_data, ct_bundle, tmp_path):
    images = _ct_images(shared_data)
    assert len(images) == 30
    # Synapse_like repeats BTCV_like's names: run each source folder separately
    folders = sorted({p.parent for p in images})
    for i, folder in enumerate(folders):
        out = tmp_path / f"out{i}"
        assert main(["infer", "--model", str(ct_bundle), "--input", str(folder), "--output", str(out), *FAST]) == 0
        for img in sorted(folder.glob("*.nii.gz")):
            src = nib.load(str(img))
            case = img.name[: -len(".nii.gz")]
            labels = _check_same_grid(src.shape, src.affine, out / f"{case}.nii.gz")
            assert labels.max() <= 2
            assert (out / f"{case}.json").is_file()
    sidecar = __import__("json").loads((tmp_path / "out0" / "img0001.json").read_text())
    assert sidecar["settings"]["resample"] == "probabilities"
    assert {"load_preprocess", "sliding_window", "invert", "save", "total"} <= set(sidecar["timings_s"])
    assert {"torch", "monai", "numpy", "medseg"} <= set(sidecar["versions"])


def test_every_hippocampus_mri_keeps_shape_and_affine(shared_data, mri_bundle, tmp_path):
    folder = shared_data / "Task04_Hippocampus" / "imagesTr"
    out = tmp_path / "out"
    assert (
        main(
            [
                "infer",
                "--model",
                str(mri_bundle),
                "--input",
                str(folder),
                "--output",
                str(out),
                *FAST,
                "--resample",
                "labels",
            ]
        )
        == 0
    )
    images = sorted(folder.glob("*.nii.gz"))
    assert len(images) == 200
    for img in images:
        src = nib.load(str(img))
        _check_same_grid(src.shape, src.affine, out / img.name)


def test_dicom_series_keeps_shape_and_affine(shared_data, ct_bundle, tmp_path):
    from pipeline.data.io import load_volume

    series = shared_data / "BTCV_like" / "dicom" / "ct_series"
    ref = load_volume(series)
    out = tmp_path / "out"
    for extra in ([], ["--streaming"], ["--skip-background", "auto", "--tta", "--overwrite"]):
        assert (
            main(["infer", "--model", str(ct_bundle), "--input", str(series), "--output", str(out), *FAST, *extra]) == 0
        )
        _check_same_grid(ref.shape[1:], np.asarray(ref.affine), out / "ct_series.nii.gz")


def test_modes_agree_on_a_real_ct(shared_data, ct_bundle, tmp_path):
    """Streaming == plain label resampling; skipping only changes air; probabilities-resampling stays close."""
    img = shared_data / "BTCV_like" / "imagesTr" / "img0002.nii.gz"
    hu = np.asarray(nib.load(str(img)).dataobj)
    runs = {
        "labels": ["--resample", "labels"],
        "stream": ["--streaming"],
        "skip": ["--streaming", "--skip-background", "air"],
        "probs": [],
    }
    res = {}
    for name, extra in runs.items():
        out = tmp_path / name
        assert main(["infer", "--model", str(ct_bundle), "--input", str(img), "--output", str(out), *FAST, *extra]) == 0
        res[name] = np.asarray(nib.load(str(out / "img0002.nii.gz")).dataobj)
    assert np.array_equal(res["stream"], res["labels"])
    body = hu > -100  # well inside the body: windows covering it are never skipped
    assert np.array_equal(res["skip"][body], res["labels"][body])
    # an untrained net gives noisy labels, so the two resampling routes only broadly agree
    assert (res["probs"] == res["labels"]).mean() > 0.75


def test_failing_case_does_not_stop_the_batch_and_outputs_resume(shared_data, ct_bundle, tmp_path, capsys):
    good = sorted((shared_data / "Task04_Hippocampus" / "imagesTr").glob("*.nii.gz"))[:2]
    inp = _link_inputs(tmp_path / "in", good)
    (inp / "broken.nii.gz").write_bytes(b"this is not a nifti file")
    out = tmp_path / "out"
    args = ["infer", "--model", str(ct_bundle), "--input", str(inp), "--output", str(out), *FAST]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "broken" in err and "2 written" in err and "1 failed" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{g.name[:-7]}.nii.gz" for g in good] + [f"{g.name[:-7]}.json" for g in good]
    )  # no partial/temp files
    first = out / good[0].name
    mtime = first.stat().st_mtime_ns
    (inp / "broken.nii.gz").unlink()
    assert main(args) == 0  # resumes: existing outputs skipped
    assert "0 written, 2 skipped" in capsys.readouterr().err
    assert first.stat().st_mtime_ns == mtime
    assert main([*args, "--overwrite"]) == 0
    assert first.stat().st_mtime_ns != mtime


def test_interrupted_write_leaves_no_output(shared_data, ct_bundle, tmp_path, monkeypatch):
    img = sorted((shared_data / "Task04_Hippocampus" / "imagesTr").glob("*.nii.gz"))[0]
    real_save = nib.save

    def crash(image, filename):
        real_save(image, filename)  # the temporary file is complete...
        raise OSError("disk full")  # ...but the rename never happens

    monkeypatch.setattr(nib, "save", crash)
    out = tmp_path / "out"
    assert main(["infer", "--model", str(ct_bundle), "--input", str(img), "--output", str(out), *FAST]) == 1
    assert list(out.iterdir()) == []  # neither the label map nor a temporary file is left


def test_bad_model_and_options_are_one_line_errors(tmp_path, capsys, ct_bundle, shared_data):
    img = sorted((shared_data / "Task04_Hippocampus" / "imagesTr").glob("*.nii.gz"))[0]
    assert main(infer_argv("no_such_preset", img, tmp_path, quiet=False)) == 2
    assert "neither a bundle" in capsys.readouterr().err
    bad = tmp_path / "badckpt"
    make_tiny_bundle(bad)
    (bad / "models" / "model.pt").write_bytes(b"garbage")
    assert main(infer_argv(bad, img, tmp_path / "o", quiet=False)) == 4
    assert "model.pt" in capsys.readouterr().err
    assert main(infer_argv(ct_bundle, tmp_path / "missing.nii.gz", tmp_path / "o", quiet=False)) == 3
    assert main(infer_argv(ct_bundle, img, tmp_path / "o", "--overlap", "1.5", quiet=False)) == 2


def test_torchrun_two_processes_equal_single_process(shared_data, ct_bundle, tmp_path):
    images = sorted((shared_data / "Task04_Hippocampus" / "imagesTr").glob("*.nii.gz"))[:4]
    inp = _link_inputs(tmp_path / "in", images)
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert main(["infer", "--model", str(ct_bundle), "--input", str(inp), "--output", str(single), *FAST]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "pipeline",
        "infer",
        "--model",
        str(ct_bundle),
        "--input",
        str(inp),
        "--output",
        str(multi),
        *FAST,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = set()
    for img in images:
        a = nib.load(str(single / img.name))
        b = nib.load(str(multi / img.name))
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        assert np.allclose(a.affine, b.affine)
        ranks.add(__import__("json").loads((multi / img.name.replace(".nii.gz", ".json")).read_text())["rank"])
    assert ranks == {0, 1}  # both ranks did work


def test_failing_rank_still_joins_the_final_exchange(monkeypatch, capsys):
    """A rank that raises must still enter all_reduce (else the other ranks hang), then report its own error."""
    import torch

    from pipeline.errors import ModelError
    from pipeline.inference import cli as infer_cli

    calls = []

    class FakeDist:
        @staticmethod
        def all_reduce(t):
            calls.append(t.tolist())
            t += torch.tensor([3, 0, 1, 0])  # the other rank: 3 written, 1 failed case, no rank error

        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def get_backend():
            return "gloo"

    def boom(args, rank, world):
        raise ModelError("cannot read weights", path="w.pt")

    monkeypatch.setattr(infer_cli, "_distributed", lambda: (1, 2, FakeDist))
    monkeypatch.setattr(infer_cli, "_run_rank", boom)
    args = __import__("argparse").Namespace(output="out")
    with pytest.raises(ModelError, match="cannot read weights"):
        infer_cli.run(args)
    assert calls == [[0, 0, 0, 1]]  # joined, with its failure flag
    # the healthy rank 0 sees the other rank's failure and exits non-zero
    monkeypatch.setattr(infer_cli, "_distributed", lambda: (0, 2, FakeDist))
    monkeypatch.setattr(infer_cli, "_run_rank", lambda args, rank, world: (2, 0, 0))
    FakeDist.all_reduce = staticmethod(lambda t: t.add_(torch.tensor([0, 0, 0, 1])))
    assert infer_cli.run(args) == 1
    assert "1 of 2 ranks stopped with an error" in capsys.readouterr().err


def test_final_exchange_runs_on_the_gpu_under_nccl(monkeypatch):
    """nccl reduces CUDA tensors only: the count exchange must use this rank's GPU there, and the CPU under gloo."""
    import torch

    from pipeline.inference import cli as infer_cli

    class Dist:
        backend = "nccl"

        @classmethod
        def get_backend(cls):
            return cls.backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # torchrun's LOCAL_RANK 1, set by init_distributed
    assert infer_cli._exchange_device(Dist) == torch.device("cuda", 1)
    Dist.backend = "gloo"
    assert infer_cli._exchange_device(Dist) == torch.device("cpu")
