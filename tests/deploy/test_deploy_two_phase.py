"""Two-phase deletions (`init --exact apa`): each request carried out approximately, then exactly
by retraining the APA shards that held its rows; crashes resume; the ledger vouches for it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import test_deploy
from conftest import TRAIN
from fastapi.testclient import TestClient

import e2urec
from e2urec.cli import main
from e2urec.data.sample import read_jsonl, write_jsonl
from e2urec.deploy import apply, exact_phase, init, request, status, verification
from e2urec.deploy import apply_loop as rollout
from e2urec.deploy.events import Event
from e2urec.deploy.folder import Layout
from e2urec.deploy.integrity import verify
from e2urec.deploy.ledger import GENESIS, Ledger, row_hash
from e2urec.methods.apa import read_homes, train_apa
from e2urec.model import backbone, loader
from e2urec.model.apa import read_pool
from e2urec.model.scoring import score
from e2urec.service.app import create_app
from e2urec.service.config import ServiceConfig
from e2urec.service.worker import exact_waiting

FAST = {"epochs": 1, "aug_epochs": 1, "lora_rank": 2, "lora_alpha": 4, "batch_size": 16}
APA = {"shards": 2, "neighbours": 5}
OPTIONS = {**FAST, "verify": {"samples": 20}, "apa": APA}
TOKEN = "t0ken-for-tests-only-0123456789"
SRC = str(Path(e2urec.__file__).parents[1])
model = test_deploy.model  # the module's fixture, shared: the original with its backbone named
HIDDEN = "zz-forget-me"  # a user id no other byte in the deployment can match by chance


@pytest.fixture(scope="module")
def source(tmp_path_factory, data_dir):
    """The prepared data with HIDDEN for the user with the fewest train samples among those the
    test split (verification's held-out samples) can spare."""
    tested = {s.user for s in read_jsonl(data_dir / "test.jsonl")}
    counts = Counter(s.user for s in read_jsonl(data_dir / "train.jsonl"))
    user = min((u for u in counts if u not in tested), key=counts.get)
    out = tmp_path_factory.mktemp("source") / "data"
    shutil.copytree(data_dir, out)
    for path in out.glob("*.jsonl"):
        write_jsonl([replace(s, user=HIDDEN) if s.user == user else s for s in read_jsonl(path)], path)  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["forgotten_users"] = [HIDDEN if u == user else u for u in manifest["forgotten_users"]]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def done(tmp_path_factory, source, model):
    """A two-phase deployment after one `apply` of two requests: a user's, one rating of another."""
    root = tmp_path_factory.mktemp("two-phase") / "d"
    init(source, model, root, options=OPTIONS, exact="apa")
    train = read_jsonl(root / "data" / "train.jsonl")
    user = HIDDEN
    rated = next(s for s in train if s.user != user)
    ids = (request(root, users=[user]), request(root, interactions=[(rated.user, rated.item)]))
    before = status(root)
    outcomes = apply(root)
    return {
        "root": root,
        "ids": ids,
        "user": user,
        "rated": rated,
        "before": before,
        "out": outcomes,
    }


def _files_with(root: Path, text: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_init_with_exact_serves_an_apa_model_that_names_users_by_hmac(done):
    root, first = done["root"], done["before"]
    assert first["live"] == "v1" and first["exact"] == "apa"
    meta = backbone.read_meta(root / "models" / "v1")
    assert meta["kind"] == "apa" and len(meta["shards"]) == 2
    keyer = Layout(root).keyer()
    users = {s.user for s in read_jsonl(root / "data" / "train.jsonl")}
    assert set(meta["homes"]) >= {keyer(u) for u in users}  # every live user has a shard
    assert not set(meta["homes"]) & users  # and is named by HMAC only
    assert [r["phase"] for r in first["requests"]] == ["pending", "pending"]


def test_one_apply_carries_a_request_out_approximately_then_exactly(done):
    root, ids = done["root"], done["ids"]
    final = status(root)
    assert final["live"] == "v3"
    by_id = {r["id"]: r for r in final["requests"]}
    for rid in ids:
        view = by_id[rid]
        assert view["phase"] == "exact" and view["state"] == "purged"
        assert view["version"] == "v2" and view["exact_version"] == "v3"
        assert view["purged"] <= view["exact"]
    with Ledger(root / "ledger.sqlite") as ledger:
        rows = ledger.records()
    events = [r.event for r in rows if r.request == ids[0]]
    assert events == ["received", "verified", "applied", "purged", "retrained", "exact"]
    exact = next(r for r in rows if r.event == Event.RETRAINED)
    assert exact.details["from"] == "v1"  # the last exact version, not the approximate v2
    homes = read_homes(root / "models" / "v1")
    keyer = Layout(root).keyer()
    asked = {homes[keyer(done["user"])], homes[keyer(done["rated"].user)]}
    assert sorted(asked) == exact.details["shards"]
    approximate = backbone.read_meta(root / "models" / "v2")
    assert approximate["kind"] == "lora"  # E2URec on the APA model
    assert verify(root)["ok"], verify(root)
    # No file names the forgotten user in clear; the live model not even by HMAC.
    assert _files_with(root, done["user"]) == []
    live = root / "models" / "v3"
    gone = keyer(done["user"])
    assert gone not in read_homes(live) and keyer(done["rated"].user) in read_homes(live)
    assert gone not in {row[0] for row in read_pool(live)["samples"]}


def test_the_exact_model_equals_apa_trained_from_scratch_on_the_retained_data(done, tmp_path):
    root = done["root"]
    keyer = Layout(root).keyer()
    data = {n: read_jsonl(root / "data" / f"{n}.jsonl") for n in ("train", "valid", "test")}
    assert done["user"] not in {s.user for s in data["train"] + data["valid"]}  # purged
    homes = read_homes(root / "models" / "v1")
    del homes[keyer(done["user"])]
    base = json.loads((root / "config.json").read_text())["base"]
    train, valid = (exact_phase.keyed(keyer, data[n]) for n in ("train", "valid"))
    train_apa(base, train, valid, tmp_path / "scratch", TRAIN, APA, homes=homes)
    logits = {
        name: score(loader.load(folder), data["test"], 64)["log_odds"]
        for name, folder in (
            ("exact", root / "models" / "v3"),
            ("scratch", tmp_path / "scratch"),
            ("first", root / "models" / "v1"),
        )
    }
    assert logits["exact"] == pytest.approx(logits["scratch"], abs=1e-4)
    assert logits["exact"] != pytest.approx(logits["first"], abs=1e-4)  # the test can fail


def test_a_later_request_builds_on_the_last_exact_version(done, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(done["root"], root)
    tested = {s.user for s in read_jsonl(root / "data" / "test.jsonl")}
    counts = Counter(s.user for s in read_jsonl(root / "data" / "train.jsonl") if s.user not in tested)  # fmt: skip
    user = min(counts, key=counts.get)
    rid = request(root, users=[user])
    [outcome] = apply(root)
    assert outcome["version"] == "v4" and outcome["exact_version"] == "v5"
    with Ledger(root / "ledger.sqlite") as ledger:
        steps = [r.details["from"] for r in ledger.records() if r.event == Event.RETRAINED]
    assert steps == ["v1", "v1", "v3"]  # two requests in the first step, then this one
    assert Layout(root).keyer()(user) not in read_homes(root / "models" / "v5")
    assert verify(root)["ok"] and status(root, rid)["requests"][0]["phase"] == "exact"


class Crash(BaseException):
    pass


def _crash_at(step):
    def checkpoint(name):
        assert name in rollout.STEPS + exact_phase.STEPS
        if name == step:
            raise Crash(step)

    return checkpoint


def test_phases_one_at_a_time_and_a_crash_in_the_exact_phase_resumes(
    tmp_path, source, model, monkeypatch, capsys
):
    root = tmp_path / "d"
    sets = [f"{k}={v}" for k, v in FAST.items()] + ["verify.samples=20", "apa.shards=2"]
    args = ["--data", str(source), "--model", str(model), "--out", str(root)]
    assert main(["init", *args, "--exact", "apa", "--set", *sets]) == 0
    rid = request(root, users=[HIDDEN])
    capsys.readouterr()
    assert main(["apply", "--deploy", str(root), "--phase", "approximate"]) == 0
    capsys.readouterr()
    assert main(["status", "--deploy", str(root), rid]) == 0
    [view] = json.loads(capsys.readouterr().out)["requests"]
    assert view["phase"] == "approximate" and view["state"] == "purged" and view["shards"]
    assert status(root)["live"] == "v2" and exact_waiting(root) == [rid]  # the service's worker
    # An exact model that fails verification is dropped: the approximate one stays live.
    with monkeypatch.context() as patch:
        patch.setattr(verification, "verify_exact", lambda *a: {"passed": False, "failures": ["x"]})
        [failed] = apply(root, phase="exact")
    assert failed["phase"] == "approximate" and failed["exact_error"] == "VerificationFailed"
    assert failed["exact_attempts"] == 1 and exact_waiting(root, max_attempts=1) == []
    assert status(root)["live"] == "v2" and not list((root / "models").glob(".staging-*"))
    # Each run dies one exact step later; before "exact-recorded" it starts over, then rolls on.
    for step in exact_phase.STEPS[:-1]:
        monkeypatch.setattr(rollout, "_checkpoint", _crash_at(step))
        with pytest.raises(Crash):
            apply(root, phase="exact")
        _still_approximate(root, rid, step)
    monkeypatch.undo()  # the last one: a process killed by the env variable, as kill -9
    code = f"from e2urec.deploy import apply; apply({str(root)!r})"
    env = {**os.environ, rollout.CRASH_ENV: "exact-switched", "PYTHONPATH": SRC}
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert killed.returncode == 137, killed.stderr.decode()[-2000:]
    _still_approximate(root, rid, "exact-switched")
    assert status(root)["live"] == "v3"  # switched, its "exact" rows not yet written
    [outcome] = apply(root)
    assert outcome["phase"] == "exact" and outcome["exact_version"] == "v3"
    assert sorted(p.name for p in (root / "models").iterdir()) == ["v0", "v1", "v2", "v3"]
    assert verify(root)["ok"]
    assert apply(root) == [] and exact_waiting(root) == []  # nothing left in either phase


def _still_approximate(root: Path, rid: str, step: str) -> None:
    assert verify(root)["ok"], (step, verify(root))
    assert status(root, rid)["requests"][0]["phase"] == "approximate", step
    if exact_phase.STEPS.index(step) < exact_phase.STEPS.index("exact-switched"):
        assert status(root)["live"] == "v2", step


def test_a_deployment_without_exact_has_one_phase(tmp_path, data_dir, model):
    root = tmp_path / "d"
    init(data_dir, model, root, options={**FAST, "verify": {"samples": 20}})
    assert "exact" not in status(root)
    with pytest.raises(ValueError, match="one phase only"):
        apply(root, phase="exact")


def test_init_refuses_an_unknown_exact_method_or_a_model_without_its_backbone(
    tmp_path, data_dir, model, trained
):
    with pytest.raises(ValueError, match="--exact must be one of"):
        init(data_dir, model, tmp_path / "a", options=FAST, exact="sisa")
    with pytest.raises(ValueError, match="names none"):  # the report without "base"
        init(data_dir, trained["original"], tmp_path / "b", options=FAST, exact="apa")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _rewrite_retrained(db: Path, change) -> None:
    """Change the "retrained" rows' details and rewrite every hash after them, as a forger."""
    with Ledger(db) as book:
        rows = book.rows()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER ledger_no_delete")
        conn.execute("DELETE FROM ledger")
        prev = GENESIS
        for row in rows:
            if row["event"] == Event.RETRAINED:
                details = json.loads(row["details"])
                change(details)
                row["details"] = json.dumps(details, sort_keys=True)
            row["prev_hash"] = prev
            row["hash"] = prev = row_hash(prev, row)
            marks = ", ".join("?" * len(row))
            conn.execute(f"INSERT INTO ledger VALUES ({marks})", list(row.values()))
        conn.execute("UPDATE head SET rows = ?, hash = ?", (len(rows), prev))


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda d: d.update({"from": "v2"}), "built it from 'v2', not from 'v1'"),
        (lambda d: d.update({"chain": [{"version": "v2"}]}), "builds on models/v2"),
        (lambda d: d.update({"shards": []}), "did not retrain shard(s)"),
    ],
)
def test_ledger_verify_fails_when_the_exact_version_descends_from_the_approximate_one(
    done, tmp_path, change, problem
):
    root = tmp_path / "d"
    shutil.copytree(done["root"], root)
    _rewrite_retrained(root / "ledger.sqlite", change)
    result = verify(root)
    assert not result["ok"] and any(problem in p for p in result["problems"]), result
    assert main(["ledger", "verify", "--deploy", str(root)]) == 2


def test_the_service_and_its_page_show_the_phase(done, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(done["root"], root)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    app = create_app(ServiceConfig(deploy=root, token=TOKEN))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        got = c.get(f"/v1/deletions/{done['ids'][0]}", headers=auth)
        page = c.get("/", headers=auth)
    assert got.status_code == 200 and got.json()["phase"] == "exact", got.text
    assert got.json()["exact_version"] == "v3"
    assert page.status_code == 200 and 'data-phase="exact"' in page.text
