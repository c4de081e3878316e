"""The speed suite behind ``benchmarks/run_all.py``: run each benchmark script, then regenerate RESULTS.md.

Scripts run one after another as child processes of the suite (never two at once, so they do not compete for the
cores), each with ``--out <results>/<stem>.md --repeats N`` (and ``--quick`` when asked). Each script measures its own
reference in the same run and reports ratios. Afterwards every section file in the results folder (refreshed or
from an earlier run) is assembled into RESULTS.md, stamped with hardware, versions and date, with a log of this run.

``--quick`` is a smoke run: unless ``--results-dir``/``--output`` are given it writes under ``outputs/bench_quick/``
so that quick figures never replace the published ones in ``benchmarks/results/``.

Hand-written notes on a section go in ``benchmarks/notes/<script>.md`` (``--notes-dir``; default: ``notes/`` next to
the results folder) and are printed after that section. A suite run records its stamp, command and run log in
``<results>/suite_run.json``; ``--no-run`` re-uses that record, so re-assembling unchanged sections and notes gives
a byte-identical RESULTS.md.

Examples:
    >>> from pipeline.benchmark.suite import discover_scripts
    >>> from pipeline.paths import PROJECT_ROOT
    >>> isinstance(discover_scripts(PROJECT_ROOT / "benchmarks"), list)
    True
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.benchmark.sections import assemble_results, command_line
from pipeline.errors import UsageError
from pipeline.paths import PROJECT_ROOT
from pipeline.utils.atomic import atomic_path, save_json_atomic
from pipeline.utils.environment import system_stamp

BENCH_DIR = PROJECT_ROOT / "benchmarks"
#: the other issues' scripts, in the order they are run and printed; other ``benchmarks/*.py`` follow alphabetically
KNOWN_SCRIPTS: tuple[str, ...] = ("unetrpp_forward", "swin3d_forward", "eval_speed", "infer_volume")
#: files in ``benchmarks/`` that are not benchmark scripts
EXCLUDED = {"run_all"}
MIN_REPEATS = 3
#: the record of the last suite run (stamp, command, run log) in the results folder, re-used by ``--no-run``
RUN_RECORD = "suite_run.json"
_RECORD_KEYS = ("name", "status", "seconds", "returncode", "error")


def save_run_record(results_dir: Path, stamp: dict[str, Any], command: str, run_log: Sequence[dict[str, Any]]) -> Path:
    """Write ``<results_dir>/suite_run.json``: what the header and run log of RESULTS.md are built from."""
    record = {
        "stamp": stamp,
        "command": command,
        "run_log": [{k: entry.get(k) for k in _RECORD_KEYS} for entry in run_log],
    }
    return save_json_atomic(record, results_dir / RUN_RECORD)


def load_run_record(results_dir: Path) -> dict[str, Any] | None:
    """The record :func:`save_run_record` wrote, or None when there is none.

    Raises:
        UsageError: the record exists but is not valid JSON with ``stamp``, ``command`` and ``run_log``.
    """
    path = results_dir / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not {"stamp", "command", "run_log"} <= set(record):
            raise ValueError("expected an object with stamp, command and run_log")
    except ValueError as exc:
        raise UsageError(f"unreadable suite run record ({exc}); delete it or re-run the suite", path=path) from exc
    return record


def discover_scripts(bench_dir: Path) -> list[Path]:
    """Benchmark scripts in ``bench_dir``: the known ones first (if present), then others defining ``main(``."""
    found = {p.stem: p for p in sorted(bench_dir.glob("*.py")) if p.stem not in EXCLUDED and not p.stem.startswith("_")}
    ordered = [found.pop(n) for n in KNOWN_SCRIPTS if n in found]
    for stem in sorted(found):
        p = found[stem]
        try:
            text = p.read_text(encoding="utf-8")
        except OSError:
            continue
        if "def main(" in text:
            ordered.append(p)
    return ordered


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " / ".join(lines[-n:])[:300]


def run_script(
    script: Path, *, out: Path, repeats: int, quick: bool, log: Path, timeout: float | None, env: dict[str, str]
) -> dict[str, Any]:
    """Run one script as a child process; its stdout/stderr go to ``log``. Returns a run-log entry."""
    cmd = [sys.executable, str(script), "--out", str(out), "--repeats", str(repeats)]
    if quick:
        cmd.append("--quick")
    log.parent.mkdir(parents=True, exist_ok=True)
    entry: dict[str, Any] = {
        "name": script.stem,
        "command": " ".join(cmd),
        "section": None,
        "error": None,
        "log": str(log),
    }
    before = out.stat().st_mtime_ns if out.exists() else None
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            proc = subprocess.run(
                cmd, cwd=PROJECT_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    entry["seconds"] = time.perf_counter() - t0
    entry["returncode"] = rc
    refreshed = out.exists() and out.stat().st_mtime_ns != before
    if rc is None:
        entry["status"] = "timeout"
        entry["error"] = f"killed after {timeout:.0f} s; log {log}"
    elif rc != 0:
        entry["status"] = "failed"
        entry["error"] = f"exit {rc}: {_tail(log)}"
    elif not refreshed:
        entry["status"] = "failed"
        entry["error"] = f"exit 0 but {out.name} was not written (does the script support --out?)"
    else:
        entry["status"] = "ok"
    if out.exists():
        entry["section"] = str(out)
    return entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/run_all.py",
        description="Run the benchmark scripts one after another and regenerate benchmarks/RESULTS.md.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: pass --quick to every script and write under outputs/bench_quick/ by default",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this script (stem, e.g. unetrpp_forward); repeatable. Sections of the other "
        "scripts already in the results folder are still assembled",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=MIN_REPEATS,
        help=f"repeats per figure, passed to each script (median; at least {MIN_REPEATS})",
    )
    p.add_argument("--scripts-dir", type=Path, default=BENCH_DIR, help="folder holding the benchmark scripts")
    p.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="folder of the per-script sections (default benchmarks/results, or outputs/bench_quick/"
        "results with --quick)",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="the assembled file (default benchmarks/RESULTS.md, or outputs/bench_quick/RESULTS.md with --quick)",
    )
    p.add_argument(
        "--notes-dir",
        type=Path,
        default=None,
        help="hand-written notes, <script>.md, printed after each section (default: notes/ next to the "
        "results folder, i.e. benchmarks/notes)",
    )
    p.add_argument(
        "--logs-dir",
        type=Path,
        default=None,
        help="where each script's stdout/stderr is kept (default outputs/bench_logs)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="set OMP_NUM_THREADS/MKL_NUM_THREADS for the scripts (default: inherit)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before a script is killed")
    p.add_argument("--no-run", action="store_true", help="only assemble RESULTS.md from the existing sections")
    p.add_argument("--list", action="store_true", help="list the scripts that would run and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; returns 0, or 1 when a script failed (RESULTS.md is still written), 2 on bad options."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(args_list)
    if args.repeats < MIN_REPEATS and not args.quick:
        raise UsageError(f"--repeats {args.repeats}: every figure must be a median of at least {MIN_REPEATS} repeats")
    quick_root = PROJECT_ROOT / "outputs" / "bench_quick"
    results_dir = args.results_dir or (quick_root / "results" if args.quick else BENCH_DIR / "results")
    output = args.output or (quick_root / "RESULTS.md" if args.quick else BENCH_DIR / "RESULTS.md")
    logs_dir = args.logs_dir or PROJECT_ROOT / "outputs" / "bench_logs"
    scripts = discover_scripts(args.scripts_dir)
    if args.only:
        names = {p.stem: p for p in scripts}
        unknown = [n for n in args.only if n not in names]
        if unknown:
            raise UsageError(
                f"--only {', '.join(unknown)}: no such script in {args.scripts_dir} (have {', '.join(names) or 'none'})"
            )
        scripts = [names[n] for n in args.only]
    if args.list:
        for s in scripts:
            print(s.stem)
        return 0

    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])

    run_log: list[dict[str, Any]] = []
    if not args.no_run:
        results_dir.mkdir(parents=True, exist_ok=True)
        for script in scripts:
            print(f"[run_all] {script.stem} ...", flush=True)
            entry = run_script(
                script,
                out=results_dir / f"{script.stem}.md",
                repeats=args.repeats,
                quick=args.quick,
                log=logs_dir / f"{script.stem}.log",
                timeout=args.timeout,
                env=env,
            )
            print(
                f"[run_all] {script.stem}: {entry['status']} in {entry['seconds']:.1f} s"
                + (f" ({entry['error']})" if entry["error"] else ""),
                flush=True,
            )
            if entry["status"] == "ok":
                print(Path(entry["section"]).read_text(encoding="utf-8"), flush=True)
            run_log.append(entry)

    order = {s.stem: i for i, s in enumerate(discover_scripts(args.scripts_dir))}
    sections = (
        sorted(results_dir.glob("*.md"), key=lambda p: (order.get(p.stem, len(order)), p.stem))
        if results_dir.is_dir()
        else []
    )
    notes_dir = args.notes_dir or results_dir.parent / "notes"
    if not args.no_run:
        save_run_record(results_dir, system_stamp(), command_line(args_list, "benchmarks/run_all.py"), run_log)
    # both paths assemble from the record as stored, so --no-run later gives the same bytes
    record = load_run_record(results_dir)
    if record is None:
        text = assemble_results(sections, notes_dir=notes_dir, stamped=False)
    else:
        text = assemble_results(
            sections, run_log=record["run_log"], stamp=record["stamp"], command=record["command"], notes_dir=notes_dir
        )
    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"[run_all] wrote {output} ({len(sections)} section(s))", flush=True)
    failed = [e["name"] for e in run_log if e["status"] != "ok"]
    if failed:
        print(f"[run_all] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
