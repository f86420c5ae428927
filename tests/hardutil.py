"""Helpers for the hardening tests: the documented vocabulary, reply checks, metrics, logs, hostile PNGs.

The sets of reply types, error codes, drop reasons and close codes are read from ``docs/protocol.md``
itself, so a reply the contract does not name fails the tests, and a code added to the server without
documenting it does too.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import struct
import time
import urllib.request
import zlib
from typing import Any

import numpy as np
from conftest import REPO
from PIL import Image
from wsutil import SEVEN, ask, open_ws

PROTOCOL = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")


def documented(heading: str) -> frozenset[str]:
    """The first column of the table under ``heading`` in docs/protocol.md (backticks removed)."""
    section = PROTOCOL.split(heading, 1)[1]
    values = []
    for line in section.splitlines()[1:]:
        if values and not line.startswith("|"):
            break
        match = re.match(r"\|\s*`?([\w-]+)`?\s*\|", line)
        if match and match.group(1) not in ("code", "reason") and not set(match.group(1)) <= {"-"}:
            values.append(match.group(1))
    assert values, f"no table under {heading!r} in docs/protocol.md"
    return frozenset(values)


ERROR_CODES = documented("### Error codes")
DROP_REASONS = documented("### `dropped` reasons")
CLOSE_CODES = frozenset(int(code) for code in documented("### Close codes"))
REPLY_TYPES = frozenset({"prediction", "empty", "dropped", "error", "pong", "batch"})
INVALID_INPUT = frozenset({"bad_json", "bad_message", "bad_image"})
"""Error codes that count towards ``max_bad_messages`` (the client's fault)."""
RETRYABLE = frozenset({"rate_limited", "overloaded"})
"""Error codes of a passing refusal, which carry ``retry_after_ms``."""

REPLY_KEYS = {
    "prediction": {"type", "id", "final", "digit", "confidence", "probabilities", "latency_ms"},
    "empty": {"type", "id", "final"},
    "dropped": {"type", "id", "reason"},
    "error": {"type", "id", "code", "message"},
    "pong": {"type", "id"},
    "batch": {"type", "id", "results", "latency_ms"},
}

LOG_PROBLEMS = ("Traceback", "Exception", "ERROR", "preprocessing raised", "Task exception", "never retrieved")
"""What must never appear in a server's log: unhandled exceptions, and defects the batcher absorbed."""


def check_reply(reply: Any) -> None:
    """Assert that ``reply`` is one of the documented reply objects, well formed."""
    assert isinstance(reply, dict), reply
    kind = reply.get("type")
    assert kind in REPLY_TYPES, reply
    keys = set(reply)
    expected = REPLY_KEYS[kind]
    optional = {"retry_after_ms"} if kind == "error" and reply.get("code") in RETRYABLE else {"preview"}
    assert expected <= keys <= expected | optional, reply
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
    elif kind == "empty":
        assert isinstance(reply["final"], bool)
    elif kind == "dropped":
        assert reply["reason"] in DROP_REASONS, reply
    elif kind == "error":
        assert reply["code"] in ERROR_CODES, reply
        assert isinstance(reply["message"], str) and reply["message"].strip(), reply
        if reply["code"] in RETRYABLE:
            assert isinstance(reply["retry_after_ms"], int) and reply["retry_after_ms"] >= 1, reply


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


async def settle(http_url: str, want: dict[str, float], timeout: float = 60.0) -> dict[str, float]:
    """Poll ``/metrics`` until every gauge in ``want`` has its value; fail with the last values if not."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await asyncio.to_thread(scrape, http_url)
        if all(samples.get(name, 0.0) == value for name, value in want.items()):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"never settled: want {want}, have { ({name: samples.get(name) for name in want}) }")
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
