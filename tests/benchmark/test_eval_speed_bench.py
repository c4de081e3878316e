"""Smoke test of benchmarks/eval_speed.py: the quick run agrees with MONAI and medpy and writes its section."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.benchmarks import load_benchmark_script

pytest.importorskip("medpy")


@pytest.fixture(scope="module")
def bench():
    return load_benchmark_script("eval_speed")


def test_synthetic_case_has_all_13_organs(bench):
    pred, gt = bench.make_case((96, 96, 30))
    assert pred.shape == gt.shape == (96, 96, 30)
    for a in (pred, gt):
        assert set(np.unique(a)) == set(range(14))


def test_quick_run_values_agree_and_section_is_written(bench, tmp_path, capsys):
    res = bench.run((96, 96, 30), repeats=1, medpy_repeats=1)
    # MONAI works in float32: agreement to float32 precision; medpy (float64) to 1e-9
    assert res["max_rel_monai_hd95"] < 1e-5
    assert res["max_rel_medpy_hd95"] < 1e-9
    assert res["max_abs_monai_dice"] < 1e-6
    out = tmp_path / "eval_speed.md"
    assert bench.main(["--quick", "--no-medpy", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("## Evaluator speed") and "python benchmarks/eval_speed.py --quick" in text
    assert "monai 1.6.1" in text and "| MONAI `compute_hausdorff_distance`" in text
    assert "| tool |" in capsys.readouterr().out
