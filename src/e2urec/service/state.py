"""What one running service holds, made in the lifespan and reached by routes through `Depends`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from e2urec.service.config import ServiceConfig
from e2urec.service.live import LiveModel
from e2urec.service.scorer import Batcher
from e2urec.service.worker import Worker


@dataclass
class Service:
    config: ServiceConfig
    live: LiveModel
    scorer: Batcher
    worker: Worker


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
