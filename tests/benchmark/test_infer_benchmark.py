"""Smoke run of ``benchmarks/infer_volume.py --quick``: it runs, writes its Markdown section, and modes agree."""

from __future__ import annotations

import importlib.util

from pipeline.paths import PROJECT_ROOT


def test_infer_volume_quick(tmp_path, shared_data, capsys):
    spec = importlib.util.spec_from_file_location("infer_volume", PROJECT_ROOT / "benchmarks" / "infer_volume.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "section.md"
    assert mod.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("## Sliding-window inference")
    assert "torch" in text and "monai" in text and "--quick" in text
    rows = [line for line in text.splitlines() if line.startswith("| stream |") or line.startswith("| engine |")]
    assert len(rows) == 3  # engine + stream on real CT, stream on the synthetic volume
    for row in rows:  # streaming and the blended engine reproduce MONAI's labels exactly
        assert "| 100.0000% | 100.0000% |" in row
    assert "| monai |" in capsys.readouterr().out
