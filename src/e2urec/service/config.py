"""How a service runs: one dataclass with checked values, read once at start."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from e2urec.deploy.folder import Layout
from e2urec.methods.registry import METHODS

TOKEN_SUFFIX = ".service-token"  # beside the deployment's key, when no --token-file is given
OLD_TOKEN = "service-token"  # where services before issue 37 made it: in the deployment folder


@dataclass(frozen=True)
class ServiceConfig:
    deploy: Path
    token: str
    open_score: bool = False  # True: /v1/score answers without the bearer token
    window: float = 30.0  # seconds a first pending request waits for others to join its apply
    method: str | None = None  # unlearning method for applies (None: the deployment's default)
    max_body: int = 1_000_000  # bytes
    max_candidates: int = 500
    max_history: int = 100
    batch_size: int = 32  # prompts per forward pass
    refresh: int = 5  # seconds between reloads of the page
    max_attempts: int = 3  # failed applies of a request before the worker leaves it to the operator
    # Seconds an apply may run before its process is killed (one stopped would hold the worker
    # for ever); an unlearning of a real LLM on a CPU takes tens of minutes.
    apply_timeout: float = 4 * 3600.0
    host: str = "127.0.0.1"  # the bound address: a Host header must name it (or localhost)
    allow_hosts: tuple[str, ...] = ()  # further names for the Host header (a proxy in front)

    def __post_init__(self):
        if not Layout(Path(self.deploy)).catalogue.exists():
            raise ValueError(f"{self.deploy}: not a deployment folder (run `e2urec init` first)")
        if len(self.token) < 16:
            raise ValueError("the bearer token must be at least 16 characters long")
        names = ("max_body", "max_candidates", "max_history", "batch_size", "refresh")
        for name in (*names, "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.window < 0:
            raise ValueError(f"window must be >= 0 seconds, got {self.window}")
        if self.apply_timeout <= 0:
            raise ValueError(f"apply_timeout must be > 0 seconds, got {self.apply_timeout}")
        if self.method is not None and self.method not in METHODS:
            # Refused at the start: a typo would otherwise fail every apply of every request.
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")


def token_path(deploy: str | Path) -> Path:
    """Where the service keeps its own token: beside the deployment's key, outside the folder,
    so that a backup of the folder carries no working credential."""
    key = Layout.of(deploy).key_file
    return key.with_name(key.stem + TOKEN_SUFFIX)


def read_token(path: str | Path | None, deploy: str | Path) -> str:
    """The token from `path`; without one, the deployment's own, created once (mode 0600)
    beside its key."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"--token-file {path}: no such file")
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"--token-file {path}: the file is empty")
        return token
    old = Path(deploy) / OLD_TOKEN
    if old.exists():
        raise ValueError(
            f"{old}: a token inside the deployment goes with every backup of it; delete it "
            f"(the service makes a new one in {token_path(deploy)}) or give --token-file"
        )
    own = token_path(deploy)
    if not own.exists():
        # Written aside, then linked: a crash leaves no empty token file, and of two services
        # started at once only one token wins (link fails when the name exists).
        fd, tmp = tempfile.mkstemp(dir=own.parent, prefix=f".{own.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, own)
        finally:
            os.unlink(tmp)
    return own.read_text(encoding="utf-8").strip()
