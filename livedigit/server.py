"""``livedigit serve``: run the app under uvicorn, one process, with a graceful SIGTERM.

One process per dyno: the model and the batcher live in the process, and batching only pays off when
every connection shares them. Scale out with more dynos, not more workers.

On SIGTERM (Heroku sends it before a restart and kills 30 s later) the server stops accepting, stops
reading from the WebSockets, answers what they had already sent (submits included), closes each with
1001 "server restarting" and exits. Uvicorn alone would wait for WebSockets to close by themselves and
then drop them with 1012, so :class:`Server` does the closing before uvicorn's own shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import LOGGING_CONFIG

from livedigit import threadnames
from livedigit.app import LiveDigitApp, create_app
from livedigit.config import Settings
from livedigit.httpprotocol import RequestLimits, bounded_protocol
from livedigit.labels.database import ephemeral_storage_warning

logger = logging.getLogger("livedigit")

FORCED_EXIT_SECONDS = 2.0
"""After a second Ctrl+C, how long requests get to end once their connections are closed and the
batcher has answered what it held."""

WS_IMPLEMENTATION = "websockets-sansio"
"""uvicorn's WebSocket protocol built on the ``websockets`` library's sans-I/O core: it enforces
``ws_max_size`` (close 1009), sends keepalive pings, supports the HTTP denial response (403) and reads
one message at a time, so a flooding client is held back by TCP."""


def config(settings: Settings, app: Starlette | None = None) -> uvicorn.Config:
    """The uvicorn configuration for ``settings`` (exactly one process), serving livedigit's app or
    ``app`` (the bench's floor is served exactly as livedigit is)."""
    return uvicorn.Config(
        app or create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        http=bounded_protocol(
            RequestLimits(max_header_bytes=settings.max_header_bytes, timeout=settings.request_timeout)
        ),
        ws=WS_IMPLEMENTATION,
        ws_max_size=settings.max_message_bytes,
        ws_ping_interval=settings.ping_interval if settings.ping_interval > 0 else None,
        ws_ping_timeout=settings.ping_timeout if settings.ping_timeout > 0 else None,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=max(1, round(settings.graceful_shutdown_seconds)),
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
        log_level=settings.log_level,
        log_config=log_config(settings.log_level),
        lifespan="on",
    )


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging setup, with the ``livedigit`` loggers printed the same way."""
    logging_config = copy.deepcopy(LOGGING_CONFIG)
    logging_config["loggers"]["livedigit"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    logging_config.setdefault("filters", {})["client_errors"] = {"()": ClientErrorFilter}
    logging_config["loggers"]["uvicorn.error"]["filters"] = ["client_errors"]
    return logging_config


class ClientErrorFilter(logging.Filter):
    """Keep what any client can make uvicorn log to one line, and not an error.

    * A client's invalid UTF-8 frame: uvicorn adds a traceback (the connection is closed with 1007).
    * A refused WebSocket handshake (403 origin, 400 host): uvicorn's ``websockets-sansio`` protocol logs
      "ASGI callable returned without completing handshake." at ERROR after every denial response, on top
      of the INFO line with the status, because it does not mark the handshake as done. The app answers
      every handshake with an accept or a denial, so the line says nothing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Invalid UTF-8 sequence received from client.":
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return record.msg != "ASGI callable returned without completing handshake."


class Server(uvicorn.Server):
    """uvicorn's server, closing the app's WebSockets itself (1001) before uvicorn shuts down.

    A second Ctrl+C during the shutdown (uvicorn's "force quit") stops the waiting: every connection
    still open is closed at once. uvicorn would also skip the app's shutdown and leave the requests and
    the lifespan to be cancelled as the event loop ends, each cancellation logged with a traceback; here
    the batcher is still stopped, and the requests end on their own (their clients are gone).
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up, then the address to open in a browser: the last line a user sees at start."""
        await super().startup(sockets)
        if self.started:
            port = self.config.port or self.servers[0].sockets[0].getsockname()[1]
            logger.info("open %s in a browser", page_address(self.config.host, port))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started = time.monotonic()
        budget = float(self.config.timeout_graceful_shutdown or 0)
        for server in getattr(self, "servers", []):
            server.close()
        forcing = asyncio.create_task(self._close_connections_when_forced())
        try:
            app = self.config.app
            if isinstance(app, LiveDigitApp):
                await app.service.drain(budget)
            self.config.timeout_graceful_shutdown = max(1, round(budget - (time.monotonic() - started)))
            await super().shutdown(sockets)
            if self.force_exit:
                await self.lifespan.shutdown()
                if self.server_state.tasks:
                    await asyncio.wait(set(self.server_state.tasks), timeout=FORCED_EXIT_SECONDS)
        finally:
            forcing.cancel()

    async def _close_connections_when_forced(self) -> None:
        while not self.force_exit:
            await asyncio.sleep(0.05)
        for connection in list(self.server_state.connections):
            connection.transport.close()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Route SIGINT and SIGTERM to uvicorn's public ``handle_exit``, and exit with status 0 afterwards.

        uvicorn's own version raises the signal again once it has shut down, so the process would end as
        killed by it (status -15, or a KeyboardInterrupt traceback) although nothing went wrong, and a
        platform reading the status would report a crash.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


MMAP_THRESHOLD = 32 * 1024
"""Allocations from this size up (frames, decoded images) get pages of their own, returned when freed."""


def return_large_buffers_to_the_system() -> None:
    """Have glibc give each allocation of :data:`MMAP_THRESHOLD` bytes or more pages of its own.

    By default glibc serves blocks of up to 32 MB from heaps it keeps after they are freed, so a burst
    of large frames from hundreds of connections leaves the process tens of megabytes bigger for good;
    with this, memory comes back within a second after the burst. Elsewhere (musl, macOS) it does
    nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        return


M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number for the threshold (``malloc.h``)."""


def page_address(host: str, port: int) -> str:
    """The page's URL on this machine: a server bound to every interface is reached through loopback."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(settings: Settings) -> int:
    """Serve until SIGTERM or Ctrl+C; a non-zero exit when the model cannot be loaded."""
    return_large_buffers_to_the_system()
    threadnames.name_this_thread(threadnames.EVENT_LOOP)  # also when started as ``python -m livedigit``
    server = Server(config(settings))
    warning = ephemeral_storage_warning(settings)
    if warning:
        logger.warning(warning)
    server.run()
    return 0 if server.started else 1
