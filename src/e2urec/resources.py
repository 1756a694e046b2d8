"""Peak memory of a block of work: resident memory on CPU, allocator peak on GPU."""

from __future__ import annotations

import resource
import sys
import threading
import time

import torch


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:  # not Linux: fall back to the lifetime peak
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


class PeakMemory:
    """Samples RSS in a thread, because ru_maxrss only ever grows over the whole process."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.mb = 0.0
        self.gpu_mb = 0.0
        self._stop = threading.Event()

    def _watch(self):
        while not self._stop.is_set():
            self.mb = max(self.mb, current_rss_mb())
            time.sleep(self.interval)

    def __enter__(self):
        self.mb = current_rss_mb()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.mb = round(max(self.mb, current_rss_mb()), 1)
        if torch.cuda.is_available():
            self.gpu_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return False
