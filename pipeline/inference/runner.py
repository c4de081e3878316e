"""Running a loaded model over cases: preprocess, sliding window, invert to the original grid, save atomically.

Resampling back to the original grid. By default (``resample="probabilities"``) the softmax probabilities are
resampled (bilinear, through MONAI's ``Invertd``) and the argmax is taken in the original grid, as the MONAI model-zoo
bundles and nnU-Net do: interpolating class scores gives smooth, sub-voxel boundaries, while resampling a label map
with nearest neighbour makes staircase edges and can drop thin structures when the original grid is finer than the
model's. The inversion runs a few channels at a time with a running argmax, so the original-grid buffer is one
channel chunk, not ``C`` full volumes. ``resample="labels"`` (and streaming, which never holds the probabilities)
takes the argmax in the model grid and resamples the label map with nearest neighbour: cheaper, and exact when the
model grid is the original one.

Examples:
    >>> from pipeline.inference import InferenceSettings, infer_cases, load_model
    >>> model = load_model("bundles/unetrpp_sts_ct_segmentation")  # doctest: +SKIP
    >>> items = [{"image": "ct.nii.gz", "case": "ct"}]
    >>> results = infer_cases(items, model, "out/", InferenceSettings())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from monai.data import MetaTensor

from pipeline.data.dicom import preferred_dicom_series
from pipeline.data.input_report import input_report, print_warnings
from pipeline.data.readers import glob_escape
from pipeline.errors import InputDataError, PipelineError, UsageError
from pipeline.inference.engine import SlidingWindowEngine
from pipeline.inference.loading import LoadedModel
from pipeline.inference.postprocess import keep_largest_component, label_dtype
from pipeline.inference.tta import MirrorTTA
from pipeline.utils.atomic import save_json_atomic, save_nifti_atomic
from pipeline.utils.environment import software_versions

__all__ = ["InferenceSettings", "InferenceResult", "infer_cases", "predict_case", "save_label_nifti"]

logger = logging.getLogger(__name__)

SKIP_CHOICES = ("off", "auto", "air", "zero")
RESAMPLE_CHOICES = ("probabilities", "labels")


@dataclass
class InferenceSettings:
    """Options of one inference run (defaults: the model's window settings, Gaussian blending, overlap 0.5).

    Attributes:
        overlap, sw_batch_size, mode: sliding-window settings; None takes the model's.
        tta: nnU-Net mirroring: the softmax probabilities of the mirrored windows are averaged.
        tta_axes: the spatial axes (0, 1, 2 = x, y, z of the network input) to mirror; None: the model's
            ``mirror_axes`` (a bundle's ``tta_mirror_axes``: the axes flipped in training), else all 3 (8 flips).
        streaming: streaming argmax (bounded memory; implies label resampling).
        resample: "probabilities" (default, see the module docstring) or "labels" (nearest neighbour).
        skip_background: "off", "air" (CT: windows entirely below ``air_threshold`` HU are not run), "zero"
            (windows entirely zero in the raw image, e.g. MRI background), or "auto" (air for CT, zero for MRI).
        air_threshold: the HU threshold of "air".
        device, sw_device: stitching device and window/network device (None: the model's device).
        amp: CUDA autocast for the network (ignored on CPU).
        save_probabilities: also write ``<case>_probabilities.nii.gz`` (float32, x y z C) in the original grid.
        postprocess: None or "largest-component" (per class, MONAI KeepLargestConnectedComponent).
        overwrite: replace existing outputs (otherwise they are skipped, so an interrupted run resumes).
        quiet: no progress bars.
        series_uids: DICOM SeriesInstanceUIDs to read from series folders that hold several series (``--series-uid``);
            empty: the series with the most slices (see :mod:`pipeline.data.dicom`).
    """

    overlap: float | None = None
    sw_batch_size: int | None = None
    mode: str | None = None
    tta: bool = False
    tta_axes: tuple[int, ...] | None = None
    streaming: bool = False
    resample: str = "probabilities"
    skip_background: str = "off"
    air_threshold: float = -500.0
    device: str | None = None
    sw_device: str | None = None
    amp: bool = False
    save_probabilities: bool = False
    postprocess: str | None = None
    overwrite: bool = False
    quiet: bool = False
    series_uids: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.resample not in RESAMPLE_CHOICES:
            raise UsageError(f"--resample must be one of {RESAMPLE_CHOICES}, got {self.resample!r}")
        if self.skip_background not in SKIP_CHOICES:
            raise UsageError(f"--skip-background must be one of {SKIP_CHOICES}, got {self.skip_background!r}")
        if self.postprocess not in (None, "none", "largest-component"):
            raise UsageError(f"--postprocess must be 'largest-component', got {self.postprocess!r}")
        if self.overlap is not None and not 0 <= self.overlap < 1:
            raise UsageError(f"--overlap must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size is not None and self.sw_batch_size < 1:
            raise UsageError(f"--sw-batch-size must be >= 1, got {self.sw_batch_size}")
        if self.tta_axes is not None and (not self.tta_axes or any(a not in (0, 1, 2) for a in self.tta_axes)):
            raise UsageError(f"--tta-axes must name spatial axes among 0,1,2 (x, y, z), got {self.tta_axes}")
        if self.streaming and self.save_probabilities:
            raise UsageError("--save-probabilities needs the probabilities: it cannot be combined with --streaming")


@dataclass
class InferenceResult:
    """Outcome of inference on one case: status is "ok", "skipped" (output exists) or "failed"."""

    case: str
    image: str
    status: str
    output: str | None = None
    message: str = ""
    seconds: float = 0.0


def make_engine(model: LoadedModel, settings: InferenceSettings) -> SlidingWindowEngine:
    """The :class:`SlidingWindowEngine` for ``model`` with ``settings`` applied."""
    device = torch.device(settings.device) if settings.device else model.device
    sw_device = torch.device(settings.sw_device) if settings.sw_device else model.device
    return SlidingWindowEngine(
        roi_size=model.roi_size,
        overlap=model.overlap if settings.overlap is None else settings.overlap,
        sw_batch_size=model.sw_batch_size if settings.sw_batch_size is None else settings.sw_batch_size,
        mode=settings.mode or model.mode,
        sw_device=sw_device,
        device=device,
        progress=not settings.quiet,
        streaming=settings.streaming,
        amp=settings.amp,
    )


def tta_axes(settings: InferenceSettings, model: LoadedModel) -> tuple[int, ...] | None:
    """The spatial axes mirroring TTA flips: ``settings.tta_axes``, else the model's ``mirror_axes``, else all."""
    return tuple(settings.tta_axes) if settings.tta_axes is not None else model.mirror_axes


def _skip_criterion(settings: InferenceSettings, model: LoadedModel) -> str:
    if settings.skip_background != "auto":
        return settings.skip_background
    modality = (model.modality or "").upper()
    if modality == "CT":
        return "air"
    if modality in ("MR", "MRI"):
        return "zero"
    return "off"


def _foreground_mask(image_path: str, target: MetaTensor, criterion: str, air_threshold: float) -> torch.Tensor:
    """Body/foreground mask from the raw intensities, resampled (nearest) onto the model-space grid of ``target``."""
    from monai.transforms import ResampleToMatch

    from pipeline.data.io import load_volume

    raw = load_volume(image_path)
    body = (raw[:1] > air_threshold) if criterion == "air" else (raw[:1] != 0)
    body = MetaTensor(body.float(), meta=dict(raw.meta))  # meta carries the raw affine
    dst = MetaTensor(torch.zeros((1, *target.shape[1:]), dtype=torch.float32), affine=target.affine)
    resampled = ResampleToMatch(mode="nearest", padding_mode="zeros")(body, img_dst=dst)
    return torch.as_tensor(cast(MetaTensor, resampled).as_tensor()[0] > 0.5)


def _invert(pred: torch.Tensor, data: dict, preprocessing: Any, nearest: bool) -> MetaTensor:
    """Undo the preprocessing geometry on ``pred`` (C, *model grid) using the image's applied operations."""
    from monai.transforms import Invertd

    img = data["image"]
    pred_mt = MetaTensor(pred, meta=dict(img.meta), applied_operations=list(img.applied_operations))
    inv = Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=nearest, to_tensor=True)
    return inv({"image": img, "pred": pred_mt})["pred"]


def _check_memory(
    image_path: str, shape: tuple[int, ...], in_channels: int, model: LoadedModel, settings: InferenceSettings
) -> None:
    """Refuse (ResourceError naming the file) a sliding-window run whose buffers cannot fit the memory budget."""
    from pipeline.data.resources import estimate_inference_bytes, require_memory

    classes = model.out_channels or 2
    need = estimate_inference_bytes(shape, classes, in_channels=in_channels, streaming=settings.streaming)
    if settings.streaming:
        hint = "free memory, raise $MEDSEG_MEMORY_LIMIT_MB, or use a machine with more RAM"
    else:
        hint = "pass --streaming (bounded memory: one slab of logits at a time) or raise $MEDSEG_MEMORY_LIMIT_MB"
    require_memory(
        need,
        path=image_path,
        hint=hint,
        what=f"sliding-window inference on {'x'.join(map(str, shape))} voxels x {classes} classes"
        + (" (streaming)" if settings.streaming else ""),
    )


def predict_case(
    image_path: str, model: LoadedModel, settings: InferenceSettings, engine: SlidingWindowEngine | None = None
) -> dict[str, Any]:
    """Predict one image; return labels in the original grid and what the sidecar needs.

    Returns:
        dict with ``labels`` (np.ndarray, x y z), ``affine`` (4x4), ``probabilities`` (x y z C or None),
        ``timings`` (seconds per stage), ``windows`` (engine statistics), ``original_shape``.
    """
    engine = engine or make_engine(model, settings)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        data = model.preprocessing({"image": image_path})
    except PipelineError:
        raise
    except Exception as exc:  # unreadable/corrupt input: one line naming the file
        cause: BaseException = exc
        while cause.__cause__ is not None and not isinstance(cause, PipelineError):
            cause = cause.__cause__
        if isinstance(cause, PipelineError):
            raise cause from exc
        msg = " ".join(str(cause).split())[:300] or type(cause).__name__
        raise InputDataError(f"cannot load/preprocess ({type(cause).__name__}: {msg})", path=image_path) from exc
    if isinstance(data, list):
        data = data[0]
    img = data["image"]
    if not isinstance(img, MetaTensor) or img.ndim != 4:
        raise InputDataError(
            f"preprocessing gave {type(img).__name__} {tuple(getattr(img, 'shape', ()))}, "
            "expected a channel-first 3-D MetaTensor",
            path=image_path,
        )
    original_shape = tuple(int(s) for s in np.asarray(img.meta.get("spatial_shape", ())).tolist())
    original_affine = np.asarray(img.meta.get("original_affine", img.affine), dtype=np.float64)
    timings["load_preprocess"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    criterion = _skip_criterion(settings, model)
    foreground = None
    if criterion != "off":
        foreground = _foreground_mask(image_path, img, criterion, settings.air_threshold)
        timings["foreground_mask"] = time.perf_counter() - t0
    predictor = MirrorTTA(model.network, axes=tta_axes(settings, model)) if settings.tta else model.network
    x = img.as_tensor()[None].float()
    nearest = settings.streaming or settings.resample == "labels"
    _check_memory(image_path, tuple(x.shape[2:]), int(x.shape[1]), model, settings)
    probabilities = None
    t0 = time.perf_counter()
    with torch.inference_mode():
        if nearest:
            labels_model = engine.predict_labels(x, predictor, foreground=foreground)
            timings["sliding_window"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            inv = _invert(labels_model[0].float(), data, model.preprocessing, nearest=True)
            labels = inv.as_tensor()[0].round().to(torch.int32).cpu().numpy()
            affine = np.asarray(inv.affine, dtype=np.float64)
        else:
            logits = engine(x, predictor, foreground=foreground)
            timings["sliding_window"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            probs = torch.softmax(logits[0], dim=0)
            del logits
            n = probs.shape[0]
            chunk = 4
            best = labels_t = None
            prob_chunks = []
            for c0 in range(0, n, chunk):
                inv = _invert(probs[c0 : c0 + chunk], data, model.preprocessing, nearest=False)
                part = inv.as_tensor().float().cpu()
                if settings.save_probabilities:
                    prob_chunks.append(part.numpy())
                m, idx = part.max(dim=0)  # first maximum within the chunk
                if best is None or labels_t is None:  # (the first chunk sets both)
                    best, labels_t = m, idx.to(torch.int32)
                else:
                    better = m > best  # strict: ties keep the lower class, like argmax
                    labels_t = torch.where(better, idx.to(torch.int32) + c0, labels_t)
                    best = torch.where(better, m, best)
            affine = np.asarray(inv.affine, dtype=np.float64)
            assert labels_t is not None  # probs has at least one class
            labels = labels_t.numpy()
            if settings.save_probabilities:
                probabilities = np.moveaxis(np.concatenate(prob_chunks, axis=0), 0, -1).astype(np.float32)
                # voxels the model grid did not cover (cropped away, padded by the inversion) come back all 0 or
                # partly 0: renormalise (argmax unchanged), and all-0 ones are background with probability 1
                total = probabilities.sum(axis=-1, keepdims=True)
                short = total[..., 0] < 1.0 - 1e-4
                probabilities[short] /= np.maximum(total[short], 1e-12)
                probabilities[short & (total[..., 0] <= 0.0), 0] = 1.0
            del probs
        timings["invert"] = time.perf_counter() - t0
    if original_shape and tuple(labels.shape) != original_shape:
        raise InputDataError(f"internal: inverted shape {labels.shape} != original {original_shape}", path=image_path)
    if settings.postprocess == "largest-component":
        t0 = time.perf_counter()
        labels = keep_largest_component(labels)
        timings["postprocess"] = time.perf_counter() - t0
    if original_affine.shape == (4, 4) and not np.allclose(affine, original_affine, atol=1e-4):
        logger.debug("%s: inverted affine differs from the original; using the original", image_path)
    stats = dict(engine.last_stats)
    return {
        "labels": labels,
        "affine": original_affine if original_affine.shape == (4, 4) else affine,
        "probabilities": probabilities,
        "timings": timings,
        "windows": stats,
        "original_shape": list(labels.shape),
        "meta": img.meta,
    }


def _header_codes(meta: dict) -> tuple[int, int]:
    def code(key: str) -> int:
        v = meta.get(key)
        try:
            v = int(np.asarray(v).item())
        except (TypeError, ValueError):
            return 1
        return v if v > 0 else 1

    return code("qform_code"), code("sform_code")


def save_label_nifti(
    labels: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    *,
    n_classes: int | None = None,
    codes: tuple[int, int] = (1, 1),
    overwrite: bool = True,
) -> Path:
    """Write a label map atomically with ``affine`` in both qform and sform; uint8 when labels fit, else uint16."""
    dtype = label_dtype(labels, n_classes)
    img = _nifti_image(np.asarray(labels).astype(dtype), affine, codes)
    img.header.set_data_dtype(dtype)
    return save_nifti_atomic(img, path, overwrite=overwrite)


def _save_probabilities(probs: np.ndarray, affine: np.ndarray, path: Path, codes: tuple[int, int]) -> None:
    save_nifti_atomic(_nifti_image(probs, affine, codes), path)


def _nifti_image(data: np.ndarray, affine: np.ndarray, codes: tuple[int, int]) -> Any:
    """A NIfTI image of ``data`` with ``affine`` as its qform and sform, under the header codes ``codes``."""
    import nibabel as nib

    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=int(codes[0]))
    img.set_sform(affine, code=int(codes[1]))
    return img


def _remove_stale_temporaries(out_dir: Path, case: str, older_than: float) -> None:
    """Delete hidden ``.<case>.nii.gz.<random>.tmp...`` files a killed run left (atomic_path names them so).

    Only files last modified before ``older_than`` (this run's start, epoch seconds) are removed, so a concurrent run
    writing into the same folder keeps its in-progress temporaries.
    """
    for name in (f"{case}.nii.gz", f"{case}.json", f"{case}_probabilities.nii.gz"):
        for tmp in out_dir.glob(f".{glob_escape(name)}.*.tmp*"):
            try:
                if tmp.stat().st_mtime < older_than:
                    tmp.unlink()
            except OSError:
                pass


def _shard(cases: Sequence[dict], rank: int, world: int) -> list[dict]:
    return list(cases[rank::world]) if world > 1 else list(cases)


def infer_cases(
    cases: Sequence[dict],
    model: LoadedModel,
    output_dir: str | os.PathLike,
    settings: InferenceSettings | None = None,
    *,
    rank: int = 0,
    world_size: int = 1,
    timing_hook: Callable[[], AbstractContextManager[Mapping[str, float]]] | None = None,
) -> list[InferenceResult]:
    """Predict every case (this rank's share of them), writing ``<output_dir>/<case>.nii.gz`` + ``<case>.json``.

    A case whose output exists is skipped unless ``settings.overwrite``; a case that fails is reported (logged and
    returned with status "failed") and the others continue.

    Args:
        cases: ``[{"image": path, "case": name}, ...]`` (see :func:`pipeline.data.inputs.list_inference_inputs`).
        model: from :func:`pipeline.inference.load_model`.
        output_dir: output folder (created).
        settings: :class:`InferenceSettings`.
        rank, world_size: shard ``cases[rank::world_size]`` (torchrun).
        timing_hook: a context manager factory entered around each case's :func:`predict_case`; the stage ->
            seconds mapping it yields (filled when it exits) is added to that case's sidecar ``timings_s``. The
            benchmark's network timer uses it (``medseg benchmark``'s ``network`` stage).

    Returns:
        one :class:`InferenceResult` per case of this rank.
    """
    settings = settings or InferenceSettings()
    settings.validate()
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in cases:  # realpath, not Path.resolve(): a symlink loop among the inputs must not raise here
        if (
            os.path.dirname(os.path.realpath(item["image"])) == os.path.realpath(out_dir)
            and Path(item["image"]).name == f"{item['case']}.nii.gz"
        ):
            raise UsageError(f"--output {out_dir} would overwrite the input {item['image']}; choose another folder")
    started = time.time()
    mine = _shard(cases, rank, world_size)
    engine = make_engine(model, settings)
    versions = software_versions()
    results: list[InferenceResult] = []
    show = not settings.quiet and rank == 0
    iterator: Any = mine
    if show:
        from tqdm.auto import tqdm

        iterator = tqdm(mine, desc="cases", unit="case")
    else:
        engine.progress = False
    for item in iterator:
        case, image = str(item["case"]), str(item["image"])
        out_path = out_dir / f"{case}.nii.gz"
        side_path = out_dir / f"{case}.json"
        _remove_stale_temporaries(out_dir, case, started)
        if out_path.exists() and side_path.exists() and not settings.overwrite and not item.get("error"):
            results.append(InferenceResult(case, image, "skipped", str(out_path), "output exists (use --overwrite)"))
            continue
        t_case = time.perf_counter()
        try:
            if item.get("error"):  # found while listing the inputs (e.g. two files for one case name)
                raise InputDataError(str(item["error"]), path=image)
            hook = timing_hook() if timing_hook is not None else nullcontext({})
            with preferred_dicom_series(settings.series_uids), hook as stage_seconds:
                pred = predict_case(image, model, settings, engine)
            pred["timings"].update(stage_seconds)
            report = input_report(pred["meta"])
            print_warnings(image, report.get("warnings") or [], prefix=f"case {case}: ")
            t0 = time.perf_counter()
            codes = (0, 0) if report.get("geometry_source") == "pixdim" else _header_codes(pred["meta"])
            save_label_nifti(
                pred["labels"], pred["affine"], out_path, n_classes=model.out_channels, codes=codes, overwrite=True
            )
            if pred["probabilities"] is not None:
                _save_probabilities(
                    pred["probabilities"], pred["affine"], out_dir / f"{case}_probabilities.nii.gz", codes
                )
            pred["timings"]["save"] = time.perf_counter() - t0
            seconds = time.perf_counter() - t_case
            sidecar = {
                "case": case,
                "input": image,
                "output": str(out_path),
                "shape": pred["original_shape"],
                "dtype": str(label_dtype(pred["labels"], model.out_channels).__name__),
                "labels_present": sorted(int(v) for v in np.unique(pred["labels"])),
                "model": model.describe(),
                "settings": {
                    **asdict(settings),
                    "roi_size": list(cast(Sequence[int], engine.roi_size)),  # make_engine gives the model's tuple
                    "overlap": engine.overlap,
                    "sw_batch_size": engine.sw_batch_size,
                    "mode": str(engine.mode),
                    "skip_criterion": _skip_criterion(settings, model),
                    "tta_axes": (list(a) if (a := tta_axes(settings, model)) is not None else [0, 1, 2])
                    if settings.tta
                    else None,
                },
                "windows": pred["windows"],
                "timings_s": {k: round(v, 4) for k, v in {**pred["timings"], "total": seconds}.items()},
                "input_report": report,
                "versions": versions,
                "rank": rank,
                "world_size": world_size,
            }
            save_json_atomic(sidecar, side_path)
            results.append(InferenceResult(case, image, "ok", str(out_path), seconds=seconds))
        except Exception as exc:  # noqa: BLE001 - one failing case must not stop the batch
            logger.debug("case %s failed:\n%s", case, traceback.format_exc())
            msg = " ".join(str(exc).split()) or type(exc).__name__
            if not isinstance(exc, PipelineError):
                msg = f"{image}: {type(exc).__name__}: {msg}"
            print(f"error: case {case}: {msg}", file=sys.stderr)
            results.append(InferenceResult(case, image, "failed", None, msg, time.perf_counter() - t_case))
    return results
