"""Volume I/O: SimpleITKReader (NRRD/MHA/DICOM) vs nibabel, load_volume errors, inference input listing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.data.inputs import list_inference_inputs
from pipeline.data.io import SimpleITKReader, load_volume
from pipeline.data.naming import case_name, image_suffix
from pipeline.errors import InputDataError

from helpers.bad_inputs import folder, raw_bytes, truncate
from helpers.data import LPS_AFFINE, write_nifti


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_simpleitk_matches_nibabel(tmp_path: Path, rng: np.random.Generator, suffix: str) -> None:
    """The same volume as NIfTI (nibabel) and NRRD/MHA (SimpleITK) loads with identical array and RAS affine."""
    data = rng.integers(-1000, 1000, size=(7, 9, 5)).astype(np.int16)
    nii = write_nifti(tmp_path / "a.nii.gz", data, LPS_AFFINE)
    other = tmp_path / f"a{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(nii)), str(other))
    a, b = load_volume(nii), load_volume(other)
    assert tuple(a.shape) == tuple(b.shape) == (1, 7, 9, 5)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-5)
    np.testing.assert_allclose(b.affine.numpy(), LPS_AFFINE, atol=1e-5)
    assert b.meta["space"] == "RAS"


def test_simpleitk_reader_refuses_nifti_and_stacks_channels(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.random((4, 5, 6)).astype(np.float32)
    paths = []
    for i in range(2):
        img = sitk.GetImageFromArray((data + i).transpose(2, 1, 0))
        paths.append(tmp_path / f"c{i}.mha")
        sitk.WriteImage(img, str(paths[-1]))
    reader = SimpleITKReader()
    assert reader.verify_suffix(paths) and not reader.verify_suffix("x.nii.gz")
    with pytest.raises(ValueError, match="NibabelReader"):
        reader.read("x.nii.gz")
    arr, meta = reader.get_data(reader.read(paths))
    assert arr.shape == (2, 4, 5, 6) and meta["original_channel_dim"] == 0
    np.testing.assert_allclose(arr[1] - arr[0], 1.0, atol=1e-6)


def test_dicom_series_loads_and_matches_its_label(shared_data: Path) -> None:
    """The BTCV_like DICOM series loads (x, y, z, RAS) and label_series.nii.gz covers the same voxel grid; organ HU
    means under the label are plausible only when the two are aligned in world space."""
    from monai.transforms import Orientation

    from pipeline.data.check import grid_difference

    ct = load_volume(shared_data / "BTCV_like/dicom/ct_series")
    lab = load_volume(shared_data / "BTCV_like/dicom/label_series.nii.gz")
    assert tuple(ct.shape) == (1, 512, 512, 20)
    np.testing.assert_allclose(np.diag(ct.affine.numpy())[:3] ** 2, [0.9765625**2, 0.9765625**2, 4.0], rtol=1e-6)
    same, diff = grid_difference(ct.shape[1:], ct.affine.numpy(), lab.shape[1:], lab.affine.numpy())
    assert same and diff < 1e-3
    ras = Orientation("RAS", labels=None)
    ct_r, lab_r = ras(ct), ras(lab)
    np.testing.assert_allclose(ct_r.affine.numpy(), lab_r.affine.numpy(), atol=1e-4)
    hu, lab_np = ct_r.numpy()[0], lab_r.numpy()[0]
    assert 30 < hu[lab_np == 6].mean() < 150  # liver
    assert hu[lab_np == 0].mean() < -300  # background holds the air around the body


@pytest.mark.parametrize(
    "name, writer, message",
    [
        pytest.param("nope.nii.gz", None, "not found", id="missing_file"),
        pytest.param("trunc.nii.gz", "truncate", "trunc.nii.gz.*(corrupt|unreadable)", id="truncated_nifti"),
        pytest.param("notes.txt", raw_bytes(b"x"), "unsupported image type", id="text_file"),
        pytest.param("empty_dir", folder, "no DICOM series", id="empty_folder"),
    ],
)
def test_load_volume_errors_name_the_file(tmp_path: Path, shared_data: Path, name, writer, message) -> None:
    path = tmp_path / name
    if writer == "truncate":  # the first half of a real .nii.gz
        writer = truncate(shared_data / "Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz")
    if writer is not None:
        writer(path)
    with pytest.raises(InputDataError, match=message):
        load_volume(path)


def test_suffix_helpers() -> None:
    assert image_suffix("a/b/img0001.nii.gz") == ".nii.gz"
    assert image_suffix("x.NRRD") == ".nrrd"
    assert image_suffix("x.txt") is None
    assert case_name("img0001.nii.gz") == "img0001"
    assert case_name("scan.v2.mha") == "scan.v2"


def test_list_inference_inputs(tmp_path: Path, shared_data: Path, rng: np.random.Generator) -> None:
    data = rng.random((4, 4, 4)).astype(np.float32)
    d = tmp_path / "in"
    write_nifti(d / "b_case.nii.gz", data)
    write_nifti(d / "a_case.nii", data)
    sitk.WriteImage(sitk.GetImageFromArray(data), str(d / "c_case.nrrd"))
    (d / "readme.txt").write_text("ignored")
    (d / ".a_case.nii.gz.tmp").write_text("ignored temp")
    os.symlink(shared_data / "BTCV_like/dicom/ct_series", d / "series_x")
    items = list_inference_inputs(d)
    assert [it["case"] for it in items] == ["a_case", "b_case", "c_case", "series_x"]
    assert items[3]["image"].endswith("series_x")
    # a single file; a DICOM series folder itself
    assert list_inference_inputs(d / "c_case.nrrd") == [{"image": str(d / "c_case.nrrd"), "case": "c_case"}]
    single = list_inference_inputs(shared_data / "BTCV_like/dicom/ct_series")
    assert [it["case"] for it in single] == ["ct_series"]
    with pytest.raises(InputDataError, match="no images"):
        (tmp_path / "none").mkdir()
        list_inference_inputs(tmp_path / "none")
    write_nifti(d / "c_case.nii.gz", data)  # two inputs with one case name
    with pytest.raises(InputDataError, match="c_case"):
        list_inference_inputs(d)
