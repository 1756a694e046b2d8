"""Bad input and broken files give one line naming the file, line or field (issue 26, point 10):
CLI exit 2; HTTP 4xx only for the client's mistakes, without server paths; 5xx logged."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import test_deploy
from fastapi.testclient import TestClient

from e2urec import deploy
from e2urec.cli import main
from e2urec.data.deletion import read_interactions
from e2urec.service.app import create_app
from e2urec.service.config import ServiceConfig

source, model = test_deploy.source, test_deploy.model
TOKEN = "t0ken-for-tests-only-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def root(tmp_path, source, model):
    deploy.init(source, model, tmp_path / "d", options=test_deploy.OPTIONS)
    return tmp_path / "d"


def _one_line_error(capsys, *words) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err
    return err


def test_interaction_files(tmp_path, root, capsys):
    csv = tmp_path / "pairs.csv"
    csv.write_bytes("\ufeffuser,item\n1,2\n".encode())  # a spreadsheet's byte order mark
    assert read_interactions(csv) == (("1", "2"),)
    csv.write_text("user,item\n1,2\n3\n")
    with pytest.raises(ValueError, match=r"pairs.csv, line 3: no item"):
        read_interactions(csv)
    for given, words in ((csv, ("pairs.csv, line 3",)), (tmp_path, ("is a folder",))):
        assert main(["request", "--deploy", str(root), "--interactions", str(given)]) == 2
        _one_line_error(capsys, str(given), *words)
    csv.write_bytes(b"user,item\n\xff\xfe,1\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_interactions(csv)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_corrupt_ledger(root, capsys, damage):
    ledger = root / "ledger.sqlite"
    data = ledger.read_bytes()
    ledger.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\0junk" * 999)
    for command in (["status"], ["apply"], ["ledger", "verify"], ["request", "--list"]):
        assert main([*command, "--deploy", str(root)]) == 2, command
        _one_line_error(capsys, "ledger.sqlite", "not a readable ledger")


def test_truncated_weights(tmp_path, root, model, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])
    args = ["init", "--data", str(root / "data"), "--model", str(broken), "--out"]
    assert main([*args, str(tmp_path / "e")]) == 2
    _one_line_error(capsys, weights.name, "truncated")
    data, out = ["--data", str(root / "data"), "--model", str(broken)], str(tmp_path / "x")
    for command in (["train"], ["unlearn"], ["forget", "--users", test_deploy.HIDDEN]):
        assert main([*command, *data, "--out", out]) == 2, command
        _one_line_error(capsys, str(weights), "truncated")
    live = next((root / "models" / "v0").glob("*.safetensors"))
    live.write_bytes(live.read_bytes()[:-100])  # in a deployment: the ledger's hash catches it
    deploy.request(root, users=[test_deploy.HIDDEN])
    assert main(["apply", "--deploy", str(root)]) == 2
    _one_line_error(capsys, "models/v0: its files do not match")
    assert main(["serve", "--deploy", str(root), "--port", "1"]) == 2
    _one_line_error(capsys, "will not serve", "models/v0")


def test_an_apply_on_a_full_disk_is_one_line(root, capsys, monkeypatch):
    from e2urec.methods.base import Method

    def full(self, task):  # what safetensors raises when the disk (or ulimit -f) is full
        raise Exception("Error while serializing: I/O error: File too large (os error 27)")

    rid = deploy.request(root, users=[test_deploy.HIDDEN])
    monkeypatch.setattr(Method, "unlearn", full)
    assert main(["apply", "--deploy", str(root)]) == 2
    _one_line_error(capsys, "the apply failed (Exception:", "File too large", "stay pending")
    [view] = deploy.pending_requests(root)
    assert view["id"] == rid and view["attempts"] == 1 and view["error"] == "Exception"


def test_http_errors_say_whose_fault_without_server_paths(root, caplog):
    app = create_app(ServiceConfig(deploy=root, token=TOKEN, window=3600))
    many = {"users": [f"ghost-{i}" for i in range(10_000)]}
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        refused = c.post("/v1/deletions", json=many, headers=AUTH)
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        assert len(detail) < 2000 and "ghost-49" in detail and "and 9950 more" in detail
        train = root / "data" / "train.jsonl"
        saved = train.read_bytes()
        train.write_bytes(saved + b'{"input": "half a row\n')
        with caplog.at_level(logging.ERROR):
            broken = c.post("/v1/deletions", json={"users": [test_deploy.HIDDEN]}, headers=AUTH)
        assert broken.status_code == 500 and str(root) not in broken.text
        assert "train.jsonl" in caplog.text  # the operator's log says where
        train.write_bytes(saved)
        key_file = json.loads((root / "config.json").read_text())["key_file"]
        shutil.move(key_file, key_file + ".away")
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            lost = c.post("/v1/deletions", json={"users": [test_deploy.HIDDEN]}, headers=AUTH)
        shutil.move(key_file + ".away", key_file)
    assert lost.status_code == 503 and key_file not in lost.text and str(root) not in lost.text
    assert "KeyMissing" in lost.json()["detail"] and key_file in caplog.text
