"""The bench's jobs on a Ray cluster (`--executor ray`), behind the interface the local pool
offers the scheduler: `submit(job, *args)` returns a concurrent.futures.Future.

Each job asks Ray for one GPU where the cluster has GPUs, else for one CPU, and runs on one
thread as the local pool's workers do. Jobs read and write the run folder, so on a cluster of
several machines that folder must be on storage every node mounts at the same path. Without an
address a local cluster is started on 127.0.0.1 with `workers` CPUs.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

INSTALL = 'pip install -e ".[cluster]"'


def _run_job(job, *args):
    """A job inside a Ray worker: one thread, freed memory kept (as `pool._worker`)."""
    import torch

    from e2urec.memory import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()
    return job(*args)


class RayPool:
    def __init__(self, workers: int, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise ValueError(f"--executor ray needs Ray: {INSTALL}") from None
        self.ray = ray
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, num_gpus=0, include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")  # fmt: skip
        gpus = ray.cluster_resources().get("GPU", 0)
        need = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": 1}
        self.remote = ray.remote(**need)(_run_job)
        self.pending: dict = {}  # ObjectRef -> Future
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()

    def submit(self, job, *args) -> Future:
        future: Future = Future()
        with self.lock:
            self.pending[self.remote.remote(job, *args)] = future
        return future

    def _watch(self) -> None:
        """Complete each job's Future as Ray finishes it (errors are raised by `result()`)."""
        while not self.stop.is_set():
            with self.lock:
                refs = list(self.pending)
            if not refs:
                self.stop.wait(0.2)
                continue
            done, _ = self.ray.wait(refs, num_returns=1, timeout=0.5)
            for ref in done:
                with self.lock:
                    future = self.pending.pop(ref)
                try:
                    future.set_result(self.ray.get(ref))
                except Exception as err:  # the job's own error, re-raised by the scheduler
                    future.set_exception(err)

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.watcher.join()
        self.ray.shutdown()
