"""Small helpers for talking protocol v1 to a real server with the ``websockets`` client."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import urllib.request
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from websockets.asyncio.client import ClientConnection, connect

TIMEOUT = 20.0
ONE = [[[50, 10], [52, 60], [51, 110]]]
SEVEN = [[[10, 10], [90, 10], [40, 110]]]


async def open_ws(url: str, **options: Any) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect and read the ``hello``."""
    ws = await connect(url, open_timeout=TIMEOUT, **options)
    hello = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert hello["type"] == "hello"
    return ws, hello


async def ask(ws: ClientConnection, message: dict[str, Any] | str | bytes) -> dict[str, Any]:
    """Send one frame and return the next reply."""
    await ws.send(json.dumps(message) if isinstance(message, dict) else message)
    return await reply(ws)


async def reply(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def replies(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    return [await reply(ws) for _ in range(count)]


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the server closes; return its close code and reason."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    except Exception:  # ConnectionClosed of either kind; the code tells which.
        pass
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
    return ws.close_code, ws.close_reason


def drawing(size: int = 28) -> np.ndarray:
    """A uint8 raster (ink high) of a 7, as a canvas would hold it."""
    canvas = Image.new("L", (size, size), 0)
    scale = size / 28
    ImageDraw.Draw(canvas).line(
        [(6 * scale, 6 * scale), (21 * scale, 6 * scale), (11 * scale, 23 * scale)], fill=255, width=max(2, size // 10)
    )
    return np.asarray(canvas)


def pixels_field(raster: np.ndarray) -> dict[str, Any]:
    height, width = raster.shape
    return {"width": width, "height": height, "data": base64.b64encode(raster.tobytes()).decode()}


def png_field(raster: np.ndarray, data_url: bool = False) -> str:
    buffer = io.BytesIO()
    Image.fromarray(raster).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return "data:image/png;base64," + encoded if data_url else encoded


def legacy_field(raster: np.ndarray) -> str:
    assert raster.shape == (28, 28)
    return ",".join(str(int(value)) for value in raster.ravel())


def binary_frame(kind: int, message_id: int, raster: np.ndarray, preview: bool = False) -> bytes:
    height, width = raster.shape
    return struct.pack(">BBBBIHH", 1, kind, int(preview), 0, message_id, width, height) + raster.tobytes()


def http_json(
    url: str,
    body: dict[str, Any] | bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """GET (no body) or POST (body) and return status, headers, decoded JSON (or text)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            status, response_headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, response_headers, raw = error.code, dict(error.headers), error.read()
    try:
        return status, response_headers, json.loads(raw)
    except ValueError:
        return status, response_headers, raw.decode("utf-8", "replace")


def sample(service: Any, name: str, labels: dict[str, str] | None = None) -> float:
    """A metric's current value in an in-process server (0 when never observed)."""
    return service.metrics.registry.get_sample_value(name, labels or {}) or 0.0
