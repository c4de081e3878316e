"""Input checks inside the preprocessing pipeline: a bad volume fails as one line naming its file.

:class:`CheckImaged` runs right after loading, before any resampling, so a 2D image, a wrong channel count or NaN/Inf
voxels are reported as :class:`~pipeline.errors.InputDataError` (exit code 3, or one failed case in a batch) instead of
a shape error deep inside a network or a silently meaningless prediction. :class:`CheckedCompose` re-raises such
errors as they are, rather than wrapped in MONAI's ``RuntimeError("applying transform ...")``.

Examples:
    >>> import torch
    >>> from monai.data import MetaTensor
    >>> check = CheckImaged(keys="image", channels=1)
    >>> _ = check({"image": MetaTensor(torch.zeros(1, 4, 4, 4))})
    >>> check({"image": MetaTensor(torch.zeros(2, 4, 4, 4))})  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    pipeline.errors.InputDataError: image has 2 channel(s), expected 1
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform

from pipeline.errors import InputDataError, PipelineError

__all__ = ["CheckImaged", "CheckedCompose", "source_file"]


def source_file(value: Any) -> str | None:
    """The file a (Meta)Tensor was loaded from (``meta["filename_or_obj"]``), if known."""
    meta = getattr(value, "meta", None) or {}
    name = meta.get("filename_or_obj")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return None if name in (None, "") else str(name)


class CheckImaged(MapTransform):
    """Check channel-first volumes: spatial dimensionality, channel count and finite values.

    Args:
        keys: keys to check; the first is the image (its channel count is checked), the others label maps.
        spatial_dims: required number of spatial axes.
        channels: required image channels; None accepts any.
        allow_nonfinite: accept NaN/Inf voxels (they are otherwise an error).
        allow_missing_keys: skip absent keys.

    Raises:
        InputDataError: naming the source file and the problem.
    """

    def __init__(
        self,
        keys: KeysCollection,
        *,
        spatial_dims: int = 3,
        channels: int | None = None,
        allow_nonfinite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if spatial_dims < 1:
            raise ValueError(f"spatial_dims must be >= 1, got {spatial_dims}")
        if channels is not None and channels < 1:
            raise ValueError(f"channels must be >= 1 or None, got {channels}")
        self.spatial_dims = int(spatial_dims)
        self.channels = None if channels is None else int(channels)
        self.allow_nonfinite = bool(allow_nonfinite)

    def check(self, key: Hashable, value: Any, *, is_image: bool) -> None:
        """Raise :class:`InputDataError` when ``value`` (channel-first) breaks one of the rules."""
        path = source_file(value)
        shape = tuple(int(s) for s in getattr(value, "shape", ()))
        spatial = shape[1:]
        if len(spatial) != self.spatial_dims:
            raise InputDataError(
                f"{key} is {len(spatial)}D (shape {list(spatial)} after the channel axis), "
                f"expected a {self.spatial_dims}D volume",
                path=path,
            )
        if min(spatial) < 1:
            raise InputDataError(f"{key} has an empty axis (shape {list(spatial)})", path=path)
        if is_image and self.channels is not None and shape[0] != self.channels:
            raise InputDataError(
                f"{key} has {shape[0]} channel(s) (shape {list(shape)}), the model expects {self.channels}", path=path
            )
        if not is_image and shape[0] != 1:
            raise InputDataError(f"{key} has {shape[0]} channels, expected one label map", path=path)
        if self.allow_nonfinite:
            return
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        if t.is_floating_point():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                n_nan = int(torch.isnan(t).sum())
                n_inf = int(t.numel() - int(finite.sum()) - n_nan)
                raise InputDataError(
                    f"{key} has {n_nan} NaN and {n_inf} Inf voxel(s); replace them (e.g. with the "
                    "background value) before running",
                    path=path,
                )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for i, key in enumerate(self.key_iterator(d)):
            self.check(key, d[key], is_image=(i == 0 and key == self.keys[0]))
        return d


class CheckedCompose(Compose):
    """A ``Compose`` that lets :class:`~pipeline.errors.PipelineError` through unwrapped.

    MONAI wraps every transform failure in ``RuntimeError("applying transform <...>")``; the one-line message naming the
    file would then be lost for callers that print ``str(exc)``. The original exception is
    re-raised as is, with its own cause chain, so ``--debug`` still shows where it came from.
    """

    def __call__(
        self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False, lazy: bool | None = None
    ) -> Any:
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        except PipelineError:
            raise
        except Exception as exc:
            err = _pipeline_cause(exc)
            if err is None:
                raise
            err.__suppress_context__ = True
            raise err  # noqa: B904 - the wrapper only says which transform failed; err names file and problem


def _pipeline_cause(exc: BaseException) -> PipelineError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, PipelineError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None
