"""A body-size limit in front of the app: an oversized body is refused with 413 before parsing."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse


class BodyLimit:
    """ASGI middleware. It also counts the bytes as they arrive, so that a chunked body without
    Content-Length cannot slip past; FastAPI passes an HTTPException raised there through."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    def _detail(self) -> str:
        return f"request body over the limit of {self.max_body} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            response = JSONResponse({"detail": self._detail()}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise HTTPException(status_code=413, detail=self._detail())
            return message

        await self.app(scope, counted, send)
