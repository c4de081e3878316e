"""Learning curve of a bundle training run, from the ``training_log.jsonl`` that :class:`TrainingLog` writes.

``python -m pipeline.training.curve RUN/training_log.jsonl --png docs/learning_curve.png`` prints the per-epoch
Markdown table (epoch, iterations, mean train loss, validation metrics, epoch time) and draws the curve: the mean
train loss per epoch on the left axis, the validation Dice metrics (names containing ``dice``) on the right one.

A resumed run appends to the same log, so an epoch can appear twice (the interrupted one and its rerun); the last
record of each epoch wins.

Examples:
    >>> import json, tempfile, pathlib
    >>> log = pathlib.Path(tempfile.mkdtemp()) / "training_log.jsonl"
    >>> _ = log.write_text("\\n".join(json.dumps(r) for r in [
    ...     {"epoch": 1, "iteration": 1, "loss": 0.9, "lr": 0.01},
    ...     {"epoch": 1, "iteration": 2, "epoch_loss": 0.8, "seconds": 3.0, "val_mean_dice": 0.5}]))
    >>> [r["epoch"] for r in read_epochs(log)]
    [1]
    >>> print(epoch_table(read_epochs(log)).splitlines()[2])
    | 1 | 2 | 0.8000 | 0.5000 | 3 |
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import InputDataError
from pipeline.utils.tables import markdown_table

__all__ = ["read_epochs", "epoch_table", "plot_curve", "main"]


def read_epochs(path: str | os.PathLike) -> list[dict]:
    """The per-epoch records of a training log (records holding ``epoch_loss``), last one per epoch, in order.

    Raises:
        InputDataError: the file is missing, a line is not JSON, or it holds no epoch record.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError("training log not found", path=path)
    epochs: dict[int, dict] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise InputDataError(f"line {n} is not JSON", path=path) from None
        if "epoch_loss" in record:
            epochs[int(record["epoch"])] = record
    if not epochs:
        raise InputDataError("no completed epoch in the training log", path=path)
    return [epochs[e] for e in sorted(epochs)]


def _metric_names(epochs: Sequence[dict]) -> list[str]:
    return sorted({k for r in epochs for k in r if k.startswith("val_")})


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def epoch_table(epochs: Sequence[dict]) -> str:
    """The Markdown table of a run, one row per epoch: epoch, iterations, mean train loss, each validation metric
    (``-`` when not validated), epoch time in seconds."""
    metrics = _metric_names(epochs)
    head = ["epoch", "iterations", "train loss (epoch mean)", *(m.removeprefix("val_") for m in metrics), "time (s)"]
    rows = [
        [
            r["epoch"],
            r.get("iteration", "-"),
            float(r["epoch_loss"]),
            *(_finite(r.get(m)) for m in metrics),
            float(r.get("seconds", float("nan"))),
        ]
        for r in epochs
    ]
    return markdown_table(head, rows, floatfmt=["", "", ".4f", *[".4f"] * len(metrics), ".0f"], missing="-")


def plot_curve(epochs: Sequence[dict], png: str | os.PathLike, title: str = "") -> Path:
    """Draw the curve to ``png`` (written atomically); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.utils.atomic import atomic_path

    x = [r["epoch"] for r in epochs]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(x, [r["epoch_loss"] for r in epochs], color="tab:blue", label="train loss (epoch mean)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss")
    right = ax.twinx()
    dice = [m for m in _metric_names(epochs) if "dice" in m]
    for m, colour in zip(dice, ("tab:red", "tab:green", "tab:purple", "tab:orange")):
        pts = [(r["epoch"], r[m]) for r in epochs if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
        if pts:
            right.plot(*zip(*pts), "o-", color=colour, label=m.removeprefix("val_"))
    right.set_ylabel("validation Dice")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    ax.legend(handles, labels, loc="center right", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(png)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.training.curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="training_log.jsonl of a run")
    parser.add_argument("--png", type=Path, help="draw the curve to this PNG")
    parser.add_argument("--title", default="", help="title of the plot")
    args = parser.parse_args(argv)
    try:
        epochs = read_epochs(args.log)
    except InputDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(epoch_table(epochs))
    if args.png:
        print(f"wrote {plot_curve(epochs, args.png, args.title)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
