"""The FastAPI app: lifespan (load the live model, start the scorer and the worker), error
messages that name the field, and `serve`, the library function behind `e2urec serve`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from e2urec import __version__
from e2urec.deploy import integrity
from e2urec.deploy.folder import KeyMissing, Layout
from e2urec.deploy.ledger import Corrupt
from e2urec.service.config import ServiceConfig, read_token
from e2urec.service.limits import BodyLimit
from e2urec.service.live import LiveModel, load_live
from e2urec.service.routes import deletions, models, page, score
from e2urec.service.scorer import Batcher
from e2urec.service.state import Service
from e2urec.service.worker import NOT_SERVABLE, Worker

log = logging.getLogger("e2urec.service")


def create_app(config: ServiceConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            live = LiveModel(await asyncio.to_thread(load_live, config.deploy))
            log.info("serving model version %s from %s", live.version, config.deploy)
        except NOT_SERVABLE as err:  # up, to say why on the page; scoring answers 503
            log.error("not serving: %s", err)
            live = LiveModel(None, refusal=str(err))
        scorer = Batcher(live, config.batch_size, max_prompts=4 * config.batch_size)
        worker = Worker(config.deploy, live, config)
        app.state.service = Service(config, live, scorer, worker)
        task = asyncio.create_task(worker.run(), name="deletion worker")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.to_thread(scorer.close)

    app = FastAPI(
        title="e2urec",
        version=__version__,
        description="Score items with the live recommender; take deletion requests.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_body=config.max_body)
    # DNS rebinding: a page on another site resolving its name to 127.0.0.1 gets its own name
    # in the Host header; answering only the bound address and localhost keeps it out.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(config))
    app.add_exception_handler(RequestValidationError, _validation_error)
    for broken in (KeyMissing, Corrupt, integrity.Tampered):
        app.add_exception_handler(broken, _needs_the_operator)
    app.add_exception_handler(Exception, _server_error)
    for module in (score, deletions, models, page):
        app.include_router(module.router)
    return app


async def _needs_the_operator(request: Request, exc: Exception) -> JSONResponse:
    """The deployment itself is broken (key, ledger, tampered files): not the client's doing.
    The log says what and where; the client learns only that it is not its fault."""
    log.error("%s %s: %s", request.method, request.url.path, exc)
    detail = f"the deployment needs its operator ({type(exc).__name__}); the server log says why"
    return JSONResponse(status_code=503, content={"detail": detail})


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    """Our fault: logged with its traceback; the client gets no path and no message."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    detail = "internal error; the server log says why"
    return JSONResponse(status_code=500, content={"detail": detail})


def allowed_hosts(config: ServiceConfig) -> list[str]:
    local = ["localhost", "127.0.0.1", "::1", "[::1]"]
    return list(dict.fromkeys([config.host, *local, *config.allow_hosts]))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line per problem, each starting with the field's path."""
    lines = []
    for error in exc.errors():
        if error["type"] == "json_invalid":  # its loc holds a character position, not a field
            reason = error.get("ctx", {}).get("error", "")
            lines.append(f"body: invalid JSON at character {error['loc'][-1]} ({reason})")
            continue
        where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
        lines.append(f"{where}: {error['msg']}")
    return JSONResponse(status_code=422, content={"detail": "; ".join(lines)})


def serve(
    deploy: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token_file: str | Path | None = None,
    **options,
) -> None:
    """Run the service until interrupted; `options` are ServiceConfig fields."""
    import uvicorn

    # Progress bars from scoring would land in the service's log once per request.
    os.environ.setdefault("TQDM_DISABLE", "1")
    # Before a token is made for it, and before any traceback: one line saying why not.
    integrity.servable(Layout.of(deploy), rehash=True)
    token = read_token(token_file, deploy)
    config = ServiceConfig(deploy=Path(deploy), token=token, host=host, **options)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(create_app(config), host=host, port=port, log_level="info")
