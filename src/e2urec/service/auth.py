"""Bearer-token checks as dependencies; the token itself is never logged or echoed."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from e2urec.service.state import Service, ServiceDep

bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _check(service: Service, credentials: HTTPAuthorizationCredentials | None) -> None:
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), service.config.token.encode()):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong bearer token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_token(service: ServiceDep, credentials: Credentials) -> None:
    _check(service, credentials)


def score_access(service: ServiceDep, credentials: Credentials) -> None:
    if not service.config.open_score:
        _check(service, credentials)
