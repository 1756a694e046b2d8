"""GET /v1/models: the model versions and which one is live."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from e2urec import deploy as deployment
from e2urec.service.auth import require_token
from e2urec.service.schemas import Models
from e2urec.service.state import ServiceDep

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_token)])


@router.get("/models", response_model=Models)
async def models(service: ServiceDep) -> Models:
    found = await run_in_threadpool(deployment.status, service.config.deploy)
    live = service.live
    return Models(
        live=found["live"], serving=live.version, refusal=live.refusal, models=found["models"]
    )
