"""Who may connect, how many at once, and the headers that keep the page from being abused.

* **Origin check** on the WebSocket handshake: a page on another site must not be able to use a
  visitor's browser to talk to this server (cross-site WebSocket hijacking). Browsers always send
  ``Origin``; scripts usually do not, and are accepted unless ``allow_no_origin`` is off. Only an exact
  ``scheme://host[:port]`` can match.
* **Host check** (Starlette's ``TrustedHostMiddleware`` with ``--allowed-hosts``, added in
  :mod:`livedigit.app`): a page on another domain that resolves to this server (DNS rebinding) sends
  its own domain as both ``Host`` and ``Origin``, which the origin check alone would take as same-site.
* **Connection caps** per process and per client address, so one client cannot take every slot.
* **Client address** behind Heroku's router: the address the router appended, not one the client wrote.
* **Security headers** on every HTTP response: a Content-Security-Policy without inline scripts,
  ``nosniff``, no referrer, no framing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

HOST_PATTERN = re.compile(r"(?P<name>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")
"""A Host header safe to repeat inside the Content-Security-Policy (no spaces, quotes or semicolons)."""


ORIGIN_PATTERN = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
)
"""An origin as browsers send it (RFC 6454, section 6.2): ``scheme://host[:port]`` and nothing else, so no
userinfo (``http://user@host``), path, query, fragment or trailing slash."""

Origin = tuple[str, str, int]
"""Scheme, host and port (the scheme's default when the origin names none), lowercased."""


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str], allow_no_origin: bool) -> bool:
    """Whether a WebSocket handshake with this ``Origin`` and ``Host`` may proceed.

    Allowed: no ``Origin`` when ``allow_no_origin``; any ``Origin`` when ``allowed`` holds ``*``; otherwise
    only a well-formed origin (:data:`ORIGIN_PATTERN`) that is listed in ``allowed`` or names the request's
    ``Host`` (the page this server served).
    """
    if origin is None:
        return allow_no_origin
    listed = [item.strip().rstrip("/") for item in allowed]
    if "*" in listed:
        return True
    parsed = parse_origin(origin)
    if parsed is None:
        return False
    if parsed in {parse_origin(item) for item in listed}:
        return True
    return host is not None and same_host(parsed, host)


def parse_origin(origin: str) -> Origin | None:
    """``origin`` as (scheme, host, port), or ``None`` unless it is exactly ``scheme://host[:port]``."""
    match = ORIGIN_PATTERN.fullmatch(origin)
    if match is None:
        return None
    scheme = match["scheme"].lower()
    if scheme not in DEFAULT_PORTS:
        return None
    port = int(match["port"]) if match["port"] else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        return None
    return scheme, match["host"].lower(), port


def same_host(origin: Origin, host: str) -> bool:
    """Whether ``origin`` names the same host and port as a ``Host`` header (its port defaulting to the
    origin scheme's: behind a TLS-terminating router, ``https://app`` arrives with ``Host: app``)."""
    match = HOST_PATTERN.fullmatch(host.strip())
    if match is None:
        return False
    scheme, name, port = origin
    return match["name"].lower() == name and (int(match["port"]) if match["port"] else DEFAULT_PORTS[scheme]) == port


class ConnectionLimits:
    """Counts open WebSocket connections, in total and per client address."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self._per_client: dict[str, int] = {}

    def acquire(self, client: str) -> str | None:
        """Count a new connection from ``client``; return why it is refused instead (nothing counted)."""
        if self.total >= self.max_total:
            return "too many connections to this server; retry later"
        if self._per_client.get(client, 0) >= self.max_per_client:
            return "too many connections from your address; retry later"
        self.total += 1
        self._per_client[client] = self._per_client.get(client, 0) + 1
        return None

    def release(self, client: str) -> None:
        self.total -= 1
        left = self._per_client.get(client, 0) - 1
        if left > 0:
            self._per_client[client] = left
        else:
            self._per_client.pop(client, None)

    def count(self, client: str) -> int:
        return self._per_client.get(client, 0)

    @property
    def clients(self) -> int:
        """Client addresses holding at least one connection."""
        return len(self._per_client)


class RouterClientMiddleware:
    """The client address behind a router that appends the address it saw to ``X-Forwarded-For``
    (Heroku's), used with ``--forwarded-allow-ips '*'``.

    The router's entry is the last one of the first ``X-Forwarded-For`` header; everything before it,
    and any further ``X-Forwarded-For`` header, was written by the client. uvicorn trusting every hop
    takes the first entry (of the last header) instead, which a client can set to anything to dodge the
    per-address connection cap and the HTTP rate limit.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            for name, value in scope.get("headers", []):
                if name == b"x-forwarded-for":
                    last = value.decode("latin-1").rsplit(",", 1)[-1].strip()
                    if last:
                        scope = {**scope, "client": (last, 0)}
                    break
        await self.app(scope, receive, send)


def content_security_policy(host: str | None) -> str:
    """The page's policy: only its own scripts and styles, WebSockets to its own host, no framing.

    ``connect-src`` names ``ws://`` and ``wss://`` on the request's host explicitly because some
    browsers do not let ``'self'`` cover WebSocket URLs.
    """
    connect = "'self'"
    if host and HOST_PATTERN.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        f"connect-src {connect}; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP response (pure ASGI: streaming and files pass through)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = None
        for name, value in scope.get("headers", []):
            if name == b"host":
                host = value.decode("latin-1")
                break
        extra = [
            (b"content-security-policy", content_security_policy(host).encode("latin-1")),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        *((name, value) for name, value in extra if name not in present),
                    ],
                }
            await send(message)

        await self.app(scope, receive, send_with_headers)
