"""The deployment folder: where each part lives, the live-version pointer, content hashes, keyed ids.

- DEPLOY/data/          the live prepared data (purged after each request)
- DEPLOY/models/vN/     model versions; an unlearning adapter names its base relatively
- DEPLOY/LIVE           the id of the version being served (replaced atomically)
- DEPLOY/ledger.sqlite  the hash-chained ledger and the ids of requests not yet purged
- DEPLOY/config.json    method, options and verification bounds chosen at `init`, the key's path
- DEPLOY/catalogue.json item titles, for the scoring service
- DEPLOY/scratch.log    names of the temporary files and staging folders `apply` made
- DEPLOY/apply.lock     held by `apply` (and `cancel`); request.lock by `request` (`locked`)

The key of the HMAC hashes that stand for forgotten ids lives outside the folder (by default in
the user's config folder, `key_folder()`), so that a copy of the folder alone reveals no id.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

VERSION = re.compile(r"^v\d+$")


class Busy(RuntimeError):
    """Another `apply` holds the deployment."""


@contextmanager
def locked(path: Path, wait: bool = False):
    """An exclusive lock on `path`; it goes with the descriptor, so also when the process dies.
    Opened without truncating and without following a link: a lock file pointed at another
    file (config.json) must not empty it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise ValueError(
            f"{path}: cannot be opened as a lock ({err.strerror}); a link or a folder there is "
            "not ours: remove it"
        ) from None
    with os.fdopen(fd, "r+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Busy(
                f"{path.parent}: another `apply` is running; try again when it ends"
            ) from None
        yield


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
    legacy_key = property(lambda self: self.root / "secret.key")  # deployments before issue 26
    config_file = property(lambda self: self.root / "config.json")
    catalogue = property(lambda self: self.root / "catalogue.json")
    lock_file = property(lambda self: self.root / "apply.lock")
    request_lock = property(lambda self: self.root / "request.lock")
    scratch_file = property(lambda self: self.root / "scratch.log")

    def base_path(self, config: dict) -> str | None:
        """The backbone the deployment's model was trained from: in the folder, or as recorded."""
        base = config.get("base")
        if base is None:
            return None
        inside = self.root / base
        return str(inside) if inside.exists() else base

    def version(self, version_id: str) -> Path:
        # Only a version's name: LIVE or a forged row naming "../elsewhere" leads nowhere.
        if not VERSION.fullmatch(version_id):
            raise ValueError(f"{version_id!r} is not a model version's name (v0, v1, ...)")
        return self.models / version_id

    def next_version(self, recorded: dict) -> str:
        """The next version's name after the `recorded` ones; a folder the ledger does not know
        (the operator's) is skipped."""
        n = 1 + max(int(v[1:]) for v in recorded if VERSION.match(v))
        while self.version(f"v{n}").exists():
            n += 1
        return f"v{n}"

    def live(self) -> str:
        return self.live_file.read_text().strip()

    def set_live(self, version_id: str) -> None:
        write_atomic(self.live_file, version_id + "\n", self.temporary(self.live_file))

    def reserve(self, path: Path) -> Path:
        """Record `path` (inside the folder) as ours in `scratch_file`, synced, before it is
        created: what a crash leaves there is removed by that exact name, and nothing else is."""
        with open(self.scratch_file, "a", encoding="utf-8") as fh:
            fh.write(Path(path).relative_to(self.root).as_posix() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return Path(path)

    def temporary(self, target: Path) -> Path:
        """A recorded name for the temporary file that replaces `target`."""
        return self.reserve(target.with_name(f".{target.name}.{secrets.token_hex(4)}"))

    def reserved(self) -> list[Path]:
        """The recorded names; only those `reserve` can have written (a line added by hand that
        names another file, or leads out of the folder, is ignored)."""
        if not self.scratch_file.is_file():
            return []
        lines = self.scratch_file.read_text(encoding="utf-8").splitlines()
        return [self.root / line for line in lines if OURS.fullmatch(line)]

    def config(self) -> dict:
        return json.loads(self.config_file.read_text())

    @property
    def key_file(self) -> Path:
        given = self.config().get("key_file")
        return Path(given) if given else self.legacy_key

    def keyer(self) -> Keyer:
        return Keyer(read_key(self.key_file))

    def keyed(self, *parts: str) -> str:
        """HMAC-SHA256 of an id (or a user/item pair): stands for it without revealing it."""
        return self.keyer()(*parts)


MIN_KEY = 32  # bytes: an HMAC key shorter than its hash's output weakens it
MIN_BITS = 128  # the key's entropy, as its byte frequencies estimate it


class KeyMissing(FileNotFoundError):
    """The deployment's HMAC key cannot be read: nothing that needs ids can go on."""


def read_key(path: Path) -> bytes:
    try:
        key = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        raise KeyMissing(
            f"the deployment's HMAC key {path} cannot be read ({type(err).__name__}); "
            "restore it from where it was kept (a new key would not match the ledger)"
        ) from None
    if len(key) < MIN_KEY:
        raise ValueError(f"{path}: an HMAC key needs at least {MIN_KEY} bytes, got {len(key)}")
    mode = Path(path).stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(
            f"{path}: the HMAC key is open to other users (mode {mode:o}); chmod 600 {path}"
        )
    if entropy_bits(key) < MIN_BITS:
        raise ValueError(
            f"{path}: not a random key (about {entropy_bits(key):.0f} bits by its byte "
            f"frequencies, {MIN_BITS} needed); make one with `head -c 32 /dev/urandom`"
        )
    return key


def entropy_bits(data: bytes) -> float:
    """Shannon entropy of the bytes' frequencies times their number: 0 for 40 zeros, about 88 for
    a word repeated; 32 random bytes give 140-160. It cannot see other patterns (a counting
    sequence passes): it catches the placeholder, not a chosen weak key."""
    n = len(data)
    return -sum(c * math.log2(c / n) for c in Counter(data).values())


@dataclass(frozen=True)
class Keyer:
    """The key read once: scanning data calls it once per sample."""

    key: bytes

    def __call__(self, *parts: str) -> str:
        return hmac.new(self.key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()

    def fingerprint(self) -> str:
        """What the ledger keeps to notice a replaced key; it reveals nothing of the key."""
        return self("e2urec key fingerprint")[:32]


def key_folder() -> Path:
    """Where `init` keeps keys it makes: $E2UREC_KEY_DIR, else the user's config folder."""
    if os.environ.get("E2UREC_KEY_DIR"):
        return Path(os.environ["E2UREC_KEY_DIR"])
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "e2urec" / "keys"


# What `Layout.reserve` records: temporary files beside the live pointer and the data files, and
# staging folders of new versions (and of their Retrain reference).
OURS = re.compile(r"(data/)?\.[\w.-]+\.[0-9a-f]{8}|models/\.staging-[0-9a-f]{8}(-retrain)?")


def write_atomic(path: Path, text: str, tmp: Path | None = None) -> None:
    """Temporary file in the same folder (`tmp`, when the caller has recorded its name), fsync,
    then rename: readers see old or new, never half."""
    if tmp is None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
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
