"""The background worker: waits for pending deletion requests, applies them in a child process,
then swaps the live model when the deployment has switched versions.

The apply runs in its own process so that scoring keeps its cores' worth of Python (no shared
GIL) and a crash inside the unlearning cannot take the service down. The child dies with the
service: the deployment's lock and ledger make a killed apply safe to redo, an orphan would
hold the lock against the restarted service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

from e2urec import deploy as deployment
from e2urec import ledger
from e2urec.service.live import LiveModel, load_live

log = logging.getLogger("e2urec.service")
POLL = 10.0  # seconds between looks at the ledger for requests made outside the service


def pending(deploy: Path) -> list[str]:
    return [r["id"] for r in deployment.status(deploy)["requests"] if r["state"] in PENDING]


PENDING = ("received",)


def _apply_in_child(deploy: str, method: str | None, alive, result) -> None:
    import threading

    def die_with_parent():
        with contextlib.suppress(EOFError, OSError):
            alive.recv()  # never sent: returns (EOFError) only when the service is gone
        os._exit(1)

    threading.Thread(target=die_with_parent, daemon=True).start()
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        result.send(("ok", deployment.apply(deploy, method=method)))
    except Exception as err:  # the parent records it; the child has nowhere to show it
        result.send(("error", f"{type(err).__name__}: {err}"))


async def apply_in_child(deploy: Path, method: str | None) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")  # fork would copy the scorer thread's locks
    alive_r, alive_w = ctx.Pipe(duplex=False)
    result_r, result_w = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_apply_in_child, args=(str(deploy), method, alive_r, result_w), daemon=True
    )
    child.start()
    result_w.close()  # so that recv() sees EOF if the child dies without answering
    alive_r.close()
    try:
        try:
            outcome, value = await asyncio.to_thread(result_r.recv)
        except EOFError:
            raise RuntimeError(f"the apply process died (exit code {child.exitcode})") from None
    finally:
        alive_w.close()
        if child.is_alive():
            child.terminate()
        await asyncio.to_thread(child.join)
    if outcome == "error":
        raise RuntimeError(value)
    return value


@dataclass
class Applying:
    ids: tuple[str, ...]
    since: float


class Worker:
    def __init__(self, deploy: Path, window: float, method: str | None, live: LiveModel):
        self.deploy, self.window, self.method, self.live = deploy, window, method, live
        self.applying: Applying | None = None
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._check: tuple[float, dict] | None = None

    async def ledger_check(self, max_age: float) -> tuple[float, dict]:
        """`ledger.verify` re-hashes the model files: cached for `max_age` s, redone after applies."""
        if self._check is None or time.time() - self._check[0] > max_age:
            self._check = (time.time(), await asyncio.to_thread(ledger.verify, self.deploy))
        return self._check

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            if await asyncio.to_thread(pending, self.deploy):
                await asyncio.sleep(self.window)  # let the requests of the window join
                await self.apply_pending()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL)
            self._wake.clear()

    async def apply_pending(self) -> None:
        ids = await asyncio.to_thread(pending, self.deploy)
        if not ids:
            return
        self.applying = Applying(tuple(ids), time.time())
        log.info("applying %d request(s)", len(ids))
        try:
            await apply_in_child(self.deploy, self.method)
            self.last_error = None
        except Exception as err:
            log.error("apply failed: %s", err)
            self.last_error = str(err)
            await asyncio.to_thread(mark_failed, self.deploy, ids, str(err))
        finally:
            self.applying = None
            self._check = None
        await self.refresh()

    async def refresh(self) -> None:
        """Load the deployment's live version if it is not the one serving."""
        live = await asyncio.to_thread(deployment.status, self.deploy)
        if str(live["live"]) != self.live.get().version:
            self.live.set(await asyncio.to_thread(load_live, self.deploy))
            log.info("now serving model version %s", self.live.get().version)


def mark_failed(deploy: Path, ids: list[str], reason: str) -> None:
    raise NotImplementedError  # replaced once the ledger's API for it is known
