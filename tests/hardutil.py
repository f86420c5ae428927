"""Helpers for the hardening tests: the documented vocabulary, reply checks, metrics, logs, hostile PNGs, and
a watch on a served process under attack (:class:`Siege`).

The sets of reply types, error codes, drop reasons, verdicts and close codes are read from ``docs/protocol.md``
itself, so a reply the contract does not name fails the tests, and a code added to the server without
documenting it does too.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import struct
import threading
import time
import urllib.request
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import psutil
from conftest import REPO
from PIL import Image
from websockets.exceptions import ConnectionClosed
from wsutil import SEVEN, ask, open_ws

T = TypeVar("T")

PROTOCOL = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")


def documented(heading: str) -> frozenset[str]:
    """The first column of the table under ``heading`` in docs/protocol.md (backticks removed)."""
    section = PROTOCOL.split(heading, 1)[1]
    values = []
    for line in section.splitlines()[1:]:
        if values and not line.startswith("|"):
            break
        match = re.match(r"\|\s*`?([\w-]+)`?\s*\|", line)
        if match and match.group(1) not in ("code", "reason", "verdict") and not set(match.group(1)) <= {"-"}:
            values.append(match.group(1))
    assert values, f"no table under {heading!r} in docs/protocol.md"
    return frozenset(values)


ERROR_CODES = documented("### Error codes")
DROP_REASONS = documented("### `dropped` reasons")
CLOSE_CODES = frozenset(int(code) for code in documented("### Close codes"))
VERDICTS = documented("### Verdict")
REPLY_TYPES = frozenset({"prediction", "empty", "dropped", "error", "pong", "stored", "batch"})
INVALID_INPUT = frozenset({"bad_json", "bad_message", "bad_image"})
"""Error codes that count towards ``max_bad_messages`` (the client's fault)."""
RETRYABLE = frozenset({"rate_limited", "overloaded"})
"""Error codes of a passing refusal, which carry ``retry_after_ms``."""

REPLY_KEYS = {
    "prediction": {"type", "id", "final", "digit", "confidence", "probabilities", "latency_ms", "verdict"},
    "empty": {"type", "id", "final"},
    "dropped": {"type", "id", "reason"},
    "error": {"type", "id", "code", "message"},
    "pong": {"type", "id"},
    "stored": {"type", "id", "label_id"},
    "batch": {"type", "id", "results", "latency_ms"},
}
OPTIONAL_KEYS = {"prediction": {"preview", "candidates"}, "error": {"retry_after_ms"}}
"""Keys a reply of that type carries only sometimes: a preview when asked, the two candidates when unsure,
a wait when retrying helps."""

LOG_PROBLEMS = ("Traceback", "Exception", "ERROR", "preprocessing raised", "Task exception", "never retrieved")
"""What must never appear in a server's log: unhandled exceptions, and defects the batcher absorbed."""


def check_reply(reply: Any) -> None:
    """Assert that ``reply`` is one of the documented reply objects, well formed."""
    assert isinstance(reply, dict), reply
    kind = reply.get("type")
    assert kind in REPLY_TYPES, reply
    keys = set(reply)
    expected = REPLY_KEYS[kind]
    assert expected <= keys <= expected | OPTIONAL_KEYS.get(kind, set()), reply
    message_id = reply["id"]
    assert (
        message_id is None
        or isinstance(message_id, str)
        or (isinstance(message_id, int) and not isinstance(message_id, bool))
    ), reply
    if kind == "batch":
        assert reply["results"] and reply["latency_ms"] >= 0, reply
        for result in reply["results"]:
            assert "id" not in result and result.get("type") in {"prediction", "empty", "error"}, reply
            check_reply({**result, "id": None})
    if kind == "prediction":
        probabilities = reply["probabilities"]
        assert len(probabilities) == 10 and all(0.0 <= p <= 1.0 for p in probabilities), reply
        assert abs(sum(probabilities) - 1.0) < 1e-3, reply
        assert reply["digit"] == int(np.argmax(probabilities)) and reply["confidence"] == max(probabilities)
        assert isinstance(reply["final"], bool) and reply["latency_ms"] >= 0
        assert reply["verdict"] in VERDICTS, reply
        if reply["verdict"] == "unsure":
            first, second = reply["candidates"]
            assert first == reply["digit"] and second != first, reply
            assert probabilities[second] == max(p for d, p in enumerate(probabilities) if d != first), reply
        else:
            assert "candidates" not in reply, reply
    elif kind == "empty":
        assert isinstance(reply["final"], bool)
    elif kind == "dropped":
        assert reply["reason"] in DROP_REASONS, reply
    elif kind == "error":
        assert reply["code"] in ERROR_CODES, reply
        assert isinstance(reply["message"], str) and reply["message"].strip(), reply
        assert "retry_after_ms" not in reply or reply["retry_after_ms"] >= 1, reply
        if reply["code"] in RETRYABLE:
            assert isinstance(reply["retry_after_ms"], int), reply
    elif kind == "stored":
        assert isinstance(reply["label_id"], int) and not isinstance(reply["label_id"], bool), reply


def scrape(http_url: str) -> dict[str, float]:
    """``GET /metrics`` as ``{'name{label="value"}': value}``."""
    with urllib.request.urlopen(http_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def log_problems(log: str) -> list[str]:
    """The lines of a server log that show an unhandled exception or a hidden defect."""
    return [line for line in log.splitlines() if any(problem in line for problem in LOG_PROBLEMS)]


def rss_mb(samples: dict[str, float]) -> float:
    return samples["process_resident_memory_bytes"] / 2**20


# PNG files, well formed and hostile.


def expensive_png(side: int = 1024) -> bytes:
    """A valid ``side`` x ``side`` 16-bit grayscale PNG of a thick 1 (about 9 KB at 1024): tens of
    milliseconds of preprocessing each at 1024, the most expensive image the default limits accept."""
    image = np.zeros((side, side), np.uint16)
    image[side // 5 : side - side // 5, side * 15 // 32 : side * 35 // 64] = 65535
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_file(array: np.ndarray, mode: str | None = None) -> bytes:
    """A PNG of ``array`` (uint8 or uint16) in ``mode`` as Pillow saves it."""
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def raw_png(
    width: int, height: int, bit_depth: int = 8, colour: int = 0, rows: bytes | None = None, extra: bytes = b""
) -> bytes:
    """A PNG assembled by hand: IHDR declaring ``width`` x ``height``, then ``extra`` chunks, then IDAT
    with ``rows`` (the filtered scanlines; compressed as given, so it need not match the header)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    body = chunk(b"IHDR", header) + extra
    if rows is not None:
        body += chunk(b"IDAT", zlib.compress(rows, 9))
    return PNG_SIGNATURE + body + chunk(b"IEND", b"")


def ihdr_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny, valid-looking PNG whose header declares a huge image (gigabytes once decoded)."""
    return raw_png(width, height, rows=b"\x00" * 64)


def zlib_bomb(side: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    """A real decompression bomb inside the size cap: ``side`` x ``side`` pixels (a bar of ink across the
    middle, zeros elsewhere) in a few KB, since every row repeats the one before."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    sample = bit_depth // 8
    blank = b"\x00" + b"\x00" * (side * channels * sample)
    bar = bytearray(blank)
    for x in range(side // 3, 2 * side // 3):
        start = 1 + x * channels * sample
        bar[start : start + channels * sample] = b"\xff" * (channels * sample)
    rows = blank * (side // 3) + bytes(bar) * (side // 3) + blank * (side - 2 * (side // 3))
    return raw_png(side, side, bit_depth, colour, rows=rows)


def lying_png(side: int = 6000) -> bytes:
    """A PNG whose first IHDR says 1x1 and whose second says ``side`` x ``side`` at 1 bit a pixel, followed by
    the data for the second (a bar of ink across the middle): about 15 KB that Pillow, which keeps the last
    header, would decode at ``side`` squared pixels."""
    row = side // 8
    blank = b"\x00" + b"\xff" * row
    bar = b"\x00" + b"\xff" * (row // 3) + b"\x00" * (row - 2 * (row // 3)) + b"\xff" * (row // 3)
    rows = blank * (side // 3) + bar * (side // 3) + blank * (side - 2 * (side // 3))
    first = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    second = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
    return PNG_SIGNATURE + first + second + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def text_chunk_bomb(compressed_text: bool = True) -> bytes:
    """A small PNG carrying a zTXt (or iCCP) chunk that inflates to 8 MB."""
    payload = zlib.compress(b"\x00" * (8 << 20), 9)
    kind = b"zTXt" if compressed_text else b"iCCP"
    extra = chunk(kind, b"Comment\x00\x00" + payload)
    return raw_png(28, 28, rows=(b"\x00" + b"\x00" * 28) * 28, extra=extra)


# Clients.


class Bystander:
    """A well-behaved client on its own connection: asks the same things again and again, and the answers
    must stay the same whatever other clients do to the server."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.asked = 0
        self.reference: dict[str, Any] = {}

    @classmethod
    async def open(cls, url: str) -> Bystander:
        ws, _ = await open_ws(url)
        bystander = cls(ws)
        bystander.reference = await bystander._ask()
        assert bystander.reference["type"] == "prediction", bystander.reference
        return bystander

    async def _ask(self) -> dict[str, Any]:
        self.asked += 1
        answer = await ask(self.ws, {"type": "submit", "id": self.asked, "strokes": SEVEN})
        assert answer["id"] == self.asked, answer
        return answer

    async def check(self) -> None:
        answer = await self._ask()
        assert answer["type"] == "prediction" and answer["final"] is True, answer
        assert answer["digit"] == self.reference["digit"]
        np.testing.assert_allclose(answer["probabilities"], self.reference["probabilities"], atol=1e-4)

    async def close(self) -> None:
        await self.ws.close()


async def settle(
    http_url: str, want: dict[str, float], timeout: float = 60.0, at_most: dict[str, float] | None = None
) -> dict[str, float]:
    """Poll ``/metrics`` until every gauge in ``want`` has its value and every one in ``at_most`` is no
    higher than its value; fail with the last values if not."""
    at_most = at_most or {}
    deadline = time.monotonic() + timeout
    while True:
        samples = await asyncio.to_thread(scrape, http_url)
        if all(samples.get(name, 0.0) == value for name, value in want.items()) and all(
            samples.get(name, 0.0) <= value for name, value in at_most.items()
        ):
            return samples
        if time.monotonic() > deadline:
            have = {name: samples.get(name) for name in {**want, **at_most}}
            raise AssertionError(f"never settled: want {want}, at most {at_most}, have {have}")
        await asyncio.sleep(0.1)


class LogWatch(logging.Handler):
    """Collects what an in-process server logs at WARNING or above, to check that nothing escaped.

    Attach it after the server has started: uvicorn's logging setup replaces the handlers it configures.
    """

    LOGGERS = ("asyncio", "livedigit", "uvicorn", "uvicorn.error")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> LogWatch:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def problems(self, expected: tuple[str, ...] = ()) -> list[str]:
        """Every record except those whose message contains one of ``expected``."""
        lines = [f"{record.name} {record.levelname}: {record.getMessage()}" for record in self.records]
        return [line for line in lines if not any(text in line for text in expected)]


# A served process under attack: a bystander's experience, the server's memory, its log.

BYSTANDER_PERIOD = 0.25
"""Seconds between the bystander's submits."""
BYSTANDER_P99_MS = 250.0
BYSTANDER_LATEST_MS = 1000.0
"""The bystander's 99th-percentile and worst round trip during an attack."""
PEAK_ABOVE_IDLE_MB = 100.0
AFTER_ABOVE_IDLE_MB = 50.0
"""Server RSS during an attack, and once it is over, above its idle value."""
SETTLE_SECONDS = 15.0
"""How long memory may take to come back after an attack."""
BYSTANDER_ADDRESS = "127.0.0.2"
"""The bystander's own loopback address, so limits per client address do not count it with the attacker."""
FIGURES_ENV = "LIVEDIGIT_ATTACK_FIGURES"
"""When set, every :class:`Siege` appends its figures to this file, one line each."""


ATTACK_SECONDS = 4.0
"""How long an attack that is over in an instant is kept up, so the bystander sees it (16 submits)."""


async def repeat(attack: Callable[[], Awaitable[T]], seconds: float = ATTACK_SECONDS) -> list[T]:
    """Run ``attack`` again and again until ``seconds`` have passed (at least once); every result, in order."""
    results = []
    deadline = time.monotonic() + seconds
    while not results or time.monotonic() < deadline:
        results.append(await attack())
    return results


@dataclass
class SiegeFigures:
    """What one attack did to the server and to a bystander."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    unanswered: int = 0
    wrong: list[dict[str, Any]] = field(default_factory=list)
    idle_mb: float = 0.0
    peak_mb: float = 0.0
    after_mb: float = 0.0
    seconds: float = 0.0
    log_bytes: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def late(self) -> int:
        return sum(latency > BYSTANDER_LATEST_MS for latency in self.latencies_ms) + self.unanswered

    def line(self) -> str:
        return (
            f"{self.name}: {self.seconds:.1f} s; bystander {len(self.latencies_ms)} replies, "
            f"p50 {self.percentile(50):.1f} ms, p99 {self.percentile(99):.1f} ms, "
            f"max {max(self.latencies_ms, default=float('nan')):.1f} ms, {self.late} late or missing, "
            f"{len(self.wrong)} wrong; RSS idle {self.idle_mb:.0f} MB, peak {self.peak_mb:.0f} MB "
            f"(+{self.peak_mb - self.idle_mb:.0f}), after {self.after_mb:.0f} MB "
            f"(+{self.after_mb - self.idle_mb:.0f}); log +{self.log_bytes} bytes, "
            f"{len(self.problems)} problem lines" + "".join(f"; {note}" for note in self.notes)
        )


class Siege:
    """Watches a served process (``tests/conftest.py`` ``ServerProcess``) while a test attacks it.

    ``async with Siege(server, "name") as siege: await attack()``. Inside, a bystander on its own
    connection (from :data:`BYSTANDER_ADDRESS`) submits a digit every :data:`BYSTANDER_PERIOD` seconds on a
    fixed schedule, whatever the replies do, and a thread samples the server's RSS every 20 ms. On leaving
    the block the bystander stops, memory is given :data:`SETTLE_SECONDS` to come back, and the documented
    bounds are asserted: every bystander reply a correct prediction, p99 under :data:`BYSTANDER_P99_MS`,
    none later than :data:`BYSTANDER_LATEST_MS`, RSS at most :data:`PEAK_ABOVE_IDLE_MB` above idle during
    the attack and within :data:`AFTER_ABOVE_IDLE_MB` after it, nothing in the log that
    :func:`log_problems` flags. The attack must not block the event loop (run blocking sockets in threads),
    or it delays the bystander it is measured by.
    """

    def __init__(self, server: Any, name: str) -> None:
        self.server = server
        self.figures = SiegeFigures(name)
        self._process = psutil.Process(server.process.pid)
        self._stop = threading.Event()
        self._rss: list[float] = []
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._bystanding = asyncio.Event()
        self._bystander: asyncio.Task[None] | None = None
        self._log_start = 0
        self._started = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self._rss.append(self._process.memory_info().rss / 2**20)
            except psutil.Error:
                return

    def rss_mb(self) -> float:
        return float(self._process.memory_info().rss / 2**20)

    def note(self, text: str) -> None:
        """Add what the attacker saw to the figures line."""
        self.figures.notes.append(text)

    async def __aenter__(self) -> Siege:
        ws, _ = await open_ws(self.server.ws_url, local_addr=(BYSTANDER_ADDRESS, 0))
        self.reference = await ask(ws, {"type": "submit", "id": 0, "strokes": SEVEN})
        assert self.reference["type"] == "prediction", self.reference
        idle = []
        for _ in range(10):
            idle.append(self.rss_mb())
            await asyncio.sleep(0.05)
        self.figures.idle_mb = float(np.median(idle))
        self._log_start = len(self.server.log())
        self._sampler.start()
        self._bystander = asyncio.create_task(self._bystand(ws))
        self._started = time.monotonic()
        return self

    async def _bystand(self, ws: Any) -> None:
        sent: dict[int, float] = {}

        async def read() -> None:
            async for message in ws:
                arrived = time.perf_counter()
                answer = json.loads(message)
                self.figures.latencies_ms.append((arrived - sent.pop(answer["id"])) * 1000.0)
                if answer["type"] != "prediction" or answer["digit"] != self.reference["digit"]:
                    self.figures.wrong.append(answer)
                if self._bystanding.is_set() and not sent:
                    return

        reader = asyncio.create_task(read())
        index = 0
        next_at = time.monotonic()
        while not self._bystanding.is_set() and not reader.done():
            index += 1
            sent[index] = time.perf_counter()
            try:
                await ws.send(json.dumps({"type": "submit", "id": index, "strokes": SEVEN}))
            except ConnectionClosed:
                break
            next_at += BYSTANDER_PERIOD
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._bystanding.wait(), max(0.0, next_at - time.monotonic()))
        if sent:
            await asyncio.wait({reader}, timeout=5.0)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        self.figures.unanswered = len(sent)
        await ws.close()

    async def __aexit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.figures.seconds = time.monotonic() - self._started
        self._bystanding.set()
        assert self._bystander is not None
        await self._bystander
        deadline = time.monotonic() + SETTLE_SECONDS
        while self.rss_mb() > self.figures.idle_mb + AFTER_ABOVE_IDLE_MB / 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        self._stop.set()
        self._sampler.join()
        figures = self.figures
        figures.after_mb = self.rss_mb()
        figures.peak_mb = max(self._rss, default=figures.idle_mb)
        log = self.server.log()[self._log_start :]
        figures.log_bytes = len(log)
        figures.problems = log_problems(log)
        print(figures.line())
        if os.environ.get(FIGURES_ENV):
            with open(os.environ[FIGURES_ENV], "a", encoding="utf-8") as out:
                out.write(figures.line() + "\n")
        if kind is not None:
            return
        assert not figures.wrong, figures.wrong[:5]
        assert figures.unanswered == 0 and figures.latencies_ms, figures.line()
        assert figures.percentile(99) < BYSTANDER_P99_MS, figures.line()
        assert max(figures.latencies_ms) <= BYSTANDER_LATEST_MS, figures.line()
        assert figures.peak_mb - figures.idle_mb <= PEAK_ABOVE_IDLE_MB, figures.line()
        assert figures.after_mb - figures.idle_mb <= AFTER_ABOVE_IDLE_MB, figures.line()
        assert not figures.problems, "\n".join(figures.problems[:20])
