"""How a service runs: one dataclass with checked values, read once at start."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

TOKEN_FILE = "service-token"  # in the deployment folder, when no --token-file is given


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
    host: str = "127.0.0.1"  # the bound address: a Host header must name it (or localhost)
    allow_hosts: tuple[str, ...] = ()  # further names for the Host header (a proxy in front)

    def __post_init__(self):
        if not (Path(self.deploy) / "catalogue.json").exists():
            raise ValueError(f"{self.deploy}: not a deployment folder (run `e2urec init` first)")
        if len(self.token) < 16:
            raise ValueError("the bearer token must be at least 16 characters long")
        names = ("max_body", "max_candidates", "max_history", "batch_size", "refresh")
        for name in (*names, "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.window < 0:
            raise ValueError(f"window must be >= 0 seconds, got {self.window}")


def read_token(path: str | Path | None, deploy: str | Path) -> str:
    """The token from `path`; without one, the deployment's own, created once (mode 0600)."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"--token-file {path}: no such file")
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"--token-file {path}: the file is empty")
        return token
    own = Path(deploy) / TOKEN_FILE
    if not own.exists():
        # Written aside, then linked: a crash leaves no empty token file, and of two services
        # started at once only one token wins (link fails when the name exists).
        fd, tmp = tempfile.mkstemp(dir=own.parent, prefix=f".{own.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, own)
        finally:
            os.unlink(tmp)
    return own.read_text(encoding="utf-8").strip()
