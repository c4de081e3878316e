"""Write every bundle's generated configs, or check that the committed ones are what the generator writes.

Usage::

    python -m pipeline.bundles.build                 # (re)write bundles/<name>/configs/* from the specs
    python -m pipeline.bundles.build --check         # exit 1 and name each drifted file; nothing is written
    python -m pipeline.bundles.build --bundles-dir D unetrpp_sts_ct_segmentation

The generated files are ``inference.json``, ``train.json``, ``evaluate.json``, ``multi_gpu_train.json``,
``logging.conf`` and, for a bundle whose spec names an official split of ``data/``, ``datalist.json``
(:func:`pipeline.bundles.template.render_bundle`); ``metadata.json``, ``docs/``, ``models/`` and the other bundles'
``datalist.json`` are the bundle's own. A bundle folder with a ``configs/`` but no spec is reported too: every bundle
is generated.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.bundles.spec import BundleSpec
from pipeline.bundles.specs import SPECS
from pipeline.bundles.template import render_bundle
from pipeline.errors import EXIT_USAGE, UsageError
from pipeline.paths import BUNDLES_DIR
from pipeline.utils.atomic import atomic_path

__all__ = ["find_drift", "write_bundles", "main"]

EXIT_DRIFT = 1


def _selected(names: Sequence[str] | None) -> list[BundleSpec]:
    if not names:
        return list(SPECS.values())
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise UsageError(f"no bundle spec named {', '.join(unknown)}; known: {', '.join(sorted(SPECS))}")
    return [SPECS[n] for n in names]


def find_drift(bundles_dir: str | Path = BUNDLES_DIR, names: Sequence[str] | None = None) -> list[str]:
    """One line per generated file that is missing or differs from the generator's text, and per bundle folder
    without a spec (only when all bundles are checked). Empty when everything matches.

    Examples:
        >>> find_drift()  # the committed bundles
        []
    """
    root = Path(bundles_dir)
    problems = []
    for spec in _selected(names):
        for name, text in render_bundle(spec).items():
            path = root / spec.name / "configs" / name
            if not path.is_file():
                problems.append(f"{path}: missing (python -m pipeline.bundles.build writes it)")
            elif path.read_text() != text:
                problems.append(
                    f"{path}: differs from what python -m pipeline.bundles.build writes (edit the spec or the "
                    "template in pipeline/bundles/, then run it)"
                )
    if not names and root.is_dir():
        for folder in sorted(p for p in root.iterdir() if (p / "configs").is_dir() and p.name not in SPECS):
            problems.append(f"{folder}: no spec in pipeline/bundles/specs.py (every bundle's configs are generated)")
    return problems


def write_bundles(bundles_dir: str | Path = BUNDLES_DIR, names: Sequence[str] | None = None) -> list[Path]:
    """Write the generated files of the selected bundles (all by default), atomically; return those that changed.

    Examples:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> [p.name for p in write_bundles(out, ["unetrpp_sts_ct_segmentation"])][:2]
        ['inference.json', 'train.json']
        >>> write_bundles(out, ["unetrpp_sts_ct_segmentation"])  # already up to date
        []
    """
    root = Path(bundles_dir)
    changed = []
    for spec in _selected(names):
        for name, text in render_bundle(spec).items():
            path = root / spec.name / "configs" / name
            if path.is_file() and path.read_text() == text:
                continue
            with atomic_path(path) as tmp:
                tmp.write_text(text)
            changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.bundles.build",
        description="Write the bundles' configs from pipeline/bundles/specs.py and the template, or --check them.",
    )
    parser.add_argument("names", nargs="*", help="bundle names (default: every spec)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each drifted file")
    parser.add_argument("--bundles-dir", type=Path, default=BUNDLES_DIR, help="default: the project's bundles/")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = find_drift(args.bundles_dir, args.names)
            for line in problems:
                print(line, file=sys.stderr)
            if problems:
                return EXIT_DRIFT
            print(f"bundles up to date: {args.bundles_dir}")
            return 0
        changed = write_bundles(args.bundles_dir, args.names)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for path in changed:
        print(f"wrote {path}")
    print(f"{len(changed)} file(s) written, the others were up to date: {args.bundles_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
