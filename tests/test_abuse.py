"""Abuse: overload, floods, clients that stop reading, broken WebSocket framing, hostile handshakes and
HTTP requests. Each test runs against a real server and checks what the client sees, that the server's
memory stays bounded, and that a well-behaved client is not affected.

The limits that already have their own tests in ``test_server_limits.py`` (rates, 1008, 1009 for a text
frame, connection caps, the Origin allow-list) are not repeated here; these tests push past them.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import socket
import struct
import time
from typing import Any

import httpx
import psutil
import pytest
from hardutil import CLOSE_CODES, Bystander, log_problems, rss_mb, scrape
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from wsutil import ONE, SEVEN, ask, binary_frame, closed, drawing, http_json, open_ws, replies, reply, sample

from livedigit.config import Settings
from livedigit.server import config
from livedigit.session import MAX_OUTSTANDING

pytestmark = pytest.mark.slow

FLOODERS = 24
SUBMITS = 30


async def test_overload_sheds_snapshots_and_answers_every_submit(start_server) -> None:  # type: ignore[no-untyped-def]
    """Two dozen clients send 58 KB snapshots as fast as the socket takes them (many times what the model
    can serve) for as long as another client submits: every submit gets its prediction, snapshots are
    shed (in the replies and in /metrics), each flooder's newest snapshot is still answered, memory stays
    flat. Rate limits and pacing are off, so that a few clients can offer that much."""
    server = start_server(
        "--snapshot-rate",
        "0",
        "--submit-rate",
        "0",
        "--message-rate",
        "0",
        "--address-byte-rate",
        "0",
        "--max-connections-per-client",
        "1000",
    )
    before = await asyncio.to_thread(scrape, server.http_url)
    raster = drawing(240)
    resident: list[float] = []
    submitting = asyncio.Event()
    done = asyncio.Event()

    async def flood() -> list[dict[str, Any]]:
        """Snapshots until the submitter is done (at least 50), then a ping: its pong ends the replies."""
        ws, _ = await open_ws(server.ws_url, max_size=None)
        async with ws:

            async def read() -> list[dict[str, Any]]:
                answers = []
                while not answers or answers[-1]["type"] != "pong":
                    answers.append(await reply(ws))
                return answers[:-1]

            reader = asyncio.create_task(read())
            index = 0
            while index < 50 or not done.is_set():
                await ws.send(binary_frame(1, index, raster))
                index += 1
                if index == 50:
                    submitting.set()
            await ws.send(json.dumps({"type": "ping", "id": "end"}))
            return await reader

    async def watch_memory() -> None:
        while not done.is_set():
            resident.append(rss_mb(await asyncio.to_thread(scrape, server.http_url)))
            await asyncio.sleep(0.1)

    async def submit() -> list[dict[str, Any]]:
        ws, _ = await open_ws(server.ws_url)
        async with ws:
            await submitting.wait()
            answers = []
            for index in range(SUBMITS):
                answers.append(await ask(ws, {"type": "submit", "id": index, "strokes": SEVEN if index % 2 else ONE}))
            while len(resident) < 8:  # however fast the machine, the overload lasts a few memory samples
                await asyncio.sleep(0.05)
            done.set()
            return answers

    floods = asyncio.gather(*(flood() for _ in range(FLOODERS)))
    watcher = asyncio.create_task(watch_memory())
    submits = await submit()
    flooded = await floods
    await watcher
    after = await asyncio.to_thread(scrape, server.http_url)

    assert [(a["id"], a["type"], a.get("final")) for a in submits] == [
        (index, "prediction", True) for index in range(SUBMITS)
    ], submits
    shed = sent = 0
    for answers in flooded:
        assert [a["id"] for a in answers] == list(range(len(answers)))
        assert {a["type"] for a in answers} <= {"prediction", "dropped"}
        newest = answers[-1]
        assert newest["type"] == "prediction" or newest["reason"] == "overloaded", newest
        shed += sum(a["type"] == "dropped" for a in answers)
        sent += len(answers)
    assert shed > 2 * (sent - shed), (shed, sent)  # offered at least three times what was served
    metric_shed = sum(
        after.get(f'livedigit_dropped_total{{reason="{reason}"}}', 0) for reason in ("stale", "overloaded")
    )
    assert metric_shed == shed
    assert after.get('livedigit_errors_total{code="overloaded"}', 0) == 0
    assert max(resident) - rss_mb(before) < 150, (rss_mb(before), resident)
    half = len(resident) // 2
    assert max(resident[half:]) - max(resident[:half]) < 40, resident
    assert not log_problems(server.log()), "\n".join(log_problems(server.log())[:20])


async def test_replies_owed_behind_a_slow_one_do_not_pin_the_drawings(app_server) -> None:  # type: ignore[no-untyped-def]
    """Eight clients each queue a submit the busy model holds, then 250 snapshots of 256 KB behind it:
    the 2,000 owed replies wait in order, but the server keeps one drawing per connection, not 500 MB."""
    live = app_server(snapshot_rate=0, message_rate=0, max_connections_per_client=100, max_message_bytes=256 * 1024)
    model = live.runtime
    process = psutil.Process()
    frame = struct.pack(">BBBBIHH", 1, 1, 0, 0, 0, 1024, 255) + os.urandom(1024 * 255)
    assert len(frame) < live.service.settings.max_message_bytes
    baseline = process.memory_info().rss / 2**20
    sockets = []
    model.pause()
    try:
        for client in range(8):
            ws, _ = await open_ws(live.ws_url, max_size=None)
            sockets.append(ws)
            await ws.send(json.dumps({"type": "submit", "id": "first", "strokes": ONE}))
            if client == 0:
                assert await asyncio.to_thread(model.blocked.wait, 10)
            for _ in range(MAX_OUTSTANDING - 6):
                await ws.send(frame)
        while sample(live.service, "livedigit_messages_total", {"type": "snapshot"}) < 8 * (MAX_OUTSTANDING - 6):
            await asyncio.sleep(0.05)
        grown = process.memory_info().rss / 2**20 - baseline
        assert grown < 150, f"{grown:.0f} MB held for 2,000 owed replies"
    finally:
        model.resume()
    for ws in sockets:
        answers = [await reply(ws) for _ in range(MAX_OUTSTANDING - 5)]
        assert answers[0]["type"] == "prediction"
        # The newest snapshot is never overtaken; it is predicted, or shed as overloaded when its slot has
        # waited for the paused model longer than the snapshot deadline (sending 500 MB can take that).
        last = answers[-1]
        assert last["type"] == "prediction" or (last["type"], last["reason"]) == ("dropped", "overloaded"), last
        await ws.close()


async def test_a_flooding_client_is_read_at_the_message_rate_while_others_are_served(app_server) -> None:  # type: ignore[no-untyped-def]
    """A client that sends 150 pings at once is read at ``--message-rate`` (here 50 a second, bursts of
    50): at no moment has the server taken more of its frames than the burst plus the rate times the time
    elapsed. Every ping still gets its pong, in order, and a bystander is answered all along."""
    live = app_server(message_rate=50, submit_rate=0)
    bystander = await Bystander.open(live.ws_url)
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        started = time.monotonic()
        for index in range(150):
            await ws.send(json.dumps({"type": "ping", "id": index}))
        reader = asyncio.create_task(replies(ws, 150))
        read = []
        while not reader.done():
            read.append(
                (time.monotonic() - started, sample(live.service, "livedigit_messages_total", {"type": "ping"}))
            )
            await bystander.check()
            await asyncio.sleep(0.05)
        answers = await reader
    assert [(a["type"], a["id"]) for a in answers] == [("pong", index) for index in range(150)]
    assert read and all(count <= 50 + 50 * elapsed + 1 for elapsed, count in read), read
    await bystander.close()


def raw_websocket(port: int, headers: str = "") -> tuple[socket.socket, bytes]:
    """A WebSocket opened by hand over a plain socket; returns it and the bytes read after the 101."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """One WebSocket frame, built by hand so that it can break the rules."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    size = len(payload)
    mask_bit = 0x80 if mask else 0
    if size < 126:
        header = bytes([first, mask_bit | size])
    elif size < 65536:
        header = bytes([first, mask_bit | 126]) + struct.pack(">H", size)
    else:
        header = bytes([first, mask_bit | 127]) + struct.pack(">Q", size)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))


class FrameReader:
    """Reads server frames from a raw socket: (opcode, payload) until the close frame or EOF."""

    def __init__(self, sock: socket.socket, data: bytes = b"") -> None:
        self.sock = sock
        self.data = data

    def _need(self, count: int) -> bytes:
        while len(self.data) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.data += chunk
        out, self.data = self.data[:count], self.data[count:]
        return out

    def next(self) -> tuple[int, bytes]:
        first, second = self._need(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack(">H", self._need(2))[0]
        elif size == 127:
            size = struct.unpack(">Q", self._need(8))[0]
        return first & 0x0F, self._need(size)

    def close_code(self) -> tuple[int, str]:
        """Skip data frames until the server's close frame; return its code and reason."""
        while True:
            opcode, payload = self.next()
            if opcode == 0x8:
                return struct.unpack(">H", payload[:2])[0], payload[2:].decode()


MAX_BYTES = Settings().max_message_bytes
BROKEN_FRAMES = {
    "unmasked": (ws_frame(0x1, b'{"type": "ping"}', mask=False), 1002),
    "reserved opcode": (ws_frame(0x3, b"x"), 1002),
    "continuation without a start": (ws_frame(0x0, b"x"), 1002),
    "reserved bits": (ws_frame(0x1, b"{}", rsv=0b100), 1002),
    "control frame over 125 bytes": (ws_frame(0x9, b"x" * 200), 1002),
    "fragmented control frame": (ws_frame(0x9, b"x", fin=False), 1002),
    "close with an invalid code": (ws_frame(0x8, struct.pack(">H", 999)), 1002),
    "invalid UTF-8 text": (ws_frame(0x1, b'{"type": "\xff\xfe"}'), 1007),
    "declared length of 2^62 bytes": (bytes([0x82, 0xFF]) + struct.pack(">Q", 2**62) + b"\x00" * 4, 1009),
    "binary frame over the limit": (ws_frame(0x2, b"\x01" * (MAX_BYTES + 1))[:1024], 1009),
    "fragments adding up past the limit": (
        ws_frame(0x2, b"\x01" * 60000, fin=False)
        + b"".join(ws_frame(0x0, b"\x01" * 60000, fin=False) for _ in range(4)),
        1009,
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN_FRAMES))
async def test_broken_websocket_framing_closes_with_a_documented_code(server, name) -> None:  # type: ignore[no-untyped-def]
    """Frames that break RFC 6455 itself close that connection with the documented code, and nothing
    else: a bystander is answered, the server's log shows no error."""
    data, expected = BROKEN_FRAMES[name]
    assert expected in CLOSE_CODES
    bystander = await Bystander.open(server.ws_url)

    def abuse() -> tuple[int, str]:
        sock, rest = raw_websocket(server.port)
        with sock:
            reader = FrameReader(sock, rest)
            assert json.loads(reader.next()[1])["type"] == "hello"
            sock.sendall(data)
            return reader.close_code()

    code, _ = await asyncio.to_thread(abuse)
    assert code == expected
    await bystander.check()
    await bystander.close()
    assert not log_problems(server.log()), "\n".join(log_problems(server.log())[:20])


async def test_keepalive_pings_reach_idle_clients_and_silent_ones_are_closed(app_server) -> None:  # type: ignore[no-untyped-def]
    """The server pings idle connections (by default every 20 s, inside Heroku's 55 s idle cut): a client
    that answers stays connected however long it idles, one that never answers is closed with 1011 and
    its slot is released."""
    assert Settings().ping_interval < 55 and config(Settings()).ws_ping_interval == Settings().ping_interval
    live = app_server(ping_interval=0.5, ping_timeout=2.0)
    answering, _ = await open_ws(live.ws_url)

    def silent() -> tuple[list[int], tuple[int, str]]:
        sock, rest = raw_websocket(live.settings.port)
        with sock:
            reader = FrameReader(sock, rest)
            opcodes = []
            while True:
                opcode, payload = reader.next()
                opcodes.append(opcode)
                if opcode == 0x8:
                    return opcodes, (struct.unpack(">H", payload[:2])[0], payload[2:].decode())

    opcodes, (code, reason) = await asyncio.to_thread(silent)
    assert opcodes[0] == 0x1 and 0x9 in opcodes  # the hello, then the server's ping
    assert code == 1011 and "keepalive" in reason
    for _ in range(500):
        if live.service.connections.total == 1:
            break
        await asyncio.sleep(0.01)
    assert live.service.connections.total == 1
    async with answering:
        assert (await ask(answering, {"type": "submit", "id": 1, "strokes": ONE}))["type"] == "prediction"


async def test_refused_connections_leave_no_trace(app_server) -> None:  # type: ignore[no-untyped-def]
    """Hundreds of connections over the per-address cap are each closed with 1013; afterwards every
    count is back to zero and the address can connect again."""
    live = app_server(max_connections_per_client=5)
    service = live.service
    kept = [(await open_ws(live.ws_url))[0] for _ in range(5)]

    async def refused() -> tuple[int | None, str | None]:
        return await closed(await connect(live.ws_url, open_timeout=30))

    codes = await asyncio.gather(*(refused() for _ in range(200)))
    assert set(codes) == {(1013, "too many connections from your address; retry later")}
    for ws in kept:
        await ws.close()
    for _ in range(500):
        if service.connections.total == 0:
            break
        await asyncio.sleep(0.01)
    assert service.connections.total == 0 and service.connections.clients == 0
    assert sample(service, "livedigit_connections_refused_total", {"reason": "capacity"}) == 200
    again, _ = await open_ws(live.ws_url)
    async with again:
        assert (await ask(again, {"type": "ping", "id": 1}))["type"] == "pong"


async def test_behind_a_router_a_client_cannot_pick_its_own_address(app_server) -> None:  # type: ignore[no-untyped-def]
    """With ``--forwarded-allow-ips '*'`` the client is the address the router appended (the last entry of
    the first X-Forwarded-For header): writing other entries, or a second header, does not get a client
    past the per-address cap or the HTTP rate limit (applied at once: the server counts as busy)."""
    live = app_server(
        forwarded_allow_ips="*", max_connections_per_client=1, submit_rate=0.01, submit_burst=1, busy_queue_share=0
    )
    router = {"X-Forwarded-For": "203.0.113.9"}
    first, _ = await open_ws(live.ws_url, additional_headers=router)
    for headers in (
        [("X-Forwarded-For", "198.51.100.1, 203.0.113.9")],
        [("X-Forwarded-For", "198.51.100.2,203.0.113.9")],
        [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "198.51.100.3")],
    ):
        again = await connect(live.ws_url, additional_headers=headers, open_timeout=30)
        assert await closed(again) == (1013, "too many connections from your address; retry later"), headers
    other, _ = await open_ws(live.ws_url, additional_headers={"X-Forwarded-For": "203.0.113.9, 192.0.2.44"})
    assert live.service.connections.count("192.0.2.44") == 1
    for ws in (first, other):
        await ws.close()
    statuses = [
        http_json(live.http_url + "/api/predict", {"strokes": ONE}, {"X-Forwarded-For": f"198.51.100.{n}, 192.0.2.7"})[
            0
        ]
        for n in range(3)
    ]
    assert statuses == [200, 429, 429]


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:1",
        "https://127.0.0.1",
        "http://[",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:-1",
        "file://",
        "",
        "null",
        "http://user@evil.example",
        "ws://evil.example",
        "http://127.0.0.1.evil.example",
        "http://%31%32%37.0.0.1",
    ],
)
async def test_odd_origins_are_refused_with_403_never_an_error(app_server, origin) -> None:  # type: ignore[no-untyped-def]
    """Malformed, mismatched or look-alike origins: refused with 403, nothing counted, nothing logged."""
    live = app_server()
    with pytest.raises(InvalidStatus) as refused:
        await open_ws(live.ws_url, origin=origin)
    assert refused.value.response.status_code == 403
    assert live.service.connections.total == 0
    assert sample(live.service, "livedigit_connections_refused_total", {"reason": "origin"}) == 1


TRAVERSALS = [
    "/static/../app.py",
    "/static/%2e%2e/app.py",
    "/static/%2E%2E/app.py",
    "/static/.%2e/app.py",
    "/static/%2e./app.py",
    "/static/..%2fapp.py",
    "/static/..%2Fapp.py",
    "/static/%2e%2e%2fapp.py",
    "/static/%252e%252e/app.py",
    "/static/%252e%252e%252fapp.py",
    "/static/..%5capp.py",
    "/static/..\\app.py",
    "/static/%2e%2e%5capp.py",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/....//app.py",
    "/static/..;/app.py",
    "/static/app.js%00.py",
    "/static/%c0%ae%c0%ae/app.py",
    "/static/%u002e%u002e/app.py",
    "/static/./../templates/index.html",
    "/static/" + "../" * 40 + "etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_static_files_cannot_be_read_outside_their_folder(server, path) -> None:  # type: ignore[no-untyped-def]
    """Every spelling of ``..`` (encoded, double-encoded, overlong UTF-8, backslashes, NUL): 4xx, and
    no byte of a file outside ``livedigit/static`` comes back."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert 400 <= response.status < 500, (path, response.status)
    for secret in (b"import ", b"root:", b"<html", b"def "):
        assert secret not in body, (path, body[:200])


def test_every_http_response_carries_the_security_headers(server) -> None:  # type: ignore[no-untyped-def]
    """The page, static files, the API, errors and 404s all carry the CSP (no inline script, no framing)
    and nosniff; the page itself has no inline script, event handler or style attribute the CSP would
    block."""
    with httpx.Client(base_url=server.http_url, timeout=20) as client:
        responses = [
            client.get("/"),
            client.get("/static/app.js"),
            client.get("/api/model"),
            client.get("/metrics"),
            client.get("/readyz"),
            client.get("/nowhere"),
            client.get("/api/predict"),
            client.post("/api/predict", content=b"{oops"),
            client.get("/ws"),
        ]
        page = responses[0].text
    for response in responses:
        policy = response.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, response.request.url
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert response.headers.get("x-content-type-options") == "nosniff", response.request.url
    for script in re.findall(r"<script\b[^>]*>(.*?)</script>", page, flags=re.S | re.I):
        assert not script.strip(), "inline script"
    assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", page, flags=re.I))
    assert not re.search(r"\son[a-z]+\s*=", page, flags=re.I), "inline event handler"
    assert not re.search(r"\sstyle\s*=", page, flags=re.I), "inline style attribute"


def test_a_chunked_body_over_the_limit_is_refused_without_reading_it_all(app_server) -> None:  # type: ignore[no-untyped-def]
    """Without a Content-Length the server counts as it reads, answers 413 and stops reading."""
    live = app_server(max_message_bytes=4096)

    def body() -> Any:
        for _ in range(64):
            yield b"x" * 1024

    response = httpx.post(live.http_url + "/api/predict", content=body(), timeout=20)
    assert response.status_code == 413 and response.json()["code"] == "bad_message"
    with httpx.Client(timeout=20) as client:
        assert client.post(live.http_url + "/api/predict", json={"strokes": ONE}).status_code == 200
