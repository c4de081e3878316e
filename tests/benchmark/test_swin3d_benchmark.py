"""Smoke run of ``benchmarks/swin3d_forward.py --quick``: tables printed and a Markdown section written atomically."""

from __future__ import annotations

import importlib.util

from pipeline.paths import PROJECT_ROOT


def _load_script():
    spec = importlib.util.spec_from_file_location("swin3d_forward", PROJECT_ROOT / "benchmarks" / "swin3d_forward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_writes_markdown(tmp_path, capsys):
    bench = _load_script()
    out = tmp_path / "section.md"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    text = out.read_text()
    assert text.startswith("## 3D Swin-Unet family")
    for needle in ("--quick", "torch ", "MONAI ", "| quick W-MSA |", "| quick SW-MSA |", "`swinunet3d`", "SwinUNETR"):
        assert needle in text
    assert "| quick SW-MSA |" in printed
    assert "window attentions of one `swinunet3d` forward at 32x32x32" in text
    # the attention rows compare the same maths: MONAI's weights copied into ours (and into the MONAI twins)
    rows = [ln for ln in text.splitlines() if ln.startswith(("| quick", "| encoder.", "| decoder."))]
    assert any(r.startswith("| encoder.0.blocks.1.attn") and "/ 2x2x2 |" in r for r in rows)  # a shifted block
    assert len(rows) > 8
    for line in rows:
        assert float(line.rstrip(" |").split("|")[-1]) < 1e-5, line
    assert not [p for p in tmp_path.iterdir() if p.name != "section.md"]  # no temp file left behind
