"""Reading volumes: NIfTI through MONAI's ``NibabelReader``, NRRD/MHA/DICOM series through :class:`SimpleITKReader`.

All readers return arrays in MONAI/nibabel (x, y, z) index order with a RAS affine, so a volume read from a DICOM
series, an NRRD file or a NIfTI file lands in the same world space.

Examples:
    >>> from pipeline.data.io import load_volume
    >>> img = load_volume("../shared/data/BTCV_like/dicom/ct_series")  # doctest: +SKIP
    >>> tuple(img.shape), img.affine.shape  # doctest: +SKIP
    ((1, 512, 512, 20), torch.Size([4, 4]))
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader, MetaTensor, NibabelReader
from monai.data.utils import orientation_ras_lps
from monai.transforms import LoadImaged
from monai.utils import ensure_tuple
from monai.utils.enums import MetaKeys, SpaceKeys

from pipeline.errors import InputDataError, PipelineError

#: NIfTI suffixes (read by nibabel)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: suffixes read by SimpleITK (DICOM series are folders)
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
#: every single-file image suffix we accept, longest first so ``.nii.gz`` wins over ``.gz``
IMAGE_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES


def image_suffix(path: str | os.PathLike) -> str | None:
    """Return the image suffix of ``path`` (``".nii.gz"``, ``".nrrd"`` ...) or None if it is not an image file."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def case_name(path: str | os.PathLike) -> str:
    """File name without its image suffix (``img0001.nii.gz`` -> ``img0001``); a folder keeps its name."""
    p = Path(path)
    suffix = image_suffix(p)
    return p.name[: -len(suffix)] if suffix and not p.is_dir() else p.name


def _dicom_series_files(folder: Path, series_name: str = "") -> list[str]:
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise InputDataError("no DICOM series in this folder", path=folder)
    if series_name:
        if series_name not in ids:
            raise InputDataError(f"DICOM series {series_name!r} not found (series: {', '.join(ids)})", path=folder)
        sid = series_name
    else:
        if len(ids) > 1:
            warnings.warn(f"{folder}: {len(ids)} DICOM series; reading the first ({ids[0]})", stacklevel=3)
        sid = ids[0]
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid))


def is_dicom_series_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder that holds at least one DICOM series (checked with GDCM via SimpleITK)."""
    p = Path(path)
    if not p.is_dir():
        return False
    import SimpleITK as sitk

    shown = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # GDCM prints "No Series were found" for plain folders
    try:
        return len(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))) > 0
    except RuntimeError:
        return False
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(shown)


class SimpleITKReader(ImageReader):
    """A MONAI ``ImageReader`` backed by SimpleITK, for NRRD/MHA/MHD files and DICOM series folders.

    The returned array is in (x, y, z) order and the affine is converted from ITK's LPS to RAS, which is exactly what
    MONAI's ``ITKReader`` (with its defaults) and ``NibabelReader`` produce, so Orientation/Spacing/Invertd and the
    NIfTI writers behave the same whatever the input format. NIfTI files are refused on purpose (``read`` raises
    ``ValueError``), so ``LoadImage(reader=[NibabelReader(), SimpleITKReader()])`` hands them to nibabel.

    Args:
        channel_dim: channel axis of the returned array; None means "no channel" for scalar images and the last axis
            for vector (multi-component) images, as in ``ITKReader``.
        series_name: DICOM series UID to read when a folder holds several (default: the first).
        affine_lps_to_ras: convert the affine to RAS (default, consistent with ``NibabelReader``).
        strict_suffix: refuse files whose suffix is not in :data:`SITK_SUFFIXES` (folders are always DICOM series).

    Examples:
        >>> from monai.transforms import LoadImage
        >>> from monai.data import NibabelReader
        >>> loader = LoadImage(reader=[NibabelReader(), SimpleITKReader()], image_only=True, ensure_channel_first=True)
        >>> img = loader("../shared/data/BTCV_like/dicom/ct_series")  # doctest: +SKIP
    """

    def __init__(
        self,
        channel_dim: int | None = None,
        series_name: str = "",
        affine_lps_to_ras: bool = True,
        strict_suffix: bool = True,
    ) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.series_name = series_name
        self.affine_lps_to_ras = affine_lps_to_ras
        self.strict_suffix = strict_suffix

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True when every name is a DICOM series folder or a file with a SimpleITK suffix."""
        for name in ensure_tuple(filename):
            p = Path(name)
            if p.is_dir():
                continue
            suffix = image_suffix(p)
            if suffix is None or suffix in NIFTI_SUFFIXES:
                return False
        return True

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Read one file/folder (or a list of them, later stacked as channels) into ``SimpleITK.Image`` objects."""
        import SimpleITK as sitk

        names = ensure_tuple(data)
        if self.strict_suffix and not self.verify_suffix(names):
            raise ValueError(f"SimpleITKReader does not read {names}; NIfTI goes through NibabelReader")
        images = []
        for name in names:
            p = Path(name)
            if p.is_dir():
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(_dicom_series_files(p, kwargs.get("series_name", self.series_name)))
                images.append(reader.Execute())
            else:
                images.append(sitk.ReadImage(str(p)))
        return images if len(names) > 1 else images[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Return the (x, y, z[, c]) array and a MONAI meta dict (``affine``, ``original_affine``, ``spatial_shape``,
        ``original_channel_dim``, ``space``, ``spacing``); several images are stacked on a new first axis."""
        arrays, meta = [], {}
        for image in (img if isinstance(img, (list, tuple)) else [img]):
            data = self._array(image)
            header = self._meta(image)
            if self.channel_dim is None:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if image.GetNumberOfComponentsPerPixel() == 1 else -1
            else:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = self.channel_dim
            if not meta:
                meta = header
            else:
                if not np.allclose(meta[MetaKeys.AFFINE], header[MetaKeys.AFFINE], atol=1e-4):
                    raise ValueError("images stacked as channels must share one affine")
                if not np.array_equal(meta[MetaKeys.SPATIAL_SHAPE], header[MetaKeys.SPATIAL_SHAPE]):
                    raise ValueError("images stacked as channels must share one shape")
            arrays.append(data)
        if len(arrays) == 1:
            return arrays[0], meta
        if not np.isnan(float(meta[MetaKeys.ORIGINAL_CHANNEL_DIM])):
            return np.concatenate(arrays, axis=int(meta[MetaKeys.ORIGINAL_CHANNEL_DIM])), meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta

    @staticmethod
    def _array(image: Any) -> np.ndarray:
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(image)  # (z, y, x[, c])
        nd = image.GetDimension()
        if image.GetNumberOfComponentsPerPixel() == 1:
            return np.ascontiguousarray(arr.transpose(tuple(range(nd))[::-1]))
        return np.ascontiguousarray(arr.transpose(tuple(range(nd))[::-1] + (nd,)))

    def _meta(self, image: Any) -> dict:
        meta: dict[str, Any] = {}
        for key in image.GetMetaDataKeys():
            if not key.startswith("ITK_"):
                meta[key] = image.GetMetaData(key)
        nd = image.GetDimension()
        sr = min(nd, 3)
        spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(nd, nd)
        origin = np.asarray(image.GetOrigin(), dtype=np.float64)
        affine = np.eye(sr + 1)
        affine[:sr, :sr] = direction[:sr, :sr] @ np.diag(spacing[:sr])
        affine[:sr, -1] = origin[:sr]
        if self.affine_lps_to_ras:
            affine = orientation_ras_lps(affine)
        meta["spacing"] = spacing
        meta[MetaKeys.ORIGINAL_AFFINE] = affine
        meta[MetaKeys.AFFINE] = affine.copy()
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(image.GetSize()[:sr])
        meta[MetaKeys.SPACE] = SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS
        return meta


@contextlib.contextmanager
def quiet_reader_registration() -> Iterator[None]:
    """Silence MONAI's "nvImageCodec is not available" warning/log line, emitted on CPU-only machines every time a
    ``LoadImage`` registers its default readers (it has no consequence: pydicom's own decoders are used)."""
    plugin_logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    old_level = plugin_logger.level
    plugin_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            yield
    finally:
        plugin_logger.setLevel(old_level)


def make_load_imaged(keys: Sequence[str], **kwargs: Any) -> Any:
    """:class:`CheckedLoadImaged` with our readers (NIfTI -> nibabel, NRRD/MHA/DICOM -> SimpleITK), built quietly."""
    with quiet_reader_registration():
        return CheckedLoadImaged(keys=keys, reader=image_readers(), image_only=True, **kwargs)


def describe_read_error(path: str | os.PathLike, exc: BaseException | None = None) -> str:
    """One short phrase saying why ``path`` could not be read.

    MONAI's ``LoadImage`` tries every reader in turn and reports the last failure (often an unrelated pydicom or
    "install the reader libraries" message), so the file is re-examined with the reader its suffix calls for.

    Args:
        path: the file (or folder) that failed to load.
        exc: the exception the loader raised, used when the re-examination finds nothing wrong.

    Examples:
        >>> describe_read_error("/nonexistent/scan.nii.gz")
        'file not found'
    """
    p = Path(path)
    if p.is_dir():
        return "is a folder, not an image file (and holds no DICOM series)"
    if not p.exists():
        return "file not found" + (" (broken symbolic link)" if p.is_symlink() else "")
    try:
        size = p.stat().st_size
    except OSError as err:
        return f"cannot stat the file ({err.strerror})"
    if size == 0:
        return "empty file (0 bytes)"
    suffix = image_suffix(p)
    if p.name.lower().endswith(".gz"):
        import gzip
        import zlib

        try:
            with gzip.open(p, "rb") as f:
                while f.read(1 << 22):
                    pass
        except EOFError:
            return "truncated or corrupt file (the gzip stream ends early: incomplete copy or download)"
        except (OSError, zlib.error) as err:
            if "Not a gzipped file" in str(err):
                return "not a NIfTI file (named .gz but not gzip-compressed)"
            return f"truncated or corrupt file ({_short_reason(err)})"
    try:
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            img = nib.load(str(p))
            np.asanyarray(img.dataobj[..., :1] if len(img.shape) > 3 else img.dataobj)
        elif suffix is not None:
            import SimpleITK as sitk

            sitk.ReadImage(str(p))
    except Exception as err:  # noqa: BLE001 - the reader's own reason is what we want
        reason = _short_reason(err)
        if "Unable to determine ImageIO reader" in reason:
            return "not a valid image file (no reader recognises its header)"
        if "Cannot work out file type" in reason or "not a gzip" in reason.lower():
            return f"not a {'NIfTI' if suffix in NIFTI_SUFFIXES else 'valid image'} file (header unreadable)"
        if "ended before the end-of-stream" in reason or "EOF" in reason or "truncated" in reason.lower():
            return f"truncated or corrupt file ({reason})"
        return f"unreadable or corrupt image ({reason})"
    return f"unreadable or corrupt image ({_short_reason(exc) if exc is not None else 'unknown reason'})"


class CheckedLoadImaged(LoadImaged):
    """``LoadImaged`` whose failures are one :class:`~pipeline.errors.InputDataError` line naming the file.

    Before reading it checks that each path exists and is a file (or a DICOM series folder), and that the volume
    its header declares fits the memory budget (:func:`pipeline.data.resources.check_load_memory`, which raises
    :class:`~pipeline.errors.ResourceError`). Reader failures are re-diagnosed by :func:`describe_read_error`.

    Examples:
        >>> from pipeline.data.io import make_load_imaged
        >>> load = make_load_imaged(["image"])
        >>> load({"image": "missing.nii.gz"})  # doctest: +SKIP
        InputDataError: missing.nii.gz: file not found
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _select_by_suffix(self._loader)

    def __call__(self, data: Any, reader: Any = None) -> Any:
        from pipeline.data.resources import check_load_memory

        d = dict(data)
        for key in self.key_iterator(d):
            for name in ensure_tuple(d[key]):
                if not isinstance(name, (str, os.PathLike)):
                    continue
                p = Path(name)
                if not p.exists() or (p.is_dir() and not is_dicom_series_dir(p)):
                    raise InputDataError(describe_read_error(p), path=p)
                check_load_memory(p)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return super().__call__(d, reader)
        except PipelineError:
            raise
        except Exception as exc:  # noqa: BLE001 - nibabel/zlib/SimpleITK/pydicom raise many types
            names = [n for k in self.key_iterator(d) for n in ensure_tuple(d[k]) if isinstance(n, (str, os.PathLike))]
            culprit = next((n for n in names if _unreadable(n)), names[0] if names else None)
            raise InputDataError(describe_read_error(culprit, exc) if culprit else _short_reason(exc),
                                 path=culprit) from exc


def _select_by_suffix(loader: Any) -> None:
    """Make a ``LoadImage`` pick its reader by suffix (our SimpleITKReader and NibabelReader are checked first).

    With an explicit reader list MONAI otherwise *tries* every registered reader in turn: a NIfTI file first goes to
    SimpleITKReader (an INFO log line "unable to load" each time), and a corrupt file is retried by pydicom, PIL,
    numpy... whose last error then hides the real one.
    """
    loader.auto_select = True


def _unreadable(path: str | os.PathLike) -> bool:
    return not describe_read_error(path).startswith("unreadable or corrupt image (unknown")


def image_readers() -> list[ImageReader]:
    """The reader list for ``LoadImage``/``LoadImaged``: chosen by suffix (:func:`_select_by_suffix`), NIfTI goes to
    nibabel, NRRD/MHA/DICOM series folders to SimpleITK."""
    return [NibabelReader(), SimpleITKReader()]


@functools.lru_cache(maxsize=8)
def _loader(ensure_channel_first: bool, dtype: str | None) -> Any:
    """One LoadImage per option set (building it registers every MONAI reader, which is slow)."""
    from monai.transforms import LoadImage

    with quiet_reader_registration():
        loader = LoadImage(reader=image_readers(), image_only=True, ensure_channel_first=ensure_channel_first,
                           dtype=None if dtype is None else np.dtype(dtype))
    _select_by_suffix(loader)
    return loader


def load_volume(path: str | os.PathLike, *, dtype: Any = np.float32, ensure_channel_first: bool = True) -> MetaTensor:
    """Load a NIfTI/NRRD/MHA file or a DICOM series folder as a channel-first ``MetaTensor`` (x, y, z, RAS affine).

    Args:
        path: the image file or DICOM series folder.
        dtype: output dtype (``None`` keeps the stored one).
        ensure_channel_first: add/move the channel axis to the front.

    Raises:
        InputDataError: naming the file, when it is missing, unreadable or corrupt.

    Examples:
        >>> img = load_volume("../shared/data/Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz")  # doctest: +SKIP
        >>> tuple(img.shape)  # doctest: +SKIP
        (1, 35, 51, 35)
    """
    p = Path(path)
    if not p.exists():
        raise InputDataError("file not found", path=p)
    if p.is_dir():
        if not is_dicom_series_dir(p):
            raise InputDataError("folder holds no DICOM series", path=p)
    elif image_suffix(p) is None:
        raise InputDataError(
            f"unsupported image type (expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM series folder)", path=p
        )
    from pipeline.data.resources import check_load_memory

    check_load_memory(p)
    loader = _loader(ensure_channel_first, None if dtype is None else np.dtype(dtype).str)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = loader(str(p))
    except InputDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel/zlib/SimpleITK raise many types for corrupt files
        raise InputDataError(describe_read_error(p, exc), path=p) from exc
    return img


def _short_reason(exc: BaseException) -> str:
    """The most informative single line of a (possibly multi-line, nested) reader exception."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # the innermost error is usually last
        if "Error" in ln or "error" in ln:
            return ln[:200]
    return (lines[-1] if lines else type(exc).__name__)[:200]
