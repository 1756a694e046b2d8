"""The bench's worker processes: single-thread, spawned, leaving with their parent."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

from e2urec.memory import keep_freed_memory


def single_threaded(work):
    """`work()` on one thread, as the workers ran: requests are timed against their Retrain."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return work()
    finally:
        torch.set_num_threads(before)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` single-thread processes: on few cores, two one-thread trainings finish sooner
    than one two-thread training."""
    spawn = multiprocessing.get_context("spawn")  # torch and fork do not mix
    # A spawned process starts with Python's default warning filters: the caller's go along.
    args = (os.getpid(), list(warnings.filters))
    return ProcessPoolExecutor(workers, spawn, initializer=_worker, initargs=args)


def _worker(parent: int, filters: list) -> None:
    import torch

    torch.set_num_threads(1)
    keep_freed_memory()
    warnings.filters[:] = filters
    # A killed bench (kill, OOM, lost session) would leave its workers training on, writing
    # into stages that a rerun of the same command also writes: they leave with their parent.
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)
