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
    user: UserProfile = Field(default_factory=UserProfile)
    history: list[Rated] = Field(min_length=1, description="oldest first")
    candidates: list[IdStr] = Field(min_length=1)


class Scored(BaseModel):
    item: str
    p_yes: float


class ScoreResponse(BaseModel):
    model: str  # the version that scored, so a client sees when forgetting took effect
    scores: list[Scored]  # highest p_yes first


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
    model_config = ConfigDict(extra="allow")  # the ledger's own fields pass through
    id: str
    state: str
    applying: bool  # the worker is running this request's apply right now


class Models(BaseModel):
    live: str | None  # the ledger's live version
    serving: str  # the version this service scores with (it follows `live` after a swap)
    models: list[dict]
