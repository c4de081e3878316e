"""A cache of exported networks, keyed on what an export depends on, in the user's cache folder.

An entry is the folder ``<root>/<ExportKey.digest()>/`` holding ``model.<suffix>`` (plus OpenVINO's ``.bin``) and
``model.<suffix>.json``, as :func:`pipeline.deploy.export.export_loaded` writes them. The key (weights hash, config
hash, window, batch, precision, format, runtime and torch versions, opset, export version) is computed from the
loaded model *before* anything is exported, so a changed checkpoint, window, batch size, precision or runtime version
gives another folder. An entry is used only when its JSON parses, names this very key, records a passed check, and
every file's SHA-256 matches the one recorded; otherwise it is stale or corrupt and is rebuilt, never trusted. Entries
are built in a temporary folder beside the root and renamed into place (atomic; concurrent ranks may both build, the
first rename wins and the other process uses that entry).

The root: ``$MEDSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/medseg/exports``, else ``~/.cache/medseg/exports``.

Examples:
    >>> import os
    >>> os.environ["MEDSEG_CACHE_DIR"] = "/tmp/medseg-cache-doc"
    >>> str(cache_root())
    '/tmp/medseg-cache-doc'
    >>> del os.environ["MEDSEG_CACHE_DIR"]
    >>> cache_root().name, cache_root().parent.name
    ('exports', 'medseg')
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.deploy.export import DEFAULT_OPSET, ExportKey, export_key, export_loaded
from pipeline.deploy.runtimes import FORMATS
from pipeline.inference.loading import LoadedModel
from pipeline.utils.hashing import file_sha256

__all__ = ["CachedExport", "cache_root", "cached_export", "entry_problem"]

logger = logging.getLogger(__name__)

_STEM = "model"


def cache_root(explicit: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``explicit``, else ``$MEDSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/medseg/exports``, else
    ``~/.cache/medseg/exports``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("MEDSEG_CACHE_DIR"):
        return Path(os.environ["MEDSEG_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medseg" / "exports"


@dataclass
class CachedExport:
    """An export ready to load.

    Attributes:
        path: the main file (``model.onnx``, ``model.xml``, ``model.pt``).
        metadata: its JSON (see :func:`pipeline.deploy.export.export_loaded`).
        key: the :class:`ExportKey`.
        status: ``hit`` (used as found), ``built`` (no entry), ``rebuilt`` (the entry was stale or corrupt).
        reason: why an entry was rebuilt ("" otherwise).
    """

    path: Path
    metadata: dict[str, Any]
    key: ExportKey
    status: str
    reason: str = ""


def _main_file(entry: Path, fmt: str) -> Path:
    return entry / f"{_STEM}{FORMATS[fmt].suffixes[0]}"


def entry_problem(entry: Path, key: ExportKey) -> str | None:
    """Why the cache folder ``entry`` cannot be used for ``key`` (None when it can).

    Examples:
        >>> import tempfile
        >>> k = ExportKey("m", "c", "w", (8, 8, 8), 1, 1, "onnx", "fp32", "onnxruntime", "1", "2", 17)
        >>> entry_problem(Path(tempfile.mkdtemp()), k)
        'no metadata (model.onnx.json)'
    """
    main = _main_file(entry, key.format)
    meta_file = main.with_name(main.name + ".json")
    if not meta_file.is_file():
        return f"no metadata ({meta_file.name})"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable metadata {meta_file.name} ({type(exc).__name__})"
    if not isinstance(meta, dict) or meta.get("cache_key") != key.as_dict():
        return "its key differs (other weights, window, batch, precision or runtime version)"
    if not (meta.get("check") or {}).get("passed"):
        return "its check did not pass"
    recorded = meta.get("files_sha256")
    if not isinstance(recorded, dict) or set(recorded) != {f.name for f in FORMATS[key.format].files(main)}:
        return "no file hashes recorded"
    for name, digest in recorded.items():
        f = entry / name
        if not f.is_file():
            return f"{name} is missing"
        if file_sha256(f) != digest:
            return f"{name} does not match its recorded SHA-256 (corrupt or changed)"
    return None


def _discard(entry: Path) -> None:
    """Move ``entry`` aside, then delete it (a reader never sees a half-deleted entry)."""
    if not entry.exists():
        return
    aside = entry.with_name(f".{entry.name}.stale-{os.getpid()}")
    try:
        os.replace(entry, aside)
    except OSError:
        aside = entry
    shutil.rmtree(aside, ignore_errors=True)


def cached_export(
    loaded: LoadedModel,
    fmt: str,
    *,
    bundle: Path | None = None,
    sw_batch_size: int | None = None,
    precision: str = "fp32",
    root: str | os.PathLike | None = None,
    threads: int | None = None,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    reason: str = "",
) -> CachedExport:
    """The cache entry of exporting ``loaded`` as ``fmt``: found and verified, or built (and checked) now.

    Args:
        loaded: the model (CPU); its network is copied for the export, not changed.
        fmt: ``onnx``, ``openvino`` or ``torchscript``.
        bundle: the bundle folder ``loaded`` came from (the check window, the config hash).
        sw_batch_size: the fixed batch of the export (default the model's).
        precision: ``fp32`` or ``bf16``.
        root: the cache folder (default :func:`cache_root`).
        threads: runtime threads for the export's check.
        opset: ONNX opset.
        force: rebuild even a valid entry (``reason`` says why: e.g. the runtime could not load it).
        reason: recorded as :attr:`CachedExport.reason` when ``force`` is set.

    Raises:
        UsageError: missing runtime, unsupported precision.
        ModelError: the export or its check failed.
    """
    key = export_key(loaded, fmt, bundle=bundle, sw_batch_size=sw_batch_size, precision=precision, opset=opset)
    base = cache_root(root)
    entry = base / key.digest()
    problem = reason if force else (entry_problem(entry, key) if entry.exists() else None)
    if entry.exists() and problem is None:
        meta = json.loads(_main_file(entry, fmt).with_name(_main_file(entry, fmt).name + ".json").read_text())
        return CachedExport(_main_file(entry, fmt), meta, key, "hit")
    status = "rebuilt" if entry.exists() else "built"
    if entry.exists():
        logger.info("export cache %s: rebuilding (%s)", entry, problem)
        _discard(entry)
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=base))
    try:
        result = export_loaded(
            loaded,
            fmt,
            _main_file(staging, fmt),
            bundle=bundle,
            untrained=loaded.checkpoint is None,
            sw_batch_size=sw_batch_size,
            opset=opset,
            threads=threads,
            precision=precision,
        )
        try:
            os.replace(staging, entry)  # atomic; fails when another process has put an entry there meanwhile
        except OSError:
            if entry_problem(entry, key) is not None:
                raise
            logger.info("export cache %s: another process built it first; using that entry", entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    meta = dict(result.metadata)
    return CachedExport(_main_file(entry, fmt), meta, key, status, problem or "")
