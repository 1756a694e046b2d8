"""What `ledger verify` catches and `apply` will not build on (issue 26, points 3-6, 8, 9)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import test_deploy

from e2urec.cli import main
from e2urec.data.sample import read_jsonl
from e2urec.deploy import Refused, Tampered, apply, init, request, status
from e2urec.deploy.events import Event
from e2urec.deploy.folder import KeyMissing, Layout, key_folder
from e2urec.deploy.integrity import verify
from e2urec.deploy.ledger import Ledger

HIDDEN, OPTIONS = test_deploy.HIDDEN, test_deploy.OPTIONS
source, model, applied = test_deploy.source, test_deploy.model, test_deploy.applied


def _copy(applied, tmp_path) -> Path:
    return test_deploy._copy(applied, tmp_path)


def _files_with(root: Path, data: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and data in p.read_bytes()]


def _snapshot(root: Path) -> dict[str, bytes]:
    skip = ("apply.lock", "request.lock")
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _refuses_and_changes_nothing(root: Path, match: str) -> None:
    before = _snapshot(root)
    with pytest.raises(Tampered, match=match):
        apply(root)
    assert _snapshot(root) == before
    assert main(["apply", "--deploy", str(root)]) == 2


def _other_user(root: Path) -> str:
    return next(s.user for s in read_jsonl(root / "data" / "train.jsonl"))


def test_a_rolled_back_live_fails_verify_and_apply(applied, tmp_path):
    root = _copy(applied, tmp_path)
    request(root, users=[_other_user(root)])
    (root / "LIVE").write_text("v0\n")  # the pre-deletion model, a version the ledger knows
    result = verify(root)
    assert not result["ok"]
    assert any("LIVE names 'v0', but the last applied version is 'v1'" in p for p in result["problems"])  # fmt: skip
    _refuses_and_changes_nothing(root, "LIVE names 'v0'")
    assert status(root)["live"] == "v0" and len(Ledger(root / "ledger.sqlite").pending()) == 1


def test_forgotten_rows_restored_from_a_backup_are_found_and_purged_again(
    applied, source, tmp_path
):
    root = _copy(applied, tmp_path)
    shutil.copy(source / "train.jsonl", root / "data" / "train.jsonl")  # yesterday's backup
    assert _files_with(root / "data", HIDDEN.encode())
    result = verify(root)
    assert not result["ok"]
    assert any("data/train.jsonl: holds forgotten rows again" in p for p in result["problems"])
    with pytest.raises(Refused, match="already forgotten"):
        request(root, users=[HIDDEN])
    assert apply(root) == []  # nothing pending, and still it enforces every recorded deletion
    assert _files_with(root, HIDDEN.encode()) == []
    rated = applied["rated"]
    train = read_jsonl(root / "data" / "train.jsonl")
    assert (rated.user, rated.item) not in {(s.user, s.item) for s in train}
    assert train == read_jsonl(applied["root"] / "data" / "train.jsonl")
    [enforced] = [r for r in Ledger(root / "ledger.sqlite").records() if r.event == Event.ENFORCED]
    assert enforced.details["removed"]["train.jsonl"] == len(read_jsonl(source / "train.jsonl")) - len(train)  # fmt: skip
    assert verify(root)["ok"], verify(root)


def test_lost_or_edited_rows_fail_verify_and_apply(applied, tmp_path):
    root = _copy(applied, tmp_path)
    request(root, users=[_other_user(root)])
    train = root / "data" / "train.jsonl"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(lines[:-10]))  # the last rows cut off
    result = verify(root)
    assert any("data/train.jsonl: its content differs" in p for p in result["problems"])
    _refuses_and_changes_nothing(root, "rows lost, added or edited")
    (root / "data" / "valid.jsonl").unlink()
    assert any("data/valid.jsonl: missing" in p for p in verify(root)["problems"])


def test_the_key_lives_outside_the_folder_and_a_changed_or_lost_key_is_caught(
    applied, tmp_path, capsys
):
    root = _copy(applied, tmp_path)
    key_file = Path(json.loads((root / "config.json").read_text())["key_file"])
    assert key_file.is_relative_to(key_folder()) and not key_file.is_relative_to(root)
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert not (root / "secret.key").exists() and not _files_with(root, key_file.read_bytes())
    request(root, users=[_other_user(root)])
    saved = key_file.read_bytes()
    key_file.write_bytes(os.urandom(32))  # replaced: the stored HMACs would match nothing
    assert any("is not the one the deployment was created with" in p for p in verify(root)["problems"])  # fmt: skip
    _refuses_and_changes_nothing(root, "not the one the deployment was created with")
    key_file.unlink()
    assert any("HMAC key" in p and "cannot be read" in p for p in verify(root)["problems"])
    with pytest.raises(KeyMissing, match="restore it"):
        request(root, users=[HIDDEN])
    assert main(["request", "--deploy", str(root), "--users", HIDDEN]) == 2
    assert "cannot be read" in capsys.readouterr().err
    key_file.write_bytes(saved)  # restored, but as the umask leaves a new file: readable by all
    assert any("open to other users" in p for p in verify(root)["problems"])
    key_file.chmod(0o600)
    assert verify(root)["ok"]


def test_init_refuses_empty_or_short_keys_and_uses_a_given_one(source, model, tmp_path):
    key = tmp_path / "k"
    for content in (b"", b"short"):
        key.write_bytes(content)
        with pytest.raises(ValueError, match="needs at least 32 bytes"):
            init(source, model, tmp_path / "d", key_file=key)
        assert not (tmp_path / "d").exists()
    key.write_bytes(os.urandom(48))
    key.chmod(0o600)
    init(source, model, tmp_path / "d", options=OPTIONS, key_file=key)
    assert json.loads((tmp_path / "d" / "config.json").read_text())["key_file"] == str(key)


def test_apply_will_not_build_on_a_tampered_model(applied, tmp_path):
    root = _copy(applied, tmp_path)
    request(root, users=[_other_user(root)])
    # v1 is an adapter on v0: one flipped byte in the base it sits on.
    weights = next((root / "models" / "v0").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    assert any("models/v0: its files do not match" in p for p in verify(root)["problems"])
    _refuses_and_changes_nothing(root, "models/v0: its files do not match")


def test_a_base_outside_the_deployment_is_vouched_for(tmp_path, source, splits, trained):
    from e2urec.model.train import TrainConfig, train

    base = tmp_path / "base"
    shutil.copytree(trained["base"], base)
    lora = tmp_path / "lora"
    config = TrainConfig(epochs=1, batch_size=16, lora=True, lora_rank=2, lora_alpha=4)
    train(base, splits["train"][:16], splits["valid"][:8], lora, config)
    root = tmp_path / "d"
    init(source, lora, root, options=OPTIONS)
    assert verify(root)["ok"]
    (base / "config.json").write_text((base / "config.json").read_text() + " ")
    problems = verify(root)["problems"]
    assert any("models/v0: what it builds on differs" in p for p in problems), problems


def test_apply_removes_only_its_own_temporary_files(applied, tmp_path):
    root = _copy(applied, tmp_path)
    mine = [root / ".env", root / "data" / ".env", root / "notes.txt", root / "models" / "v2" / "x"]
    for path in mine:
        path.parent.mkdir(exist_ok=True)
        path.write_text("the operator's")
    ours = Layout(root).temporary(root / "data" / "train.jsonl")  # named, then left by a crash
    ours.write_text("half a file")
    rid = request(root, users=[_other_user(root)])
    [outcome] = apply(root)
    assert outcome["id"] == rid and outcome["state"] == "purged"
    assert outcome["version"] == "v3" and not ours.exists()  # v2 is not ours
    assert all(p.read_text() == "the operator's" for p in mine)
    assert verify(root)["ok"], verify(root)


def test_a_version_built_on_a_rolled_back_live_is_caught(applied, tmp_path, monkeypatch):
    """As main's apply did: LIVE set back to v0, and the next run built v2 on it."""
    from e2urec.deploy import apply_loop

    root = _copy(applied, tmp_path)
    request(root, users=[_other_user(root)])
    (root / "LIVE").write_text("v0\n")
    monkeypatch.setattr(apply_loop.integrity, "preflight", lambda layout: {})  # no checks
    [outcome] = apply(root)
    monkeypatch.undo()
    assert outcome["version"] == "v2" and status(root)["live"] == "v2"  # LIVE is the last now
    problems = verify(root)["problems"]
    assert any("models/v2 was made from a model that is not v1" in p for p in problems), problems
    _refuses_and_changes_nothing(root, "models/v2 was made from a model that is not v1")
