"""The deployment folder: where each part lives, the live-version pointer, content hashes, keyed ids.

- DEPLOY/data/          the live prepared data (purged after each request)
- DEPLOY/models/vN/     model versions; an unlearning adapter names its base relatively
- DEPLOY/LIVE           the id of the version being served (replaced atomically)
- DEPLOY/ledger.sqlite  the hash-chained ledger and the ids of requests not yet purged
- DEPLOY/secret.key     the key of the HMAC hashes that stand for forgotten ids
- DEPLOY/config.json    method, options and verification bounds chosen at `init`
- DEPLOY/catalogue.json item titles, for the scoring service
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def of(cls, deploy: str | Path, must_exist: bool = True) -> Layout:
        layout = cls(Path(deploy))
        if must_exist and not layout.ledger.exists():
            raise FileNotFoundError(f"{deploy}: not a deployment folder (run `e2urec init` first)")
        return layout

    data = property(lambda self: self.root / "data")
    models = property(lambda self: self.root / "models")
    live_file = property(lambda self: self.root / "LIVE")
    ledger = property(lambda self: self.root / "ledger.sqlite")
    secret_file = property(lambda self: self.root / "secret.key")
    config_file = property(lambda self: self.root / "config.json")
    catalogue = property(lambda self: self.root / "catalogue.json")
    lock_file = property(lambda self: self.root / "apply.lock")
    request_lock = property(lambda self: self.root / "request.lock")

    def version(self, version_id: str) -> Path:
        return self.models / version_id

    def live(self) -> str:
        return self.live_file.read_text().strip()

    def set_live(self, version_id: str) -> None:
        write_atomic(self.live_file, version_id + "\n")

    def config(self) -> dict:
        return json.loads(self.config_file.read_text())

    def keyed(self, *parts: str) -> str:
        """HMAC-SHA256 of an id (or a user/item pair): stands for it without revealing it."""
        key = self.secret_file.read_bytes()
        return hmac.new(key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Temporary file in the same folder, fsync, then rename: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tree_hash(folder: str | Path) -> str:
    """SHA-256 over every file's relative path and content: the identity of a model version."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    total = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        total.update(f"{path.relative_to(folder).as_posix()}\0{digest.hexdigest()}\n".encode())
    return total.hexdigest()
