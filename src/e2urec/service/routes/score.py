"""POST /v1/score: rank candidate items for a user's history, or score prompts as given."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from e2urec.service.auth import score_access
from e2urec.service.schemas import PromptScores, ScoreRequest, ScoreResponse
from e2urec.service.scorer import NoTemplate, TooMany, UnknownItems, rank
from e2urec.service.state import ServiceDep

router = APIRouter(prefix="/v1", tags=["scoring"], dependencies=[Depends(score_access)])


@router.post("/score", response_model=ScoreResponse | PromptScores)
async def score(req: ScoreRequest, service: ServiceDep) -> ScoreResponse | PromptScores:
    try:
        return await rank(service.live, service.scorer, service.config, req)
    except TooMany as err:
        raise HTTPException(status_code=413, detail=str(err)) from None
    except (UnknownItems, NoTemplate) as err:
        raise HTTPException(status_code=422, detail=str(err)) from None
