"""HTTP/1.1 connections: uvicorn's httptools protocol, with bounds on what one client can make it hold.

uvicorn reads a request head of any size (httptools keeps appending to the header it is in the middle of)
and waits for the rest of a request for ever. :class:`BoundedHttpProtocol` bounds both where the bytes
arrive, before the app sees anything:

* **Head size.** The request line and headers together may hold ``max_header_bytes`` and at most
  :data:`MAX_HEADERS` fields. Beyond either the client gets **431** and the connection is closed; the
  server has read at most one socket read (up to 256 KB) past the limit.
* **Time.** A request must arrive whole, head and body, within ``request_timeout`` seconds of its first
  byte (the first request of a connection: of the connection opening). Otherwise the client gets **408**
  (nothing when not a byte of the request had arrived) and the connection is closed. A WebSocket
  handshake is such a request; once upgraded, the connection belongs to the WebSocket protocol and its
  pings.

A front proxy is the better home for both (it meets slow and hostile clients before they reach the
process); these keep a server without one safe. WebSocket connections use uvicorn's ``websockets-sansio``
protocol, which receives the handshake from this one, already parsed and within these bounds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

MAX_HEADERS = 100
"""Most header fields in one request (Apache's default; a browser sends about 15, websockets allows 128)."""


@dataclass(frozen=True)
class RequestLimits:
    """What one HTTP request may be: head size and field count, and the time to receive it."""

    max_header_bytes: int = 16 * 1024
    max_headers: int = MAX_HEADERS
    timeout: float = 10.0
    """Seconds; 0 for none."""


def bounded_protocol(limits: RequestLimits) -> type[BoundedHttpProtocol]:
    """The protocol class, with ``limits``, that ``uvicorn.Config(http=...)`` takes (uvicorn creates one
    instance per connection and passes it nothing of ours)."""

    class Configured(BoundedHttpProtocol):
        pass

    Configured.limits = limits
    return Configured


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol within :attr:`limits` (see the module's docstring)."""

    limits: ClassVar[RequestLimits] = RequestLimits()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._in_head = True  # from a request's first byte (or the connection opening) to its last header
        self._receiving = False  # from a request's first byte to its last
        self._head_bytes = 0
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None

    # Time.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._receiving = True
        self._head_bytes = 0
        if self._deadline is None:
            self._start_clock()

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._receiving = False
        self._stop_clock()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        if self._refused:
            return
        self._stop_clock()
        super().handle_websocket_upgrade()

    def _start_clock(self) -> None:
        if self.limits.timeout > 0:
            self._deadline = self.loop.call_later(self.limits.timeout, self._time_out)

    def _stop_clock(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _time_out(self) -> None:
        """The request did not arrive in time: 408 if part of it did and nothing was answered yet."""
        self._deadline = None
        if self.transport.is_closing():
            return
        answered = self.cycle is not None and self.cycle.response_started and not self._in_head
        if self._receiving and not answered:
            self._refuse(408, f"the request did not arrive within {self.limits.timeout:g} s")
        else:
            self.transport.close()

    # Head size.

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._in_head and not self._refused and not self.transport.is_closing():
            # All of a read that ends inside a head belongs to it (or to the end of the previous request).
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if len(self.headers) > self.limits.max_headers and not self._refused:
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._refused:
            return
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._refuse_head()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def _refuse_head(self) -> None:
        bytes_, fields = self.limits.max_header_bytes, self.limits.max_headers
        self._refuse(431, f"the request line and headers must fit in {bytes_} bytes and {fields} fields")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``message``, close the connection and read nothing more from it."""
        self._refused = True
        self._stop_clock()
        body = message.encode("ascii")
        head = [STATUS_LINE[status]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
