"""``medseg demo --ct``: the shipped soft-tissue-sarcoma CT model on its validation cases, and the demo's bundle
options."""

from __future__ import annotations

import json
import shutil

from pipeline import demo
from pipeline.cli import main


def test_shipped_sts_weights_segment_two_validation_cases(tmp_path, shared_data):
    weights = demo.CT_BUNDLE / "models" / "model.pt"
    assert weights.is_file(), f"{weights} is shipped with the project"
    summary = demo.run_demo(
        tmp_path / "ct", data_root=str(shared_data), download=False, limit=2, overlays=1, bundle=demo.CT_BUNDLE
    )
    datalist = json.loads((demo.CT_BUNDLE / "configs" / "datalist.json").read_text())
    first = [d["image"].split("/")[-1].split(".")[0] for d in datalist["validation"][:2]]
    assert [r["case"] for r in summary["per_case"]] == first
    assert set(summary["mean_dice"]) == {"tumour", "mean"}
    # the two cases (sts_025, sts_026) scored 0.587 and 0.819 when the weights were shipped: mean 0.703
    assert summary["mean_dice"]["tumour"] >= 0.6, summary["per_case"]
    for row in summary["per_case"]:  # and neither case is a failure
        assert row["dice_tumour"] >= 0.5, row
        assert 0 <= row["hd95_tumour"] < 50, row  # mm, from the header spacing
    assert (tmp_path / "ct" / "overlays" / f"{first[0]}.png").stat().st_size > 1000
    assert "protocol strict" in (tmp_path / "ct" / "summary.md").read_text()


def test_ct_flag_and_bundle_errors_are_one_line(tmp_path, capsys):
    assert main(["demo", "--ct", "--bundle", "x", "--out", str(tmp_path / "o")]) == 2
    assert main(["demo", "--bundle", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    # a bundle without weights is refused rather than demonstrated with random labels
    bundle = tmp_path / "no_weights"
    shutil.copytree(demo.CT_BUNDLE / "configs", bundle / "configs")
    assert main(["demo", "--bundle", str(bundle), "--out", str(tmp_path / "o")]) == 4
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 3 and all(ln.startswith("error:") for ln in err)
    assert "no trained weights" in err[2] and str(bundle) in err[2]
    assert not (tmp_path / "o").exists()
