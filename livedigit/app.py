"""The ASGI application: the page, the WebSocket, the REST API, health and metrics.

``create_app(settings, runtime=None)`` builds one; called without arguments it reads the environment
(:meth:`Settings.from_env`), so ``uvicorn --factory livedigit.app:create_app`` serves it too.
``livedigit serve`` (:mod:`livedigit.server`) is the supported way to run it: it also closes WebSockets
with 1001 on SIGTERM and applies the limits of :class:`~livedigit.config.Settings` to uvicorn.

The model is loaded and the batcher started in the ASGI lifespan. A model that cannot be loaded stops
start-up with one log line naming the file and the reason, and a non-zero exit.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Receive, Scope, Send

from livedigit import pipeline, protocol
from livedigit.config import Settings
from livedigit.metrics import CONTENT_TYPE
from livedigit.pipeline import Caller
from livedigit.preprocess import Limits
from livedigit.runtime import ModelLoadError, Runtime
from livedigit.security import RouterClientMiddleware, SecurityHeadersMiddleware
from livedigit.service import Service
from livedigit.session import websocket_endpoint
from livedigit.wire import HTTP_STATUS, ErrorCode, ReplyType

PACKAGE = Path(__file__).resolve().parent
TEMPLATES = PACKAGE / "templates"
STATIC = PACKAGE / "static"

templates = Jinja2Templates(directory=str(TEMPLATES))

OVERLOADED_RETRY_AFTER = 1
"""Seconds a 503 (``overloaded``) asks a client to wait: the submit queue drains within about that."""


class LiveDigitApp(Starlette):
    """Starlette with the lifespan handled directly, so a start-up failure is one clear line."""

    service: Service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            await self.service.start()
        except ModelLoadError as exc:
            await send({"type": "lifespan.startup.failed", "message": f"livedigit: {exc}"})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        await self.service.stop()
        await send({"type": "lifespan.shutdown.complete"})


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> LiveDigitApp:
    """Build the app. ``runtime`` replaces loading ``settings.model`` (tests wrap the real one)."""
    settings = settings or Settings.from_env()
    service = Service(settings, runtime)
    app = LiveDigitApp(
        routes=[
            Route("/", index),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/api/model", model),
            Route("/api/predict", predict, methods=["POST"]),
            Route("/api/labels", labels, methods=["POST"]),
            WebSocketRoute("/ws", websocket_endpoint),
            Mount("/static", StaticFiles(directory=str(STATIC), check_dir=False), name="static"),
        ],
        middleware=[
            Middleware(SecurityHeadersMiddleware),
            Middleware(TrustedHostMiddleware, allowed_hosts=settings.hosts(), www_redirect=False),
            *([Middleware(RouterClientMiddleware)] if settings.forwarded_allow_ips.strip() == "*" else []),
        ],
        exception_handlers={ClientDisconnect: client_gone},
    )
    app.service = service
    app.state.service = service
    return app


def _service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


async def client_gone(request: Request, exc: Exception) -> Response:
    """A client that left in the middle of its request body: there is no one to answer and nothing worth
    logging (Starlette would log a traceback, which any client could make the server print at will)."""
    return Response(status_code=400)


async def index(request: Request) -> Response:
    return templates.TemplateResponse(request, "index.html")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def readyz(request: Request) -> Response:
    service = _service(request)
    if service.ready:
        return JSONResponse({"status": "ready"})
    if service.draining:
        reason = "shutting down"
    elif service.batcher is None:
        reason = "starting"
    else:
        reason = "the last model call failed"
    return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)


async def metrics(request: Request) -> Response:
    return Response(_service(request).metrics.exposition(), media_type=CONTENT_TYPE)


async def model(request: Request) -> Response:
    return JSONResponse(_service(request).model_info())


async def predict(request: Request) -> Response:
    """``POST /api/predict``: one image through the same pipeline as a WebSocket submit."""
    return await _post(request, protocol.parse_body)


async def labels(request: Request) -> Response:
    """``POST /api/labels``: one correction through the same pipeline as a WebSocket ``label``; answered
    once its row is committed."""
    return await _post(request, protocol.parse_label_body)


async def _post(request: Request, parse: Callable[[bytes, Limits], protocol.Request]) -> Response:
    """A JSON body through the pipeline with ``parse``, rate-limited by client address; the reply as JSON."""
    service = _service(request)
    received = time.perf_counter()
    limit = service.settings.max_message_bytes
    body = await _read_body(request, limit)
    if body is None:
        return _reply(413, protocol.error(None, ErrorCode.BAD_MESSAGE, f"the body is larger than {limit} bytes"),
                      service, received)  # fmt: skip
    address = request.client.host if request.client else "unknown"
    caller = Caller(None, address, service.http_submits.bucket(address), transport="http")
    reply = await pipeline.handle(service, caller, functools.partial(parse, body), received).resolve()
    status = HTTP_STATUS[ErrorCode(reply["code"])] if reply["type"] == ReplyType.ERROR else 200
    return _reply(status, reply, service, received)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or ``None`` as soon as it exceeds ``limit`` bytes (nothing more is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _reply(status: int, reply: dict[str, Any], service: Service, received: float) -> Response:
    """The JSON response for ``reply``; a refusal the client should retry says when (``Retry-After``)."""
    headers = {}
    if "retry_after_ms" in reply:
        headers["retry-after"] = str(math.ceil(reply["retry_after_ms"] / 1000.0))
    elif status == 503:
        headers["retry-after"] = str(OVERLOADED_RETRY_AFTER)
    pipeline.sent(service, reply, received)
    return Response(protocol.dumps(reply), status_code=status, headers=headers, media_type="application/json")
