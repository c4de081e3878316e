"""Helpers that bundle configs call in ``$`` expressions: where the bundle and the data are, and whether its weights
exist (:func:`require_weights` refuses to run a bundle without ``models/model.pt`` unless ``allow_untrained``).

A MONAI bundle config cannot see its own file name, and the model zoo works around that by requiring the working
directory to be the bundle root. :func:`bundle_root` instead finds the config file the running MONAI workflow (or
``ConfigParser``-based script such as ``ckpt_export``/``verify_net_in_out``) was given, so
``python -m monai.bundle run --config_file /any/path/bundles/<name>/configs/inference.json`` works from any working
directory. An explicit ``--bundle_root DIR`` override always wins, because it replaces the expression.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from monai.bundle import ConfigWorkflow

from pipeline.errors import EXIT_MODEL, EXIT_USAGE
from pipeline.paths import BUNDLES_DIR, find_data_root

__all__ = ["bundle_root", "dataset_dir", "require_weights", "MissingWeightsExit"]

#: local-variable names that hold the config file(s) in MONAI's bundle entry points (``monai.bundle.scripts``)
_CONFIG_LOCALS = ("config_file", "config_file_", "_config_files", "config_files")


def _as_paths(value: object) -> Iterable[Path]:
    if isinstance(value, (str, os.PathLike)):
        text = str(value)
        if text.startswith("[") and text.endswith("]"):  # a CLI list given as a string
            for part in text[1:-1].split(","):
                yield Path(part.strip().strip("'\""))
        else:
            yield Path(text)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (str, os.PathLike)):
                yield Path(item)


def _root_of(config_file: Path) -> Path:
    folder = config_file.resolve().parent
    return folder.parent if folder.name == "configs" else folder


def bundle_root(name: str | None = None) -> str:
    """The folder of the bundle whose config is being parsed.

    Looked up, in order: a running ``ConfigWorkflow``'s ``config_root_path``; the ``config_file`` argument of a MONAI
    bundle function on the call stack; ``bundles/<name>`` of this project; the working directory.

    Args:
        name: the bundle's folder name, used for the project fallback.

    Examples:
        >>> import os; os.path.isdir(bundle_root())
        True
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            local = frame.f_locals
            owner = local.get("self")
            if isinstance(owner, ConfigWorkflow) and getattr(owner, "config_root_path", None) is not None:
                folder = Path(owner.config_root_path).resolve()
                return str(folder.parent if folder.name == "configs" else folder)
            for key in _CONFIG_LOCALS:
                for path in _as_paths(local.get(key)):
                    if path.suffix in (".json", ".yaml", ".yml") and path.is_file():
                        return str(_root_of(path))
            frame = frame.f_back
    finally:
        del frame
    if name and (BUNDLES_DIR / name).is_dir():
        return str(BUNDLES_DIR / name)
    return os.getcwd()


class MissingWeightsExit(SystemExit):
    """Raised by :func:`require_weights`: the bundle has no trained weights and untrained ones were not allowed.

    A ``SystemExit`` (exit code 4, "bad model"), not an ``Exception``: MONAI's config parser wraps every
    ``Exception`` raised in a ``$`` expression into a ``RuntimeError`` whose traceback would bury the message, while a
    ``SystemExit`` ends ``python -m monai.bundle run`` with the one line already printed. ``message`` holds that line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_MODEL)
        self.message = message


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "none", "")


def _as_flag(value: object) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"allow_untrained must be true or false, got {value!r}")
    return bool(value)


def require_weights(ckpt_path: str | os.PathLike, allow_untrained: bool | str = False) -> bool:
    """Whether a bundle's ``CheckpointLoader`` should run: refuse to go on without trained weights unless asked to.

    Bundle configs call it as the loader's ``_disabled_`` expression,
    ``"$not pipeline.training.bundle.require_weights(@ckpt_path, @allow_untrained)"``, so that
    ``python -m monai.bundle run`` never writes label maps or metrics from a randomly initialised network by accident.

    Args:
        ckpt_path: the weights file (``<bundle>/models/model.pt``).
        allow_untrained: run without the file anyway (smoke tests); ``--allow_untrained true`` on the command line
            gives the string ``"true"``, which is accepted like ``True``.

    Returns:
        True when the file exists (load it); False when it is missing and ``allow_untrained`` (a one-line warning is
        printed on stderr and the network keeps its random initialisation).

    Raises:
        MissingWeightsExit: the file is missing and untrained weights were not allowed. The one-line error, naming
            the file and the override, is printed on stderr first; the exit code is 4.
        SystemExit: ``allow_untrained`` is a string that is not a yes/no value (exit code 2, after one line).

    Examples:
        >>> require_weights(__file__)  # an existing file: the CheckpointLoader runs
        True
        >>> require_weights("/nonexistent/models/model.pt", allow_untrained="true")  # a warning line on stderr
        False
    """
    path = Path(ckpt_path)
    try:
        allowed = _as_flag(allow_untrained)
    except ValueError as exc:
        print(f"error: {exc} (e.g. --allow_untrained true)", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USAGE) from None
    if path.is_file():
        return True
    if allowed:
        print(
            f"warning: {path}: no trained weights; running with a randomly initialised network "
            "(allow_untrained): the outputs are not a segmentation",
            file=sys.stderr,
            flush=True,
        )
        return False
    bundle = path.parent.parent if path.parent.name == "models" else "BUNDLE"
    message = (
        f"error: {path}: no trained weights (file not found): the bundle would run with a randomly "
        f"initialised network. Train it (medseg train --bundle {bundle}), pass the weights with "
        "--ckpt_path FILE, or add --allow_untrained true for a smoke test"
    )
    print(message, file=sys.stderr, flush=True)
    raise MissingWeightsExit(message)


def dataset_dir(name: str) -> str:
    """``<data root>/<name>`` (``$MEDSEG_DATA``, else ``../shared/data``), or ``./data/<name>`` when there is none.

    Examples:
        >>> dataset_dir("Task04_Hippocampus").endswith("Task04_Hippocampus")
        True
    """
    root = find_data_root()
    return str((root if root is not None else Path.cwd() / "data") / name)


_TRAIN_NAMES = ("training", "train")
_VAL_NAMES = ("validation", "val", "test")


def split_datalist(dataset: str | os.PathLike, which: str = "training", val_fraction: float = 0.2) -> list[dict]:
    """The ``which`` ("training" or "validation") datalist of a labelled dataset folder.

    Uses :func:`pipeline.data.readers.read_dataset` (which knows MSD, BTCV ``dataset_0.json``, Synapse RawData with
    the official 18/12 split, nnU-Net...). When the folder defines no labelled validation split, the last
    ``val_fraction`` of the sorted training cases (at least one) is held out, so the two lists never overlap.

    Args:
        dataset: the dataset folder.
        which: ``"training"`` or ``"validation"``.
        val_fraction: held-out fraction when the dataset has no validation split.
    """
    from pipeline.data.readers import read_dataset

    if which not in ("training", "validation"):
        raise ValueError(f"which must be 'training' or 'validation', got {which!r}")
    splits = read_dataset(dataset).splits

    def labelled(names: tuple[str, ...]) -> list[dict]:
        for name in names:
            items = [d for d in splits.get(name, []) if d.get("label")]
            if items:
                return items
        return []

    train, val = labelled(_TRAIN_NAMES), labelled(_VAL_NAMES)
    if not train and not val:
        train = labelled(("all",))
    if not val:
        ordered = sorted(train, key=lambda d: str(d["image"]))
        n_val = max(1, int(round(len(ordered) * val_fraction))) if len(ordered) > 1 else 0
        train, val = ordered[: len(ordered) - n_val], ordered[len(ordered) - n_val :]
    return train if which == "training" else val
