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

from livedigit import openinference, pipeline, protocol
from livedigit.config import Settings
from livedigit.metrics import CONTENT_TYPE
from livedigit.pipeline import Caller
from livedigit.preprocess import Limits
from livedigit.runtime import ModelLoadError, Runtime
from livedigit.security import RouterClientMiddleware, SecurityHeadersMiddleware
from livedigit.service import Service
from livedigit.session import websocket_endpoint
from livedigit.wire import HTTP_STATUS, RETRYABLE, ErrorCode, ReplyType

PACKAGE = Path(__file__).resolve().parent
TEMPLATES = PACKAGE / "templates"
STATIC = PACKAGE / "static"

templates = Jinja2Templates(directory=str(TEMPLATES))


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
    """Build the app. ``runtime`` replaces loading ``settings.model`` (tests wrap the real one); it runs in a
    thread of this process, since a worker process cannot be sent it."""
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
            *V2_ROUTES,
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
    """``POST /api/predict``: one image, or a batch (``items``), through the same pipeline as a WebSocket
    submit. A batch whose every item was refused for the same passing reason (rate limit, full queue)
    has that refusal's status and ``Retry-After``; any other batch is 200 with each item's result."""
    items = _service(request).settings.max_batch_items
    return await _post(request, functools.partial(protocol.parse_body, max_items=items))


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
    reply = await pipeline.handle(service, _http_caller(request, service, "http"), functools.partial(parse, body),
                                  received).resolve()  # fmt: skip
    status = 200
    if reply["type"] == ReplyType.ERROR:
        status = HTTP_STATUS[ErrorCode(reply["code"])]
    elif reply["type"] == ReplyType.BATCH:
        codes = {result.get("code") for result in reply["results"]}
        if len(codes) == 1 and (code := codes.pop()) in RETRYABLE:
            status = HTTP_STATUS[ErrorCode(code)]
    return _reply(status, reply, service, received)


def _http_caller(request: Request, service: Service, transport: str) -> Caller:
    """An HTTP request's caller: its client address, whose submit bucket every request from it shares."""
    address = request.client.host if request.client else "unknown"
    return Caller(None, address, service.http_submits.bucket(address), transport=transport)


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
    hints = [result["retry_after_ms"] for result in reply.get("results", [reply]) if "retry_after_ms" in result]
    if status in (429, 503) and hints:
        headers["retry-after"] = str(math.ceil(max(hints) / 1000.0))
    pipeline.sent(service, reply, received)
    return Response(protocol.dumps(reply), status_code=status, headers=headers, media_type="application/json")


# The Open Inference Protocol (KServe v2): health, metadata and infer; see livedigit/openinference.py.


async def v2_server(request: Request) -> Response:
    return JSONResponse(openinference.server_metadata())


async def v2_live(request: Request) -> Response:
    return Response(status_code=200)


async def v2_ready(request: Request) -> Response:
    """200 when ready; the protocol answers "not ready" with a 4xx status and no body."""
    return Response(status_code=200 if _service(request).ready else 400)


def _v2_model(request: Request) -> tuple[Service, Response | None]:
    """The service, and the 404 to send instead when the path names another model or version."""
    service = _service(request)
    name, version = request.path_params["model"], request.path_params.get("version", openinference.VERSION)
    if name != service.model_name or version != openinference.VERSION:
        message = f"no model {name!r} version {version!r}; this server has {service.model_name!r} version 1"
        return service, Response(openinference.error_body(message), 404, media_type="application/json")
    return service, None


async def v2_model(request: Request) -> Response:
    service, missing = _v2_model(request)
    if missing is not None:
        return missing
    return JSONResponse(
        openinference.model_metadata(service.model_name, service.runtime_name, service.settings.max_side)
    )


async def v2_model_ready(request: Request) -> Response:
    service, missing = _v2_model(request)
    return missing or Response(status_code=200 if service.ready else 400)


async def v2_infer(request: Request) -> Response:
    """``POST /v2/models/<name>/infer``: the tensor's images as one whole batch through the pipeline."""
    service, missing = _v2_model(request)
    if missing is not None:
        return missing
    received = time.perf_counter()
    settings = service.settings
    body = await _read_body(request, settings.max_message_bytes)
    if body is None:
        message = f"the body is larger than {settings.max_message_bytes} bytes"
        return Response(openinference.error_body(message), 413, media_type="application/json")
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        return Response(openinference.error_body("send the request uncompressed"), 415, media_type="application/json")
    try:
        infer = openinference.read_infer(
            body, request.headers.get(openinference.HEADER_LENGTH), service.limits, settings.max_batch_items
        )
    except openinference.V2Error as exc:
        service.metrics.messages["invalid"].inc()
        return Response(openinference.error_body(exc.message), exc.status, media_type="application/json")
    ticket = pipeline.handle(service, _http_caller(request, service, "v2"), infer.request, received)
    reply = await ticket.resolve()
    pipeline.sent(service, reply, received)
    status, headers, content = openinference.response(service.model_name, infer, reply)
    return Response(content, status, headers=headers)


V2_ROUTES = [
    Route("/v2", v2_server),
    Route("/v2/health/live", v2_live),
    Route("/v2/health/ready", v2_ready),
    Route("/v2/models/{model}", v2_model),
    Route("/v2/models/{model}/versions/{version}", v2_model),
    Route("/v2/models/{model}/ready", v2_model_ready),
    Route("/v2/models/{model}/versions/{version}/ready", v2_model_ready),
    Route("/v2/models/{model}/infer", v2_infer, methods=["POST"]),
    Route("/v2/models/{model}/versions/{version}/infer", v2_infer, methods=["POST"]),
]
