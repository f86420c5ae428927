"""The server's settings: one object, one field per option.

Every field is a ``livedigit serve`` flag (``max_batch`` is ``--max-batch``) and an environment variable
(``LIVEDIGIT_MAX_BATCH``); the port also reads ``PORT`` and the database URL ``DATABASE_URL``, as Heroku
sets them. Precedence: flag, then environment, then the default below. ``docs/operations.md`` explains
each limit and what a client sees when it trips.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from livedigit.preprocess import Limits
from livedigit.wire import MAX_BATCH_ITEMS

DEFAULT_MODEL = Path(str(resources.files("livedigit") / "models" / "livedigit-cnn"))
"""The shipped model's base name, inside the package (installed from the repository's ``models/``); the
runtime adds ``.tflite`` or ``.keras``, the card is ``.json``. pip installs packages as files, and the
runtimes read a model by its path."""

ENV_PREFIX = "LIVEDIGIT_"

HOST_NAME = re.compile(r"\*|(\*\.)?[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*|\[[0-9A-Fa-f:.]+\]")
"""An ``allowed_hosts`` entry: a name or address without a port, ``*.domain`` or ``*``."""


def _option(default: Any, help: str, env: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={"help": help, "env": env})


@dataclass(frozen=True)
class Settings:
    """Everything ``livedigit serve`` can be told, with the defaults a single dyno needs."""

    host: str = _option("127.0.0.1", "address to bind; 0.0.0.0 to accept connections from other machines")
    port: int = _option(8000, "TCP port to listen on", env=("PORT",))
    model: str = _option(str(DEFAULT_MODEL), "model base path or file (.tflite for litert, .keras for tensorflow)")
    runtime: str = _option("litert", "inference runtime: litert or tensorflow")
    threads: int = _option(1, "CPU threads the model may use per batch")
    model_workers: int = _option(
        2,
        "processes that turn drawings into model inputs and run the model on them beside the server's event "
        "loop, each batch in one of them (2: both cores of a two-core dyno, see docs/operations.md; 1 on one "
        "core); 0: a thread of the server process instead (it then competes with the event loop for the "
        "interpreter lock)",
    )
    score_inline_below: float = _option(
        0.8,
        "share of a core below which the event loop, with all the scoring added, scores cheap batches itself "
        "while the workers are idle (a model loaded in the server process too): at light load a worker's "
        "wake on an idle core costs more than the batch; 0: the workers score every batch",
    )
    max_batch: int = _option(32, "largest batch the model runs; 1 disables batching")
    max_wait_ms: float = _option(2.0, "longest a batch waits for more items, only while more are arriving")
    max_message_bytes: int = _option(64 * 1024, "largest WebSocket message or HTTP body; larger frames close with 1009")
    max_header_bytes: int = _option(
        16 * 1024, "largest HTTP request line and headers together (WebSocket handshakes too); larger: 431"
    )
    request_timeout: float = _option(
        10.0,
        "seconds a client has to send a whole HTTP request (head and body) or WebSocket handshake, counted "
        "from its first byte, or from connecting for the first request; later: 408 and the connection closed "
        "(0: no limit)",
    )
    max_side: int = _option(1024, "largest image width or height, checked before decoding")
    max_png_bytes: int = _option(48 * 1024, "largest PNG file inside a message")
    max_strokes: int = _option(64, "most strokes in one drawing")
    max_points: int = _option(1024, "most points over all strokes of one drawing")
    snapshot_rate: float = _option(30.0, "snapshots per second per connection (token bucket refill)")
    snapshot_burst: int = _option(30, "snapshots a connection may send at once before the rate applies")
    submit_rate: float = _option(
        5.0, "submits (images) per second per connection, and per address over HTTP, while the server is busy"
    )
    submit_burst: int = _option(10, "submits a connection may send at once before the rate applies")
    max_bad_messages: int = _option(32, "consecutive invalid messages after which a connection is closed with 1008")
    message_rate: float = _option(
        100.0,
        "frames per second read from one connection, in bursts of as many; a faster client is read more "
        "slowly (TCP holds it back), so it cannot take the server's time from the others; 0: no limit",
    )
    address_byte_rate: float = _option(
        4_000_000.0,
        "bytes of WebSocket frames per second read from all connections of one client address together, in "
        "bursts of two messages; parsing costs the event loop about 50 ns a byte, so one address, however "
        "many connections it opens, cannot take more than a fifth of it; 0: no limit",
    )
    pace_reads_above: float = _option(
        0.95,
        "share of a core the event loop may use (over half a second) before connections take turns to read "
        "WebSocket frames, at a rate that leaves the batches their share of it; unread frames wait in TCP; "
        "0: never paced",
    )
    collect_after: int = _option(
        20_000,
        "objects allocated and not freed after which the cyclic garbage collector runs (checked twice a second; "
        "also after a quarter of what its last run left, and at least every ten minutes): live frames leave no "
        "garbage, closed connections do; 0: Python's own schedule, a collection every 700 objects",
    )
    max_connections: int = _option(500, "concurrent WebSocket connections per process")
    max_connections_per_client: int = _option(50, "concurrent WebSocket connections per client address")
    max_pending_submits: int = _option(256, "submits queued across all connections before new ones are refused")
    client_queue_share: float = _option(
        0.75,
        "share of max_pending_submits that one client address may have queued before its new submits are "
        "refused (overloaded): a lone script keeps its depth, and the others find room",
    )
    busy_queue_share: float = _option(
        0.875,
        "share of max_pending_submits queued (all clients) from which the server counts as busy: only then "
        "do submit_rate and submit_burst apply; below it every submit is accepted",
    )
    max_batch_items: int = _option(MAX_BATCH_ITEMS, "most images in one batch message (WebSocket, HTTP, /v2 infer)")
    submit_share: float = _option(
        0.25,
        "least share of every batch that waiting submits get; live snapshots take the rest first "
        "(1: submits always go first)",
    )
    live_batch_ms: float = _option(
        2.5,
        "while people are drawing, submits fill a batch only up to what the batcher serves in this many "
        "milliseconds (at its measured pace), so live frames wait behind short batches",
    )
    allowed_origins: str = _option(
        "", "comma-separated Origin values allowed to open /ws ('*' for any); empty: the server's own host"
    )
    allow_no_origin: bool = _option(True, "accept WebSocket clients that send no Origin header (scripts)")
    allowed_hosts: str = _option(
        "localhost,127.0.0.1,[::1],*.herokuapp.com",
        "comma-separated Host names the server answers to ('*.example.com' for its subdomains, '*' for any); "
        "others get 400, so a page on another domain that resolves to this server cannot use it",
    )
    forwarded_allow_ips: str = _option(
        "127.0.0.1", "comma-separated proxy addresses whose X-Forwarded-For is trusted ('*' on Heroku)"
    )
    ping_interval: float = _option(
        20.0, "seconds between server WebSocket pings (Heroku drops idle sockets after 55 s)"
    )
    ping_timeout: float = _option(20.0, "seconds to wait for a pong before closing the connection")
    graceful_shutdown_seconds: float = _option(10.0, "longest a SIGTERM waits for submits and connections to finish")
    log_level: str = _option("info", "uvicorn log level: critical, error, warning, info, debug")
    data_dir: str = _option("data", "folder of the labels database (SQLite) when no database URL is given")
    database_url: str = _option(
        "", "PostgreSQL URL for labels (postgres://...; Heroku Postgres sets DATABASE_URL)", env=("DATABASE_URL",)
    )
    label_rate: float = _option(1.0, "labels per second per WebSocket connection (token bucket refill; 0: no limit)")
    label_burst: int = _option(10, "labels a connection may send at once before the rate applies")
    label_rate_per_client: float = _option(
        5.0, "labels per second per client address, over all its connections and POST /api/labels; 0: no limit"
    )
    label_burst_per_client: int = _option(30, "labels a client address may send at once before its rate applies")
    label_timeout: float = _option(
        3.0, "longest a label waits for its database commit before it is answered 'unavailable' (seconds)"
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from its environment variables; ``overrides`` win over the environment."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            for name in (ENV_PREFIX + item.name.upper(), *item.metadata["env"]):
                if name in environ:
                    values[item.name] = _convert(item, environ[name], name)
                    break
        values.update({k: v for k, v in overrides.items() if v is not None})
        return dataclasses.replace(cls(), **values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one ``--flag`` per field; a flag left out means "environment or default"."""
        for item in fields(cls):
            env = ", ".join((ENV_PREFIX + item.name.upper(), *item.metadata["env"]))
            help_text = f"{item.metadata['help']} (env {env}; default {item.default!r})"
            flag = "--" + item.name.replace("_", "-")
            if item.type in ("bool", bool):
                parser.add_argument(
                    flag, dest=item.name, default=None, action=argparse.BooleanOptionalAction, help=help_text
                )
            else:
                parser.add_argument(flag, dest=item.name, default=None, type=_TYPES[str(item.type)], help=help_text)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from parsed flags, falling back to the environment and the defaults."""
        return cls.from_env(environ, **{item.name: getattr(args, item.name, None) for item in fields(cls)})

    @property
    def limits(self) -> Limits:
        """The size limits preprocessing and the protocol enforce, from the fields above."""
        return Limits(
            max_side=self.max_side,
            max_png_bytes=self.max_png_bytes,
            max_strokes=self.max_strokes,
            max_points=self.max_points,
        )

    @property
    def max_pending_submits_per_client(self) -> int:
        """Submits one client address may have queued: ``client_queue_share`` of ``max_pending_submits``."""
        return max(1, math.floor(self.client_queue_share * self.max_pending_submits))

    @property
    def busy_submits(self) -> int:
        """Queued submits from which the submit rate applies: ``busy_queue_share`` of ``max_pending_submits``."""
        return max(0, math.ceil(self.busy_queue_share * self.max_pending_submits))

    def origins(self) -> tuple[str, ...]:
        """The explicit Origin allow-list; empty means "same host as the request"."""
        return tuple(part.strip().rstrip("/") for part in self.allowed_origins.split(",") if part.strip())

    def hosts(self) -> tuple[str, ...]:
        """The Host names answered, as Starlette's ``TrustedHostMiddleware`` takes them (names without a
        port; ``*.`` before a domain for its subdomains; ``*`` alone for any)."""
        hosts = tuple(part.strip() for part in self.allowed_hosts.split(",") if part.strip())
        for host in hosts:
            if not HOST_NAME.fullmatch(host):
                raise SystemExit(
                    f"livedigit: allowed host {host!r} is not a host name without a port, '*.domain' or '*'"
                )
        return hosts


_TYPES = {"str": str, "int": int, "float": float}


def _convert(item: dataclasses.Field, raw: str, name: str) -> Any:  # type: ignore[type-arg]
    kind = str(item.type)
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes", "on")
        return _TYPES[kind](raw)
    except ValueError:
        raise SystemExit(f"livedigit: environment variable {name}={raw!r} is not a valid {kind}") from None
