"""Smoke test of ``benchmarks/backends.py``: the forward table of a tiny UNETR++ has every path, the exports match
torch, and the end-to-end MONAI reference labels equal ``medseg infer``'s torch labels on a real CT crop."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pipeline.inference import InferenceSettings, infer_cases, load_model
from pipeline.utils.environment import native_bf16

from helpers.benchmarks import load_benchmark_script
from helpers.infer import make_tiny_bundle


@pytest.fixture(scope="module")
def bench():
    return load_benchmark_script("backends")


def test_forward_row_times_every_path_and_exports_match_torch(bench, tmp_path):
    (row,) = bench.forward_rows(["unetrpp_synapse"], repeats=1, threads=1, cache=tmp_path, quick=True)
    name, window, _params, official, torch_s, ov, ort, best_vs_official, ov_ratio, ort_ratio, errors = row
    assert (name, window) == ("unetrpp_synapse", "32x32x16")  # the official (z, y, x) patch, as (x, y, z)
    assert all(float(t) > 0 for t in (official, torch_s, ov, ort))
    for ratio, seconds in ((ov_ratio, ov), (ort_ratio, ort)):  # the ratios are of the unrounded times
        assert abs(float(ratio.rstrip("x")) - float(seconds) / float(torch_s)) < 0.01 + 2e-3 / float(torch_s)
    assert best_vs_official.endswith("x")
    assert all(float(e) <= 1e-3 for e in errors.split(" / ")), errors


def test_monai_reference_labels_equal_medseg_torch_labels(bench, shared_data, tmp_path):
    """The end-to-end baseline (MONAI sliding window + Invertd) computes what ``medseg infer --backend torch`` does,
    so the agreement column measures the backend, not a different pipeline."""
    bundle = make_tiny_bundle(tmp_path / "tiny_ct", preset="ct_abdomen", roi=(64, 64, 32))
    model = load_model(bundle)
    image = sorted((shared_data / "STS_CT" / "imagesTr").glob("*.nii.gz"))[0]
    (result,) = infer_cases([{"image": str(image), "case": "c"}], model, tmp_path / "o", InferenceSettings(quiet=True))
    ours = np.asarray(nib.load(result.output).dataobj)
    ref, gap = bench._monai_labels(model, str(image), model.overlap, model.sw_batch_size)
    assert gap.shape == ref.shape and float(gap.min()) >= 0.0
    assert ref.shape == ours.shape
    assert (ref == ours).mean() >= 0.9999


def test_trained_rows_score_a_shipped_bundle_and_compare_labels_with_the_first_path(bench, shared_data, tmp_path):
    rows = bench.trained_rows(
        1,
        tmp_path / "cache",
        limit=2,
        paths=(("torch", "fp32"), ("onnxruntime", "fp32")),
        bundles=["unetrpp_hippocampus_mri_segmentation"],
    )
    assert [r[1] for r in rows] == ["torch fp32", "onnxruntime fp32"]
    (_, _, n0, dsc0, _, _, worst0, mean0), (_, _, n1, dsc1, _, _, worst1, _) = rows
    assert n0 == n1 == 2 and float(dsc0) >= 0.8  # the shipped weights, not random ones
    assert (worst0, mean0) == ("100.000%", "100.0000%")  # the reference against itself
    assert float(worst1.rstrip("%")) >= 99.99 and abs(float(dsc1) - float(dsc0)) < 0.005


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16 (amx_bf16/avx512_bf16)")
def test_forward_row_with_bf16_columns_on_a_native_bf16_cpu(bench, tmp_path):
    (row,) = bench.forward_rows(["unetrpp_synapse"], repeats=1, threads=1, cache=tmp_path, quick=True, bf16=True)
    assert len(row) == 16
    ov_bf16, torch_bf16, vs_official, vs_fp32, errors = row[11:]
    assert float(ov_bf16) > 0 and float(torch_bf16) > 0 and vs_official.endswith("x") and vs_fp32.endswith("x")
    assert all(float(e) <= 5e-2 for e in errors.split(" / ")), errors  # bf16: 8 mantissa bits
