"""GET /: the page a person reads: requests, model versions, the ledger's check. Server-rendered.

Without the token it shows counts, states and hashes only: no paths, no error texts (they may
quote ids), no request ids. With it (Authorization: Bearer), everything."""

from __future__ import annotations

import hmac
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from e2urec import deploy as deployment
from e2urec.service.state import ServiceDep

router = APIRouter(tags=["page"])
templates = Jinja2Templates(directory=Path(__file__).parent.parent / "templates")
CHECK_AGE = 60  # seconds a ledger check is shown before it is redone


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page(request: Request, service: ServiceDep):
    found = await run_in_threadpool(deployment.status, service.config.deploy)
    checked, check = await service.worker.ledger_check(CHECK_AGE)
    full = _has_token(request, service.config.token)
    recorded = {m["id"] for m in found["models"]}
    context = {
        "full": full,
        "deploy": service.config.deploy,
        "refresh": service.config.refresh,
        "requests": sorted(found["requests"], key=lambda r: r["received"] or "", reverse=True),
        "head": found["ledger"],
        "models": found["models"],
        # What LIVE holds is shown without the token only when it names a recorded version.
        "live": found["live"] if full or found["live"] in recorded else "not a recorded version",
        "two_phase": found.get("exact") is not None,
        "serving": service.live.version,
        "refusal": service.live.refusal,
        "applying": service.worker.applying,
        "last_error": service.worker.last_error,
        "check": check,
        "checked": _clock(checked),
        "now": _clock(time.time()),
    }
    return templates.TemplateResponse(request, "page.html", context)


def _has_token(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), token.encode())


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
