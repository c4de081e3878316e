"""Hardware/software stamp and peak-memory measurement for benchmark reports.

Examples:
    >>> from pipeline.benchmark.environment import PeakMemory, system_stamp
    >>> stamp = system_stamp()
    >>> {"cpu", "torch", "monai", "date"} <= set(stamp)
    True
    >>> with PeakMemory(interval=0.01) as mem:
    ...     buf = bytearray(8 * 2**20)
    >>> mem.peak_rss_bytes > 0
    True
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import threading
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str, dist: str | None = None) -> str | None:
    """The version of an imported module, else of its installed distribution (without importing it)."""
    mod = sys.modules.get(module)
    if mod is not None and getattr(mod, "__version__", None):
        return str(mod.__version__)
    from importlib import metadata

    try:
        return metadata.version(dist or module)
    except metadata.PackageNotFoundError:
        return None


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
        "cpu": _cpu_model(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": sys.version.split()[0],
        "torch": _version("torch"),
        "monai": _version("monai"),
        "numpy": _version("numpy"),
        "nibabel": _version("nibabel"),
        "SimpleITK": _version("SimpleITK"),
        "scipy": _version("scipy"),
        "medseg": _version("pipeline", "medseg-pipeline"),
        "cuda_available": bool(torch.cuda.is_available()) if torch is not None else None,
        "device": device or "cpu",
    }
    if torch is not None and device and str(device).startswith("cuda") and torch.cuda.is_available():
        stamp["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return stamp


def stamp_line(stamp: dict[str, Any]) -> str:
    """One line: ``CPU (N logical cores), T torch threads, torch X, monai Y, python Z``."""
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


def _ru_maxrss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class PeakMemory:
    """Context manager that samples this process's resident memory (RSS) and reports the peak.

    A background thread polls ``psutil`` every ``interval`` seconds (children of the process are included, so
    DataLoader workers count). The kernel's lifetime high-water mark (``ru_maxrss``) is recorded too, and the
    reported peak is never below the last sample. On CUDA the peak allocated device memory is also reported.

    Args:
        interval: sampling period in seconds.
        device: a torch device string; CUDA peak memory is tracked when it names a CUDA device.
    """

    def __init__(self, interval: float = 0.05, device: str | None = None) -> None:
        self.interval = float(interval)
        self.device = device
        self.start_rss_bytes = 0
        self.peak_rss_bytes = 0
        self.ru_maxrss_bytes: int | None = None
        self.cuda_peak_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        import psutil

        proc = psutil.Process()
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return int(total)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss_bytes = max(self.peak_rss_bytes, self._rss())

    def _cuda(self) -> bool:
        import torch

        return bool(self.device and str(self.device).startswith("cuda") and torch.cuda.is_available())

    def __enter__(self) -> PeakMemory:
        self.start_rss_bytes = self.peak_rss_bytes = self._rss()
        if self.device is not None and self._cuda():
            import torch

            torch.cuda.reset_peak_memory_stats(torch.device(self.device))
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_rss_bytes = max(self.peak_rss_bytes, self._rss())
        self.ru_maxrss_bytes = _ru_maxrss_bytes()
        if self.device is not None and self._cuda():
            import torch

            self.cuda_peak_bytes = int(torch.cuda.max_memory_allocated(torch.device(self.device)))

    def as_dict(self) -> dict[str, Any]:
        """Peak figures in MiB, ready for a report."""
        mib = 2**20
        out: dict[str, Any] = {
            "peak_rss_mib": round(self.peak_rss_bytes / mib, 1),
            "start_rss_mib": round(self.start_rss_bytes / mib, 1),
            "sampling_interval_s": self.interval,
            "process_lifetime_maxrss_mib": None
            if self.ru_maxrss_bytes is None
            else round(self.ru_maxrss_bytes / mib, 1),
        }
        if self.cuda_peak_bytes is not None:
            out["cuda_peak_allocated_mib"] = round(self.cuda_peak_bytes / mib, 1)
        return out
