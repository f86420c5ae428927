"""Attacks on a served process, each run the way it was found to hurt: what the attacker gets back, and what
a bystander, the server's memory and its log show meanwhile (:class:`hardutil.Siege`).

Every attacker here talks from threads with blocking sockets, so the event loop that times the bystander
is never held up by the attack itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import selectors
import signal
import socket
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from hardutil import ATTACK_SECONDS, Siege, expensive_png, log_problems, lying_png, repeat
from wsutil import SEVEN, ask, closed, http_json, open_ws

from livedigit.config import Settings

pytestmark = pytest.mark.slow


def status_of(response: bytes) -> int | None:
    """The status code of a raw HTTP response, or ``None`` when nothing (or no status line) came back."""
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    return int(match.group(1)) if match else None


def exchange(port: int, request: bytes, timeout: float = 20.0) -> bytes:
    """Send ``request`` on a fresh connection; return everything the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and b"HTTP/1.1 101" in received:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return received


def upgrade(port: int, host: str, origin: str | None = None, extra: str = "") -> bytes:
    """A WebSocket handshake request for ``/ws``."""
    key = base64.b64encode(os.urandom(16)).decode()
    origin_line = f"Origin: {origin}\r\n" if origin is not None else ""
    return (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{origin_line}{extra}\r\n"
    ).encode()


# 1. A PNG whose header lies.


async def test_a_png_whose_header_lies_is_refused_before_it_is_decoded(start_server) -> None:  # type: ignore[no-untyped-def]
    """15 KB of PNG: an IHDR of 1x1, then one of 6000x6000 at 1 bit a pixel and its data. Pillow decodes the
    last header (36 megapixels, over a gigabyte once converted, seconds of the preprocessing thread). Sent
    over the WebSocket and over HTTP, each at 4 a second (within the rate limits), for 4 s: the server
    refuses every one before decoding anything."""
    server = start_server()
    png = base64.b64encode(lying_png(6000)).decode()
    ws, _ = await open_ws(server.ws_url)

    async def both() -> tuple[dict[str, Any], tuple[int, dict[str, str], Any]]:
        paced = asyncio.create_task(asyncio.sleep(0.25))
        answer = await ask(ws, {"type": "submit", "id": 1, "png": png})
        response = await asyncio.to_thread(http_json, server.http_url + "/api/predict", {"png": png})
        await paced
        return answer, response

    async with Siege(server, "1 lying PNG header, 4 a second over /ws and over HTTP") as siege:
        sent = await repeat(both)
        siege.note(f"{len(sent)} over each")
    await ws.close()
    for answer, (status, _, body) in sent:
        assert (answer["type"], answer.get("code")) == ("error", "bad_image"), answer
        assert "more than one IHDR" in answer["message"]
        assert (status, body.get("code")) == (400, "bad_image"), body


# 4. HTTP headers of any size.

FLOODERS = 10
FLOOD_BYTES = 48 * 2**20


def flood_header(port: int, size: int) -> tuple[int, bytes]:
    """Send a request whose one header is ``size`` bytes long, 64 KB at a time, for as long as the server
    takes them. Returns the bytes sent before the server stopped the connection, and what it answered."""
    block = b"a" * 65536
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Filler: ".encode())
            while sent < size:
                sock.sendall(block)
                sent += len(block)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            pass
    return sent, answer


async def test_http_request_heads_are_bounded_where_they_are_read(start_server) -> None:  # type: ignore[no-untyped-def]
    """Waves of ten connections, each sending a 48 MB header, for 4 s: each is cut off once its head passes
    ``--max-header-bytes`` (the server stops reading; RSS stays flat). A head just over the limit, or
    with too many fields, sent whole, is answered 431; one within the limits is served."""
    server = start_server()
    limit = Settings().max_header_bytes

    async def wave() -> list[tuple[int, bytes]]:
        return await asyncio.gather(
            *(asyncio.to_thread(flood_header, server.port, FLOOD_BYTES) for _ in range(FLOODERS))
        )

    async with Siege(server, f"4 headers: waves of {FLOODERS} x {FLOOD_BYTES >> 20} MB, then 431s") as siege:
        flooded = [result for results in await repeat(wave) for result in results]
        siege.note(f"{len(flooded)} flooders, bytes taken from each: max {max(sent for sent, _ in flooded) >> 10} KB")
        over = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: {'a' * limit}\r\n\r\n".encode()
        many = "".join(f"X-{index}: {index}\r\n" for index in range(200))
        fields = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n".encode()
        upgrade_over = upgrade(server.port, f"127.0.0.1:{server.port}", extra=f"X-Filler: {'a' * limit}\r\n")
        fits = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: {'a' * (limit - 200)}\r\n\r\n".encode()
        answers = [await asyncio.to_thread(exchange, server.port, request) for request in (over, fields, upgrade_over)]
        served = await asyncio.to_thread(exchange, server.port, fits.replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    for sent, answer in flooded:
        assert sent < FLOOD_BYTES / 2, sent  # cut off: what got through filled the kernel's socket buffers
        assert status_of(answer) in (None, 431), answer[:200]
    assert [status_of(answer) for answer in answers] == [431, 431, 431], [answer[:100] for answer in answers]
    assert status_of(served) == 200, served[:200]


# 6. Requests that never finish.

PARTIALS = 200


@dataclass
class Partial:
    """One connection that starts a request and never finishes it."""

    kind: str
    sock: socket.socket
    opened: float
    closed: float | None = None
    received: bytes = field(default=b"")


def partial_requests(port: int, count: int) -> list[Partial]:
    """Open ``count`` connections, each stopping somewhere inside a request: before its first byte, inside
    the request line, the headers, the body, a WebSocket handshake; a few send a header byte every 0.5 s."""
    kinds = {
        "nothing": b"",
        "request line": b"GET /healthz HT",
        "headers": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow",
        "body": b'POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{"strokes": [',
        "handshake": upgrade(port, f"127.0.0.1:{port}")[:-30],
        "trickle": b"GET / HTTP/1.1\r\n",
    }
    names = sorted(kinds)
    partials = []
    for index in range(count):
        kind = names[index % len(names)]
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        sock.sendall(kinds[kind])
        partials.append(Partial(kind, sock, time.monotonic()))
    return partials


def wait_for_closes(partials: list[Partial], until: float) -> None:
    """Read every connection until the server closes it or ``until`` (monotonic) passes; trickle meanwhile."""
    selector = selectors.DefaultSelector()
    for partial in partials:
        partial.sock.setblocking(False)
        selector.register(partial.sock, selectors.EVENT_READ, partial)
    open_count = len(partials)
    next_trickle = time.monotonic() + 0.5
    while open_count and time.monotonic() < until:
        for key, _ in selector.select(timeout=0.1):
            partial = key.data
            try:
                chunk = partial.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            partial.received += chunk
            if not chunk:
                partial.closed = time.monotonic()
                selector.unregister(partial.sock)
                open_count -= 1
        if time.monotonic() >= next_trickle:
            next_trickle += 0.5
            for partial in partials:
                if partial.kind == "trickle" and partial.closed is None:
                    try:
                        partial.sock.send(b"X")
                    except OSError:
                        pass
    selector.close()
    for partial in partials:
        partial.sock.close()


async def test_requests_that_never_finish_are_closed_after_the_request_timeout(start_server) -> None:  # type: ignore[no-untyped-def]
    """200 connections stop inside a request (or send nothing, or trickle a byte every 0.5 s): every one is
    closed once ``--request-timeout`` has passed since it opened, with 408 when part of a request had
    arrived; none is closed much before."""
    server = start_server()
    timeout = Settings().request_timeout
    async with Siege(server, f"6 partial requests: {PARTIALS} connections") as siege:
        partials = await asyncio.to_thread(partial_requests, server.port, PARTIALS)
        await asyncio.to_thread(wait_for_closes, partials, time.monotonic() + timeout + 5)
        closed_count = sum(partial.closed is not None for partial in partials)
        siege.note(f"{closed_count} of {PARTIALS} closed by the server within {timeout + 5:g} s")
    assert closed_count == PARTIALS
    for partial in partials:
        assert partial.closed is not None
        lasted = partial.closed - partial.opened
        assert timeout - 0.5 <= lasted <= timeout + 3, (partial.kind, lasted)
        expected = None if partial.kind == "nothing" else 408
        assert status_of(partial.received) == expected, (partial.kind, partial.received[:100])


# 7. Logs an attacker can fill.

ABANDONED = 200


def abandon_body(port: int) -> None:
    """Start a POST /api/predict, send a little of the body, wait until the server reads it, and leave."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 60000\r\n\r\n" + b"x" * 1000)
        time.sleep(0.2)


async def test_an_abandoned_request_body_leaves_no_trace_in_the_log(start_server) -> None:  # type: ignore[no-untyped-def]
    """200 POST /api/predict requests abandoned mid-body (20 at a time): nothing is logged for them."""
    server = start_server()
    async with Siege(server, f"7 abandoned bodies: {ABANDONED}") as siege:
        for _ in range(ABANDONED // 20):
            await asyncio.gather(*(asyncio.to_thread(abandon_body, server.port) for _ in range(20)))
        await asyncio.sleep(0.5)
    assert siege.figures.log_bytes < 20 * ABANDONED, server.log()[-3000:]


async def test_a_second_ctrl_c_still_shuts_down_completely(start_server) -> None:  # type: ignore[no-untyped-def]
    """Ctrl+C while a request is stalled mid-body, and Ctrl+C again while the server waits for it: the
    server closes what is open, still stops the batcher (the app's shutdown runs), logs no traceback and
    exits with status 0, promptly."""
    server = start_server()
    ws, _ = await open_ws(server.ws_url)
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    stalled.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{")
    assert (await ask(ws, {"type": "submit", "id": 1, "strokes": SEVEN}))["type"] == "prediction"
    server.process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    while "Waiting for connections to close" not in server.log() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert "Waiting for connections to close" in server.log(), server.log()
    started = time.monotonic()
    server.process.send_signal(signal.SIGINT)
    code = await asyncio.to_thread(server.process.wait, 20)
    took = time.monotonic() - started
    stalled.close()
    assert await closed(ws) == (1001, "server restarting")
    log = server.log()
    assert code == 0, log
    assert took < min(Settings().graceful_shutdown_seconds, Settings().request_timeout) / 2, took
    assert "Application shutdown complete." in log, log
    assert not log_problems(log), "\n".join(log_problems(log))


# 8. Origin and Host.


async def test_dns_rebinding_and_malformed_origins_are_refused(start_server) -> None:  # type: ignore[no-untyped-def]
    """A page on another domain that resolves to this server (Host and Origin both that domain) gets 400
    for the page and for the WebSocket; origins that are not exactly ``scheme://host[:port]`` (userinfo,
    a path, a query) get 403. The page's own origin, on every default host name, is accepted."""
    server = start_server()
    port = server.port
    own = f"127.0.0.1:{port}"
    rebinding = f"attacker.example:{port}"
    odd = [
        f"http://user@{own}",
        f"http://user:pass@{own}",
        f"http://{own}/",
        f"http://{own}/path",
        f"http://{own}?query",
        f"http://{own}#fragment",
        f"http://{own}:{port}",
        f"http://{own}@attacker.example",
    ]
    hosts = (own, f"localhost:{port}", f"[::1]:{port}")

    async def attempts() -> dict[str, int | None]:
        requests = {
            "page": f"GET / HTTP/1.1\r\nHost: {rebinding}\r\nConnection: close\r\n\r\n".encode(),
            "socket": upgrade(port, rebinding, f"http://{rebinding}"),
            **{origin: upgrade(port, own, origin) for origin in odd},
            **{host: upgrade(port, host, f"http://{host}") for host in hosts},
        }
        return {name: status_of(await asyncio.to_thread(exchange, port, request)) for name, request in requests.items()}

    async with Siege(server, "8 DNS rebinding and malformed origins, again and again") as siege:
        rounds = await repeat(attempts)
        siege.note(f"{len(rounds)} rounds of {len(rounds[0])} handshakes")
    expected = {"page": 400, "socket": 400, **dict.fromkeys(odd, 403), **dict.fromkeys(hosts, 101)}
    for statuses in rounds:
        assert statuses == expected


# 2. A number too large for a float.


async def test_numbers_beyond_a_float_get_an_error_reply_and_the_connection_stays_open(start_server) -> None:  # type: ignore[no-untyped-def]
    """``"surface": [1<400 zeros>, 1]`` and its kin (a 1e400 coordinate, a boolean coordinate, a side of
    400 digits, a 5,000-digit id), 4 a second over /ws and over HTTP for 4 s: each gets its documented
    error with its id when the id is valid (HTTP: a JSON 400; HTTP ignores ids), the connection stays
    open and answers a digit afterwards."""
    server = start_server()
    huge = "1" + "0" * 400
    frames = [
        '{"type": "submit", "id": 1, "strokes": [[[0, 0], [0, 50]]], "surface": [' + huge + ", 1]}",
        '{"type": "submit", "id": 2, "strokes": [[[1e400, 0], [0, 50]]]}',
        '{"type": "submit", "id": 3, "strokes": [[[true, 0], [0, 50]]]}',
        '{"type": "snapshot", "id": 4, "pixels": {"width": ' + huge + ', "height": 1, "data": "AA=="}}',
        '{"type": "submit", "id": ' + "9" * 5000 + ', "strokes": [[[0, 0], [0, 50]]]}',
    ]
    ws, _ = await open_ws(server.ws_url)

    async def one_round() -> list[tuple[Any, str, int]]:
        answers = []
        for frame in frames:
            paced = asyncio.create_task(asyncio.sleep(0.25))
            reply = await ask(ws, frame)
            body = frame.replace('"type": "submit", ', "").replace('"type": "snapshot", ', "")
            status, _, answer = await asyncio.to_thread(http_json, server.http_url + "/api/predict", body.encode())
            answers.append((reply.get("id"), reply.get("code", reply["type"]), status, answer.get("code")))
            await paced
        await ws.send(json.dumps({"type": "ping", "id": "reset"}))
        assert json.loads(await ws.recv())["type"] == "pong"
        return answers

    async with Siege(server, "2 numbers beyond a float, 4 a second over /ws and over HTTP") as siege:
        rounds = await repeat(one_round)
        siege.note(f"{len(rounds) * len(frames)} frames and bodies answered")
    for answers in rounds:
        assert answers == [
            (1, "bad_message", 400, "bad_message"),
            (2, "bad_message", 400, "bad_message"),
            (3, "bad_message", 400, "bad_message"),
            (4, "bad_image", 400, "bad_image"),
            (None, "bad_message", 200, None),  # HTTP ignores the id: the drawing is predicted
        ]
    assert (await ask(ws, {"type": "submit", "id": "after", "strokes": SEVEN}))["digit"] == 7
    await ws.close()


# 3. Memory the limits do not see.


def big_strokes(points: int) -> list[list[list[int]]]:
    """A drawing of ``points`` points in 16 strokes, a zigzag over a 1000 px square."""
    per_stroke = points // 16
    return [[[(7 * i) % 1000, (13 * i + 61 * s) % 1000] for i in range(per_stroke)] for s in range(16)]


def hold_frames(url: str, frames: list[str], release: threading.Event) -> int:
    """One attacker connection: send ``frames`` and read nothing until ``release``, so every reply and
    everything the server keeps for them stays with the server; how many frames went out."""
    from websockets.sync.client import connect as sync_connect

    sent = 0
    with sync_connect(url, open_timeout=60, max_size=None, max_queue=1) as ws:
        ws.recv(timeout=60)
        for frame in frames:
            ws.send(frame)
            sent += 1
        release.wait(60)
    return sent


def hold_from_many(url: str, frames: list[str], connections: int, seconds: float) -> int:
    """``connections`` attackers holding ``frames`` for ``seconds``, run in another process (see the test)."""
    release = threading.Event()
    with ThreadPoolExecutor(connections) as threads:
        attackers = [threads.submit(hold_frames, url, frames, release) for _ in range(connections)]
        time.sleep(seconds)
        release.set()
        return sum(attacker.result() for attacker in attackers)


async def test_frames_held_by_hundreds_of_connections_stay_within_the_memory_bound(start_server) -> None:  # type: ignore[no-untyped-def]
    """300 connections (the per-address cap raised so one machine can open them) each send frames just
    under 64 KB that JSON would hold as a megabyte of Python objects: a snapshot and a submit of 5,000
    points (over ``max_points``), then a valid 1,024-point snapshot and submit, and read no replies
    while the model is kept busy. The limits apply as each frame is parsed, so nothing over them is
    queued, and what is queued is compact arrays: RSS stays within the bound."""
    server = start_server("--max-connections-per-client", "400", "--submit-rate", "0", "--snapshot-rate", "0")
    over = json.dumps({"type": "submit", "strokes": big_strokes(5000)})
    valid = json.dumps({"type": "submit", "strokes": big_strokes(1024)})
    assert 48_000 < len(over) < 64 * 1024
    frames = [over.replace("submit", "snapshot", 1), over, valid.replace("submit", "snapshot", 1), valid]
    async with Siege(server, "3 300 connections holding frames of up to 60 KB, model busy") as siege:
        # The 300 attackers run in a process of their own, so their threads do not compete for the
        # interpreter lock with the event loop that times the bystander.
        with ProcessPoolExecutor(1) as attacker:
            sent = await asyncio.wrap_future(
                attacker.submit(hold_from_many, server.ws_url, frames, 300, ATTACK_SECONDS)
            )
        siege.note(f"{sent} frames sent")
    assert sent == 300 * len(frames)


# 5. Expensive but valid work.


def submit_at_the_limit(url: str, png: str, seconds: float) -> int:
    """One attacker connection submitting the expensive PNG as fast as its submit bucket allows
    (pipelined, 5 a second after a burst of 10); how many were answered with a prediction."""
    from websockets.sync.client import connect as sync_connect

    answered = 0
    with sync_connect(url, open_timeout=60, max_size=None) as ws:
        ws.recv(timeout=60)
        deadline = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < deadline:
            ws.send(json.dumps({"type": "submit", "id": sent, "png": png}))
            sent += 1
            time.sleep(0.2 if sent > 10 else 0.0)
        for _ in range(sent):
            reply = json.loads(ws.recv(timeout=120))
            answered += reply["type"] == "prediction"
    return answered


async def test_expensive_valid_images_from_one_address_do_not_hold_a_bystander_back(start_server) -> None:  # type: ignore[no-untyped-def]
    """49 connections from one address each submit a valid 1024x1024 16-bit PNG at their submit limit,
    for 4 s (about 1,000 images, far more than the server can preprocess in that time): the bystander,
    from another address, is served between them (fair order, one expensive image per batch)."""
    server = start_server()
    png = base64.b64encode(expensive_png()).decode()
    async with Siege(server, "5 49 connections of one address, 1024x1024 16-bit PNGs at the submit limit") as siege:
        with ThreadPoolExecutor(49) as threads:
            loop = asyncio.get_running_loop()
            answered = await asyncio.gather(
                *(
                    loop.run_in_executor(threads, submit_at_the_limit, server.ws_url, png, ATTACK_SECONDS)
                    for _ in range(49)
                )
            )
        siege.note(f"attacker: {sum(answered)} predictions")
    assert sum(answered) > 0
