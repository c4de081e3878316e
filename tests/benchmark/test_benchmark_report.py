"""Benchmark report format, published tables, section assembly and the speed-suite runner (no heavy benchmarks)."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from pipeline.benchmark.datasets import pick_split, profile_for
from pipeline.benchmark.memory import PeakMemory
from pipeline.benchmark.published import PUBLISHED_TABLES, SYNAPSE_ORDER, get_table
from pipeline.benchmark.report import STAGES, BenchmarkCaseResult, BenchmarkReport
from pipeline.benchmark.sections import assemble_results, read_section, write_section
from pipeline.benchmark.suite import discover_scripts
from pipeline.benchmark.suite import main as suite_main
from pipeline.errors import InputDataError, UsageError
from pipeline.utils.environment import system_stamp
from pipeline.utils.tables import markdown_table

from helpers.benchmarks import load_benchmark_script

# --- published tables -------------------------------------------------------------------------------------------------


def test_published_tables_means_match_their_columns():
    """Transcription guard: a row's printed mean equals the mean of its columns (to rounding), except BTCV, whose
    printed Avg is 0.16-0.44 points above the column mean in every row of the paper."""
    for table in PUBLISHED_TABLES.values():
        for row in table.rows:
            if len(row.dsc) == len(table.classes) and row.mean_dsc is not None:
                gap = row.mean_dsc - sum(row.dsc.values()) / len(row.dsc)
                lo, hi = (0.15, 0.45) if table.key == "btcv" else (-0.015, 0.015)
                assert lo <= gap <= hi, (table.key, row.method, gap)
            assert set(row.dsc) <= set(table.labels), (table.key, row.method)
            assert row.protocol in ("legacy_unetrpp", "legacy_transunet", "nnunet_summary", "unstated")


def test_published_paper_column_orders():
    syn = get_table("synapse")
    assert [c.short for c in syn.classes] == ["Spl", "RKid", "LKid", "Gal", "Liv", "Sto", "Aor", "Pan"]
    assert syn.labels == list(SYNAPSE_ORDER) == [1, 2, 3, 4, 6, 7, 8, 11]
    assert syn.row("UNETR++").dsc[11] == 81.10 and syn.row("UNETR++").mean_hd95 == 7.53
    assert syn.hd95_unit == "voxels" and syn.row("UNETR++").protocol == "legacy_unetrpp"
    assert get_table("btcv").labels == list(range(1, 14))
    assert get_table("lung").row("UNETR++").dsc == {1: 80.68}
    with pytest.raises(KeyError):
        get_table("amos")


# --- profiles and splits --------------------------------------------------------------------------------------------

BTCV_LABELS = {i: f"organ{i}" for i in range(14)}


def test_profiles_pick_table_and_split():
    assert profile_for(layout="synapse_raw", labels=BTCV_LABELS, name="Synapse_like").key == "synapse"
    p = profile_for(layout="btcv_json", labels=BTCV_LABELS, name="BTCV_like")
    assert p.key == "btcv" and p.default_split == "validation" and len(p.classes) == 13
    p = profile_for(layout="msd", labels={0: "background", 1: "cancer"}, name="Task06_Lung_sample")
    assert p.key == "lung" and p.table.row("UNETR++").dsc[1] == 80.68
    p = profile_for(layout="msd", labels={0: "background", 1: "anterior", 2: "posterior"}, name="Task04_Hippocampus")
    assert p.table is None and [(c.label, c.name) for c in p.classes] == [(1, "anterior"), (2, "posterior")]
    with pytest.raises(UsageError):
        profile_for(layout="msd", labels={0: "bg", 1: "x"}, table="synapse")
    with pytest.raises(UsageError):
        profile_for(layout="msd", labels={0: "bg", 1: "x"}, table="nope")


def test_pick_split_aliases_and_errors():
    splits = {
        "training": [{"image": "a", "label": "b"}],
        "validation": [{"image": "c", "label": "d"}],
        "test": [{"image": "e"}],
    }
    name, key, items = pick_split(splits, None, "test", source="/d")
    assert (name, key, items) == ("validation", "validation", [{"image": "c", "label": "d"}])  # test is unlabelled
    assert pick_split(splits, "training", "test", source="/d")[1] == "training"
    with pytest.raises(InputDataError, match="has no labelled case"):
        pick_split(splits, "test", "test", source="/d")
    with pytest.raises(InputDataError, match="does not exist"):
        pick_split({"val": []}, "fold3", "test", source="/d")


# --- report ---------------------------------------------------------------------------------------------------------


def _report(untrained: bool) -> BenchmarkReport:
    syn = get_table("synapse")
    cases = [
        BenchmarkCaseResult(
            "img0001",
            dice={1: 0.9, 2: 0.8, 3: 0.7, 4: None, 6: 0.95, 7: 0.6, 8: 0.85, 11: 0.5},
            hd95={1: 2.0, 2: 3.0, 3: 4.0, 4: None, 6: 5.0, 7: 6.0, 8: 1.0, 11: 9.0},
            timings={"preprocessing": 1.0, "network": 10.0, "stitching": 0.5, "postprocessing": 2.0, "metrics": 0.25},
        ),
        BenchmarkCaseResult(
            "img0002",
            dice=dict.fromkeys(syn.labels, 0.5),
            hd95=dict.fromkeys(syn.labels, 1.0),
            timings={
                "preprocessing": 3.0,
                "network": 20.0,
                "stitching": 1.5,
                "postprocessing": 4.0,
                "metrics": 0.75,
                "io": 0.1,
            },
        ),
        BenchmarkCaseResult("img0003", status="failed", error="prediction shape (1, 2, 3) differs from label"),
    ]
    return BenchmarkReport(
        bundle="unetrpp_synapse",
        dataset="/data/Synapse_like",
        split="test",
        protocol="legacy_unetrpp",
        classes=list(syn.classes),
        cases=cases,
        untrained=untrained,
        layout="synapse_raw",
        hd95_unit="voxel",
        published=syn,
        memory={"peak_rss_mib": 123.4},
        environment=system_stamp(),
        command="medseg benchmark ...",
        split_note="2 of the 12 official test cases are present",
        notes=["a note"],
        warnings=["WARNING: legacy"],
    )


def test_report_aggregation():
    r = _report(False)
    means = r.class_means()
    assert means[1]["dice"] == pytest.approx(0.7) and means[1]["n_dice"] == 2
    assert means[4]["dice"] == pytest.approx(0.5) and means[4]["excluded_dice"] == 1  # None is excluded, counted
    mean = r.mean_scores()
    assert mean["dice"] == pytest.approx(sum(m["dice"] for m in means.values()) / 8)
    t = r.timing_summary()
    assert t["network"]["median"] == pytest.approx(15.0) and t["total"]["total"] == pytest.approx(43.1)
    assert r.stage_names() == [*STAGES, "io"]


def test_report_markdown_layout_and_published_rows():
    r = _report(False)
    md = r.to_markdown()
    assert "UNTRAINED" not in md
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert header.split(" | ")[3:11] == ["Spl", "RKid", "LKid", "Gal", "Liv", "Sto", "Aor", "Pan"]
    ours = next(line for line in md.splitlines() if line.startswith("| **ours**"))
    assert "| 70.00 |" in ours and "legacy_unetrpp" in ours  # spleen: mean of 0.9 and 0.5, in percent
    unetrpp = next(line for line in md.splitlines() if line.startswith("| UNETR++ |"))
    assert "as published" in unetrpp and "| 7.53 | 87.22 |" in unetrpp and "| 81.10 |" in unetrpp
    for heading in (
        "## Per-case results",
        "## Timings per case and stage (s)",
        "## Peak memory",
        "## Hardware and software",
    ):
        assert heading in md
    timing_head = next(line for line in md.splitlines() if line.startswith("| Case | preprocessing"))
    assert timing_head.split(" | ")[1:7] == ["preprocessing", "network", "stitching", "postprocessing", "metrics", "io"]
    assert "failed: prediction shape" in md
    assert "2 of the 12 official test cases" in md and "torch" in md and "> WARNING: legacy" in md
    assert "compare with care" not in md  # legacy_unetrpp is the protocol of the UNETR++ row
    r.protocol = "strict"
    assert "compare with care (`--protocol legacy_transunet / legacy_unetrpp` matches some rows)" in r.to_markdown()


def test_untrained_marked_everywhere(tmp_path):
    r = _report(True)
    paths = r.write(tmp_path)
    md = paths["markdown"].read_text()
    assert md.startswith("# ") and "UNTRAINED" in md.splitlines()[0]
    for line in md.splitlines():
        if line.startswith("#"):
            assert "UNTRAINED" in line, line
    assert "| **ours (UNTRAINED)** |" in md
    data = json.loads(paths["json"].read_text())
    assert data["untrained"] is True and "UNTRAINED" in data["warning"]
    for key in ("csv", "timings_csv"):
        text = paths[key].read_text()
        assert text.startswith("# UNTRAINED")
        rows = list(csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#")))
        assert rows and all(row["untrained"] == "1" for row in rows)
    trained = _report(False).write(tmp_path / "t")
    assert json.loads(trained["json"].read_text())["untrained"] is False
    assert "UNTRAINED" not in trained["csv"].read_text()


def test_report_json_csv_roundtrip(tmp_path):
    r = _report(False)
    paths = r.write(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["protocol"] == "legacy_unetrpp" and data["units"]["hd95"] == "voxel"
    assert data["cases_used"] == ["img0001", "img0002", "img0003"]
    assert [c["class"] for c in data["summary"]["per_class"]] == [
        "Spl",
        "RKid",
        "LKid",
        "Gal",
        "Liv",
        "Sto",
        "Aor",
        "Pan",
    ]
    assert data["summary"]["n_failed"] == 1
    pub = data["published"]
    assert pub["label"] == "as published" and pub["table"] == "synapse"
    assert {row["method"]: row["protocol"] for row in pub["rows"]}["UNETR++"] == "legacy_unetrpp"
    assert data["environment"]["torch"] and data["memory"]["peak_rss_mib"] == 123.4
    rows = list(csv.DictReader(line for line in paths["csv"].read_text().splitlines() if not line.startswith("#")))
    assert len(rows) == 3 * 8
    first = rows[0]
    assert (first["case"], first["label"], first["class"], float(first["dice"])) == ("img0001", "1", "Spl", 0.9)
    gal = next(row for row in rows if row["case"] == "img0001" and row["class"] == "Gal")
    assert gal["dice"] == "" and gal["hd95"] == ""  # excluded stays empty, never 0
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_report_infinite_hd95_is_shown():
    r = BenchmarkReport(
        bundle="b",
        dataset="d",
        split="test",
        protocol="strict",
        classes=list(get_table("lung").classes),
        cases=[BenchmarkCaseResult("c", dice={1: 0.0}, hd95={1: math.inf}, timings={"network": 1.0})],
    )
    assert math.isinf(r.mean_scores()["hd95"])
    assert "| inf |" in r.to_markdown()


# --- memory and stamp -----------------------------------------------------------------------------------------------


def test_peak_memory_sees_an_allocation():
    import numpy as np

    with PeakMemory(interval=0.005) as mem:
        block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, touched
        block.sum()
        del block
    assert mem.peak_rss_bytes - mem.start_rss_bytes > 40 * 2**20
    assert mem.as_dict()["peak_rss_mib"] >= mem.as_dict()["start_rss_mib"]


# --- sections and the suite -----------------------------------------------------------------------------------------


def test_markdown_table_rejects_ragged_rows():
    with pytest.raises(ValueError):
        markdown_table(["a", "b"], [[1]])
    assert "a \\| b" in markdown_table(["x"], [["a | b"]])


def test_assemble_results_from_sections(tmp_path):
    stamp = system_stamp()
    a = write_section(
        tmp_path / "eval_speed.md",
        "Evaluation speed",
        markdown_table(["tool", "s"], [["ours", 1.0]]),
        command="python benchmarks/eval_speed.py",
        stamp=stamp,
    )
    b = tmp_path / "handmade.md"
    b.write_text("# Hand-written\n\n### detail\n\n| x |\n|---|\n| 1 |\n")
    info = read_section(a)
    assert info.title == "Evaluation speed" and info.date == stamp["date"]
    text = assemble_results(
        [a, b],
        stamp=stamp,
        command="python benchmarks/run_all.py --no-run",
        run_log=[{"name": "eval_speed", "status": "ok", "seconds": 1.25, "returncode": 0}],
    )
    assert text.startswith("# Benchmark results\n")
    assert f"- generated: {stamp['date']}" in text and "torch " + stamp["torch"] in text
    assert "| eval_speed | ok | 1.2 | 0 |" in text or "| eval_speed | ok | 1.3 | 0 |" in text
    assert "## Evaluation speed" in text and "| ours | 1.0 |" in text
    assert "## Hand-written" in text and "#### detail" in text  # headings demoted one level, structure kept
    assert text.index("## Evaluation speed") < text.index("## Hand-written")


TINY_SCRIPT = '''
"""A real (tiny) benchmark on the harness: median time of summing a list, written as a section."""
import sys
from pipeline.benchmark import markdown_table, median_time, publish, script_parser

def main(argv=None):
    a = script_parser(__doc__, quick="a short list").parse_args(argv)
    n = 1000 if a.quick else 100000
    t = median_time(lambda: sum(range(n)), repeats=a.repeats)
    table = markdown_table(["op", "median ms", "repeats"], [[f"sum({n})", f"{t['median_s']*1e3:.3f}", a.repeats]])
    publish(table, out=a.out, title="Tiny sum", script="tiny_sum.py", argv=argv)
    return 0

if __name__ == "__main__":
    sys.exit(main())
'''


def test_harness_times_paths_interleaved_after_a_warm_up():
    from pipeline.benchmark.harness import median_time, time_paths

    calls: list[str] = []
    times = time_paths({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # one warm-up call each, then round robin
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    syncs: list[int] = []
    t = median_time(lambda: 42, repeats=2, warmup=0, sync=lambda: syncs.append(1))
    assert t["result"] == 42 and t["repeats"] == 2 and len(t["times_s"]) == 2 and len(syncs) == 4
    with pytest.raises(ValueError, match="repeats"):
        median_time(lambda: None, repeats=0)


def test_harness_threads_options_and_section(tmp_path, capsys):
    import torch

    from pipeline.benchmark.harness import publish, script_parser, torch_threads

    before = torch.get_num_threads()
    with torch_threads(before + 1) as n:
        assert n == torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    parser = script_parser("Tiny benchmark.\n\nMore text.", quick="smoke run")
    args = parser.parse_args(["--quick", "--repeats", "5", "--out", str(tmp_path / "s.md")])
    assert (args.quick, args.repeats, parser.description) == (True, 5, "Tiny benchmark.")
    with pytest.raises(SystemExit):
        parser.parse_args(["--repeats", "0"])
    table = markdown_table(["op", "s"], [["sum", "1.0"]])
    publish(table, out=args.out, title="Tiny", script="/x/benchmarks/tiny.py", argv=["--quick"], details=["n = 3"])
    assert capsys.readouterr().out.strip() == table
    lines = args.out.read_text().splitlines()
    assert lines[0] == "## Tiny" and "script=tiny " in lines[2]
    assert lines[4] == "- command: `python benchmarks/tiny.py --quick`"
    assert lines[6].startswith("- machine: ") and lines[7].startswith("- versions: torch ")
    assert lines[8] == "- n = 3" and lines[10:12] == table.splitlines()[:2]


def _suite_args(scripts, results, out, logs) -> list[str]:
    """The folders of a ``pipeline.benchmark.suite`` run: scripts, their sections, the assembled file, the run logs."""
    return ["--scripts-dir", str(scripts), "--results-dir", str(results), "--output", str(out), "--logs-dir", str(logs)]


def test_suite_runs_scripts_and_regenerates_results(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "tiny_sum.py").write_text(TINY_SCRIPT)
    (scripts / "broken.py").write_text(
        "import sys\ndef main(argv=None):\n    raise SystemExit(3)\nif __name__ == '__main__':\n    main()\n"
    )
    (scripts / "run_all.py").write_text("def main(argv=None): pass\n")  # never runs itself
    (scripts / "_helper.py").write_text("def main(argv=None): pass\n")
    assert [p.stem for p in discover_scripts(scripts)] == ["broken", "tiny_sum"]
    results, out = tmp_path / "results", tmp_path / "RESULTS.md"
    common = _suite_args(scripts, results, out, tmp_path / "logs")
    assert suite_main([*common, "--quick", "--only", "tiny_sum"]) == 0
    text = out.read_text()
    assert "## Tiny sum" in text and "| sum(1000) |" in text and "| tiny_sum | ok |" in text
    assert "--quick --only tiny_sum" in text
    # a failing script: exit 1, RESULTS.md still regenerated with the earlier section and the failure logged
    assert suite_main([*common, "--quick", "--only", "broken"]) == 1
    text = out.read_text()
    assert "| broken | failed |" in text and "exit 3" in text and "## Tiny sum" in text
    assert (tmp_path / "logs" / "broken.log").exists()
    with pytest.raises(UsageError):
        suite_main([*common, "--only", "nope"])
    with pytest.raises(UsageError):
        suite_main([*common, "--repeats", "1"])


def test_run_all_script_entry_point(tmp_path):
    """``benchmarks/run_all.py`` exposes main(argv) and assembles existing sections with --no-run."""
    mod = load_benchmark_script("run_all")
    results = tmp_path / "results"
    write_section(results / "a.md", "Section A", "| a |\n|---|\n| 1 |", command="python a.py")
    out = tmp_path / "R.md"
    assert mod.main(["--no-run", "--results-dir", str(results), "--output", str(out)]) == 0
    assert "## Section A" in out.read_text()
    assert mod.main(["--only", "does_not_exist", "--results-dir", str(results), "--output", str(out)]) == 2


# --- hand-written notes and byte-identical re-assembly ---------------------------------------------------------------


def test_committed_results_regenerate_byte_identical_with_notes(tmp_path):
    """``run_all.py --no-run`` on a copy of benchmarks/results + benchmarks/notes reproduces the committed RESULTS.md
    byte for byte, notes included; the notes live only in notes/ (a script re-run cannot erase them)."""
    import shutil

    from pipeline.paths import PROJECT_ROOT

    bench = PROJECT_ROOT / "benchmarks"
    shutil.copytree(bench / "results", tmp_path / "results")
    shutil.copytree(bench / "notes", tmp_path / "notes")
    out = tmp_path / "RESULTS.md"
    run_all = load_benchmark_script("run_all")
    assert run_all.main(["--no-run", "--results-dir", str(tmp_path / "results"), "--output", str(out)]) == 0
    committed = (bench / "RESULTS.md").read_bytes()
    assert out.read_bytes() == committed, "RESULTS.md differs from the generator's: run benchmarks/run_all.py --no-run"
    notes = sorted((bench / "notes").glob("*.md"))
    assert notes, "benchmarks/notes/ holds no notes"
    text = out.read_text(encoding="utf-8")
    for note in notes:
        body = note.read_text(encoding="utf-8").strip()
        section = tmp_path / "results" / note.name
        if not section.is_file():  # a script not run here yet (benchmarks/gpu.py needs CUDA): the note waits for it
            assert (bench / f"{note.stem}.py").is_file(), f"{note.name} annotates no section and no script"
            assert body not in text, f"{note.name} is printed without its section"
            continue
        assert body in text, f"{note.name} is missing from RESULTS.md"
        assert body not in section.read_text(encoding="utf-8"), f"hand-written note left in results/{note.name}"
        # printed right after its own section, before the next one
        title = read_section(section).title
        assert text.index(f"## {title}") < text.index(body)
    # a note edited in notes/ shows up when re-assembled
    first = notes[0].name
    (tmp_path / "notes" / first).write_text("Notes: re-measured by hand.\n", encoding="utf-8")
    assert run_all.main(["--no-run", "--results-dir", str(tmp_path / "results"), "--output", str(out)]) == 0
    assert "Notes: re-measured by hand." in out.read_text(encoding="utf-8") and out.read_bytes() != committed


def test_notes_survive_a_suite_run_and_no_run_reproduces_it(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "tiny_sum.py").write_text(TINY_SCRIPT)
    results, notes, out = tmp_path / "bench" / "results", tmp_path / "bench" / "notes", tmp_path / "RESULTS.md"
    notes.mkdir(parents=True)
    (notes / "tiny_sum.md").write_text("Notes: the sum runs in pure Python.\n\n### Detail\n\nOne thread.\n")
    common = _suite_args(scripts, results, out, tmp_path / "logs")
    assert suite_main([*common, "--quick"]) == 0  # the script rewrites results/tiny_sum.md ...
    first = out.read_text()
    assert "Notes: the sum runs in pure Python." in first  # ... and the note (default: notes/ beside results/) stays
    # after its section; a heading in a note is nested under the section (### at least)
    assert first.index("## Tiny sum") < first.index("Notes: the sum") < first.index("\n### Detail\n")
    assert "| tiny_sum | ok |" in first and "| notes/tiny_sum.md |" in first
    assert "Notes: the sum" not in (results / "tiny_sum.md").read_text()
    # re-assembling re-uses the suite run's record (stamp, command, run log): same bytes, whatever the clock says
    assert suite_main([*common, "--no-run"]) == 0
    assert out.read_text() == first
    (results / "suite_run.json").write_text("{not json")
    with pytest.raises(UsageError, match="suite_run.json"):
        suite_main([*common, "--no-run"])
