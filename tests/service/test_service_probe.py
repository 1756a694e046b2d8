"""The service against a deployment an attacker or an unlucky operator changed (issue 37)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import test_service_api as api
from test_service_api import AUTH, TOKEN, body, client, wait_for

from e2urec import deploy
from e2urec.cli import main
from e2urec.deploy.ledger import Ledger
from e2urec.service import worker as worker_module
from e2urec.service.config import ServiceConfig
from e2urec.service.live import LiveModel

read_only, fresh = api.read_only, api.fresh  # the module's fixtures, shared


def _rows(folder: Path) -> int:
    with Ledger(folder / "ledger.sqlite") as book:
        return len(book.rows())


def test_the_service_serves_only_the_version_the_ledger_vouches_for(fresh, trained, capsys):
    elsewhere = str(Path(trained["original"]).resolve())  # a model that saw every deleted row
    (fresh / "LIVE").write_text(elsewhere + "\n")
    req = body(fresh)
    with client(fresh) as c:
        refused = c.post("/v1/score", json=req, headers=AUTH)
        assert refused.status_code == 503 and elsewhere not in refused.text
        page = c.get("/").text
        assert 'id="refusal"' in page and elsewhere not in page
        assert "LIVE names" in c.get("/", headers=AUTH).text  # the operator reads why
        models = c.get("/v1/models", headers=AUTH).json()
        assert models["serving"] is None and "LIVE names" in models["refusal"]
        (fresh / "LIVE").write_text("v0\n")  # set right: the service serves again
        wait_for(lambda: c.post("/v1/score", json=req, headers=AUTH).status_code == 200 or None)
        (fresh / "LIVE").write_text("../../original\n")  # a running service: refused at once
        again = c.post("/v1/score", json=req, headers=AUTH)
        assert again.status_code == 503 and "original" not in again.text
    assert main(["serve", "--deploy", str(fresh), "--port", "1"]) == 2
    assert "will not serve" in capsys.readouterr().err


def test_a_request_to_a_broken_deployment_is_the_operators_503(fresh, splits):
    key_file = Path(json.loads((fresh / "config.json").read_text())["key_file"])
    key_file.write_bytes(os.urandom(32))  # replaced: not the key the ledger's HMACs were made with
    rows = _rows(fresh)
    with client(fresh, window=3600) as c:
        got = c.post("/v1/deletions", json={"users": [splits["train"][0].user]}, headers=AUTH)
    assert got.status_code == 503 and "needs its operator" in got.json()["detail"]
    assert str(key_file) not in got.text and _rows(fresh) == rows  # no refusal recorded


def test_a_stopped_apply_is_killed_at_its_deadline_and_counted(fresh, splits):
    user = splits["train"][0].user
    with client(fresh, window=0, apply_timeout=5) as c:
        rid = c.post("/v1/deletions", json={"users": [user]}, headers=AUTH).json()["id"]
        [child] = wait_for(lambda: multiprocessing.active_children() or None, 60)
        os.kill(child.pid, signal.SIGSTOP)  # as a debugger, or a full swap, would hold it
        follow = lambda: c.get(f"/v1/deletions/{rid}", headers=AUTH).json()  # noqa: E731
        state = wait_for(lambda: (s := follow())["attempts"] >= 1 and s or None, 60)
        assert state["error"] == "TimedOut" and state["state"] == "retrying"
        assert not child.is_alive()
    assert deploy.verify(fresh)["ok"]


def test_the_worker_backs_off_after_a_failed_apply(fresh, splits, monkeypatch):
    deploy.request(fresh, users=[splits["train"][0].user])
    calls = []

    async def failing(*args):
        calls.append(1)
        raise worker_module.ApplyError("OSError", "No space left on device")

    async def nothing(self):
        pass

    monkeypatch.setattr(worker_module, "POLL", 0.05)  # the worker looks 20 times a second
    monkeypatch.setattr(worker_module, "apply_in_child", failing)
    monkeypatch.setattr(worker_module.Worker, "refresh", nothing)
    config = ServiceConfig(deploy=fresh, token=TOKEN, window=0)
    worker = worker_module.Worker(fresh, LiveModel(None, "not loaded"), config)

    async def run_a_while():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(worker.run(), 2.0)

    asyncio.run(run_a_while())
    assert len(calls) == 1  # on main: one try every POLL, for ever
    assert "OSError" in worker.last_error
