"""Command lines of the ``medseg`` sub-commands the tests run again and again (``infer``, ``evaluate``, ``benchmark``).

Each builder returns the argv list for ``pipeline.cli.main`` (or ``helpers.bad_inputs.cli``): the required options
first, then ``options`` as given, every item converted with ``str`` so paths can be passed as they are.

Examples:
    >>> evaluate_argv("p", "l", "--classes", "1,2", out="rep", workers=1)
    ['evaluate', '--pred', 'p', '--label', 'l', '--out', 'rep', '--workers', '1', '--quiet', '--classes', '1,2']
    >>> infer_argv("bundle", "in", "out", "--overlap", 0.5, quiet=False)
    ['infer', '--model', 'bundle', '--input', 'in', '--output', 'out', '--overlap', '0.5']
"""

from __future__ import annotations

import os

PathLike = str | os.PathLike


def infer_argv(model: PathLike, inp: PathLike, out: PathLike, *options: object, quiet: bool = True) -> list[str]:
    """``infer --model MODEL --input INP --output OUT [--quiet] OPTIONS...``."""
    argv = ["infer", "--model", model, "--input", inp, "--output", out, *(["--quiet"] if quiet else []), *options]
    return [str(a) for a in argv]


def evaluate_argv(
    pred: PathLike,
    label: PathLike,
    *options: object,
    out: PathLike | None = None,
    workers: int | None = None,
    quiet: bool = True,
) -> list[str]:
    """``evaluate --pred PRED --label LABEL [--out OUT] [--workers N] [--quiet] OPTIONS...``."""
    argv: list[object] = ["evaluate", "--pred", pred, "--label", label]
    if out is not None:
        argv += ["--out", out]
    if workers is not None:
        argv += ["--workers", workers]
    if quiet:
        argv.append("--quiet")
    return [str(a) for a in [*argv, *options]]


def benchmark_argv(bundle: PathLike, data: PathLike, out: PathLike, *options: object) -> list[str]:
    """``benchmark --bundle BUNDLE --data DATA --out OUT OPTIONS...`` (options last, so a test may swap the tail)."""
    return [str(a) for a in ["benchmark", "--bundle", bundle, "--data", data, "--out", out, *options]]
