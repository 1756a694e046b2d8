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
from e2urec.deploy import integrity
from e2urec.deploy.folder import Layout
from e2urec.deploy.ledger import Corrupt, Ledger
from e2urec.deploy.upkeep import record_attempt
from e2urec.service.config import ServiceConfig
from e2urec.service.live import LiveModel, load_live

log = logging.getLogger("e2urec.service")
POLL = 10.0  # seconds between looks at the ledger for requests made outside the service
# After a failed apply the worker waits RETRY seconds, twice as long after each further failure
# up to MAX_BACKOFF; an apply refused because the deployment itself is broken (tampered files, a
# lost key, a corrupt ledger: no attempt recorded) waits BROKEN_BACKOFF. A new request wakes it.
RETRY, MAX_BACKOFF = 10.0, 600.0
BROKEN_BACKOFF = 300.0
BROKEN = ("Tampered", "KeyMissing", "Corrupt")
DIED = ("ProcessDied", "TimedOut")  # the child could not write its own "failed" rows
NOT_SERVABLE = (integrity.Tampered, Corrupt)


# A request waits in one of these states: received, or retrying after failed attempts; the last
# two are left by an apply that was killed after verifying, and the next apply rolls them forward.
WAITING = ("received", "retrying")
ROLLING = ("verified", "applied")


ALONE = 2  # failed attempts after which a request is tried alone, not in a batch


def pending(deploy: Path, max_attempts: int | None = None) -> list[str]:
    """Requests the worker should apply next. A request that failed `max_attempts` times waits
    for the operator (`e2urec apply`, or a cancel) rather than being retried for ever; one
    that failed ALONE times is tried by itself (oldest first), so that a request that cannot be
    carried out never holds a batch of others back more than twice. A killed apply (the OOM
    killer) says nothing about its requests: they stay in the batch."""
    views = deployment.pending_requests(deploy)
    views = [r for r in views if max_attempts is None or r["attempts"] < max_attempts]
    rolling = [r["id"] for r in views if r["state"] in ROLLING]
    waiting = [r for r in views if r["state"] in WAITING]
    alone = {r["id"] for r in waiting if r["attempts"] >= ALONE and r["error"] != "ProcessDied"}
    stuck = [r["id"] for r in waiting if r["id"] in alone]
    fresh = [r["id"] for r in waiting if r["id"] not in alone]
    return rolling + (stuck[:1] if stuck else fresh) + exact_waiting(deploy, max_attempts)


def exact_waiting(deploy: Path, max_attempts: int | None = None) -> list[str]:
    """In a two-phase deployment: requests carried out approximately whose exact phase has not
    gone live (not started, cut short, or failed fewer than `max_attempts` times). An apply
    runs it for all of them whatever its `requests`."""
    found = deployment.status(deploy)
    if "exact" not in found:
        return []
    return [
        r["id"]
        for r in found["requests"]
        if r["phase"] == "approximate"
        and (max_attempts is None or r["exact_attempts"] < max_attempts)
    ]


class ApplyError(RuntimeError):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # the exception's class name, what the ledger keeps


def _apply_in_child(deploy: str, method: str | None, bound: tuple, alive, result) -> None:
    import threading

    def die_with_parent():
        with contextlib.suppress(EOFError, OSError):
            alive.recv()  # never sent: returns (EOFError) only when the service is gone
        os._exit(1)

    threading.Thread(target=die_with_parent, daemon=True).start()
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        ids, max_attempts = bound
        done = deployment.apply(deploy, method=method, requests=ids, max_attempts=max_attempts)
        result.send(("ok", done))
    except Exception as err:  # the parent records it; the child has nowhere to show it
        result.send(("error", (type(err).__name__, str(err))))


async def apply_in_child(
    deploy: Path, method: str | None, ids=None, max_attempts=None, timeout: float | None = None
) -> list:
    """Run `apply` in a child process, killed (SIGKILL: it reaches a stopped process too) when it
    has not answered within `timeout` seconds."""
    ctx = multiprocessing.get_context("spawn")  # fork would copy the scorer thread's locks
    alive_r, alive_w = ctx.Pipe(duplex=False)
    result_r, result_w = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_apply_in_child,
        args=(str(deploy), method, (ids, max_attempts), alive_r, result_w),
        daemon=True,
    )
    child.start()
    result_w.close()  # so that recv() sees EOF if the child dies without answering
    alive_r.close()
    try:
        if not await asyncio.to_thread(result_r.poll, timeout):
            child.kill()
            message = f"the apply process ran past its {timeout:g} s deadline and was killed"
            raise ApplyError("TimedOut", message)
        try:
            outcome, value = result_r.recv()
        except EOFError:
            await asyncio.to_thread(child.join)
            message = f"the apply process died (exit code {child.exitcode})"
            raise ApplyError("ProcessDied", message) from None
    finally:
        alive_w.close()
        if child.is_alive():
            child.terminate()
        await asyncio.to_thread(child.join)
    if outcome == "error":
        raise ApplyError(*value)
    return value


@dataclass
class Applying:
    ids: tuple[str, ...]
    since: float


class Worker:
    def __init__(self, deploy: Path, live: LiveModel, config: ServiceConfig):
        self.deploy, self.live, self.config = deploy, live, config
        self.applying: Applying | None = None
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._check: tuple[float, dict] | None = None
        self._checking = asyncio.Lock()
        self._refreshing = asyncio.Lock()
        self._failures, self._retry_at = 0, 0.0
        self._live_seen: tuple | None = None

    async def ledger_check(self, max_age: float) -> tuple[float, dict]:
        """`verify` re-hashes the model files: cached for `max_age` s, redone after applies, and
        run once at a time however many pages ask (the others wait for its result)."""
        async with self._checking:
            if self._check is None or time.time() - self._check[0] > max_age:
                found = await asyncio.to_thread(deployment.verify, self.deploy)
                self._check = (time.time(), found)
            return self._check

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                due = time.time() >= self._retry_at
                if due and await asyncio.to_thread(pending, self.deploy, self.config.max_attempts):
                    await asyncio.sleep(self.config.window)  # let the requests of the window join
                    await self.apply_pending()
                await self.refresh()  # also picks up an apply made with the CLI
            except Exception:  # the worker outlives a bad moment; the next round tries again
                log.exception("worker: could not read or apply the pending requests")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL)
                self._retry_at = 0.0  # a new request: worth another look
            self._wake.clear()

    async def apply_pending(self) -> None:
        config = self.config
        ids = await asyncio.to_thread(pending, self.deploy, config.max_attempts)
        if not ids:
            return
        self.applying = Applying(tuple(ids), time.time())
        log.info("applying %d request(s)", len(ids))
        try:
            await apply_in_child(
                self.deploy, config.method, ids, config.max_attempts, config.apply_timeout
            )
            self.last_error, self._failures = None, 0
            log.info("applied; the ledger's head is now %s", await asyncio.to_thread(head, self.deploy))  # fmt: skip
        except ApplyError as err:
            if err.kind == deployment.Busy.__name__:
                log.info("another apply holds the deployment; trying again later")
            else:
                log.error("apply failed: %s", err)
                self.last_error = f"{err.kind}: {err}"
                self._back_off(err.kind)
            if err.kind in DIED:
                await asyncio.to_thread(record_died, self.deploy, ids, config.method, err.kind)
        finally:
            self.applying = None
            self._check = None

    def _back_off(self, kind: str) -> None:
        self._failures += 1
        delay = min(MAX_BACKOFF, RETRY * 2 ** (self._failures - 1))
        self._retry_at = time.time() + (BROKEN_BACKOFF if kind in BROKEN else delay)

    async def refresh(self) -> None:
        """Serve the version the ledger says is live (a new one is loaded aside, then swapped in);
        when there is none (LIVE rolled back or pointing elsewhere, the ledger or the model
        files tampered with), refuse to serve and say why."""
        async with self._refreshing:
            seen = _signature(self.deploy)
            try:
                version = await asyncio.to_thread(servable, self.deploy)
                if version != self.live.version or self.live.refusal:
                    self.live.set(await asyncio.to_thread(load_live, self.deploy))
                    log.info("now serving model version %s", self.live.version)
            except NOT_SERVABLE as err:
                if self.live.refusal != str(err):
                    log.error("not serving: %s", err)
                self.live.refuse(str(err))
            self._live_seen = seen

    async def before_scoring(self) -> None:
        """Read LIVE by the rule again when the file changed since the last look (a stat per
        request): a LIVE pointed elsewhere stops scoring at once, not at the next refresh. A new
        version the rule allows is loaded by the worker; scoring goes on with the old one."""
        if _signature(self.deploy) == self._live_seen:
            return
        async with self._refreshing:
            seen = _signature(self.deploy)
            try:
                await asyncio.to_thread(servable, self.deploy)
                self.wake()  # the worker loads a new version, or lifts a refusal
            except NOT_SERVABLE as err:
                log.error("not serving: %s", err)
                self.live.refuse(str(err))
            self._live_seen = seen


def _signature(deploy: Path) -> tuple | None:
    try:
        info = Layout(Path(deploy)).live_file.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def servable(deploy: Path) -> str:
    return integrity.servable(Layout.of(deploy))


def head(deploy: Path) -> str:
    with Ledger(Layout.of(deploy).ledger) as book:
        found = book.head()
    return f"{found['hash']} ({found['rows']} rows)"


def record_died(deploy: Path, ids: list[str], method: str | None, error: str) -> None:
    """A "failed" row for each of `ids` the dead apply left waiting: they stay pending and are
    tried again (verified ones roll forward on the next apply)."""
    layout = Layout.of(deploy)
    with Ledger(layout.ledger) as book:
        record_attempt(layout, book, ids, method, error)
