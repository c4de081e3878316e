"""The hardware/software stamp of every output: package versions for inference sidecars, the full machine stamp
for benchmark reports and RESULTS.md sections.

The project's own version is ``pipeline.__version__`` (``setup.cfg`` reads it from there); every stamp names it
``medseg``.

Examples:
    >>> from pipeline.utils.environment import package_version, software_versions, stamp_line, system_stamp
    >>> sorted(software_versions())
    ['medseg', 'monai', 'nibabel', 'numpy', 'platform', 'python', 'torch']
    >>> stamp = system_stamp()
    >>> {"cpu", "torch", "monai", "date", "medseg"} <= set(stamp)
    True
    >>> stamp_line(stamp).count("torch") >= 1
    True
    >>> package_version("not_a_package_at_all") is None
    True
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from typing import Any

from pipeline import __version__

__all__ = [
    "cpu_flags",
    "cpu_model",
    "native_bf16",
    "package_version",
    "software_versions",
    "system_stamp",
    "stamp_line",
]

#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: AMX tiles, or AVX512 bf16 dot products
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def package_version(module: str, dist: str | None = None) -> str | None:
    """The version of an imported module, else of its installed distribution (without importing it); None when
    neither is found.

    Args:
        module: the import name (``"torch"``).
        dist: the distribution name when it differs from ``module``.
    """
    mod = sys.modules.get(module)
    if mod is not None and getattr(mod, "__version__", None):
        return str(mod.__version__)
    from importlib import metadata

    try:
        return metadata.version(dist or module)
    except metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, str | None]:
    """The versions recorded in every inference sidecar: medseg, python, torch, monai, numpy, nibabel, platform.

    The packages are imported (inference has them loaded anyway), so each version is the module's own
    ``__version__``.
    """
    import monai  # noqa: F401
    import nibabel  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401

    return {
        "medseg": __version__,
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "monai": package_version("monai"),
        "numpy": package_version("numpy"),
        "nibabel": package_version("nibabel"),
        "platform": platform.platform(),
    }


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The flags of the first CPU in ``cpuinfo`` (empty where the file is absent, e.g. macOS).

    Examples:
        >>> import tempfile
        >>> f = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        >>> _ = f.writelines(line + chr(10) for line in ("processor : 0", "flags : fpu avx2 amx_bf16", "flags : fpu"))
        >>> f.close()
        >>> sorted(cpu_flags(f.name)), native_bf16(f.name), cpu_flags("/no/such/file")
        (['amx_bf16', 'avx2', 'fpu'], True, frozenset())
    """
    try:
        with open(cpuinfo, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):  # x86, ARM
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes in bf16 natively (:data:`NATIVE_BF16_FLAGS`); elsewhere bf16 would be emulated
    (measured on an AMD EPYC with AVX2 only: a bf16 matmul ~400x slower than fp32), which the product never does."""
    return bool(cpu_flags(cpuinfo) & set(NATIVE_BF16_FLAGS))


def system_stamp(device: str | None = None) -> dict[str, Any]:
    """Hardware, thread settings and package versions, for the header of every report.

    Torch is not imported for this: a script that never imported torch reports ``torch_threads`` None.

    Args:
        device: the device the benchmark ran on (e.g. ``"cpu"``, ``"cuda:0"``); its name is added for CUDA.
    """
    import psutil

    torch = sys.modules.get("torch")
    stamp: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_native_bf16": native_bf16(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "monai": package_version("monai"),
        "numpy": package_version("numpy"),
        "nibabel": package_version("nibabel"),
        "SimpleITK": package_version("SimpleITK"),
        "scipy": package_version("scipy"),
        "medseg": __version__,
        "cuda_available": bool(torch.cuda.is_available()) if torch is not None else None,
        "device": device or "cpu",
    }
    if torch is not None and device and str(device).startswith("cuda") and torch.cuda.is_available():
        stamp["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return stamp


def stamp_line(stamp: dict[str, Any]) -> str:
    """One line: ``CPU (N logical cores, R GiB RAM); T torch threads; device D; torch X, monai Y, numpy Z, python P``.

    Args:
        stamp: a :func:`system_stamp` (missing keys print as None).
    """
    omp = stamp.get("omp_num_threads")
    if stamp.get("torch_threads"):
        threads = f"{stamp['torch_threads']} torch threads" + (f" (OMP_NUM_THREADS={omp})" if omp else "")
    else:  # torch was not imported by the stamping process (e.g. the suite runner)
        threads = f"OMP_NUM_THREADS={omp}" if omp else "OMP_NUM_THREADS unset (library defaults)"
    gpu = f", GPU {stamp['gpu']}" if stamp.get("gpu") else ""
    return (
        f"{stamp.get('cpu')} ({stamp.get('cpu_count_logical')} logical cores, {stamp.get('ram_gib')} GiB RAM){gpu}; "
        f"{threads}; device {stamp.get('device')}; torch {stamp.get('torch')}, monai {stamp.get('monai')}, "
        f"numpy {stamp.get('numpy')}, python {stamp.get('python')}"
    )
