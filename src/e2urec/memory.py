"""Peak memory of a block of work (resident memory on CPU, allocator peak on GPU), and how
freed memory is kept between training steps."""

from __future__ import annotations

import ctypes
import resource
import sys
import threading
import time

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc's malloc.h


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


def keep_freed_memory() -> bool:
    """Let glibc keep the memory a training step frees for the next step.

    By default glibc hands freed memory at the top of its heap back to the kernel once more than
    about 64 MiB is free there, which a training step's activations are; the next step faults
    the same pages in again, zero-filled (61 M page faults, 6% of the demo's CPU time, were
    this). Raising the trim threshold keeps them; fixing the mmap threshold at glibc's own
    dynamic maximum stops it from being lowered again. Peak RSS hardly moves: the pages kept were
    in use a step before. Returns whether the setting took (False off glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 512 << 20)) and bool(
            libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        )
    except (OSError, AttributeError):
        return False
