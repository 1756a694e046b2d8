"""Request and response bodies: a bad body is refused by pydantic with the field's name."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Id = Field(min_length=1, max_length=200)
IdStr = Annotated[str, Field(min_length=1, max_length=200)]


class Strict(BaseModel):
    # Unknown fields are refused: a typo ("candidate") must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


class UserProfile(Strict):
    gender: Literal["male", "female"] | None = None
    age: str | None = Field(default=None, max_length=50)
    job: str | None = Field(default=None, max_length=100)


class Rated(Strict):
    item: str = Id
    rating: float = Field(ge=0, le=10)


class ScoreRequest(Strict):
    """A history and candidates, built into prompts by the deployment's template; or prompts
    as they are (a deployment of imported prompts has no template)."""

    user: UserProfile = Field(default_factory=UserProfile)
    history: list[Rated] | None = Field(default=None, min_length=1, description="oldest first")
    candidates: list[IdStr] | None = Field(default=None, min_length=1)
    prompts: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def one_form(self):
        if self.prompts is not None:
            if self.history is not None or self.candidates is not None:
                raise ValueError("give prompts alone, or history and candidates")
        elif self.history is None or self.candidates is None:
            raise ValueError("give history and candidates, or prompts")
        return self


class Scored(BaseModel):
    item: str
    p_yes: float


class ScoreResponse(BaseModel):
    model: str  # the version that scored, so a client sees when forgetting took effect
    scores: list[Scored]  # highest p_yes first


class PromptScores(BaseModel):
    model: str
    p_yes: list[float]  # one per prompt, in the order given


class Interaction(Strict):
    user: str = Id
    item: str = Id


class DeletionRequest(Strict):
    users: list[IdStr] = Field(default_factory=list)
    interactions: list[Interaction] = Field(default_factory=list)

    @model_validator(mode="after")
    def not_empty(self):
        if not self.users and not self.interactions:
            raise ValueError("give users or interactions (both lists are empty)")
        if any(not u.strip() for u in self.users):
            raise ValueError("users: an id is empty")
        return self


class Accepted(BaseModel):
    id: str
    status: str  # where to follow it


class DeletionStatus(BaseModel):
    """A request as the ledger tells it (`deploy.status`), and whether it is being applied now."""

    id: str
    # received, retrying (an attempt failed; it waits to be tried again), verified, applied;
    # then purged (carried out) or refused (with a reason: refused at once, or cancelled)
    state: str
    received: str | None = None  # times, ISO 8601 UTC
    applied: str | None = None
    purged: str | None = None
    users: int | None = None  # counts only: the ledger keeps no ids in clear
    samples: int | None = None
    interactions: int | None = None
    reason: str | None = None  # why it was refused, or "already purged by an earlier request"
    attempts: int = 0  # failed attempts to apply it
    error: str | None = None  # the last failed attempt's kind of error
    method: str | None = None
    version: str | None = None  # the model version it went live in
    model_before: str | None = None  # content hashes
    model_after: str | None = None
    verification: dict | None = None
    forgetting: dict | None = None  # the evidence that the request's data lost its hold
    # A two-phase deployment (init --exact) only: pending, approximate (purged, the approximate
    # model live) or exact (the exactly retrained model live); the shards the exact phase
    # retrains, when it went live and in which version, its last failed attempt's kind.
    phase: str | None = None
    shards: list[int] | None = None
    exact: str | None = None
    exact_version: str | None = None
    exact_attempts: int | None = None
    exact_error: str | None = None
    applying: bool = False


class ModelVersion(BaseModel):
    id: str
    hash: str
    created: str
    live: bool
    verification: dict | None = None


class Models(BaseModel):
    live: str  # the deployment's live version
    serving: str | None  # the version this service scores with (it follows `live` after a swap)
    refusal: str | None = None  # why it serves none: LIVE not the version the ledger vouches for
    models: list[ModelVersion]
