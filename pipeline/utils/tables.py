"""The one Markdown table writer of every report: evaluation summaries, benchmark reports, RESULTS.md sections,
learning curves, dataset checks and the demo.

Cells are ``str()``-ed, ``None`` prints as ``missing``, and ``|`` / newlines are escaped so that a cell never breaks
the table. Options cover what the reports differ in: column alignment, number formatting and padding the columns
to equal width (for tables read in a terminal).

Examples:
    >>> print(markdown_table(["op", "ms"], [["sum", 1.5]]))
    | op | ms |
    |---|---|
    | sum | 1.5 |
    >>> print(markdown_table(["class", "DSC"], [["liver", 0.91234], ["spleen", None]], align=["", "right"],
    ...                      floatfmt=".2f", missing="n/a"))
    | class | DSC |
    |---|---:|
    | liver | 0.91 |
    | spleen | n/a |
    >>> print(markdown_table(["case", "status"], [["c1", "OK"], ["case_10", "BROKEN"]], pad=True))
    | case    | status |
    |---------|--------|
    | c1      | OK     |
    | case_10 | BROKEN |
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["markdown_table", "ALIGNMENTS"]

#: column alignments: the separator cell of each, without padding
ALIGNMENTS = {"": "---", "left": ":---", "right": "---:", "center": ":---:"}


def _per_column(option: str | Sequence[str] | None, n: int, name: str) -> list[str]:
    if option is None:
        return [""] * n
    if isinstance(option, str):
        return [option] * n
    values = list(option)
    if len(values) != n:
        raise ValueError(f"markdown_table: {name} has {len(values)} entries for {n} columns")
    return values


def _separator(align: str, width: int | None) -> str:
    if width is None:
        return ALIGNMENTS[align]
    width += 2  # the spaces either side of a padded cell
    left, right = align in ("left", "center"), align in ("right", "center")
    return (":" if left else "") + "-" * (width - left - right) + (":" if right else "")


def markdown_table(
    headers: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    *,
    align: str | Sequence[str] | None = None,
    floatfmt: str | Sequence[str] = "",
    missing: str = "–",
    pad: bool = False,
) -> str:
    """A GitHub Markdown table (no trailing newline).

    Args:
        headers: the column titles.
        rows: the rows, each with one cell per header.
        align: one alignment for every column, or one per column: ``""`` (the renderer's default), ``"left"``,
            ``"right"`` or ``"center"``.
        floatfmt: a format spec (e.g. ``".2f"``) for the non-integer numbers of every column, or one per column
            (``""``: ``str()``). Integers, strings and other cells are always ``str()``-ed.
        missing: the text of a ``None`` cell.
        pad: pad every column to its widest cell (right-aligned columns are padded on the left), so that the
            table also reads well as plain text.

    Raises:
        ValueError: a row has a different number of cells than there are headers, an option has the wrong length,
            or an alignment is unknown.

    Examples:
        >>> markdown_table(["a", "b"], [[1, "x|y"]]).splitlines()[2]
        '| 1 | x\\\\|y |'
    """
    n = len(headers)
    aligns = _per_column(align, n, "align")
    bad = [a for a in aligns if a not in ALIGNMENTS]
    if bad:
        raise ValueError(f"markdown_table: unknown alignment {bad[0]!r} (known: {', '.join(map(repr, ALIGNMENTS))})")
    formats = _per_column(floatfmt, n, "floatfmt")

    def cell(x: Any, fmt: str) -> str:
        if x is None:
            text = missing
        elif fmt and isinstance(x, numbers.Real) and not isinstance(x, numbers.Integral):
            text = format(x, fmt)
        else:
            text = str(x)
        return text.replace("|", "\\|").replace("\n", " ")

    head = [cell(h, "") for h in headers]
    body = []
    for row in rows:
        if len(row) != n:
            raise ValueError(f"markdown_table: row {list(row)!r} has {len(row)} cells for {n} headers")
        body.append([cell(x, f) for x, f in zip(row, formats)])
    if pad:
        widths: list[int | None] = [max(len(c) for c in column) for column in zip(head, *body)]
    else:
        widths = [None] * n

    def line(cells: list[str]) -> str:
        if pad:
            cells = [c.rjust(w or 0) if a == "right" else c.ljust(w or 0) for c, w, a in zip(cells, widths, aligns)]
        return "| " + " | ".join(cells) + " |"

    lines = [line(head), "|" + "".join(_separator(a, w) + "|" for a, w in zip(aligns, widths))]
    lines += [line(r) for r in body]
    return "\n".join(lines)
