"""Peak-memory measurement for benchmark reports (the hardware/software stamp is in :mod:`pipeline.utils.environment`).

Examples:
    >>> from pipeline.benchmark.memory import PeakMemory
    >>> with PeakMemory(interval=0.01) as mem:
    ...     buf = bytearray(8 * 2**20)
    >>> mem.peak_rss_bytes > 0
    True
"""

from __future__ import annotations

import sys
import threading
from typing import Any


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
