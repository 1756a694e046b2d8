"""A real server on 127.0.0.1: the page in a headless browser, and a kill -9 during an apply."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from e2urec import deploy
from e2urec.data import load_splits
from e2urec.deploy import integrity

# A quick unlearning run and a small verification: these tests are about the service.
FAST = {"epochs": 1, "aug_epochs": 1, "lora_rank": 2, "lora_alpha": 4, "verify": {"samples": 20}}
TOKEN = "server-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, folder: Path, log: Path):
        self.folder, self.log, self.port = folder, log, free_port()
        token_file = folder.parent / "token"
        token_file.write_text(TOKEN + "\n")
        cmd = [sys.executable, "-m", "e2urec.cli", "serve", "--deploy", str(folder)]
        cmd += ["--port", str(self.port), "--token-file", str(token_file), "--window", "0"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with log.open("a") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, headers=AUTH, timeout=30)
        wait_for(self._up, 120, f"the server to start (log: {log})")

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")
        try:
            return self.http.get("/v1/models").status_code == 200 or None
        except httpx.TransportError:
            return None

    def deletion(self, request_id: str) -> dict:
        return self.http.get(f"/v1/deletions/{request_id}").json()

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)


def wait_for(check, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (found := check()) is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def folder(tmp_path, data_dir, trained):
    deploy.init(data_dir, trained["original"], options=FAST, out=tmp_path / "deploy")
    return tmp_path / "deploy"


def applied(server: Server, request_id: str):
    state = server.deletion(request_id)
    assert state["state"] != "failed", state
    return state if state["state"] == "purged" else None


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("Chromium is not installed (`apt-get install chromium`; .ci/run does it)")
    return found


def test_page_in_a_browser_after_a_request(folder, splits, tmp_path):
    chromium = browser()
    server = Server(folder, tmp_path / "server.log")
    try:
        user = splits["train"][0].user
        rid = server.http.post("/v1/deletions", json={"users": [user]}).json()["id"]
        wait_for(lambda: applied(server, rid), 300, f"request {rid} to be applied")
        live = deploy.status(folder)["live"]
        flags = [*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
        dom = subprocess.run(
            [chromium, *flags, "--dump-dom", server.url + "/"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        shot = tmp_path / "page.png"
        subprocess.run(
            [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,900", server.url + "/"],
            capture_output=True,
            timeout=120,
            check=True,
        )
    finally:
        server.stop()
    assert TOKEN not in (tmp_path / "server.log").read_text()
    # Without the token (a browser has none): states and counts, no request id, no path.
    assert '<tr data-state="purged">' in dom and rid not in dom and str(folder) not in dom
    assert f'<strong id="live">{live}</strong>' in dom
    assert f'<tr id="model-{live}" class="live" data-live="true">' in dom
    assert 'id="ledger" class="ok"' in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the apply process through /proc")
def test_kill_9_during_an_apply_then_restart(folder, splits, tmp_path):
    before = deploy.status(folder)["live"]
    user = splits["train"][0].user
    kept = {n: [s for s in split if s.user != user] for n, split in load_splits(folder / "data").items()}  # fmt: skip
    server = Server(folder, tmp_path / "server.log")
    rid = server.http.post("/v1/deletions", json={"users": [user]}).json()["id"]
    wait_for(lambda: server.deletion(rid)["applying"] or None, 60, "the apply to start")
    workers = wait_for(lambda: children(server.proc.pid) or None, 30, "the apply process")
    # The unlearning writes into a staging folder from its first step to the switch.
    staging = lambda: next(folder.joinpath("models").glob(".staging-*"), None)  # noqa: E731
    wait_for(staging, 300, "the unlearning to start")
    assert server.deletion(rid)["state"] == "received"
    server.proc.kill()
    server.proc.wait()
    server.http.close()
    wait_for(
        lambda: all(map(gone, workers)) or None, 30, "the apply process to die with the server"
    )
    assert deploy.status(folder)["live"] == before  # nothing switched half-way
    again = Server(folder, tmp_path / "server.log")
    try:
        state = wait_for(lambda: applied(again, rid), 300, f"request {rid} to complete")
    finally:
        again.stop()
    assert state["state"] == "purged"
    assert integrity.verify(folder)["ok"], integrity.verify(folder)
    assert deploy.status(folder)["live"] != before
    assert load_splits(folder / "data") == kept  # the user's samples gone, nothing else
