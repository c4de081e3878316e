"""``medseg infer`` options the README promises, each checked for the right result (not only for running).

The networks are 1x1x1 convolutions registered as presets in this process, so every test runs in seconds and the
expected label of a voxel follows from its intensity: with preprocessing ``ct_abdomen`` (HU window -175..250 -> 0..1)
a conv with ``logit_k = w_k * x + b_k`` labels a voxel by thresholds on HU. The volumes are small and synthetic
(built here with a known answer), plus the real DICOM series of ``../shared/data`` for the DICOM test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
import torch.nn as nn

from pipeline.cli import main
from pipeline.inference.postprocess import keep_largest_component
from pipeline.networks import register_preset

QUIET = ["--quiet", "--overlap", "0.25"]
#: RAS, the spacing of ``ct_abdomen``: preprocessing keeps the grid, so labels can be predicted voxel by voxel
CT_AFFINE = np.array([[1.5, 0, 0, -20.0], [0, 1.5, 0, 10.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


def _tiny_conv(in_channels: int = 1, out_channels: int = 3) -> nn.Module:
    """A 1x1x1 convolution: each voxel's logits depend on its own preprocessed intensity only."""
    return nn.Conv3d(in_channels, out_channels, kernel_size=1)


for _c in (2, 3, 6, 300):
    register_preset(
        f"test_conv{_c}",
        _tiny_conv,
        {"out_channels": _c},
        roi_size=(32, 32, 16),
        description=f"test-only 1x1x1 conv, {_c} classes",
    )


def _weights(path: Path, weight, bias) -> Path:
    """Save a ``_tiny_conv`` state dict with the given per-class weight and bias."""
    w = torch.tensor(weight, dtype=torch.float32).reshape(-1, 1, 1, 1, 1)
    torch.save({"weight": w, "bias": torch.tensor(bias, dtype=torch.float32)}, path)
    return path


def _random_weights(path: Path, classes: int, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.save(_tiny_conv(out_channels=classes).state_dict(), path)
    return path


def _hu_to_x(hu):
    """``ct_abdomen``'s intensity step."""
    return np.clip((np.asarray(hu, dtype=np.float64) + 175.0) / 425.0, 0.0, 1.0)


def _save(volume: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), str(path))
    return path


def _infer(model: str, ckpt: Path, inp: Path, out: Path, *extra: str, preprocessing: str = "ct_abdomen") -> int:
    return main(
        [
            "infer",
            "--model",
            model,
            "--checkpoint",
            str(ckpt),
            "--preprocessing",
            preprocessing,
            "--input",
            str(inp),
            "--output",
            str(out),
            *QUIET,
            *extra,
        ]
    )


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _sidecar(path: Path) -> dict:
    return json.loads(path.read_text())


# --- --model PRESET --checkpoint C --preprocessing P ----------------------------------------------------------------


def _body_and_blob() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Air (-500 HU) around a box of soft tissue (0 HU) holding a bright blob (200 HU)."""
    hu = np.full((40, 36, 14), -500.0)
    body = np.zeros(hu.shape, bool)
    body[4:36, 3:33, 2:12] = True
    blob = np.zeros(hu.shape, bool)
    blob[15:24, 10:20, 4:9] = True
    hu[body] = 0.0
    hu[blob] = 200.0
    return hu, body, blob


def test_preset_checkpoint_and_preprocessing_are_all_used(tmp_path):
    """class 1 iff the preprocessed intensity is above 0.5: HU > 37.5 under ct_abdomen, HU > -300 under ct_lung."""
    hu, body, blob = _body_and_blob()
    img = _save(hu, CT_AFFINE, tmp_path / "in" / "ct.nii.gz")
    ckpt = _weights(tmp_path / "w.pt", [-10.0, 10.0], [5.0, -5.0])  # l1 - l0 = 20 x - 10
    assert _infer("test_conv2", ckpt, img, tmp_path / "a") == 0
    labels = _labels(tmp_path / "a" / "ct.nii.gz")
    np.testing.assert_array_equal(labels, blob.astype(np.uint8))
    side = _sidecar(tmp_path / "a" / "ct.json")
    assert side["model"]["source"] == "preset:test_conv2 preprocessing:ct_abdomen"
    assert side["model"]["checkpoint"] == str(ckpt) and side["model"]["out_channels"] == 2

    # the checkpoint is the one loaded: negated weights label the soft tissue and not the blob
    flipped = _weights(tmp_path / "flipped.pt", [10.0, -10.0], [-5.0, 5.0])
    assert _infer("test_conv2", flipped, img, tmp_path / "b") == 0
    np.testing.assert_array_equal(_labels(tmp_path / "b" / "ct.nii.gz"), (body & ~blob).astype(np.uint8))

    # the preprocessing is the one named: ct_lung's window (-1000..400 HU) puts soft tissue above 0.5 too
    assert _infer("test_conv2", ckpt, img, tmp_path / "c", preprocessing="ct_lung") == 0
    np.testing.assert_array_equal(_labels(tmp_path / "c" / "ct.nii.gz"), body.astype(np.uint8))


# --- --save-probabilities -------------------------------------------------------------------------------------------


def _oblique_ct(tmp_path: Path, name: str = "ct.nii.gz") -> tuple[Path, np.ndarray]:
    """A CT whose grid is not the model's: x flipped, anisotropic spacing, air on one side (cropped away)."""
    rng = np.random.default_rng(0)
    hu = rng.normal(0.0, 150.0, (30, 26, 10))
    hu[:4] = -800.0
    affine = np.array([[-0.9, 0, 0, 10.0], [0, 1.1, 0, -5.0], [0, 0, 3.0, 2.0], [0, 0, 0, 1]])
    return _save(hu, affine, tmp_path / "in" / name), affine


def test_save_probabilities_sum_to_one_on_the_original_grid(tmp_path):
    """C channels (6 classes: the inversion runs in two chunks), float32, on the input grid, summing to 1 (also where
    the preprocessing cropped the air away), and their argmax is the saved label map."""
    img, affine = _oblique_ct(tmp_path)
    ckpt = _random_weights(tmp_path / "w.pt", 6)
    assert _infer("test_conv6", ckpt, img, tmp_path / "out", "--save-probabilities") == 0
    labels_img = nib.load(str(tmp_path / "out" / "ct.nii.gz"))
    probs_img = nib.load(str(tmp_path / "out" / "ct_probabilities.nii.gz"))
    labels, probs = np.asarray(labels_img.dataobj), np.asarray(probs_img.dataobj)
    assert probs.shape == (30, 26, 10, 6) and probs.dtype == np.float32
    assert np.allclose(probs_img.affine, affine, atol=1e-5) and np.allclose(labels_img.affine, affine, atol=1e-5)
    assert probs.min() >= 0.0 and probs.max() <= 1.0 + 1e-6
    assert np.abs(probs.sum(axis=-1) - 1.0).max() <= 1e-5
    np.testing.assert_array_equal(probs.argmax(axis=-1), labels)
    assert len(np.unique(labels)) >= 2  # not a constant prediction
    # air the preprocessing cropped away is background with p = 1 (the last air plane, next to the body, takes
    # probabilities interpolated from the body's model voxels)
    assert (labels[:3] == 0).all() and np.allclose(probs[:3, ..., 0], 1.0)


# --- --postprocess largest-component --------------------------------------------------------------------------------


#: classes by HU under ct_abdomen: l0 = 0, l1 = 20x - 6, l2 = 40x - 20 -> 0 below x 0.3, 1 up to x 0.7, 2 above
THREE_CLASS = ([0.0, 20.0, 40.0], [0.0, -6.0, -20.0])


def _two_blobs_per_class() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hu = np.full((40, 36, 14), -500.0)
    full = np.zeros(hu.shape, np.uint8)
    full[3:10, 3:10, 2:7] = 1  # class 1, large
    full[20:23, 3:6, 2:4] = 1  # class 1, small
    full[3:9, 20:26, 7:12] = 2  # class 2, large
    full[30:32, 28:30, 9:11] = 2  # class 2, small
    hu[full == 1] = 40.0
    hu[full == 2] = 250.0
    largest = full.copy()
    largest[20:23, 3:6, 2:4] = 0
    largest[30:32, 28:30, 9:11] = 0
    return hu, full, largest


def test_largest_component_keeps_the_larger_blob_of_each_class(tmp_path):
    hu, full, largest = _two_blobs_per_class()
    assert np.array_equal(keep_largest_component(full), largest)
    img = _save(hu, CT_AFFINE, tmp_path / "in" / "ct.nii.gz")
    ckpt = _weights(tmp_path / "w.pt", *THREE_CLASS)
    assert _infer("test_conv3", ckpt, img, tmp_path / "plain") == 0
    np.testing.assert_array_equal(_labels(tmp_path / "plain" / "ct.nii.gz"), full)
    assert _infer("test_conv3", ckpt, img, tmp_path / "post", "--postprocess", "largest-component") == 0
    np.testing.assert_array_equal(_labels(tmp_path / "post" / "ct.nii.gz"), largest)
    side = _sidecar(tmp_path / "post" / "ct.json")
    assert side["settings"]["postprocess"] == "largest-component" and "postprocess" in side["timings_s"]


# --- uint16 above 255 labels ----------------------------------------------------------------------------------------


def test_300_classes_give_a_uint16_label_map(tmp_path):
    hu, body, blob = _body_and_blob()
    img = _save(hu, CT_AFFINE, tmp_path / "in" / "ct.nii.gz")
    weight, bias = [0.0] * 300, [0.0] * 300
    weight[280], bias[280] = 20.0, -10.0  # class 280 where x > 0.5 (the blob), class 0 elsewhere
    ckpt = _weights(tmp_path / "w.pt", weight, bias)
    assert _infer("test_conv300", ckpt, img, tmp_path / "out") == 0
    out = nib.load(str(tmp_path / "out" / "ct.nii.gz"))
    assert out.get_data_dtype() == np.uint16
    labels = np.asarray(out.dataobj)
    assert labels.max() == 280  # not wrapped around by a uint8 cast (280 % 256 = 24)
    np.testing.assert_array_equal(labels, np.where(blob, 280, 0))
    assert _sidecar(tmp_path / "out" / "ct.json")["dtype"] == "uint16"


# --- NRRD / MHA inputs ----------------------------------------------------------------------------------------------


def _itk_ras_affine(image: sitk.Image) -> np.ndarray:
    """The RAS affine of an ITK image (ITK stores LPS), computed here independently of the pipeline's readers."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing())[None, :]
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def test_nrrd_and_mha_inputs_keep_their_geometry(tmp_path):
    """The same volume as NRRD, MHA and NIfTI (written by SimpleITK, LPS direction, anisotropic spacing): each output
    has its input's shape and affine, and the three label maps are equal."""
    rng = np.random.default_rng(1)
    arr = rng.normal(0.0, 150.0, (12, 26, 30)).astype(np.float32)  # ITK arrays are (z, y, x)
    arr[:, :, :4] = -800.0
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("vol_nrrd.nrrd", "vol_mha.mha", "vol_nii.nii.gz"):
        sitk.WriteImage(image, str(inp / name))
    expected = _itk_ras_affine(image)
    ckpt = _random_weights(tmp_path / "w.pt", 6)
    assert _infer("test_conv6", ckpt, inp, tmp_path / "out") == 0
    maps = {}
    for case in ("vol_nrrd", "vol_mha", "vol_nii"):
        out = nib.load(str(tmp_path / "out" / f"{case}.nii.gz"))
        assert out.shape == (30, 26, 12), case
        assert np.allclose(out.affine, expected, atol=1e-4), (case, out.affine)
        maps[case] = np.asarray(out.dataobj)
    assert len(np.unique(maps["vol_nii"])) >= 2
    np.testing.assert_array_equal(maps["vol_nrrd"], maps["vol_nii"])
    np.testing.assert_array_equal(maps["vol_mha"], maps["vol_nii"])


# --- a folder of DICOM series ---------------------------------------------------------------------------------------


def test_folder_of_dicom_series(shared_data, tmp_path):
    """Two series in one folder: each is its own case with its own geometry, and equals a run on that series alone."""
    from pipeline.data.io import load_volume

    series = shared_data / "BTCV_like" / "dicom" / "ct_series"
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "full").symlink_to(series, target_is_directory=True)
    part = folder / "part"  # a shorter series: 12 of the 20 slices
    part.mkdir()
    slices = sorted(p for p in series.iterdir() if p.is_file())
    for p in slices[:12]:
        shutil.copy(p, part / p.name)
    ckpt = _random_weights(tmp_path / "w.pt", 3)
    fast = ["--roi", "96", "96", "16"]
    assert _infer("test_conv3", ckpt, folder, tmp_path / "out", *fast) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["full.nii.gz", "part.nii.gz"]
    for case, src in (("full", series), ("part", part)):
        ref = load_volume(src)
        out = nib.load(str(tmp_path / "out" / f"{case}.nii.gz"))
        assert out.shape == tuple(ref.shape[1:]) and np.allclose(out.affine, np.asarray(ref.affine), atol=1e-4)
    assert nib.load(str(tmp_path / "out" / "part.nii.gz")).shape[2] == 12
    assert _infer("test_conv3", ckpt, series, tmp_path / "alone", *fast) == 0
    np.testing.assert_array_equal(
        _labels(tmp_path / "out" / "full.nii.gz"), _labels(tmp_path / "alone" / "ct_series.nii.gz")
    )


# --- --skip-background zero -----------------------------------------------------------------------------------------


def test_skip_background_zero_skips_empty_windows_and_labels_them_background(tmp_path):
    """A network that says class 1 everywhere: with ``zero``, windows that hold only zero voxels are not run (the
    sidecar counts them) and their voxels are background; every non-zero voxel is still predicted."""
    rng = np.random.default_rng(2)
    vol = np.zeros((64, 40, 24), np.float32)
    vol[:20] = rng.uniform(50.0, 400.0, (20, 40, 24))  # the "head"; the rest is exactly 0 (MRI background)
    img = _save(vol, np.diag([1.0, 1.0, 1.0, 1.0]), tmp_path / "in" / "mr.nii.gz")
    ckpt = _weights(tmp_path / "w.pt", [0.0, 0.0], [0.0, 5.0])
    common = ["--roi", "16", "16", "16"]
    assert _infer("test_conv2", ckpt, img, tmp_path / "all", *common, preprocessing="mri_hippocampus") == 0
    assert (
        _infer(
            "test_conv2",
            ckpt,
            img,
            tmp_path / "skip",
            *common,
            "--skip-background",
            "zero",
            preprocessing="mri_hippocampus",
        )
        == 0
    )
    everything = _sidecar(tmp_path / "all" / "mr.json")["windows"]
    skipped = _sidecar(tmp_path / "skip" / "mr.json")
    assert skipped["settings"]["skip_criterion"] == "zero"
    win = skipped["windows"]
    assert everything["skipped"] == 0 and (_labels(tmp_path / "all" / "mr.nii.gz") == 1).all()
    assert win["windows"] == everything["windows"] and win["run"] + win["skipped"] == win["windows"]
    assert win["skipped"] > win["windows"] // 3  # x >= 36 is more than 16 voxels away from the non-zero part
    labels = _labels(tmp_path / "skip" / "mr.nii.gz")
    assert (labels[:20] == 1).all()  # every non-zero voxel lies in a window that ran
    assert (labels[36:] == 0).all()  # covered by skipped windows only: background


# --- --stitch-device ------------------------------------------------------------------------------------------------


def test_stitch_device_gives_the_default_result(tmp_path):
    """Stitching on another device changes where the sums live, not the result (cpu here; cuda -> cpu when a GPU is
    present)."""
    img, _ = _oblique_ct(tmp_path)
    ckpt = _random_weights(tmp_path / "w.pt", 6)
    devices = [("cpu", "cpu")] + ([("cuda", "cpu")] if torch.cuda.is_available() else [])
    for net_dev, stitch_dev in devices:
        ref, got = tmp_path / f"ref_{net_dev}", tmp_path / f"stitch_{net_dev}"
        assert _infer("test_conv6", ckpt, img, ref, "--device", net_dev, "--save-probabilities") == 0
        assert (
            _infer(
                "test_conv6", ckpt, img, got, "--device", net_dev, "--stitch-device", stitch_dev, "--save-probabilities"
            )
            == 0
        )
        assert _sidecar(got / "ct.json")["settings"]["device"] == stitch_dev
        assert _sidecar(ref / "ct.json")["settings"]["device"] is None
        np.testing.assert_array_equal(_labels(got / "ct.nii.gz"), _labels(ref / "ct.nii.gz"))
        np.testing.assert_allclose(
            np.asarray(nib.load(str(got / "ct_probabilities.nii.gz")).dataobj),
            np.asarray(nib.load(str(ref / "ct_probabilities.nii.gz")).dataobj),
            atol=1e-6,
        )
