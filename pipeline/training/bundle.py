"""Helpers that bundle configs call in ``$`` expressions: where the bundle and the data are, and whether its weights
exist (:func:`require_weights` refuses to run a bundle without ``models/model.pt`` unless ``allow_untrained``).

A MONAI bundle config cannot see its own file name, and the model zoo works around that by requiring the working
directory to be the bundle root (``"bundle_root": "."``). :func:`bundle_root` instead reads the config file from the
command line of a ``python -m monai.bundle`` process (``run``, ``verify_net_in_out``, ``ckpt_export``..., also under
``torchrun``), so ``python -m monai.bundle run --config_file /any/path/bundles/<name>/configs/inference.json`` works
from any working directory. Python callers that build a ``ConfigWorkflow`` or ``ConfigParser`` themselves pass the
folder (``medseg train``/``infer``/``benchmark``/``demo`` set ``bundle_root``); an explicit ``--bundle_root DIR``
override always wins, because it replaces the expression.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.errors import EXIT_MODEL, EXIT_USAGE
from pipeline.paths import BUNDLES_DIR, find_data_root

__all__ = ["bundle_root", "command_line_config", "dataset_dir", "require_weights", "MissingWeightsExit"]

#: the options of MONAI's bundle entry points (``monai.bundle.scripts``, parsed by ``fire``) that name config files
_CONFIG_OPTIONS = ("config_file", "config-file")
_CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def _as_paths(value: object) -> Iterable[Path]:
    """The file paths of a ``config_file`` value: a path, a list, or the CLI's ``"['a.json','b.json']"``/``"a,b"``."""
    if isinstance(value, (str, os.PathLike)):
        text = str(value).strip()
        if text.startswith("[") and text.endswith("]"):  # a CLI list given as a string
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                parsed = [part.strip().strip("'\"") for part in text[1:-1].split(",")]
            yield from _as_paths(parsed)
        elif "," in text and not Path(text).is_file():  # monai.bundle also splits "a.json,b.json"
            for part in text.split(","):
                yield Path(part.strip())
        else:
            yield Path(text)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (str, os.PathLike)):
                yield Path(item)


def _root_of(config_file: Path) -> Path:
    folder = config_file.resolve().parent
    return folder.parent if folder.name == "configs" else folder


def _option(argv: Sequence[str], names: Sequence[str]) -> str | None:
    """The value of ``--NAME VALUE`` or ``--NAME=VALUE`` in ``argv`` (the last one given), else None."""
    found = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == f"--{name}" and i + 1 < len(argv):
                found = argv[i + 1]
            elif arg.startswith(f"--{name}="):
                found = arg.split("=", 1)[1]
    return found


def command_line_config(argv: Sequence[str] | None = None) -> Path | None:
    """The first config file of a ``python -m monai.bundle ...`` command line, else None.

    The file is the ``--config_file`` value (a path, or a list as ``"['train.json','multi_gpu_train.json']"``), or
    the ``config_file`` of the ``--args_file`` MONAI reads; a relative path is taken from the working directory, as
    MONAI does. Other processes (``medseg``, pytest, a user's script) give None: their configs are found by the
    caller, which sets ``bundle_root``.

    Args:
        argv: the command line; default ``sys.argv``.

    Examples:
        >>> import monai.bundle, os
        >>> main = os.path.join(os.path.dirname(monai.bundle.__file__), "__main__.py")
        >>> cfg = BUNDLES_DIR / "unetrpp_sts_ct_segmentation" / "configs" / "train.json"
        >>> command_line_config([main, "run", "--config_file", f"['{cfg}', 'multi_gpu_train.json']"]) == cfg
        True
        >>> command_line_config(["pytest", "--config_file", str(cfg)]) is None  # not a monai.bundle process
        True
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py"):
        return None
    value: object = _option(argv[1:], _CONFIG_OPTIONS)
    if value is None:
        args_file = _option(argv[1:], ("args_file", "args-file"))
        if args_file is None or not Path(args_file).is_file():
            return None
        from monai.bundle import ConfigParser

        value = ConfigParser.load_config_file(args_file).get("config_file")
    for path in _as_paths(value):
        if path.suffix.lower() in _CONFIG_SUFFIXES and path.is_file():
            return path
    return None


def bundle_root(name: str | None = None) -> str:
    """The folder of the bundle whose config is being parsed (``"bundle_root"`` of every bundle config).

    Looked up, in order: the config file of a ``python -m monai.bundle`` command line
    (:func:`command_line_config`; its parent, or the folder above ``configs/``); ``bundles/<name>`` of this project;
    the working directory. No call-stack inspection: a Python caller running a bundle that is not one of this
    project's ``bundles/`` passes ``bundle_root`` (``ConfigWorkflow(..., bundle_root=DIR)`` or
    ``parser["bundle_root"] = DIR``), as ``medseg`` does.

    Args:
        name: the bundle's folder name, used for the project fallback.

    Examples:
        >>> bundle_root("unetrpp_hippocampus_mri_segmentation").endswith("unetrpp_hippocampus_mri_segmentation")
        True
        >>> import os; bundle_root("no_such_bundle") == os.getcwd()
        True
    """
    config = command_line_config()
    if config is not None:
        return str(_root_of(config))
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
