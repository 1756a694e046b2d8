"""POST /v1/score: rank candidate items for a user's history, or score prompts as given."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from e2urec.service.auth import score_access
from e2urec.service.schemas import PromptScores, ScoreRequest, ScoreResponse
from e2urec.service.scorer import NoTemplate, TooMany, UnknownItems, rank
from e2urec.service.state import ServiceDep

router = APIRouter(prefix="/v1", tags=["scoring"], dependencies=[Depends(score_access)])


# No path and no reason: the page with the token (and the server log) says why.
NOT_SERVING = "the deployment needs its operator: it has no live version the ledger vouches for"


@router.post("/score", response_model=ScoreResponse | PromptScores)
async def score(req: ScoreRequest, service: ServiceDep) -> ScoreResponse | PromptScores:
    await service.worker.before_scoring()
    if service.live.refusal is not None:
        raise HTTPException(status_code=503, detail=NOT_SERVING)
    try:
        return await rank(service.live, service.scorer, service.config, req)
    except TooMany as err:
        raise HTTPException(status_code=413, detail=str(err)) from None
    except (UnknownItems, NoTemplate) as err:
        raise HTTPException(status_code=422, detail=str(err)) from None
