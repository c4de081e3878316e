"""Markdown sections written by the ``benchmarks/*.py`` scripts, and their assembly into ``benchmarks/RESULTS.md``.

Every benchmark script prints a Markdown table and, with ``--out FILE``, writes one section: a heading, the exact
command, the date, CPU/threads, torch/monai versions and the table. :func:`write_section` does that atomically and
adds a machine-readable marker line; :func:`assemble_results` concatenates the sections (any Markdown file works,
the marker is optional) under one header stamped with hardware, versions and date. Hand-written notes on a section
live in a notes folder (``benchmarks/notes/<script>.md``), never in the section file a script overwrites; they are
printed after their section.

Tables are written with :func:`pipeline.utils.tables.markdown_table`.

Examples:
    >>> from pipeline.benchmark.sections import section_markdown
    >>> text = section_markdown("Tiny", "(table)", command="python t.py", stamp={"date": "2024-01-01"})
    >>> text.splitlines()[0], text.splitlines()[4]
    ('## Tiny', '- command: `python t.py`')
"""

from __future__ import annotations

import datetime as _dt
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.utils.atomic import atomic_path
from pipeline.utils.environment import stamp_line, system_stamp
from pipeline.utils.tables import markdown_table

MARKER_RE = re.compile(r"<!--\s*medseg-bench-section\s+(?P<body>.*?)\s*-->")


def command_line(argv: Sequence[str] | None = None, script: str | None = None) -> str:
    """The exact command as a shell line: ``python <script> <args>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    prog = script if script is not None else sys.argv[0]
    return shlex.join(["python", str(prog), *map(str, args)])


def section_markdown(
    title: str,
    table: str,
    *,
    command: str,
    stamp: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    script: str | None = None,
    details: Sequence[str] = (),
) -> str:
    """One results section: heading, marker, command, date, machine line, versions, ``details`` (more header
    bullets: the setup of the run), table, notes."""
    st = dict(stamp or system_stamp())
    marker = f"<!-- medseg-bench-section script={script or ''} date={st.get('date', '')} -->"
    parts = [
        f"## {title}",
        "",
        marker,
        "",
        f"- command: `{command}`",
        f"- date: {st.get('date', '')}",
        f"- machine: {stamp_line(st)}",
        f"- versions: torch {st.get('torch')}, monai {st.get('monai')}, numpy {st.get('numpy')}",
        *[f"- {d}" for d in details],
        "",
        table.rstrip(),
        "",
    ]
    if notes:
        parts += [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)


def write_section(path: str | Path, title: str, table: str, **section: Any) -> Path:
    """Write :func:`section_markdown` atomically to ``path`` (the ``--out FILE`` of a benchmark script).

    Args:
        path: the section file.
        title, table: as in :func:`section_markdown`.
        section: the keyword arguments of :func:`section_markdown` (``command`` is required); ``script`` defaults to
            the file name without its suffix.
    """
    section["script"] = section.get("script") or Path(path).stem
    text = section_markdown(title, table, **section)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@dataclass
class SectionInfo:
    """A section file as found on disk."""

    path: Path
    title: str
    date: str
    text: str


def read_section(path: str | Path) -> SectionInfo:
    """Read a section file: its first heading is the title, the marker (or ``- date:`` line) gives the date."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    title = p.stem
    for line in text.splitlines():
        m = re.match(r"^(#+)\s+(.*\S)\s*$", line)
        if m:
            title = m.group(2)
            break
    date = ""
    m = MARKER_RE.search(text)
    if m:
        dm = re.search(r"date=(\S+)", m.group("body"))
        date = dm.group(1) if dm else ""
    if not date:
        dm = re.search(r"^- date:\s*(.+)$", text, flags=re.M)
        date = dm.group(1).strip() if dm else ""
    if not date:
        date = _dt.datetime.fromtimestamp(p.stat().st_mtime).astimezone().isoformat(timespec="seconds") + " (mtime)"
    return SectionInfo(p, title, date, text)


def _demote(text: str, top: int = 2) -> str:
    """Shift headings so the text's top heading is level ``top`` (``##`` for a section inside RESULTS.md)."""
    levels = [len(m.group(1)) for m in re.finditer(r"^(#+)\s", text, flags=re.M)]
    if not levels:
        return text
    shift = top - min(levels)
    if shift <= 0:
        return text
    return re.sub(r"^(#+)(\s)", lambda m: "#" * (len(m.group(1)) + shift) + m.group(2), text, flags=re.M)


def note_file(notes_dir: str | Path | None, section: str | Path) -> Path | None:
    """The hand-written notes on ``section`` (``<notes_dir>/<section stem>.md``), or None when there are none.

    Examples:
        >>> note_file(None, "benchmarks/results/eval_speed.md") is None
        True
    """
    if notes_dir is None:
        return None
    path = Path(notes_dir) / f"{Path(section).stem}.md"
    return path if path.is_file() else None


def assemble_results(
    sections: Sequence[str | Path],
    *,
    run_log: Sequence[Mapping[str, Any]] = (),
    stamp: Mapping[str, Any] | None = None,
    command: str = "",
    title: str = "Benchmark results",
    notes_dir: str | Path | None = None,
    stamped: bool = True,
) -> str:
    """Build RESULTS.md: a stamped header, a run log (script, status, seconds), an index, then every section, each
    followed by its notes.

    The output depends only on the arguments and the files (never on the clock when ``stamped`` is False, or when
    ``stamp`` is given), so re-assembling unchanged inputs gives the same bytes.

    Args:
        sections: section files, in the order to print them.
        run_log: one mapping per script run in this invocation: ``name``, ``status``, ``seconds``, ``returncode``,
            ``section`` (path or None), ``error`` (short text).
        stamp: :func:`~pipeline.utils.environment.system_stamp` of the suite run (default: now).
        command: the command that produced the file.
        notes_dir: folder of hand-written notes, ``<stem>.md`` for the section ``<stem>.md``.
        stamped: False for an assembly without a suite run to describe: the header then has no date, command,
            machine or versions (each section states its own).
    """
    st = dict(stamp or system_stamp()) if stamped else {}
    infos = [read_section(s) for s in sections]
    notes = [note_file(notes_dir, i.path) for i in infos]
    out = [
        f"# {title}",
        "",
        "Generated by `benchmarks/run_all.py`; do not edit by hand. Each section was written by its script (its "
        "`results/<script>.md`); the notes after a section come from `notes/<script>.md`, which the scripts never "
        "touch, so edit a note there and re-assemble with `python benchmarks/run_all.py --no-run`. Figures are "
        "medians of the repeats each section states, and ratios compare runs made in the same process, back to "
        "back. Only ratios measured in the same run are meaningful on a shared machine.",
        "",
    ]
    if stamped:
        out += [
            f"- generated: {st.get('date', '')}",
            f"- command: `{command}`" if command else "- command: (assembled from existing sections)",
            f"- machine: {stamp_line(st)}",
            f"- versions: python {st.get('python')}, torch {st.get('torch')}, monai {st.get('monai')}, "
            f"numpy {st.get('numpy')}, scipy {st.get('scipy')}, nibabel {st.get('nibabel')}, "
            f"SimpleITK {st.get('SimpleITK')}",
            "",
        ]
    else:
        out += [
            "- assembled from the section files without a suite run (no record of one): each section states "
            "its own command, date, machine and versions",
            "",
        ]
    if run_log:
        out += ["## Suite run", ""]
        rows = [
            [r.get("name"), r.get("status"), _secs(r.get("seconds")), r.get("returncode"), r.get("error") or ""]
            for r in run_log
        ]
        out += [markdown_table(["script", "status", "seconds", "exit code", "problem"], rows), ""]
    out += ["## Contents", ""]
    if infos:
        out += [
            markdown_table(
                ["section", "file", "measured", "notes"],
                [[i.title, i.path.name, i.date, f"notes/{n.name}" if n else None] for i, n in zip(infos, notes)],
            ),
            "",
        ]
    else:
        out += ["No section files found.", ""]
    for info, note in zip(infos, notes):
        out += [_demote(info.text).rstrip(), ""]
        if note is not None:
            out += [_demote(note.read_text(encoding="utf-8"), top=3).rstrip(), ""]
    return "\n".join(out).rstrip() + "\n"


def _secs(x: Any) -> str:
    return "–" if x is None else f"{float(x):.1f}"
