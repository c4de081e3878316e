"""Sliding-window inference engine: MONAI's window grid and blending, plus streaming argmax and window skipping.

:class:`SlidingWindowEngine` is a MONAI :class:`~monai.inferers.Inferer` (usable as a bundle's ``inferer``). It uses
exactly MONAI's window grid (``dense_patch_slices`` with MONAI's scan interval), padding and importance maps
(``compute_importance_map``), and accumulates windows in MONAI's order, so its blended output equals
:func:`monai.inferers.sliding_window_inference` for the same settings. What it adds:

* a cached importance map and a cached count (normalisation) map, keyed by geometry;
* **streaming** (:meth:`SlidingWindowEngine.predict_labels` with ``streaming=True``): windows are accumulated into a
  slab buffer along one spatial axis; planes that no later window can touch are reduced to an argmax label at once,
  so the full ``C x D x H x W`` float buffer (MONAI #6427) never exists. The slab axis is chosen to make the buffer
  smallest; when it is the first spatial axis the accumulation order is MONAI's own, so labels are identical;
* **window skipping**: windows lying entirely inside the background (a boolean ``foreground`` mask that is False over
  the whole window, or channel 0 below ``skip_below`` everywhere) are not run. A voxel of the foreground is covered
  only by windows that contain foreground, so its blended value is *identical* to the full run; voxels covered only
  by skipped windows are labelled background (logits ``0`` for class 0 and ``-1e4`` for the others);
* an ``sw_device``/``device`` split (windows and the predictor on ``sw_device``, stitching on ``device``) and
  optional CUDA autocast for the predictor only; accumulation is always float32.

Examples:
    >>> import torch
    >>> net = torch.nn.Conv3d(1, 3, 3, padding=1).eval()
    >>> engine = SlidingWindowEngine(roi_size=(16, 16, 16), overlap=0.5, mode="gaussian")
    >>> x = torch.rand(1, 1, 40, 30, 20)
    >>> with torch.no_grad():
    ...     logits = engine(x, net)
    ...     labels = engine.predict_labels(x, net, streaming=True)
    >>> tuple(logits.shape), tuple(labels.shape), labels.dtype
    ((1, 3, 40, 30, 20), (1, 1, 40, 30, 20), torch.uint8)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import Inferer
from monai.utils import BlendMode, PytorchPadMode, ensure_tuple_rep, fall_back_tuple, look_up_option

__all__ = ["SlidingWindowEngine", "WindowPlan", "plan_windows", "channel_argmax", "BACKGROUND_FILL"]

#: logit given to non-background classes where no window was run (skipped background): softmax makes it one-hot
BACKGROUND_FILL = -1.0e4

_CACHE_SIZE = 4


@dataclass(frozen=True)
class WindowPlan:
    """The window grid for one image size (all in the padded image's coordinates).

    Attributes:
        image_size: spatial size of the input.
        padded_size: spatial size after padding to at least ``roi_size``.
        pad: ``F.pad`` argument (last axis first) that maps the input to the padded image.
        roi_size: window size.
        slices: window positions in MONAI's order (first spatial axis slowest).
    """

    image_size: tuple[int, ...]
    padded_size: tuple[int, ...]
    pad: tuple[int, ...]
    roi_size: tuple[int, ...]
    slices: tuple[tuple[slice, ...], ...]

    @property
    def crop(self) -> tuple[slice, ...]:
        """Spatial slices that undo the padding."""
        nd = len(self.image_size)
        starts = [self.pad[2 * (nd - 1 - d)] for d in range(nd)]
        return tuple(slice(s, s + n) for s, n in zip(starts, self.image_size))


def plan_windows(image_size: Sequence[int], roi_size: Sequence[int] | int, overlap: Sequence[float] | float) -> WindowPlan:
    """MONAI's sliding-window grid: pad to ``roi_size``, step ``int(roi * (1 - overlap))`` (at least 1).

    Args:
        image_size: spatial input size.
        roi_size: window size; non-positive/None components mean the full image size (as in MONAI).
        overlap: fraction in [0, 1), one value or one per axis.

    Returns:
        the :class:`WindowPlan`.
    """
    nd = len(image_size)
    roi = tuple(int(r) for r in fall_back_tuple(roi_size, image_size))
    if len(roi) != nd:
        raise ValueError(f"roi_size {tuple(roi)} has {len(roi)} axes but the image has {nd} spatial axes")
    ov = ensure_tuple_rep(overlap, nd)
    for o in ov:
        if not 0 <= o < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    padded = tuple(max(int(s), r) for s, r in zip(image_size, roi))
    pad: list[int] = []
    for d in range(nd - 1, -1, -1):  # F.pad order: last axis first
        diff = max(roi[d] - int(image_size[d]), 0)
        pad.extend([diff // 2, diff - diff // 2])
    interval = tuple(r if r == s else max(int(r * (1 - o)), 1) for r, s, o in zip(roi, padded, ov))
    raw = dense_patch_slices(padded, roi, interval, return_slice=True)
    slices = tuple(tuple(slice(int(s.start), int(s.stop)) for s in win) for win in raw)
    return WindowPlan(tuple(int(s) for s in image_size), padded, tuple(pad), roi, slices)


def channel_argmax(x: torch.Tensor, dim: int = 0, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``argmax`` over ``dim`` returned as a small integer dtype (uint8 when the channel count fits).

    Uses ``torch.max(x, dim)``, whose CPU kernel is several times faster than ``torch.argmax`` over a channel axis
    (measured 0.47 s vs 1.8 s for 14 x 96 x 200 x 170 on 2 threads). Ties go to the lowest index, like
    :func:`torch.argmax`.

    Args:
        x: tensor with channels on ``dim``.
        dim: the channel axis.
        dtype: output dtype; uint8 if the channel count fits, else int16/int32.

    Returns:
        labels with ``dim`` kept as a size-1 axis.
    """
    n = x.shape[dim]
    if dtype is None:
        dtype = torch.uint8 if n <= 256 else (torch.int16 if n <= 32767 else torch.int32)
    return torch.max(x, dim=dim, keepdim=True).indices.to(dtype)


class SlidingWindowEngine(Inferer):
    """Sliding-window inference with cached blending maps, streaming argmax and background-window skipping.

    Built on MONAI's sliding-window inference (its grid, padding, importance maps and accumulation order), and
    callable as a MONAI ``Inferer``: ``engine(inputs, network)`` returns the blended logits like
    :class:`monai.inferers.SlidingWindowInferer`; :meth:`predict_labels` returns the argmax label map, optionally by
    streaming.

    Args:
        roi_size: window size (spatial, in the input tensor's axis order).
        overlap: window overlap in [0, 1), one value or one per axis. Default 0.5 (nnU-Net / UNETR++ evaluation).
        sw_batch_size: windows per predictor call.
        mode: ``"gaussian"`` (default) or ``"constant"`` blending.
        sigma_scale: Gaussian sigma as a fraction of the window size (0.125 as MONAI and nnU-Net).
        padding_mode: how inputs smaller than ``roi_size`` are padded (``F.pad`` modes).
        cval: the constant for ``padding_mode="constant"``.
        sw_device: device of the windows and the predictor (default: the input's device).
        device: device of the stitched output (default: the input's device). ``sw_device="cuda", device="cpu"``
            lets a GPU compute while the CPU holds the large buffers.
        progress: show a tqdm bar over windows.
        streaming: default for :meth:`predict_labels`.
        stream_axis: spatial axis of the streaming slabs; None picks the axis giving the smallest slab buffer
            (ties go to the first axis, whose order is MONAI's).
        skip_below: skip windows whose channel 0 is ``<= skip_below`` everywhere (input units, e.g. 0.0 for CT
            windowed to 0..1 where air maps to 0). None disables it.
        amp: run the predictor under CUDA autocast (fp16); ignored on CPU. Accumulation stays float32.

    Examples:
        >>> import torch
        >>> net = torch.nn.Conv3d(1, 2, 1).eval()
        >>> engine = SlidingWindowEngine((8, 8, 8), overlap=0.25, mode="constant")
        >>> with torch.no_grad():
        ...     y = engine(torch.rand(1, 1, 12, 10, 9), net)
        >>> tuple(y.shape)
        (1, 2, 12, 10, 9)
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        overlap: Sequence[float] | float = 0.5,
        sw_batch_size: int = 1,
        mode: BlendMode | str = BlendMode.GAUSSIAN,
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: PytorchPadMode | str = PytorchPadMode.CONSTANT,
        cval: float = 0.0,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        streaming: bool = False,
        stream_axis: int | None = None,
        skip_below: float | None = None,
        amp: bool = False,
    ) -> None:
        super().__init__()
        if int(sw_batch_size) < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        self.roi_size = roi_size
        self.overlap = overlap
        self.sw_batch_size = int(sw_batch_size)
        self.mode = look_up_option(mode, BlendMode)
        self.sigma_scale = sigma_scale
        self.padding_mode = look_up_option(padding_mode, PytorchPadMode)
        self.cval = float(cval)
        self.sw_device = None if sw_device is None else torch.device(sw_device)
        self.device = None if device is None else torch.device(device)
        self.progress = progress
        self.streaming = streaming
        self.stream_axis = stream_axis
        self.skip_below = skip_below
        self.amp = amp
        self._importance: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._count: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        #: statistics of the last call: windows total / run / skipped
        self.last_stats: dict[str, int] = {}

    # ------------------------------------------------------------------ cached maps
    def importance_map(self, roi: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The window weight map (float32, shape ``roi``), computed once per (roi, device)."""
        key = (roi, str(device), str(self.mode), str(self.sigma_scale))
        if key not in self._importance:
            w = compute_importance_map(roi, mode=self.mode, sigma_scale=self.sigma_scale, device=device, dtype=torch.float32)
            self._importance[key] = w
            while len(self._importance) > _CACHE_SIZE:
                self._importance.popitem(last=False)
        return self._importance[key]

    def count_map(self, plan: WindowPlan, device: torch.device) -> torch.Tensor:
        """Sum of the window weights over all windows of ``plan`` (shape ``plan.padded_size``), cached per geometry."""
        key = (plan.padded_size, plan.roi_size, tuple((s.start, s.stop) for win in plan.slices for s in win), str(device), str(self.mode), str(self.sigma_scale))
        if key not in self._count:
            w = self.importance_map(plan.roi_size, device)
            count = torch.zeros(plan.padded_size, dtype=torch.float32, device=device)
            for win in plan.slices:
                count[win] += w
            self._count[key] = count
            while len(self._count) > _CACHE_SIZE:
                self._count.popitem(last=False)
        return self._count[key]

    # ------------------------------------------------------------------ helpers
    def _prepare(self, inputs: torch.Tensor) -> tuple[torch.Tensor, WindowPlan, torch.device, torch.device]:
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 3:
            raise ValueError(f"inputs must be a (B, C, *spatial) tensor, got {getattr(inputs, 'shape', type(inputs))}")
        nd = inputs.ndim - 2
        roi = self.roi_size if not isinstance(self.roi_size, int) else (self.roi_size,) * nd
        if len(roi) != nd:
            raise ValueError(
                f"roi_size {tuple(roi)} is {len(roi)}-D but inputs {tuple(inputs.shape)} have {nd} spatial axes "
                "(expected (B, C, *spatial))"
            )
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # accumulate in float32 whatever the input dtype
        plan = plan_windows(x.shape[2:], roi, self.overlap)
        if any(plan.pad):
            x = F.pad(x, pad=plan.pad, mode=self.padding_mode, value=self.cval) if self.padding_mode == "constant" else F.pad(x, pad=plan.pad, mode=self.padding_mode)
        sw_device = self.sw_device or inputs.device
        device = self.device or inputs.device
        return x, plan, sw_device, device

    def _run_windows(
        self, x: torch.Tensor, b: int, windows: Sequence[tuple[slice, ...]], predictor: Callable[..., Any],
        sw_device: torch.device, args: tuple, kwargs: dict,
    ):
        """Yield ``(window_slices, prediction)`` for the windows of batch item ``b``, ``sw_batch_size`` at a time."""
        autocast = self.amp and sw_device.type == "cuda"
        for start in range(0, len(windows), self.sw_batch_size):
            group = windows[start : start + self.sw_batch_size]
            if len(group) == 1:
                data = x[(slice(b, b + 1), slice(None), *group[0])].to(sw_device)
            else:
                data = torch.cat([x[(slice(b, b + 1), slice(None), *w)] for w in group]).to(sw_device)
            with torch.no_grad():
                if autocast:
                    with torch.autocast(device_type="cuda", dtype=torch.float16):
                        out = predictor(data, *args, **kwargs)
                else:
                    out = predictor(data, *args, **kwargs)
            if isinstance(out, dict):
                out = out[sorted(out)[0]]
            if isinstance(out, (list, tuple)):  # deep supervision: the full-resolution head comes first
                out = out[0]
            if isinstance(out, MetaTensor):
                out = out.as_tensor()
            if out.shape[0] != len(group) or tuple(out.shape[2:]) != tuple(data.shape[2:]):
                raise ValueError(
                    f"predictor returned shape {tuple(out.shape)} for windows of shape {tuple(data.shape)}; "
                    "the engine needs one output per window with the window's spatial size"
                )
            out = out.float()
            for i, w in enumerate(group):
                yield w, out[i : i + 1]

    def _select_windows(self, x: torch.Tensor, b: int, plan: WindowPlan, foreground: torch.Tensor | None) -> list[tuple[slice, ...]]:
        if foreground is None and self.skip_below is None:
            return list(plan.slices)
        fg = None
        if foreground is not None:
            fg = foreground.as_tensor() if isinstance(foreground, MetaTensor) else foreground
            while fg.ndim > len(plan.image_size):
                fg = fg[b] if fg.shape[0] > 1 else fg[0]
            if tuple(fg.shape) != plan.image_size:
                raise ValueError(f"foreground mask shape {tuple(fg.shape)} != image spatial shape {plan.image_size}")
            fg = fg.bool()
            if any(plan.pad):
                fg = F.pad(fg[None, None].to(torch.uint8), pad=plan.pad, value=0)[0, 0].bool()
        keep = []
        for w in plan.slices:
            run = True
            if fg is not None:
                run = bool(fg[w].any())
            if run and self.skip_below is not None:
                run = bool((x[(b, 0, *w)] > self.skip_below).any())
            if run:
                keep.append(w)
        return keep

    def _progress(self, total: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="windows", leave=False, unit="win")

    # ------------------------------------------------------------------ public API
    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, foreground: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Blended logits ``(B, C, *spatial)`` on ``device`` (a MetaTensor when ``inputs`` is one).

        Args:
            inputs: ``(B, C, *spatial)`` image batch.
            network: predictor called on ``(n, C, *roi_size)`` windows.
            foreground: optional boolean mask (spatial, or ``(B, 1, *spatial)``); windows without foreground are
                skipped (see the module docstring).
            args, kwargs: passed on to ``network``.
        """
        result = self._blend(inputs, network, args, kwargs, foreground=foreground, normalize=True)
        if isinstance(inputs, MetaTensor):
            result = MetaTensor(result, meta=inputs.meta, applied_operations=inputs.applied_operations)
        return result

    def _blend(self, inputs, network, args, kwargs, *, foreground, normalize: bool) -> torch.Tensor:
        """Accumulate weighted window predictions; ``normalize`` divides by the count map (argmax does not need it)."""
        x, plan, sw_device, device = self._prepare(inputs)
        w = self.importance_map(plan.roi_size, sw_device)
        outputs = []
        total = run = 0
        bar = self._progress(len(plan.slices) * x.shape[0])
        for b in range(x.shape[0]):
            windows = self._select_windows(x, b, plan, foreground)
            total += len(plan.slices)
            run += len(windows)
            out = None
            for win, pred in self._run_windows(x, b, windows, network, sw_device, args, kwargs):
                if out is None:
                    out = torch.zeros((1, pred.shape[1], *plan.padded_size), dtype=torch.float32, device=device)
                pred = pred.mul_(w)
                out[(slice(None), slice(None), *win)] += pred.to(device)
                if bar is not None:
                    bar.update(1)
            if out is None:  # every window skipped: background everywhere
                out = self._all_background(x, plan, network, sw_device, device, args, kwargs)
            elif not normalize:  # positive per-voxel scaling does not change the argmax; uncovered voxels are 0 -> 0
                pass
            elif len(windows) == len(plan.slices):
                out /= self.count_map(plan, device)
            else:
                count = torch.zeros(plan.padded_size, dtype=torch.float32, device=device)
                wd = w.to(device)
                for win in windows:
                    count[win] += wd
                covered = count > 0
                out /= torch.where(covered, count, torch.ones_like(count))
                uncovered = ~covered
                out[:, 1:][uncovered.expand(out.shape[1] - 1, *uncovered.shape)[None]] = BACKGROUND_FILL
            if bar is not None:
                bar.update(len(plan.slices) - len(windows))
            outputs.append(out[(slice(None), slice(None), *plan.crop)] if any(plan.pad) else out)
        if bar is not None:
            bar.close()
        self.last_stats = {"windows": total, "run": run, "skipped": total - run}
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _all_background(self, x, plan, network, sw_device, device, args, kwargs) -> torch.Tensor:
        """Logits that give background everywhere; the channel count comes from one predictor call."""
        probe = x[(slice(0, 1), slice(None), *plan.slices[0])].to(sw_device)
        out = network(probe, *args, **kwargs)
        if isinstance(out, (list, tuple)):
            out = out[0]
        n = out.shape[1]
        full = torch.full((1, n, *plan.padded_size), BACKGROUND_FILL, dtype=torch.float32, device=device)
        full[:, 0] = 0.0
        return full

    def predict_labels(
        self,
        inputs: torch.Tensor,
        network: Callable[..., Any],
        *args: Any,
        streaming: bool | None = None,
        foreground: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Argmax label map ``(B, 1, *spatial)`` (uint8 when the classes fit, else int16), on ``device``.

        Args:
            inputs: ``(B, C, *spatial)`` image batch.
            network: the predictor.
            streaming: reduce finished slabs to labels instead of holding all logits (default: ``self.streaming``).
            foreground: optional mask for window skipping (see :meth:`__call__`).
        """
        streaming = self.streaming if streaming is None else streaming
        if not streaming:
            return channel_argmax(self._blend(inputs, network, args, kwargs, foreground=foreground, normalize=False), dim=1)
        x, plan, sw_device, device = self._prepare(inputs)
        nd = len(plan.image_size)
        axis = self._choose_axis(plan) if self.stream_axis is None else int(self.stream_axis) % nd
        w = self.importance_map(plan.roi_size, sw_device)
        labels_out = []
        total = run = 0
        bar = self._progress(len(plan.slices) * x.shape[0])
        for b in range(x.shape[0]):
            windows = self._select_windows(x, b, plan, foreground)
            total += len(plan.slices)
            run += len(windows)
            labels = self._stream_one(x, b, plan, windows, axis, w, network, sw_device, device, args, kwargs, bar)
            if bar is not None:
                bar.update(len(plan.slices) - len(windows))
            labels_out.append(labels[(slice(None), slice(None), *plan.crop)] if any(plan.pad) else labels)
        if bar is not None:
            bar.close()
        self.last_stats = {"windows": total, "run": run, "skipped": total - run, "stream_axis": axis}
        return labels_out[0] if len(labels_out) == 1 else torch.cat(labels_out)

    def _choose_axis(self, plan: WindowPlan) -> int:
        sizes = []
        for a in range(len(plan.padded_size)):
            others = math.prod(s for d, s in enumerate(plan.padded_size) if d != a)
            sizes.append(plan.roi_size[a] * others)
        return min(range(len(sizes)), key=lambda a: (sizes[a], a))

    def _stream_one(self, x, b, plan, windows, axis, w, network, sw_device, device, args, kwargs, bar) -> torch.Tensor:
        """Accumulate windows slab by slab along ``axis`` and emit argmax labels for finished planes."""
        roi_a = plan.roi_size[axis]
        size_a = plan.padded_size[axis]
        # stable sort by start on the slab axis: for axis 0 this is MONAI's own order
        order = sorted(windows, key=lambda s: s[axis].start)
        labels: torch.Tensor | None = None
        buf: torch.Tensor | None = None
        lo = 0  # padded-image coordinate of buffer plane 0
        n_cls = None

        def shifted(win: tuple[slice, ...]) -> tuple[slice, ...]:
            s = list(win)
            s[axis] = slice(win[axis].start - lo, win[axis].stop - lo)
            return (slice(None), slice(None), *s)

        def plane_slice(start: int, stop: int) -> tuple[slice, ...]:
            s = [slice(None)] * (2 + len(plan.padded_size))
            s[2 + axis] = slice(start, stop)
            return tuple(s)

        def flush(upto: int) -> None:
            """Finalize planes [lo, upto) and move the buffer start to ``upto``."""
            nonlocal lo, buf
            if upto <= lo:
                return
            n = upto - lo
            for i in range(0, n, 8):  # a few planes at a time keeps the argmax temporaries small
                j = min(i + 8, n)
                labels[plane_slice(lo + i, lo + j)] = channel_argmax(buf[plane_slice(i, j)], dim=1, dtype=labels.dtype)
            keep = buf.shape[2 + axis] - n
            # shift the unfinished planes to the front in place, n planes at a time: each copy reads planes that
            # are only overwritten by a later copy, so no second buffer or temporary is needed
            for i in range(0, keep, n):
                m = min(n, keep - i)
                buf[plane_slice(i, i + m)] = buf[plane_slice(i + n, i + n + m)]
            buf[plane_slice(keep, buf.shape[2 + axis])] = 0.0
            lo = upto

        it = self._run_windows(x, b, order, network, sw_device, args, kwargs)
        for win, pred in it:
            start = win[axis].start
            if buf is None:
                n_cls = pred.shape[1]
                dtype = torch.uint8 if n_cls <= 256 else torch.int16
                labels = torch.zeros((1, 1, *plan.padded_size), dtype=dtype, device=device)
                shape = list(plan.padded_size)
                shape[axis] = roi_a
                buf = torch.zeros((1, n_cls, *shape), dtype=torch.float32, device=device)
                lo = start
            if start > lo:
                flush(min(start, lo + roi_a))
                if start > lo:  # a gap (skipped windows): planes in between stay background
                    lo = start
            pred = pred.mul_(w)
            buf[shifted(win)] += pred.to(device)
            if bar is not None:
                bar.update(1)
        if buf is None:  # every window skipped
            return torch.zeros((1, 1, *plan.padded_size), dtype=torch.uint8, device=device)
        flush(min(size_a, lo + roi_a))
        return labels
