"""Bad input, interruptions and resource limits (issue 9): one clear line, the documented exit code, nothing lost.

Every bad input is fed through the real command line (``pipeline.cli.main`` in-process; a subprocess for the kill
test). Each test asserts that the one ``error:`` line names the file and the problem, that stderr holds no traceback,
the exit code documented in ``pipeline/errors.py`` / docs_troubleshooting.md, and for batch commands that the other
cases' outputs are complete. Inputs are tiny synthetic volumes and a tiny UNet bundle, so the module needs about 20 s of
CPU time on one thread.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.paths import BUNDLES_DIR, PROJECT_ROOT

from helpers.bad_inputs import (
    AFFINE,
    SHAPE,
    assert_clean_error,
    broken_link,
    cli,
    ct_case,
    device_link,
    fifo,
    folder,
    gz_text,
    is_root,
    link_loop,
    make_bundle,
    mha_bytes,
    nifti,
    no_affine,
    raw_bytes,
    raw_nifti,
    truncate,
    write_msd_dataset,
    write_nifti,
)
from helpers.commands import benchmark_argv, evaluate_argv, infer_argv

QUIET = ["--quiet"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="module")
def good_image(tmp_path_factory) -> Path:
    return write_nifti(tmp_path_factory.mktemp("src") / "good.nii.gz", ct_case(0)[0])


@pytest.fixture()
def dataset(tmp_path) -> Path:
    return write_msd_dataset(tmp_path / "ds")


def _assert_complete_prediction(out_dir: Path, case: str) -> None:
    """``case``'s label map and sidecar exist, load fully, and the label map is on the input grid."""
    img = nib.load(str(out_dir / f"{case}.nii.gz"))
    assert img.shape == SHAPE and np.allclose(img.affine, AFFINE)
    assert np.asarray(img.dataobj).max() <= 2
    assert json.loads((out_dir / f"{case}.json").read_text())["case"] == case


# ======================================================================================================== infer: batch
# (input name, writer, regexes the error line must match); each batch = good.nii.gz + the bad one
_NAN = np.full(SHAPE, np.nan, np.float32)
_INF = np.zeros(SHAPE, np.float32)
_INF[::3] = np.inf
BAD_INFER_CASES = {
    "truncated_gz": ("bad.nii.gz", "truncate", r"truncated or corrupt"),
    "random_bytes": ("bad.nii.gz", raw_bytes(b"\x00\x01not an image" * 10), r"not a NIfTI file"),
    "gzipped_text": ("bad.nii.gz", gz_text, r"not a NIfTI file|corrupt"),
    "empty_file": ("bad.nii.gz", raw_bytes(b""), r"empty file \(0 bytes\)"),
    "text_as_nrrd": ("bad.nrrd", raw_bytes(b"this is a report, not an NRRD\n"), r"not a valid image file"),
    "image_2d": ("bad.nii.gz", nifti(np.zeros(SHAPE[:2], np.float32)), r"2D .*expected a 3D volume"),
    "image_4d_two_channels": ("bad.nii.gz", nifti(np.zeros((*SHAPE, 2), np.float32)), r"2 channel\(s\).*expects 1"),
    "nan_voxels": ("bad.nii.gz", nifti(_NAN), r"4320 NaN and 0 Inf"),
    "inf_voxels": ("bad.nii.gz", nifti(_INF), r"0 NaN and \d+ Inf"),
    "folder_not_file": ("bad.nii.gz", folder, r"is a folder, not an image file"),
    "broken_symlink": ("bad.nii.gz", broken_link, r"file not found \(broken symbolic link\)"),
    # issue 16: filesystem oddities are per-case problems, never an aborted batch, a hang or a dropped file
    "symlink_loop": ("bad.nii.gz", link_loop, r"symbolic link loop"),
    "named_pipe": ("bad.nii.gz", fifo, r"not a regular file but a named pipe \(FIFO\)"),
    "device_file": ("bad.nii.gz", device_link, r"not a regular file but a character device"),
    # header oddities
    "truncated_uncompressed_nii": (
        "bad.nii",
        "truncate",
        r"truncated file: the header declares 17280 bytes of voxel "
        r"data from byte 352, the file holds \d+",
    ),
    "complex_voxels": ("bad.nii.gz", nifti(np.ones(SHAPE, np.complex64)), r"complex-valued voxels \(complex64\)"),
    "rgb_voxels": (
        "bad.nii.gz",
        nifti(np.zeros(SHAPE, [("R", "u1"), ("G", "u1"), ("B", "u1")])),
        r"RGB/structured voxels",
    ),
    "zero_size_shape": (
        "bad.nii.gz",
        raw_nifti(np.zeros((20, 0, 12), np.int16)),
        r"header declares no voxels \(shape 20x0x12\)",
    ),
    "huge_declared_shape": (
        "bad.nii.gz",
        raw_nifti(np.zeros(0, np.int16), lambda h: h.set_data_shape((30000,) * 3)),
        r"30000x30000x30000 volume .* needs about [\d.]+ GB but only",
    ),
    "zero_pixdim_no_affine": (
        "bad.nii.gz",
        raw_nifti(ct_case(1)[0], no_affine([0, 0, 0])),
        r"no usable voxel geometry: no orientation in the header \(qform_code = sform_code = 0\)"
        r", and the pixdim voxel size \[0, 0, 0\] is zero/NaN",
        r"set_zooms",
    ),
    "nan_pixdim_no_affine": (
        "bad.nii.gz",
        raw_nifti(ct_case(1)[0], no_affine([np.nan] * 3)),
        r"no usable voxel geometry: .*pixdim voxel size \[nan, nan, nan\]",
    ),
    "header_dim0_out_of_range": (
        "bad.nii.gz",
        raw_nifti(ct_case(1)[0], lambda h: h["dim"].__setitem__(0, 9)),
        r"corrupt NIfTI header: dim\[0\] \(the number of dimensions\) is 9, must be 1 to 7",
    ),
    "header_unknown_datatype": (
        "bad.nii.gz",
        raw_nifti(ct_case(1)[0], lambda h: h.__setitem__("datatype", 255)),
        r"unsupported NIfTI datatype code 255",
    ),
    "header_offset_past_end": (
        "bad.nii.gz",
        raw_nifti(ct_case(1)[0], lambda h: h.__setitem__("vox_offset", 1e9)),
        r"corrupt header: the voxel data offset \(vox_offset 1000000000\) lies beyond the end",
    ),
    "mha_zero_spacing": (
        "bad.mha",
        mha_bytes("ElementSpacing = 0 0 0\n"),
        r"invalid geometry in the header: zero voxel spacing",
    ),
    "mha_singular_direction": (
        "bad.mha",
        mha_bytes("TransformMatrix = 1 0 0 0 1 0 0 0 0\n"),
        r"invalid geometry in the header: the direction matrix is not invertible",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_INFER_CASES))
def test_infer_batch_reports_bad_case_and_finishes_others(kind, bundle, good_image, tmp_path, capsys):
    name, writer, *patterns = BAD_INFER_CASES[kind]
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "good.nii.gz").write_bytes(good_image.read_bytes())
    bad = inp / name
    src = good_image
    if name.endswith(".nii") and writer == "truncate":  # an uncompressed copy to cut short
        src = write_nifti(tmp_path / "plain.nii", nib.load(str(good_image)).get_fdata(dtype=np.float32))
    (truncate(src) if writer == "truncate" else writer)(bad)
    before = sorted(p.name for p in inp.iterdir())
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", out, *QUIET)
    assert rc == 1, err  # a batch finished with a failed case
    assert_clean_error(err, bad, *patterns)
    assert "1 written, 0 skipped (exist), 1 failed" in err
    _assert_complete_prediction(out, "good")
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.nii.gz"]  # nothing for the bad case
    assert sorted(p.name for p in inp.iterdir()) == before  # inputs untouched


@pytest.mark.skipif(
    is_root(),
    reason="running as root: chmod 000 does not block reads (covered by the folder-"
    "instead-of-file and broken-symlink cases)",
)
def test_infer_unreadable_file_permission(bundle, good_image, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "good.nii.gz").write_bytes(good_image.read_bytes())
    bad = inp / "locked.nii.gz"
    bad.write_bytes(good_image.read_bytes())
    bad.chmod(0)
    try:
        rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", out, *QUIET)
    finally:
        bad.chmod(0o644)
    assert rc == 1
    assert_clean_error(err, bad, r"denied|unreadable")
    _assert_complete_prediction(out, "good")


def test_infer_volume_too_large_for_memory_suggests_streaming(bundle, good_image, tmp_path, capsys, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp).mkdir()
    (inp / "good.nii.gz").write_bytes(good_image.read_bytes())
    big = write_nifti(inp / "big.nii.gz", np.zeros((96, 96, 64), np.int16))  # ~9 MB as float32 x4 copies
    monkeypatch.setenv("MEDSEG_MEMORY_LIMIT_MB", "2")  # the small case needs ~0.07 MB, the big one ~9 MB
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", out, *QUIET)
    assert rc == 1
    assert_clean_error(
        err, big, r"96x96x64", r"needs about \d+ MB but only 2 MB", r"MEDSEG_MEMORY_LIMIT_MB", r"--streaming"
    )
    _assert_complete_prediction(out, "good")
    assert not (out / "big.nii.gz").exists()


def test_infer_stitching_too_large_for_memory_then_streaming_fits(bundle, tmp_path, capsys, monkeypatch):
    inp = tmp_path / "in"
    big = write_nifti(inp / "big.nii.gz", ct_case(0, shape=(96, 96, 64))[0])
    # loading needs ~9 MB (4 float32 copies); full stitching of 3 classes ~20 MB; streaming ~6 MB
    monkeypatch.setenv("MEDSEG_MEMORY_LIMIT_MB", "12")
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", tmp_path / "full", *QUIET)
    assert rc == 1
    assert_clean_error(err, big, r"sliding-window inference", r"--streaming")
    rc, _, err = cli(
        capsys, "infer", "--model", bundle, "--input", inp, "--output", tmp_path / "stream", "--streaming", *QUIET
    )
    assert rc == 0, err
    assert nib.load(str(tmp_path / "stream" / "big.nii.gz")).shape == (96, 96, 64)


def test_infer_two_files_for_one_case_fail_that_case_only(bundle, good_image, tmp_path, capsys):
    """``a.nii`` and ``a.nii.gz`` would both write ``a.nii.gz``: neither is processed, each is named, the rest runs."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "good.nii.gz").write_bytes(good_image.read_bytes())
    twin_gz = write_nifti(inp / "twin.nii.gz", ct_case(1)[0])
    twin_nii = write_nifti(inp / "twin.nii", ct_case(2)[0])
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", out, *QUIET)
    assert rc == 1 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: case twin: ")]
    assert len(lines) == 2, err
    assert all(str(twin_gz) in ln and str(twin_nii) in ln and "rename or move one" in ln for ln in lines)
    assert "1 written, 0 skipped (exist), 2 failed" in err
    _assert_complete_prediction(out, "good")
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.nii.gz"]


def test_datasets_check_two_files_for_one_case_are_broken_not_fatal(good_image, tmp_path, capsys):
    d = tmp_path / "scans"
    d.mkdir()
    (d / "good.nii.gz").write_bytes(good_image.read_bytes())
    write_nifti(d / "twin.nii.gz", ct_case(1)[0])
    write_nifti(d / "twin.nii", ct_case(2)[0])
    rc, out, err = cli(capsys, "datasets", "check", d)
    assert rc == 3 and "Traceback" not in err and not err.strip(), err  # a report, not an aborted run
    broken = [ln for ln in out.splitlines() if ln.startswith("BROKEN  twin: two inputs map to case 'twin'")]
    assert len(broken) == 2, out
    assert "OK      good" in out


def test_infer_warns_about_sub_folders_it_does_not_search(bundle, good_image, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "patient2").mkdir(parents=True)
    (inp / "good.nii.gz").write_bytes(good_image.read_bytes())
    (inp / "patient2" / "scan.nii.gz").write_bytes(good_image.read_bytes())
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", out, *QUIET)
    assert rc == 0, err
    assert f"warning: {inp / 'patient2'}: sub-folder not searched (it holds 1 image file(s))" in err
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.nii.gz"]


def test_infer_single_input_that_is_a_link_loop_or_a_pipe(bundle, tmp_path, capsys):
    loop, pipe = tmp_path / "loop.nii.gz", tmp_path / "pipe.nii.gz"
    link_loop(loop)
    fifo(pipe)
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", loop, "--output", tmp_path / "o", *QUIET)
    assert rc == 3
    assert_clean_error(err, loop, r"input not found: symbolic link loop")
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", pipe, "--output", tmp_path / "o", *QUIET)
    assert rc == 1  # a batch of one whose case failed, without blocking on the pipe
    assert_clean_error(err, pipe, r"not a regular file but a named pipe")


# ===================================================================================================== infer: whole run
def test_infer_empty_folder(bundle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = cli(
        capsys, "infer", "--model", bundle, "--input", tmp_path / "empty", "--output", tmp_path / "o", *QUIET
    )
    assert rc == 3
    assert_clean_error(err, tmp_path / "empty", r"no images found")


def test_infer_folder_of_non_images(bundle, tmp_path, capsys):
    d = tmp_path / "export"
    d.mkdir()
    (d / "report.pdf").write_bytes(b"%PDF-1.4")
    (d / "notes.txt").write_text("x")
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", d, "--output", tmp_path / "o", *QUIET)
    assert rc == 3
    assert_clean_error(err, d, r"no images found")


def test_infer_single_non_image_file(bundle, tmp_path, capsys):
    f = tmp_path / "scan.txt"
    f.write_text("x")
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", f, "--output", tmp_path / "o", *QUIET)
    assert rc == 3
    assert_clean_error(err, f, r"not an image file")


def test_infer_missing_input(bundle, tmp_path, capsys):
    rc, _, err = cli(
        capsys, "infer", "--model", bundle, "--input", tmp_path / "nope", "--output", tmp_path / "o", *QUIET
    )
    assert rc == 3
    assert_clean_error(err, tmp_path / "nope", r"not found")


def test_infer_checkpoint_that_does_not_fit_names_the_layers(bundle, good_image, tmp_path, capsys):
    from monai.networks.nets import UNet

    ckpt = tmp_path / "wider.pt"
    torch.save(UNet(3, 1, 3, channels=[4, 16], strides=[2], num_res_units=0).state_dict(), ckpt)
    rc, _, err = cli(capsys, *infer_argv(bundle, good_image, tmp_path / "o", "--checkpoint", ckpt))
    assert rc == 4
    assert_clean_error(err, ckpt, r"does not fit", r"model\.1\.submodule\.conv\.weight", r"\[16, 4, 3, 3, 3\]")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_infer_checkpoint_that_is_not_a_checkpoint(bundle, good_image, tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    ckpt.write_text("<html>404 Not Found</html>")
    rc, _, err = cli(capsys, *infer_argv(bundle, good_image, tmp_path / "o", "--checkpoint", ckpt))
    assert rc == 4
    assert_clean_error(err, ckpt, r"unreadable checkpoint: not a PyTorch file")


@pytest.mark.parametrize("key", ["network_def", "preprocessing"])
def test_infer_bundle_config_missing_a_key(key, good_image, tmp_path, capsys):
    b = make_bundle(tmp_path / "b", drop=[key])
    rc, _, err = cli(capsys, "infer", "--model", b, "--input", good_image, "--output", tmp_path / "o", *QUIET)
    assert rc == 4
    assert_clean_error(err, b / "configs" / "inference.json", key, r"not found")


def test_infer_bundle_config_not_json(good_image, tmp_path, capsys):
    b = make_bundle(tmp_path / "b")
    (b / "configs" / "inference.json").write_text('{"network_def": ')
    rc, _, err = cli(capsys, "infer", "--model", b, "--input", good_image, "--output", tmp_path / "o", *QUIET)
    assert rc == 4
    assert_clean_error(err, b / "configs" / "inference.json", r"JSONDecodeError")


def test_debug_shows_the_traceback(bundle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = cli(
        capsys, "--debug", "infer", "--model", bundle, "--input", tmp_path / "empty", "--output", tmp_path / "o", *QUIET
    )
    assert rc == 3
    assert "Traceback" in err and "no images found" in err


# ======================================================================================================== nothing lost
def test_infer_never_overwrites_outputs_without_flag_nor_inputs(bundle, good_image, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "good.nii.gz").write_bytes(good_image.read_bytes())
    src_bytes = (inp / "good.nii.gz").read_bytes()
    assert cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", out, *QUIET)[0] == 0
    marker = b"user-edited label map"
    (out / "good.nii.gz").write_bytes(marker)  # e.g. a manually corrected prediction
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", out, *QUIET)
    assert rc == 0 and "0 written, 1 skipped" in err
    assert (out / "good.nii.gz").read_bytes() == marker
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", out, "--overwrite", *QUIET)
    assert rc == 0 and "1 written" in err
    _assert_complete_prediction(out, "good")
    # the output folder is the input folder: refused (exit 2), the input untouched
    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", inp, "--overwrite", *QUIET)
    assert rc == 2
    assert_clean_error(err, inp, r"would overwrite the input")
    assert (inp / "good.nii.gz").read_bytes() == src_bytes


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_infer_killed_leaves_no_partial_outputs_and_rerun_resumes(sig, bundle, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    n = 4
    for i in range(n):  # larger volumes: more windows per case, so the kill lands mid-batch
        write_nifti(inp / f"case{i}.nii.gz", ct_case(i, shape=(48, 48, 32))[0])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "infer",
            "--model",
            str(bundle),
            "--input",
            str(inp),
            "--output",
            str(out),
            "--quiet",
            "--overlap",
            "0.5",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # a shell starts background jobs (e.g. `make test &`) with SIGINT ignored, and Python keeps an ignored SIGINT:
        # give the child the default disposition, as a terminal's Ctrl-C finds it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and any(p.name.endswith(".json") and not p.name.startswith(".") for p in out.iterdir()):
                break
            time.sleep(0.02)
        assert proc.poll() is None, (
            "the run finished (or died) before it could be killed: "
            + proc.stderr.read().decode(errors="replace")[-2000:]
        )
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
        stderr = proc.stderr.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGINT:  # Ctrl-C: exit 130, one line, no traceback, temporaries removed
        assert rc == 130, stderr
        assert "interrupted: finished outputs are kept" in stderr and "Traceback" not in stderr
        assert not [p for p in out.iterdir() if p.name.startswith(".")]
    else:
        assert rc == -signal.SIGKILL
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    written = sorted(p[: -len(".nii.gz")] for p in visible if p.endswith(".nii.gz"))
    finished = [c for c in written if f"{c}.json" in visible]  # label map and sidecar: the case is done
    assert 1 <= len(finished) < n, visible
    for case in written:  # every visible output is complete (atomic rename), never a truncated file
        img = nib.load(str(out / f"{case}.nii.gz"))
        assert img.shape == (48, 48, 32)
        np.asarray(img.dataobj)
    assert all(p.endswith((".nii.gz", ".json")) for p in visible), visible  # temporaries are hidden dot-files
    mtimes = {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in finished}
    stale = out / ".case0.nii.gz.k1ll3d.tmp.nii.gz"  # what a kill during a write leaves (atomic_path's naming)
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 60, time.time() - 60))

    rc, _, err = cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", out, "--quiet", "--overlap", "0.5")
    assert rc == 0, err
    assert f"{n - len(finished)} written, {len(finished)} skipped" in err
    for c, m in mtimes.items():  # finished cases were skipped, not recomputed
        assert (out / f"{c}.nii.gz").stat().st_mtime_ns == m
    for i in range(n):
        img = nib.load(str(out / f"case{i}.nii.gz"))
        assert img.shape == (48, 48, 32)
        assert (out / f"case{i}.json").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # stale temporaries removed


def test_infer_is_deterministic(bundle, tmp_path, capsys):
    inp = tmp_path / "in"
    for i in range(2):
        write_nifti(inp / f"c{i}.nii.gz", ct_case(i, shape=(40, 36, 24))[0])
    runs = []
    for k in range(2):
        out = tmp_path / f"out{k}"
        assert cli(capsys, "infer", "--model", bundle, "--input", inp, "--output", out, *QUIET)[0] == 0
        runs.append([np.asarray(nib.load(str(out / f"c{i}.nii.gz")).dataobj) for i in range(2)])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)
    assert any(len(np.unique(a)) > 1 for a in runs[0])  # not trivially constant


# ============================================================================================================ evaluate
def _scored_cases(report: Path) -> set[str]:
    """The cases listed in ``report/per_case.csv`` (the ones evaluate scored)."""
    with open(report / "per_case.csv") as f:
        return {row["case"] for row in csv.DictReader(f)}


def _prob_map() -> np.ndarray:
    return np.full(SHAPE, 0.4, np.float32)


BAD_PREDICTIONS = {
    "truncated": ("truncate", r"truncated or corrupt file"),
    "nan_values": (nifti(_NAN), r"holds NaN/Inf values"),
    "shape_mismatch": (nifti(np.zeros((20, 18, 10), np.uint8)), r"shape \(20, 18, 10\) differs"),
    "affine_mismatch": (nifti(np.zeros(SHAPE, np.uint8), np.diag([1.5, 1.5, 2.5, 1.0])), r"affine differs"),
    "probabilities_not_labels": (nifti(_prob_map()), r"non-integer values"),
    "prediction_2d": (nifti(np.zeros(SHAPE[:2], np.uint8)), r"expected a 3D label map"),
    # issue 16: never a hang, never a silently missing case, never a distance from an invented spacing
    "symlink_loop": (link_loop, r"symbolic link loop"),
    "named_pipe": (fifo, r"not a regular file but a named pipe \(FIFO\)"),
    "zero_pixdim_no_affine": (
        raw_nifti(ct_case(1)[1], no_affine([0, 0, 0])),
        r"no usable voxel geometry: .*pixdim voxel size \[0, 0, 0\]",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_PREDICTIONS))
def test_evaluate_batch_reports_bad_prediction_and_scores_others(kind, dataset, tmp_path, capsys):
    writer, pattern = BAD_PREDICTIONS[kind]
    pred, rep = tmp_path / "pred", tmp_path / "rep"
    pred.mkdir()
    for i in range(3):
        (pred / f"c{i}.nii.gz").write_bytes((dataset / "labelsTr" / f"c{i}.nii.gz").read_bytes())
    bad = pred / "c1.nii.gz"
    bad.unlink()  # the writer replaces the good copy (a link or pipe cannot be written over a file)
    (truncate(dataset / "labelsTr" / "c1.nii.gz") if writer == "truncate" else writer)(bad)
    rc, _, err = cli(capsys, *evaluate_argv(pred, dataset / "labelsTr", "--classes", "1,2", out=rep, workers=1))
    assert rc == 1, err
    assert_clean_error(err, bad, pattern)
    assert _scored_cases(rep) == {"c0", "c2"}
    assert (rep / "summary.json").is_file()


def test_evaluate_empty_prediction_folder(dataset, tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    rc, _, err = cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--label", dataset / "labelsTr", *QUIET)
    assert rc == 3
    assert_clean_error(err, tmp_path / "pred", r"holds no image file")


def test_evaluate_missing_label_folder(dataset, tmp_path, capsys):
    rc, _, err = cli(capsys, "evaluate", "--pred", dataset / "labelsTr", "--label", tmp_path / "nope", *QUIET)
    assert rc == 3
    assert_clean_error(err, tmp_path / "nope", r"does not exist")


@pytest.mark.parametrize(
    "side, bad_case, value, patterns",
    [
        pytest.param(
            "label",
            "c1",
            7,
            [r"label values \[7\] are not in the declared label set \[0, 1, 2\]", r"dataset\.json"],
            id="label",
        ),
        pytest.param(
            "prediction", "c2", 9, [r"prediction values \[9\] are not in the declared label set"], id="prediction"
        ),
    ],
)
def test_evaluate_values_outside_declared_set(side, bad_case, value, patterns, dataset, tmp_path, capsys):
    """A label or prediction holding an id outside dataset.json's label set fails its case alone (one line naming the
    file); the other cases are scored."""
    pred = tmp_path / "pred"
    for i in range(3):  # perfect predictions: each case's own label map
        write_nifti(pred / f"c{i}.nii.gz", ct_case(i)[1])
    folder = dataset / "labelsTr" if side == "label" else pred
    bad = write_nifti(folder / f"{bad_case}.nii.gz", np.full(SHAPE, value, np.uint8))
    rep = tmp_path / "rep"
    classes = dataset / "dataset.json"
    rc, _, err = cli(capsys, *evaluate_argv(pred, dataset / "labelsTr", "--classes", classes, out=rep, workers=1))
    assert rc == 1
    assert_clean_error(err, bad, *patterns)
    assert _scored_cases(rep) == {"c0", "c1", "c2"} - {bad_case}


# ====================================================================================================== datasets check
BAD_DATASET_CASES = {
    "label_shape_mismatch": (
        "labelsTr",
        nifti(np.zeros((20, 18, 10), np.uint8)),
        r"label shape \[20, 18, 10\] != "
        r"image shape \[20, 18, 12\]",
    ),
    "label_affine_mismatch": (
        "labelsTr",
        nifti(np.zeros(SHAPE, np.uint8), np.diag([1.5, 1.5, 2.5, 1.0])),
        r"label affine differs from the image affine by up to 0.5 mm",
    ),
    "label_values_outside_set": (
        "labelsTr",
        nifti(np.full(SHAPE, 7, np.uint8)),
        r"label values \[7\] are not in the declared label set \[0, 1, 2\]",
    ),
    "truncated_label": ("labelsTr", "truncate", r"label unreadable: .*truncated or corrupt"),
    "nan_image": ("imagesTr", nifti(_NAN), r"image has 4320 NaN and 0 Inf voxels"),
    "image_4d_wrong_channels": (
        "imagesTr",
        nifti(np.zeros((*SHAPE, 2), np.float32)),
        r"image has 2 channel\(s\), the dataset declares 1",
    ),
    "image_2d": ("imagesTr", nifti(np.zeros(SHAPE[:2], np.float32)), r"image has 2 spatial dimensions"),
    # issue 16: the same per-file problems as infer, reported per case
    "image_symlink_loop": ("imagesTr", link_loop, r"image unreadable: .*symbolic link loop"),
    "image_named_pipe": ("imagesTr", fifo, r"image unreadable: .*not a regular file but a named pipe"),
    "image_zero_pixdim_no_affine": (
        "imagesTr",
        raw_nifti(ct_case(1)[0], no_affine([0, 0, 0])),
        r"image unreadable: .*no usable voxel geometry",
    ),
    "label_nan_pixdim_no_affine": (
        "labelsTr",
        raw_nifti(ct_case(1)[1], no_affine([np.nan] * 3)),
        r"label unreadable: .*no usable voxel geometry",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_DATASET_CASES))
def test_datasets_check_reports_every_broken_case(kind, dataset, tmp_path, capsys):
    sub, writer, pattern = BAD_DATASET_CASES[kind]
    bad = dataset / sub / "c1.nii.gz"
    if writer == "truncate":
        truncate(bad)(bad)
    else:
        bad.unlink()  # the writer replaces the good file (a link or pipe cannot be written over a file)
        writer(bad)
    report = tmp_path / "check.json"
    rc, out, err = cli(capsys, "datasets", "check", dataset, "--json", report)
    assert rc == 3, out + err
    assert "Traceback" not in err
    broken = [line for line in out.splitlines() if line.startswith("BROKEN")]
    assert broken and all(line.startswith("BROKEN  c1: ") for line in broken), out
    import re

    assert any(re.search(pattern, line) for line in broken), broken
    assert "pydicom" not in out  # the reason is the NIfTI reader's, not the last reader MONAI tried
    rep = json.loads(report.read_text())
    assert {c["case"]: c["ok"] for c in rep["cases"]} == {"c0": True, "c1": False, "c2": True}


def test_datasets_check_unreadable_dataset_json(dataset, capsys):
    (dataset / "dataset.json").write_text("{")
    rc, _, err = cli(capsys, "datasets", "check", dataset)
    assert rc == 3
    assert_clean_error(err, dataset / "dataset.json", r"unreadable JSON")


def test_datasets_check_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = cli(capsys, "datasets", "check", tmp_path / "empty")
    assert rc == 3
    assert_clean_error(err, tmp_path / "empty", r"no images found")


def test_datasets_check_volume_too_large_for_memory(dataset, tmp_path, capsys, monkeypatch):
    write_nifti(dataset / "imagesTr" / "c1.nii.gz", np.zeros((96, 96, 64), np.int16))
    monkeypatch.setenv("MEDSEG_MEMORY_LIMIT_MB", "2")
    rc, out, err = cli(capsys, "datasets", "check", dataset)
    assert rc == 3 and "Traceback" not in err
    assert any(line.startswith("BROKEN  c1: image not loaded: ") and "needs about" in line for line in out.splitlines())
    assert "OK      c0" in out and "OK      c2" in out


# =========================================================================================================== benchmark
HIPPO = "unetrpp_hippocampus_mri_segmentation"
#: score the synthetic datasets' training cases against their own labels (no published table)
TRAINING_SPLIT_OWN_LABELS = ("--split", "training", "--table", "none")


def test_benchmark_scores_good_cases_and_lists_bad_ones(bundle, tmp_path, capsys):
    data = tmp_path / "ds"
    write_msd_dataset(data, n=4)
    truncate(data / "imagesTr" / "c1.nii.gz")(data / "imagesTr" / "c1.nii.gz")
    write_nifti(data / "imagesTr" / "c2.nii.gz", _NAN)
    write_nifti(data / "labelsTr" / "c3.nii.gz", np.zeros((20, 18, 10), np.uint8))
    out = tmp_path / "bench"
    rc, stdout, err = cli(capsys, *benchmark_argv(bundle, data, out, *TRAINING_SPLIT_OWN_LABELS))
    assert rc == 1, err
    assert "Traceback" not in err
    failed = {line.split(":")[1].strip(): line for line in err.splitlines() if line.startswith("failed: ")}
    assert set(failed) == {"c1", "c2", "c3"}, err
    assert str(data / "imagesTr" / "c1.nii.gz") in failed["c1"] and "truncated or corrupt" in failed["c1"]
    assert str(data / "imagesTr" / "c2.nii.gz") in failed["c2"] and "NaN" in failed["c2"]
    assert str(data / "labelsTr" / "c3.nii.gz") in failed["c3"] and "differs" in failed["c3"]
    assert "1 of 4 case(s) scored" in stdout
    assert nib.load(str(out / "predictions" / "c0.nii.gz")).shape == SHAPE
    report = json.loads((out / "report.json").read_text())
    assert [c["case"] for c in report["cases"] if c["status"] == "ok"] == ["c0"]


def test_benchmark_unexpected_error_in_one_case_does_not_cost_the_batch(bundle, dataset, tmp_path, capsys, monkeypatch):
    import pipeline.inference.runner as runner

    real = runner.predict_case

    def flaky(image_path, *args, **kwargs):  # e.g. a library bug or an odd header on one case only
        if Path(image_path).name == "c1.nii.gz":
            raise ValueError("cannot reshape array of size 0 into shape (20,18,12)")
        return real(image_path, *args, **kwargs)

    monkeypatch.setattr(runner, "predict_case", flaky)
    out = tmp_path / "bench"
    rc, stdout, err = cli(capsys, *benchmark_argv(bundle, dataset, out, *TRAINING_SPLIT_OWN_LABELS))
    assert rc == 1 and "Traceback" not in err
    line = next(ln for ln in err.splitlines() if ln.startswith("failed: c1:"))
    assert str(dataset / "imagesTr" / "c1.nii.gz") in line and "ValueError: cannot reshape" in line
    assert "2 of 3 case(s) scored" in stdout
    assert sorted(p.name for p in (out / "predictions").glob("*.nii.gz")) == ["c0.nii.gz", "c2.nii.gz"]


def test_benchmark_bundle_config_missing_a_key(dataset, tmp_path, capsys):
    b = make_bundle(tmp_path / "b", drop=["network_def"])
    rc, _, err = cli(capsys, *benchmark_argv(b, dataset, tmp_path / "bench", *TRAINING_SPLIT_OWN_LABELS))
    assert rc == 4
    assert_clean_error(err, b / "configs" / "inference.json", r"no 'network_def'")


def test_benchmark_missing_dataset(bundle, tmp_path, capsys):
    rc, _, err = cli(capsys, *benchmark_argv(bundle, tmp_path / "nope", tmp_path / "b", "--table", "none"))
    assert rc == 3
    assert_clean_error(err, tmp_path / "nope", r"not found")


# ============================================================================================================ training
@pytest.fixture()
def restore_logging():
    """Bundles configure logging from their logging.conf, binding handlers to this test's captured stderr; remove
    them afterwards so the next in-process run does not log to a closed stream."""
    import logging

    def handlers() -> dict:
        loggers = [logging.getLogger()] + [
            lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
        ]
        return {lg: list(lg.handlers) for lg in loggers}

    before = handlers()
    yield
    for lg, hs in handlers().items():
        for h in hs:
            if h not in before.get(lg, []):
                lg.removeHandler(h)


def _train_args(tmp_path: Path, train: list[dict], val: list[dict]) -> list[str]:
    sets = {
        "roi_size": [16, 16, 16],
        "train_datalist": train,
        "val_datalist": val,
        "val_interval": 1,
        "ckpt_dir": str(tmp_path / "models"),
        "train_dir": str(tmp_path / "runs"),
        "output_dir": str(tmp_path / "eval"),
    }
    args = ["--epochs", "1", "--device", "cpu"]
    for k, v in sets.items():
        args += ["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    return args


def _mri_items(folder: Path, n: int = 3) -> list[dict]:
    items = []
    for i in range(n):
        image, label = ct_case(i, shape=(20, 18, 17))
        items.append(
            {
                "image": str(write_nifti(folder / f"t{i}_img.nii.gz", image + 300.0, np.eye(4))),
                "label": str(write_nifti(folder / f"t{i}_seg.nii.gz", label, np.eye(4))),
            }
        )
    return items


@pytest.mark.skipif(not (BUNDLES_DIR / HIPPO).is_dir(), reason=f"bundle {HIPPO} not in this checkout")
def test_train_corrupt_label_names_the_file(tmp_path, capsys, restore_logging):
    items = _mri_items(tmp_path / "data")
    truncate(Path(items[1]["label"]))(Path(items[1]["label"]))
    rc, _, err = cli(capsys, "train", "--bundle", BUNDLES_DIR / HIPPO, *_train_args(tmp_path, items[:2], items[2:]))
    assert rc == 3
    assert_clean_error(err, items[1]["label"], r"truncated or corrupt")


@pytest.mark.skipif(not (BUNDLES_DIR / HIPPO).is_dir(), reason=f"bundle {HIPPO} not in this checkout")
def test_train_bundle_config_missing_a_key(tmp_path, capsys, restore_logging):
    import shutil

    b = tmp_path / "bundle"
    shutil.copytree(BUNDLES_DIR / HIPPO / "configs", b / "configs")
    cfg = json.loads((b / "configs" / "train.json").read_text())
    del cfg["network_def"]
    (b / "configs" / "train.json").write_text(json.dumps(cfg))
    items = _mri_items(tmp_path / "data")
    rc, _, err = cli(capsys, "train", "--bundle", b, *_train_args(tmp_path, items[:2], items[2:]))
    assert rc == 4
    assert_clean_error(err, b / "configs" / "train.json", r"network_def")


@pytest.mark.skipif(not (BUNDLES_DIR / HIPPO).is_dir(), reason=f"bundle {HIPPO} not in this checkout")
def test_train_resume_from_checkpoint_that_does_not_fit_names_the_layers(tmp_path, capsys, restore_logging):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / HIPPO / "configs" / "train.json"))
    parser["roi_size"], parser["num_classes"] = [16, 16, 16], 5  # the bundle has 3 classes
    other = parser.get_parsed_content("network_def")
    runs = tmp_path / "runs"
    runs.mkdir()
    ckpt = runs / "checkpoint.pt"
    torch.save(
        {"model": other.state_dict(), "optimizer": {}, "lr_scheduler": {}, "trainer": {"epoch": 1}, "rng": {}}, ckpt
    )
    saved = ckpt.read_bytes()
    items = _mri_items(tmp_path / "data")
    rc, _, err = cli(
        capsys, "train", "--bundle", BUNDLES_DIR / HIPPO, "--resume", *_train_args(tmp_path, items[:2], items[2:])
    )
    assert rc == 4
    assert_clean_error(err, ckpt, r"checkpoint entry 'model' does not fit", r"size mismatch for \S+\.weight")
    assert ckpt.read_bytes() == saved  # not overwritten by a fresh start
