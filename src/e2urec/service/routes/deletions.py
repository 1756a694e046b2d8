"""Deletion requests: POST and GET (those pending) /v1/deletions, GET and DELETE (cancel)
/v1/deletions/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool

from e2urec import deploy as deployment
from e2urec.service.auth import require_token
from e2urec.service.schemas import Accepted, DeletionRequest, DeletionStatus
from e2urec.service.state import ServiceDep

router = APIRouter(
    prefix="/v1/deletions", tags=["deletions"], dependencies=[Depends(require_token)]
)


@router.post("", status_code=202, response_model=Accepted)
async def submit(req: DeletionRequest, service: ServiceDep) -> Accepted:
    pairs = tuple((i.user, i.item) for i in req.interactions)
    try:
        request_id = await run_in_threadpool(
            deployment.request, service.config.deploy, tuple(req.users), pairs
        )
    except deployment.Refused as err:  # the ledger has a "refused" row, nothing else changed
        fields = [name for name in ("users", "interactions") if getattr(req, name)]
        raise HTTPException(status_code=422, detail=f"{', '.join(fields)}: {err}") from None
    service.worker.wake()
    return Accepted(id=request_id, status=f"/v1/deletions/{request_id}")


@router.get("", response_model=list[DeletionStatus])
async def waiting(service: ServiceDep) -> list[DeletionStatus]:
    """The requests not yet carried out or refused, oldest first."""
    found = await run_in_threadpool(deployment.pending_requests, service.config.deploy)
    applying = service.worker.applying
    return [DeletionStatus(**r, applying=bool(applying and r["id"] in applying.ids)) for r in found]


@router.get("/{request_id}", response_model=DeletionStatus)
async def status(request_id: str, service: ServiceDep) -> DeletionStatus:
    found = await run_in_threadpool(deployment.status, service.config.deploy)
    row = next((r for r in found["requests"] if r["id"] == request_id), None)
    if row is None:
        raise HTTPException(status_code=404, detail=f"no deletion request {request_id!r}")
    applying = service.worker.applying
    return DeletionStatus(**row, applying=bool(applying and request_id in applying.ids))


@router.delete("/{request_id}", response_model=DeletionStatus)
async def cancel(request_id: str, service: ServiceDep) -> DeletionStatus:
    """Withdraw a request still waiting: it ends "refused" (cancelled by the operator)."""
    try:
        row = await run_in_threadpool(deployment.cancel, service.config.deploy, request_id)
    except deployment.Busy:
        detail = f"request {request_id}: an apply is running; cancel again when it ends"
        raise HTTPException(status_code=409, detail=detail) from None
    except deployment.NotCancellable as err:
        code = 404 if "no request" in str(err) else 409
        raise HTTPException(status_code=code, detail=str(err)) from None
    return DeletionStatus(**row)
