"""The HTTP API through the real app (TestClient runs its lifespan, scorer and worker)."""

from __future__ import annotations

import fcntl
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from e2urec import deploy
from e2urec.data.prompt import MOVIE, Profile, build_prompt
from e2urec.data.sample import YES, Sample
from e2urec.model import loader
from e2urec.model.scoring import score
from e2urec.service.app import create_app
from e2urec.service.config import ServiceConfig, read_token, token_path

# A quick unlearning run and a small verification: these tests are about the service.
FAST = {"epochs": 1, "aug_epochs": 1, "lora_rank": 2, "lora_alpha": 4, "verify": {"samples": 20}}
TOKEN = "t0ken-for-tests-only-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def read_only(tmp_path_factory, data_dir, trained):
    """A deployment no test here applies a request to."""
    out = tmp_path_factory.mktemp("deploy") / "d"
    deploy.init(data_dir, trained["original"], options=FAST, out=out)
    return out


@pytest.fixture
def fresh(tmp_path, data_dir, trained):
    deploy.init(data_dir, trained["original"], options=FAST, out=tmp_path / "d")
    return tmp_path / "d"


def client(folder, base_url="http://127.0.0.1", **options) -> TestClient:
    config = ServiceConfig(deploy=folder, token=TOKEN, **options)
    return TestClient(create_app(config), base_url=base_url)


def expected_scores(folder, version, req) -> dict[str, float]:
    """P(Yes) per candidate from `version`'s model, built and scored outside the service."""
    _, titles = items(folder, 0)
    # Prompts show the last K rated items, K being the one the data was prepared with.
    k = json.loads((folder / "data" / "manifest.json").read_text())["protocol"]["history"]
    past = [(titles[h["item"]], h["rating"]) for h in req["history"][-k:]]
    profile = Profile(**req["user"])
    samples = [
        Sample(build_prompt(past, titles[c], profile, MOVIE), YES, "", c, 0, 0)
        for c in req["candidates"]
    ]
    rec = loader.load(Path(folder) / "models" / version)
    return dict(zip(req["candidates"], map(float, score(rec, samples)["p_yes"])))


def items(folder, n):
    catalogue = json.loads((folder / "catalogue.json").read_text())
    return list(catalogue["items"])[:n], catalogue["items"]


def body(folder, n_history=3, n_candidates=5):
    ids, _ = items(folder, n_history + n_candidates)
    history = [{"item": i, "rating": 4} for i in ids[:n_history]]
    user = {"gender": "female", "age": "25-34", "job": "writer"}  # every field reaches the prompt
    return {"user": user, "history": history, "candidates": ids[n_history:]}


def test_score_ranks_with_the_one_prompt_builder_and_scorer(read_only):
    req = body(read_only)
    with client(read_only) as c:
        got = c.post("/v1/score", json=req, headers=AUTH)
    assert got.status_code == 200, got.text
    out = got.json()
    assert out["model"] == deploy.status(read_only)["live"]
    p = [s["p_yes"] for s in out["scores"]]
    assert p == sorted(p, reverse=True)
    assert sorted(s["item"] for s in out["scores"]) == sorted(req["candidates"])
    expected = expected_scores(read_only, out["model"], req)
    for s in out["scores"]:
        assert s["p_yes"] == pytest.approx(expected[s["item"]], abs=1e-5)


def test_concurrent_requests_share_batches_and_get_their_own_scores(read_only):
    ids, _ = items(read_only, 40)
    bodies = [
        {"history": [{"item": i, "rating": 1 + k % 5} for k, i in enumerate(ids[k : k + 4])],
         "candidates": ids[10 + k : 13 + 2 * k]}
        for k in range(8)
    ]  # fmt: skip
    with client(read_only) as c, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: c.post("/v1/score", json=b, headers=AUTH), bodies))
    for req, got in zip(bodies, answers):
        assert got.status_code == 200, got.text
        req = {"user": {}, **req}
        expected = expected_scores(read_only, got.json()["model"], req)
        assert {
            s["item"]: pytest.approx(s["p_yes"], abs=1e-5) for s in got.json()["scores"]
        } == expected


def test_tokens(read_only, tmp_path):
    req = body(read_only)
    with client(read_only) as c:
        assert c.post("/v1/score", json=req).status_code == 401
        wrong = {"Authorization": "Bearer " + "x" * 30}
        assert c.post("/v1/score", json=req, headers=wrong).status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert c.post("/v1/deletions", json={"users": ["1"]}).status_code == 401
        assert c.get("/v1/deletions/whatever").status_code == 401
        models = c.get("/v1/models", headers=AUTH)
        assert models.status_code == 200 and models.json()["serving"] == models.json()["live"]
        assert TOKEN not in c.get("/").text
    with client(read_only, open_score=True) as c:
        assert c.post("/v1/score", json=req).status_code == 200
        assert c.post("/v1/deletions", json={"users": ["1"]}).status_code == 401
    assert deploy.status(read_only)["requests"] == []


def test_openapi_describes_the_versioned_routes_and_the_bearer_scheme(read_only):
    with client(read_only) as c:
        spec = c.get("/openapi.json").json()
    assert {"/v1/score", "/v1/deletions", "/v1/deletions/{request_id}", "/v1/models"} <= set(
        spec["paths"]
    )
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/deletions"]["post"]["responses"].keys() >= {"202", "422"}


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        (lambda b: b.update(candidates=[]), 422, "candidates"),
        (lambda b: b.update(history=[]), 422, "history"),
        (lambda b: b["history"][1].update(rating="five"), 422, "history.1.rating"),
        (lambda b: b.update(candidates=["no-such-item"]), 422, "candidates: unknown item"),
        (lambda b: b["user"].update(gender="robot"), 422, "user.gender"),
        (lambda b: b.update(candidate=["x"]), 422, "candidate"),
        (lambda b: b.update(candidates=b["candidates"] * 200), 413, "candidates"),
    ],
)
def test_bad_score_bodies_name_the_field(read_only, change, status, field):
    req = body(read_only)
    change(req)
    with client(read_only, max_candidates=500) as c:
        got = c.post("/v1/score", json=req, headers=AUTH)
    assert got.status_code == status, got.text
    assert field in got.json()["detail"]


def test_malformed_and_oversized_bodies(read_only):
    with client(read_only, max_body=2000) as c:
        bad = c.post(
            "/v1/score",
            content=b'{"history": [',
            headers={**AUTH, "content-type": "application/json"},
        )
        assert bad.status_code == 422 and bad.json()["detail"].startswith("body: invalid JSON")
        big = body(read_only, n_candidates=5)
        big["candidates"] = big["candidates"] + ["x" * 100] * 30
        assert c.post("/v1/score", json=big, headers=AUTH).status_code == 413

        def chunks():  # no Content-Length: the limit must count the bytes as they come
            yield b'{"users": ["'
            for _ in range(100):
                yield b"a" * 100

        streamed = c.post("/v1/deletions", content=chunks(), headers=AUTH)
        assert streamed.status_code == 413
    with client(read_only, max_history=2, max_candidates=3) as c:
        long = c.post("/v1/score", json=body(read_only, n_history=3, n_candidates=3), headers=AUTH)
        assert long.status_code == 413 and "history" in long.json()["detail"]
        many = c.post("/v1/score", json=body(read_only, n_history=2, n_candidates=4), headers=AUTH)
        assert many.status_code == 413 and "candidates" in many.json()["detail"]
        fits = c.post("/v1/score", json=body(read_only, n_history=2, n_candidates=3), headers=AUTH)
        assert fits.status_code == 200, fits.text
    assert deploy.status(read_only)["requests"] == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"token": "short"}, "at least 16 characters"),
        ({"max_history": 0}, "max_history must be at least 1"),
        ({"window": -1}, "window must be >= 0"),
        ({"apply_timeout": 0}, "apply_timeout must be > 0"),
        ({"method": "no-such-method"}, "unknown method 'no-such-method'"),
    ],
)
def test_bad_service_settings_are_refused(read_only, change, message):
    with pytest.raises(ValueError, match=message):
        ServiceConfig(**{"deploy": read_only, "token": TOKEN, **change})


def test_deletion_refusals_change_nothing(read_only):
    with client(read_only) as c:
        empty = c.post("/v1/deletions", json={"users": [], "interactions": []}, headers=AUTH)
        assert empty.status_code == 422 and "users or interactions" in empty.json()["detail"]
        typed = c.post("/v1/deletions", json={"users": [12]}, headers=AUTH)
        assert typed.status_code == 422 and "users.0" in typed.json()["detail"]
        unknown = c.post("/v1/deletions", json={"users": ["no-such-user"]}, headers=AUTH)
        assert unknown.status_code == 422 and "no-such-user" in unknown.json()["detail"]
        pair = {"interactions": [{"user": "no-such-user", "item": "1"}]}
        assert c.post("/v1/deletions", json=pair, headers=AUTH).status_code == 422
        assert c.get("/v1/deletions/nope", headers=AUTH).status_code == 404
    assert all(r["state"] == "refused" for r in deploy.status(read_only)["requests"])


def wait_for(check, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (found := check()) is not None:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_deletion_is_applied_while_scoring_goes_on(fresh, splits):
    """Every score answered during the apply matches the version it names: no half-swapped model."""
    user = splits["train"][0].user
    req = body(fresh)
    answers = []
    with client(fresh, window=0.5) as c:
        posted = c.post("/v1/deletions", json={"users": [user]}, headers=AUTH)
        assert posted.status_code == 202, posted.text
        rid = posted.json()["id"]

        def done():
            got = c.post("/v1/score", json=req, headers=AUTH)
            assert got.status_code == 200, got.text
            answers.append(got.json())
            state = c.get(f"/v1/deletions/{rid}", headers=AUTH).json()
            new = c.get("/v1/models", headers=AUTH).json()
            return state if state["state"] == "purged" and new["serving"] == new["live"] else None

        state = wait_for(done)
        assert state["applying"] is False
        after = c.post("/v1/score", json=req, headers=AUTH).json()
    status = deploy.status(fresh)
    assert after["model"] == status["live"] != answers[0]["model"]
    versions = {a["model"] for a in answers} | {after["model"]}
    by_version = {v: expected_scores(fresh, v, req) for v in versions}
    for a in [*answers, after]:
        for s in a["scores"]:
            assert s["p_yes"] == pytest.approx(by_version[a["model"]][s["item"]], abs=1e-5)


def test_a_failed_apply_is_recorded_and_the_last_model_keeps_serving(fresh, splits, monkeypatch):
    from e2urec.service import worker

    user = splits["train"][0].user
    req = body(fresh)
    config = json.loads((fresh / "config.json").read_text())
    config["options"]["lr"] = 0  # the deployment's own settings broken: every run fails
    (fresh / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(worker, "RETRY", 0.1)  # the worker's back-off, short for the test
    with client(fresh, window=0, max_attempts=2) as c:
        before = c.post("/v1/score", json=req, headers=AUTH).json()
        rid = c.post("/v1/deletions", json={"users": [user]}, headers=AUTH).json()["id"]

        def stalled():
            state = c.get(f"/v1/deletions/{rid}", headers=AUTH).json()
            return state if state["attempts"] == 2 and not state["applying"] else None

        state = wait_for(stalled)
        assert state["state"] == "retrying" and state["error"] == "ValueError"
        after = c.post("/v1/score", json=req, headers=AUTH)
        assert "lr must be positive" in c.get("/", headers=AUTH).text
        time.sleep(1)  # bounded: no third attempt
        assert c.get(f"/v1/deletions/{rid}", headers=AUTH).json()["attempts"] == 2
    assert after.status_code == 200 and after.json() == before
    assert deploy.status(fresh)["live"] == before["model"]
    assert [r["id"] for r in deploy.pending_requests(fresh)] == [rid]  # kept, not dropped


def test_a_killed_apply_child_loses_no_request(fresh, splits, monkeypatch):
    """As the OOM killer would: the child dies; the request stays pending and is retried."""
    from e2urec.deploy.apply_loop import CRASH_ENV

    user = splits["train"][0].user
    monkeypatch.setenv(CRASH_ENV, "unlearned")  # the spawned child dies there, as kill -9
    with client(fresh, window=0) as c:
        rid = c.post("/v1/deletions", json={"users": [user]}, headers=AUTH).json()["id"]
        follow = lambda: c.get(f"/v1/deletions/{rid}", headers=AUTH).json()  # noqa: E731
        state = wait_for(lambda: (s := follow())["attempts"] >= 1 and s or None)
        assert state["state"] == "retrying" and state["error"] == "ProcessDied"
        assert [r["id"] for r in deploy.pending_requests(fresh)] == [rid]
        monkeypatch.delenv(CRASH_ENV)
        c.app.state.service.worker.wake()
        done = wait_for(lambda: (s := follow())["state"] == "purged" and s or None)
    assert done["attempts"] >= 1 and deploy.verify(fresh)["ok"]


def test_a_pending_request_is_cancelled_with_the_token(fresh, splits):
    user = splits["train"][0].user
    with client(fresh, window=3600) as c:  # the worker waits: the request stays pending
        rid = c.post("/v1/deletions", json={"users": [user]}, headers=AUTH).json()["id"]
        assert c.get("/v1/deletions").status_code == 401
        [listed] = c.get("/v1/deletions", headers=AUTH).json()
        assert listed["id"] == rid and listed["state"] == "received"
        assert c.delete(f"/v1/deletions/{rid}").status_code == 401
        gone = c.delete(f"/v1/deletions/{rid}", headers=AUTH)
        assert gone.status_code == 200, gone.text
        assert (
            gone.json()["state"] == "refused"
            and gone.json()["reason"] == "cancelled by the operator"
        )
        again = c.delete(f"/v1/deletions/{rid}", headers=AUTH)
        assert again.status_code == 409 and "only a request waiting" in again.json()["detail"]
        assert c.delete("/v1/deletions/r-nope", headers=AUTH).status_code == 404
        assert c.get("/v1/deletions", headers=AUTH).json() == []
    assert deploy.pending_requests(fresh) == []


def test_token_file_or_the_deployments_own_beside_its_key(tmp_path, fresh):
    given = tmp_path / "token"
    given.write_text("  secret-from-the-file-0123  \n")
    assert read_token(given, fresh) == "secret-from-the-file-0123"
    given.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_token(given, fresh)
    with pytest.raises(ValueError, match="no such file"):
        read_token(tmp_path / "missing", fresh)
    before = sorted(p.name for p in fresh.rglob("*"))
    made = read_token(None, fresh)  # first start: made once, owner-only, then reused
    assert len(made) >= 32 and read_token(None, fresh) == made
    # Beside the key, outside the folder: a backup of the folder carries no credential.
    key_file = Path(json.loads((fresh / "config.json").read_text())["key_file"])
    own = token_path(fresh)
    assert own.read_text().strip() == made and own.parent == key_file.parent
    assert (
        own.stat().st_mode & 0o777 == 0o600 and sorted(p.name for p in fresh.rglob("*")) == before
    )
    (fresh / "service-token").write_text(made)  # where services before kept it
    with pytest.raises(ValueError, match="service-token: a token inside the deployment"):
        read_token(None, fresh)


def test_an_apply_held_off_by_another_is_retried_not_failed(fresh, splits):
    user = splits["train"][0].user
    with client(fresh, window=0) as c, open(fresh / "apply.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as `e2urec apply` in another shell holds it
        rid = c.post("/v1/deletions", json={"users": [user]}, headers=AUTH).json()["id"]
        follow = lambda: c.get(f"/v1/deletions/{rid}", headers=AUTH).json()  # noqa: E731
        wait_for(lambda: follow()["applying"] or None)
        wait_for(lambda: not follow()["applying"] or None)
        assert follow()["state"] == "received"
        fcntl.flock(lock, fcntl.LOCK_UN)
        wait_for(lambda: follow()["state"] == "purged" or None)


def test_the_page_shows_a_failing_ledger_check(fresh):
    live = deploy.status(fresh)["live"]
    (fresh / "models" / live / "notes.txt").write_text("added after the ledger vouched")
    with client(fresh) as c:
        page = c.get("/", headers=AUTH)
    assert page.status_code == 200, page.text
    assert 'id="ledger" class="bad"' in page.text
    assert f"models/{live}: its files do not match the hash in the ledger" in page.text


def test_the_page_without_the_token_shows_counts_and_states_only(fresh, splits, monkeypatch):
    rid = deploy.request(fresh, users=[splits["train"][0].user])
    calls = []
    real = deploy.verify

    def slow_verify(folder):  # a check that takes a while: concurrent pages would overlap
        calls.append(folder)
        time.sleep(0.5)
        return real(folder)

    monkeypatch.setattr(deploy, "verify", slow_verify)
    with client(fresh, window=3600) as c:
        worker = c.app.state.service.worker
        worker.last_error = f"ValueError: user {splits['train'][0].user} in {fresh}"
        with ThreadPoolExecutor(16) as pool:
            pages = list(pool.map(lambda _: c.get("/"), range(16)))
        assert len(calls) == 1  # one check, its result shared and cached
        worker._check = None  # expired: the next page checks again, once
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: c.get("/"), range(8)))
        assert len(calls) == 2
        full = c.get("/", headers=AUTH).text
        evil = c.get("/", headers={"host": "evil.example"})
    for page in pages:
        assert page.status_code == 200
        assert 'data-state="received"' in page.text and "Last apply failed." in page.text
        assert str(fresh) not in page.text and rid not in page.text
        assert "ValueError" not in page.text
    assert str(fresh) in full and rid in full and "ValueError: user" in full
    assert evil.status_code == 400  # a name the service was not bound to: DNS rebinding
    with client(fresh, base_url="http://recs.example", allow_hosts=("recs.example",)) as c:
        assert c.get("/").status_code == 200
    with client(fresh, base_url="http://recs.example") as c:
        assert c.get("/").status_code == 400


def test_a_request_that_keeps_failing_is_tried_alone_and_then_left(fresh, splits):
    from e2urec.deploy.folder import Layout
    from e2urec.deploy.ledger import Ledger
    from e2urec.deploy.upkeep import record_attempt
    from e2urec.service.worker import pending

    users = sorted({s.user for s in splits["train"]})
    bad, good, killed = (deploy.request(fresh, users=[u]) for u in users[:3])
    layout = Layout.of(fresh)
    with Ledger(layout.ledger) as book:
        for _ in range(2):
            record_attempt(layout, book, [bad], None, "ValueError")
            record_attempt(layout, book, [killed], None, "ProcessDied")
    assert pending(fresh, max_attempts=3) == [bad]  # alone: it cannot hold the others back
    with Ledger(layout.ledger) as book:
        record_attempt(layout, book, [bad], None, "ValueError")
    assert pending(fresh, max_attempts=3) == [good, killed]  # it waits for the operator now
    assert {r["id"] for r in deploy.pending_requests(fresh)} == {bad, good, killed}
