"""Protocol v1 on the wire: parse client frames into typed requests, build the reply objects.

``docs/protocol.md`` is the contract; this module is its only implementation on the server. Parsing is
cheap and runs on the event loop: it checks types and sizes and decodes base64, but leaves everything
that costs CPU (PNG decoding, rasterising strokes, normalizing) to :mod:`livedigit.preprocess` in the
batcher's worker threads. A frame that cannot become a request raises :class:`ProtocolError`, which
carries the error code, a message for the user and the ``id`` to echo when one could be read.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from livedigit.preprocess import Image, Limits, Pixels, Png, Strokes

VERSION = 1
MAX_ID_LENGTH = 64
MAX_ID_MAGNITUDE = 2**63
"""Integer ids must fit in a signed 64-bit integer."""

LEGACY_SIDE = 28
"""The old design's ``image`` string is always a 28x28 raster."""

BINARY_HEADER = struct.Struct(">BBBBIHH")
"""Binary frame header: version, type, flags, reserved, id, width, height (12 bytes, big-endian)."""

BINARY_KINDS = {1: "snapshot", 2: "submit"}
BINARY_PREVIEW_FLAG = 0x01

PNG_DATA_URL = "data:image/png;base64,"

IMAGE_FIELDS = ("pixels", "strokes", "png", "image")
INPUT_FORMS = (*IMAGE_FIELDS, "binary")
"""What ``/api/model`` lists as accepted inputs."""

Kind = Literal["snapshot", "submit", "ping"]
MessageId = int | str | None


class ErrorCode(StrEnum):
    """Every ``error`` reply's ``code``; the table in ``docs/protocol.md`` says when each is sent."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    BAD_IMAGE = "bad_image"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"


HTTP_STATUS = {
    ErrorCode.BAD_JSON: 400,
    ErrorCode.BAD_MESSAGE: 400,
    ErrorCode.BAD_IMAGE: 400,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.INTERNAL: 500,
}
"""The HTTP status ``POST /api/predict`` answers each error code with."""

INVALID_INPUT = frozenset({ErrorCode.BAD_JSON, ErrorCode.BAD_MESSAGE, ErrorCode.BAD_IMAGE})
"""Codes that count towards ``max_bad_messages``: the client sent something it should not have."""


class DropReason(StrEnum):
    """Every ``dropped`` reply's ``reason``."""

    STALE = "stale"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"


class CloseCode:
    """WebSocket close codes the server uses, with the reasons it sends."""

    GOING_AWAY = 1001
    GOING_AWAY_REASON = "server restarting"
    POLICY = 1008
    TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013


class ProtocolError(Exception):
    """A frame that cannot be served; becomes an ``error`` reply and leaves the connection open."""

    def __init__(self, code: ErrorCode, message: str, id: MessageId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


@dataclass(frozen=True)
class Request:
    """One client message, validated: what is asked, the id to echo and, unless a ping, the drawing."""

    kind: Kind
    id: MessageId = None
    image: Image | None = None
    preview: bool = False

    @property
    def final(self) -> bool:
        return self.kind == "submit"


def parse_text(text: str, limits: Limits) -> Request:
    """Parse a JSON text frame."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_JSON, "the frame is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, "the frame must be a JSON object")
    return parse_message(message, limits)


def parse_message(message: dict[str, Any], limits: Limits) -> Request:
    """Validate a decoded JSON object sent over the WebSocket."""
    message_id = _message_id(message)
    kind = message.get("type")
    if kind == "ping":
        return Request("ping", message_id)
    if kind not in ("snapshot", "submit"):
        shown = kind if isinstance(kind, str) and len(kind) <= MAX_ID_LENGTH else type(kind).__name__
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown type {shown!r}; use snapshot, submit or ping", message_id)
    try:
        return Request(kind, message_id, parse_image(message, limits), _preview(message))
    except ProtocolError as error:
        error.id = message_id
        raise


def parse_body(body: bytes, limits: Limits) -> Request:
    """Parse the JSON body of ``POST /api/predict``: one image form, always a submit, no id."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_JSON, "the body is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, "the body must be a JSON object")
    return Request("submit", None, parse_image(message, limits), _preview(message))


def parse_binary(frame: bytes, limits: Limits) -> Request:
    """Parse a binary frame (``pixels`` only); see the layout in ``docs/protocol.md``."""
    if len(frame) < BINARY_HEADER.size:
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"binary frame is {len(frame)} bytes; the header alone is {BINARY_HEADER.size}"
        )
    version, kind_code, flags, _reserved, message_id, width, height = BINARY_HEADER.unpack_from(frame)
    if version != VERSION:
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"binary frame version {version}; this server speaks {VERSION}", message_id
        )
    kind = BINARY_KINDS.get(kind_code)
    if kind is None:
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"binary frame type {kind_code}; use 1 (snapshot) or 2 (submit)", message_id
        )
    _check_side(width, height, limits, message_id)
    data = memoryview(frame)[BINARY_HEADER.size :]
    if len(data) != width * height:
        raise ProtocolError(
            ErrorCode.BAD_JSON,
            f"binary frame holds {len(data)} pixel bytes; a {width}x{height} image needs {width * height}",
            message_id,
        )
    array = np.frombuffer(data, dtype=np.uint8).reshape(height, width).copy()
    return Request(kind, message_id, Pixels(array), bool(flags & BINARY_PREVIEW_FLAG))


def parse_image(message: dict[str, Any], limits: Limits) -> Image:
    """Turn the one image field of ``message`` into a :data:`livedigit.preprocess.Image`."""
    present = [name for name in IMAGE_FIELDS if name in message]
    if len(present) != 1:
        found = f"got {', '.join(present)}" if present else "got none"
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"send exactly one of {', '.join(IMAGE_FIELDS)}; {found}")
    name = present[0]
    value = message[name]
    if name == "pixels":
        return _pixels(value, limits)
    if name == "png":
        return _png(value, limits)
    if name == "image":
        return _legacy(value)
    return _strokes(value, message.get("surface"))


def _message_id(message: dict[str, Any]) -> MessageId:
    message_id = message.get("id")
    if message_id is None:
        return None
    if isinstance(message_id, str):
        if len(message_id) > MAX_ID_LENGTH:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, f"id is {len(message_id)} characters; the limit is {MAX_ID_LENGTH}"
            )
        return message_id
    if isinstance(message_id, int) and not isinstance(message_id, bool):
        if abs(message_id) >= MAX_ID_MAGNITUDE:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "an integer id must fit in 64 bits")
        return message_id
    raise ProtocolError(ErrorCode.BAD_MESSAGE, f"id must be a string or an integer, got {_json_type(message_id)}")


def _preview(message: dict[str, Any]) -> bool:
    preview = message.get("preview", False)
    if not isinstance(preview, bool):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"preview must be true or false, got {_json_type(preview)}")
    return preview


def _pixels(value: Any, limits: Limits) -> Pixels:
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, 'pixels must be an object {"width", "height", "data"}')
    width, height, data = value.get("width"), value.get("height"), value.get("data")
    for name, number in (("width", width), ("height", height)):
        if not isinstance(number, int) or isinstance(number, bool):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"pixels.{name} must be an integer, got {_json_type(number)}")
    if not isinstance(data, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"pixels.data must be a base64 string, got {_json_type(data)}")
    _check_side(width, height, limits)
    raw = _base64(data, "pixels.data", width * height)
    if len(raw) != width * height:
        raise ProtocolError(
            ErrorCode.BAD_IMAGE, f"pixels.data holds {len(raw)} bytes; a {width}x{height} image needs {width * height}"
        )
    return Pixels(np.frombuffer(raw, dtype=np.uint8).reshape(height, width))


def _png(value: Any, limits: Limits) -> Png:
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"png must be a base64 string, got {_json_type(value)}")
    if value.startswith("data:"):
        if not value.startswith(PNG_DATA_URL):
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"a png data URL must start with {PNG_DATA_URL}")
        value = value[len(PNG_DATA_URL) :]
    return Png(_base64(value, "png", limits.max_png_bytes))


def _legacy(value: Any) -> Pixels:
    if not isinstance(value, str):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"image must be a string of 784 comma-separated integers, got {_json_type(value)}"
        )
    parts = value.split(",", LEGACY_SIDE * LEGACY_SIDE)
    if len(parts) != LEGACY_SIDE * LEGACY_SIDE:
        raise ProtocolError(
            ErrorCode.BAD_IMAGE, f"image must hold exactly {LEGACY_SIDE * LEGACY_SIDE} comma-separated integers"
        )
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_IMAGE, "image must hold integers 0..255 separated by commas") from None
    if min(numbers) < 0 or max(numbers) > 255:
        raise ProtocolError(ErrorCode.BAD_IMAGE, "image values must lie in 0..255")
    return Pixels(np.array(numbers, dtype=np.uint8).reshape(LEGACY_SIDE, LEGACY_SIDE))


def _strokes(value: Any, surface: Any) -> Strokes:
    if not isinstance(value, list):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"strokes must be a list of polylines, got {_json_type(value)}")
    if surface is None:
        return Strokes(value)
    if (
        not isinstance(surface, list)
        or len(surface) != 2
        or not all(isinstance(side, (int, float)) and not isinstance(side, bool) for side in surface)
    ):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "surface must be [width, height], two numbers")
    if not all(math.isfinite(side) and side > 0 for side in surface):
        raise ProtocolError(ErrorCode.BAD_IMAGE, "surface sides must be finite numbers above 0")
    return Strokes(value, (float(surface[0]), float(surface[1])))


def _check_side(width: int, height: int, limits: Limits, message_id: MessageId = None) -> None:
    if width < 1 or height < 1:
        raise ProtocolError(
            ErrorCode.BAD_IMAGE, f"image is {width}x{height}; both sides must be at least 1 px", message_id
        )
    if width > limits.max_side or height > limits.max_side:
        raise ProtocolError(
            ErrorCode.BAD_IMAGE, f"image is {width}x{height}; the limit is {limits.max_side} px per side", message_id
        )


def _base64(text: str, name: str, max_bytes: int) -> bytes:
    """Decode ``text``, refusing before decoding when it would exceed ``max_bytes``."""
    if len(text) // 4 * 3 > max_bytes + 2:
        raise ProtocolError(
            ErrorCode.BAD_IMAGE, f"{name} is about {len(text) // 4 * 3} bytes; the limit is {max_bytes}"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(ErrorCode.BAD_IMAGE, f"{name} is not valid base64") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


# Replies: plain dicts, serialised with json.dumps by the caller.


def hello(model_name: str, runtime: str, limits: dict[str, Any]) -> dict[str, Any]:
    return {"type": "hello", "protocol": VERSION, "model": {"name": model_name, "runtime": runtime}, "limits": limits}


def prediction(
    message_id: MessageId,
    final: bool,
    probabilities: np.ndarray,
    latency_ms: float,
    model_input: np.ndarray | None = None,
) -> dict[str, Any]:
    """A ``prediction`` reply; ``model_input`` (the 28x28 image the model saw) adds ``preview``."""
    digit = int(np.argmax(probabilities))
    reply: dict[str, Any] = {
        "type": "prediction",
        "id": message_id,
        "final": final,
        "digit": digit,
        "confidence": round(float(probabilities[digit]), 6),
        "probabilities": [round(float(p), 6) for p in probabilities],
        "latency_ms": round(latency_ms, 3),
    }
    if model_input is not None:
        reply["preview"] = encode_preview(model_input)
    return reply


def empty(message_id: MessageId, final: bool) -> dict[str, Any]:
    return {"type": "empty", "id": message_id, "final": final}


def dropped(message_id: MessageId, reason: DropReason) -> dict[str, Any]:
    return {"type": "dropped", "id": message_id, "reason": str(reason)}


def error(message_id: MessageId, code: ErrorCode, message: str) -> dict[str, Any]:
    return {"type": "error", "id": message_id, "code": str(code), "message": message}


def pong(message_id: MessageId) -> dict[str, Any]:
    return {"type": "pong", "id": message_id}


def encode_preview(model_input: np.ndarray) -> str:
    """The model input as base64 of 784 bytes, row-major, ink high (255 = full ink)."""
    pixels = np.clip(np.rint(model_input * 255.0), 0, 255).astype(np.uint8)
    return base64.b64encode(pixels.tobytes()).decode("ascii")


def dumps(reply: dict[str, Any]) -> str:
    """Serialise a reply compactly; replies never hold NaN, so strict JSON is safe."""
    return json.dumps(reply, separators=(",", ":"), allow_nan=False)
