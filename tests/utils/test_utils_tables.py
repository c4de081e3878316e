"""The one Markdown table writer (pipeline/utils/tables.py) and the reports built on it."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from pipeline.evaluation import ClassSet, get_protocol
from pipeline.evaluation.metrics import evaluate_case
from pipeline.evaluation.report import summary_to_markdown
from pipeline.evaluation.summary import Summary
from pipeline.utils.tables import markdown_table


def _columns(line: str) -> int:
    """Cells of a Markdown table line: unescaped pipes minus one."""
    return len(re.findall(r"(?<!\\)\|", line)) - 1


def test_markdown_table_alignment_number_format_and_padding():
    rows = [["liver", 0.91234, 3], ["spleen", None, 12], ["a|b", math.inf, 0]]
    plain = markdown_table(["class", "DSC", "n"], rows, align=["", "right", "center"], floatfmt=".2f", missing="n/a")
    assert plain.splitlines() == [
        "| class | DSC | n |",
        "|---|---:|:---:|",
        "| liver | 0.91 | 3 |",  # integers are never float-formatted
        "| spleen | n/a | 12 |",
        "| a\\|b | inf | 0 |",
    ]
    padded = markdown_table(
        ["case", "DSC"], [["c1", 0.5], ["case_10", 1.0]], align=["", "right"], pad=True
    ).splitlines()
    assert padded == [
        "| case    | DSC |",
        "|---------|----:|",
        "| c1      | 0.5 |",
        "| case_10 | 1.0 |",
    ]
    per_column = markdown_table(["a", "b"], [[1.23456, 1.23456]], floatfmt=[".1f", ".3f"])
    assert per_column.splitlines()[2] == "| 1.2 | 1.235 |"


def test_markdown_table_rejects_bad_options():
    with pytest.raises(ValueError, match="align has 1 entries for 2 columns"):
        markdown_table(["a", "b"], [[1, 2]], align=["right"])
    with pytest.raises(ValueError, match="unknown alignment 'middle'"):
        markdown_table(["a"], [[1]], align="middle")
    with pytest.raises(ValueError, match="floatfmt has 3 entries"):
        markdown_table(["a", "b"], [[1, 2]], floatfmt=[".1f"] * 3)


def test_evaluation_summary_tables_survive_a_pipe_in_a_class_name():
    """A class name with ``|`` (from a dataset.json) used to add a column to summary.md's tables."""
    gt = np.zeros((12, 12, 6), np.uint8)
    gt[3:8, 3:8, 1:5] = 1
    pred = np.roll(gt, 1, axis=0)
    classes = ClassSet("custom", {1: "left|right kidney"}, "one class")
    rows = [dict(r, case="c1") for r in evaluate_case(pred, gt, (1.0, 1.0, 2.0), classes)]
    md = summary_to_markdown(Summary(protocol=get_protocol("strict"), classes=classes, rows=rows))
    tables = [line for line in md.splitlines() if line.startswith("|")]
    assert len(tables) == 7  # header, separator, 1 row per metric (DSC, HD95); header, separator, 1 class row
    widths = [_columns(line) for line in tables]
    assert widths[:4] == [3] * 4 and widths[4:] == [10] * 3
    assert "| 1 left\\|right kidney | 1 | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 0 |" in tables
