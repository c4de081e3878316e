"""Reading volumes: NIfTI through :class:`CheckedNibabelReader` (MONAI's ``NibabelReader`` plus header checks),
NRRD/MHA/DICOM series through :class:`SimpleITKReader`.

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
from typing import Any, cast

import numpy as np
from monai.data import ImageReader, MetaTensor, NibabelReader
from monai.data.utils import orientation_ras_lps
from monai.transforms import LoadImaged
from monai.utils import ensure_tuple
from monai.utils.enums import MetaKeys, SpaceKeys

from pipeline.data.naming import IMAGE_SUFFIXES, NIFTI_SUFFIXES, image_suffix
from pipeline.errors import InputDataError, PipelineError


def _read_dicom_series(folder: Path, series_uid: str | None) -> Any:
    """Read the chosen series of ``folder`` (:func:`pipeline.data.dicom.choose_dicom_series`) with SimpleITK; the
    choice and the slice-spacing check go into the image's metadata as the input report."""
    import SimpleITK as sitk

    from pipeline.data.dicom import choose_dicom_series
    from pipeline.data.input_report import INPUT_REPORT_KEY, attach_input_report

    choice = choose_dicom_series(folder, [series_uid] if series_uid else None)  # "" (the old default): no choice
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(choice.series.files))
    shown = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # ITK's "Non uniform sampling" line names no file: ours does
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        odd = _odd_slice_sizes(choice.series.files)
        if odd:
            raise InputDataError(
                f"DICOM series {choice.series.label()} unreadable: {odd}; export the series again", path=folder
            ) from exc
        raise
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(shown)
    meta: dict = {}
    attach_input_report(meta, choice.report())
    image.SetMetaData(INPUT_REPORT_KEY, meta[INPUT_REPORT_KEY])
    return image


def _odd_slice_sizes(files: Sequence[str]) -> str | None:
    """The phrase "slices differ in size: <file> is 256x256, ..." when the slices differ in size, else None."""
    import pydicom

    sizes: dict[tuple[int, int], list[str]] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Rows", "Columns"], force=True)
            sizes.setdefault((int(ds.Rows), int(ds.Columns)), []).append(f)
        except Exception:  # noqa: BLE001 - a slice without readable size tags: nothing to compare
            continue
    if len(sizes) < 2:
        return None
    common = max(sizes, key=lambda k: len(sizes[k]))
    odd = [(f, k) for k, fs in sizes.items() if k != common for f in fs]
    shown = ", ".join(f"{Path(f).name} is {k[1]}x{k[0]}" for f, k in odd[:3]) + (" ..." if len(odd) > 3 else "")
    return (
        f"slices differ in size: {shown}, the other {len(sizes[common])} are {common[1]}x{common[0]} (columns x rows)"
    )


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
        series_name: DICOM SeriesInstanceUID to read from a folder; None follows
            :func:`pipeline.data.dicom.choose_dicom_series` (the UIDs of an enclosing ``preferred_dicom_series``
            block, else the series with the most slices). The chosen series, the others in the folder and any uneven
            slice spacing are stored in the image's metadata (:mod:`pipeline.data.input_report`).
        affine_lps_to_ras: convert the affine to RAS (default, consistent with ``NibabelReader``).
        strict_suffix: refuse files whose suffix is not in :data:`pipeline.data.naming.SITK_SUFFIXES` (folders are
            always DICOM series).

    Examples:
        >>> from monai.transforms import LoadImage
        >>> from monai.data import NibabelReader
        >>> loader = LoadImage(reader=[NibabelReader(), SimpleITKReader()], image_only=True, ensure_channel_first=True)
        >>> img = loader("../shared/data/BTCV_like/dicom/ct_series")  # doctest: +SKIP
    """

    def __init__(
        self,
        channel_dim: int | None = None,
        series_name: str | None = None,
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
                images.append(_read_dicom_series(p, kwargs.get("series_name", self.series_name)))
            else:
                images.append(sitk.ReadImage(str(p)))
        return images if len(names) > 1 else images[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Return the (x, y, z[, c]) array and a MONAI meta dict (``affine``, ``original_affine``, ``spatial_shape``,
        ``original_channel_dim``, ``space``, ``spacing``); several images are stacked on a new first axis."""
        arrays: list[np.ndarray] = []
        meta: dict = {}
        for image in img if isinstance(img, (list, tuple)) else [img]:
            data = self._array(image)
            header = self._meta(image)
            if self.channel_dim is None:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = (
                    float("nan") if image.GetNumberOfComponentsPerPixel() == 1 else -1
                )
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


class CheckedNibabelReader(NibabelReader):
    """MONAI's ``NibabelReader`` with the header checks nibabel skips.

    * The geometry follows :func:`pipeline.data.geometry.resolve_nifti_geometry` on the header as stored: a NaN or
      non-invertible sform/qform is skipped with a warning, and a header whose voxel size is unknown (zero/NaN
      ``pixdim`` and no usable sform/qform) is refused instead of silently becoming 1 mm.
    * Complex or RGB/structured voxel types are refused (converting them to float would keep only the real part).
    * The geometry source, spacing and warnings are stored in the metadata (:mod:`pipeline.data.input_report`), and
      ``pixdim`` is made consistent with the affine used.

    Examples:
        >>> from monai.transforms import LoadImage
        >>> load = LoadImage(reader=CheckedNibabelReader(), image_only=True)
        >>> img = load("../shared/data/Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz")  # doctest: +SKIP
        >>> from pipeline.data.input_report import input_report
        >>> input_report(img.meta)["geometry_source"]  # doctest: +SKIP
        'sform'
    """

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        from pipeline.data.geometry import NiftiGeometry, quiet_nibabel, read_nifti_header, resolve_nifti_geometry

        names = ensure_tuple(data)
        geometries: list[NiftiGeometry | None] = []
        for name in names:
            hdr = read_nifti_header(name)  # as stored: nibabel's load would already have replaced a zero pixdim
            if hdr is None:  # not a NIfTI header: nibabel's own error is re-diagnosed by describe_read_error
                geometries.append(None)
                continue
            dtype = np.dtype(hdr.get_data_dtype())
            kind = dtype.kind
            if kind == "V" and dtype.names is None:
                raise InputDataError(
                    f"unsupported NIfTI datatype code {int(hdr['datatype'])}: the header does not say "
                    "how the voxels are stored (a corrupt header?)",
                    path=name,
                )
            if kind in "cV":
                what = "complex-valued" if kind == "c" else "RGB/structured"
                raise InputDataError(
                    f"{what} voxels ({hdr.get_data_dtype()}): expected a real-valued scalar image; save the "
                    + ("magnitude (numpy.abs)" if kind == "c" else "grayscale channel")
                    + " as a real image",
                    path=name,
                )
            try:
                geometries.append(resolve_nifti_geometry(hdr))
            except InputDataError as exc:
                raise InputDataError(str(exc), path=name) from None
        with quiet_nibabel():
            imgs = super().read(data, **kwargs)
        for img, geo in zip(imgs if isinstance(imgs, (list, tuple)) else [imgs], geometries):
            img._medseg_geometry = geo
        return imgs

    def _get_affine(self, img: Any) -> np.ndarray:
        geo = getattr(img, "_medseg_geometry", None)
        return np.array(geo.affine, copy=True) if geo is not None else super()._get_affine(img)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """As ``NibabelReader.get_data``, plus the input report (geometry source, spacing, warnings)."""
        from pipeline.data.input_report import attach_input_report

        arr, meta = super().get_data(img)
        geos = [getattr(i, "_medseg_geometry", None) for i in (img if isinstance(img, (list, tuple)) else [img])]
        if geos and geos[0] is not None:
            warnings = list(dict.fromkeys(g.warning for g in geos if g is not None and g.warning))
            attach_input_report(meta, {"format": "nifti", **geos[0].to_dict(), "warnings": warnings})
            if MetaKeys.PIXDIM in meta:
                pixdim = np.array(meta[MetaKeys.PIXDIM], dtype=np.float64, copy=True)
                n = min(len(geos[0].spacing), len(pixdim) - 1)
                pixdim[1 : 1 + n] = geos[0].spacing[:n]
                meta[MetaKeys.PIXDIM] = pixdim
        return arr, meta


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
        if exc is not None and is_dicom_series_dir(p):
            return f"DICOM series unreadable ({_itk_reason(exc) or _short_reason(exc)})"
        return "is a folder, not an image file (and holds no DICOM series)"
    kind = file_kind(p)
    if kind == "missing":
        return "file not found"
    if kind == "broken link":
        return "file not found (broken symbolic link)"
    if kind == "link loop":
        return "symbolic link loop (the link leads back to itself): cannot be read"
    if kind != "file":
        return f"not a regular file but {kind}: copy the image into a regular file"
    try:
        size = p.stat().st_size
    except OSError as err:
        return f"cannot stat the file ({err.strerror})"
    if size == 0:
        return "empty file (0 bytes)"
    suffix = image_suffix(p)
    stored = size  # bytes after decompression, for the NIfTI size check below
    if p.name.lower().endswith(".gz"):
        import gzip
        import zlib

        try:
            stored = 0
            with gzip.open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    stored += len(chunk)
        except EOFError:
            return "truncated or corrupt file (the gzip stream ends early: incomplete copy or download)"
        except (OSError, zlib.error) as err:
            if "Not a gzipped file" in str(err):
                return "not a NIfTI file (named .gz but not gzip-compressed)"
            return f"truncated or corrupt file ({_short_reason(err)})"
    if suffix in NIFTI_SUFFIXES:
        short = _nifti_bad_dim0(p) or _nifti_short_by(p, stored)
        if short:
            return short
    try:
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            from pipeline.data.geometry import quiet_nibabel

            with quiet_nibabel():
                img = cast(nib.Nifti1Image, nib.load(str(p)))
            np.asanyarray(img.dataobj[..., :1] if len(img.shape) > 3 else img.dataobj)
        elif suffix is not None:
            import SimpleITK as sitk

            sitk.ReadImage(str(p))
    except Exception as err:  # noqa: BLE001 - the reader's own reason is what we want
        itk = _itk_reason(err)
        if itk:
            return itk
        reason = _short_reason(err)
        if "Unable to determine ImageIO reader" in reason:
            return "not a valid image file (no reader recognises its header)"
        if "Cannot work out file type" in reason or "not a gzip" in reason.lower():
            return f"not a {'NIfTI' if suffix in NIFTI_SUFFIXES else 'valid image'} file (header unreadable)"
        if "ended before the end-of-stream" in reason or "EOF" in reason or "truncated" in reason.lower():
            return f"truncated or corrupt file ({reason})"
        return f"unreadable or corrupt image ({reason})"
    return f"unreadable or corrupt image ({_short_reason(exc) if exc is not None else 'unknown reason'})"


def file_kind(path: str | os.PathLike) -> str:
    """What ``path`` is: ``"file"``, ``"folder"``, ``"missing"``, ``"broken link"``, ``"link loop"``, or a phrase for
    other file types (``"a named pipe (FIFO)"``, ``"a character device"``...). Symbolic links are followed.

    Reading a named pipe or a device blocks or never ends, so loaders check this before opening anything.

    Examples:
        >>> file_kind("/dev/null")
        'a character device'
    """
    import errno
    import stat

    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "link loop"
        return "broken link" if os.path.islink(p) else "missing"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    for test, name in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"


def _itk_reason(exc: BaseException) -> str | None:
    """A clear phrase for ITK's refusals of a degenerate header geometry, else None."""
    text = str(exc)
    if "Zero-valued spacing" in text:
        return (
            "invalid geometry in the header: zero voxel spacing (ITK refuses it, so the spacing is unknown); "
            "write the voxel size (mm) into the header (NRRD 'spacings'/'space directions', MHA 'ElementSpacing')"
        )
    if "Bad direction" in text or "determinant is 0" in text:
        return (
            "invalid geometry in the header: the direction matrix is not invertible (NaN or a zero axis); fix the "
            "header's direction (NRRD 'space directions', MHA 'TransformMatrix')"
        )
    return None


def _nifti_bad_dim0(path: Path) -> str | None:
    """A "corrupt header" phrase when a NIfTI-1 header's dim[0] (the number of dimensions) is not 1..7.

    nibabel guesses the byte order from dim[0], so such a header is read byte-swapped and fails with an unrelated
    reason (e.g. "data code 4096 not recognized"); the byte order is taken from ``sizeof_hdr`` (348) here instead.
    """
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path), "rb") as f:
            block = f.read(48)
    except Exception:  # noqa: BLE001 - the reader reports unreadable files
        return None
    if len(block) < 48:
        return None
    for order in ("<", ">"):
        if int(np.frombuffer(block[:4], dtype=f"{order}i4")[0]) == 348:
            dim0 = int(np.frombuffer(block[40:42], dtype=f"{order}i2")[0])
            if not 1 <= dim0 <= 7:
                return f"corrupt NIfTI header: dim[0] (the number of dimensions) is {dim0}, must be 1 to 7"
            return None
    return None


def _nifti_short_by(path: Path, stored: int) -> str | None:
    """A "truncated file" phrase when the NIfTI header declares more voxel bytes than the file holds (decompressed)."""
    from pipeline.data.geometry import read_nifti_header

    hdr = read_nifti_header(path)
    if hdr is None:
        return None
    try:
        offset = int(hdr.get_data_offset())
        need = int(np.prod(hdr.get_data_shape(), dtype=np.int64)) * np.dtype(hdr.get_data_dtype()).itemsize
    except Exception:  # noqa: BLE001 - an odd header: the reader will say what is wrong
        return None
    if offset >= stored and need > 0:
        return (
            f"corrupt header: the voxel data offset (vox_offset {offset}) lies beyond the end of the file "
            f"({stored} bytes)"
        )
    if offset + need > stored:
        return (
            f"truncated file: the header declares {need} bytes of voxel data from byte {offset}, the file holds "
            f"{max(stored - offset, 0)} (incomplete copy or download)"
        )
    return None


class CheckedLoadImaged(LoadImaged):
    """``LoadImaged`` whose failures are one :class:`~pipeline.errors.InputDataError` line naming the file.

    Before reading it checks that each path exists and is a regular file (a named pipe or a device would block the
    reader) or a DICOM series folder, and that the volume
    its header declares fits the memory budget (:func:`pipeline.data.resources.check_load_memory`, which raises
    :class:`~pipeline.errors.ResourceError`). Reader failures are re-diagnosed by :func:`describe_read_error`.

    Examples:
        >>> from pipeline.data.io import make_load_imaged
        >>> load = make_load_imaged(["image"])
        >>> load({"image": "missing.nii.gz"})
        Traceback (most recent call last):
            ...
        pipeline.errors.InputDataError: missing.nii.gz: file not found
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
                kind = file_kind(p)
                if kind != "file" and not (kind == "folder" and is_dicom_series_dir(p)):
                    raise InputDataError(describe_read_error(p), path=p)  # before opening: a FIFO would block
                check_load_memory(p)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return super().__call__(d, reader)
        except PipelineError:
            raise
        except Exception as exc:  # nibabel/zlib/SimpleITK/pydicom raise many types
            names = [n for k in self.key_iterator(d) for n in ensure_tuple(d[k]) if isinstance(n, (str, os.PathLike))]
            culprit = next((n for n in names if _unreadable(n)), names[0] if names else None)
            raise InputDataError(
                describe_read_error(culprit, exc) if culprit else _short_reason(exc), path=culprit
            ) from exc


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
    nibabel (:class:`CheckedNibabelReader`), NRRD/MHA/DICOM series folders to SimpleITK."""
    return [CheckedNibabelReader(), SimpleITKReader()]


@functools.lru_cache(maxsize=8)
def _loader(ensure_channel_first: bool, dtype: str | None) -> Any:
    """One LoadImage per option set (building it registers every MONAI reader, which is slow)."""
    from monai.transforms import LoadImage

    with quiet_reader_registration():
        loader = LoadImage(
            reader=image_readers(),
            image_only=True,
            ensure_channel_first=ensure_channel_first,
            dtype=None if dtype is None else np.dtype(dtype),
        )
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
    kind = file_kind(p)
    if kind == "folder":
        if not is_dicom_series_dir(p):
            raise InputDataError("folder holds no DICOM series", path=p)
    elif kind != "file":
        raise InputDataError(describe_read_error(p), path=p)
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
    except Exception as exc:  # nibabel/zlib/SimpleITK raise many types for corrupt files
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
