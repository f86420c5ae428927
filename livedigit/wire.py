"""The wire vocabulary of protocol v1: every name, code and constant that crosses the socket.

The server (:mod:`livedigit.protocol`, :mod:`livedigit.batcher`), the Python client and the bench all
import these from here, so a code or a header layout is spelled once. ``docs/protocol.md`` is the
contract this module names; it holds no logic beyond turning a reply object into its JSON fields and
back, and imports nothing of the package.

Two families of types live here:

* **Outcomes** (:data:`Outcome`) are what the batcher decided for one image: scored by the model, no
  digit in it, shed, or failed (with a :class:`Failure` saying why). They carry no user-facing text.
* **Results** (:class:`Prediction`, :class:`Empty`, :class:`Dropped`) are the replies a client receives
  for a snapshot or a submit. The server builds them from outcomes, the client parses them back;
  :class:`Stored` answers a ``label``.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import numpy as np

VERSION = 1
"""The protocol version; the ``hello`` announces it and a binary frame's first byte carries it."""

Kind = Literal["snapshot", "submit", "ping", "label", "batch"]
"""What a client message asks for."""

Work = Literal["snapshot", "submit"]
"""The kinds of message that carry a drawing for the model."""

MessageId = int | str | None
"""A message's ``id`` as echoed in its reply."""

MAX_ID_LENGTH = 64
"""Longest string id, in characters."""

MAX_ID_MAGNITUDE = 2**63
"""Integer ids are signed 64-bit: ``-2**63 < id < 2**63``."""

IMAGE_FIELDS = ("pixels", "strokes", "png", "image")
"""The JSON fields that can carry a drawing; a message holds exactly one of them."""

INPUT_FORMS = (*IMAGE_FIELDS, "binary")
"""What ``/api/model`` lists as accepted inputs."""

MAX_BATCH_ITEMS = 64
"""The default most images in one batch message (``Settings.max_batch_items``, announced in ``hello``)."""

LEGACY_SIDE = 28
"""The old design's ``image`` string is always a 28x28 raster."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_DATA_URL = "data:image/png;base64,"
"""The prefix of a canvas's ``toDataURL()``, accepted in front of a ``png`` field."""

PREVIEW_SIDE = 28
"""A ``preview`` is the 28x28 model input, base64 of its bytes, row-major, ink high."""

BINARY_HEADER = struct.Struct(">BBBBIHH")
"""Binary frame header: version, type, flags, reserved, id, width, height (12 bytes, big-endian)."""

BINARY_TYPES: dict[Work, int] = {"snapshot": 1, "submit": 2}
BINARY_KINDS: dict[int, Work] = {code: kind for kind, code in BINARY_TYPES.items()}
BINARY_BATCH = 3
"""A binary batch frame: the header, then any number of rasters of the header's width and height."""
BINARY_PREVIEW_FLAG = 0x01


class ReplyType(StrEnum):
    """Every server message's ``type``."""

    HELLO = "hello"
    PREDICTION = "prediction"
    BATCH = "batch"
    EMPTY = "empty"
    DROPPED = "dropped"
    ERROR = "error"
    PONG = "pong"
    STORED = "stored"


class Verdict(StrEnum):
    """Every ``prediction`` reply's ``verdict``: what the drawing is, as far as the model can tell."""

    DIGIT = "digit"
    UNSURE = "unsure"
    """Two digits fit; the reply's ``candidates`` names them, the more probable first."""
    NOT_A_DIGIT = "not_a_digit"


class ErrorCode(StrEnum):
    """Every ``error`` reply's ``code``; the table in ``docs/protocol.md`` says when each is sent."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    BAD_IMAGE = "bad_image"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_JSON: 400,
    ErrorCode.BAD_MESSAGE: 400,
    ErrorCode.BAD_IMAGE: 400,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
}
"""The HTTP status each error code is answered with."""

INVALID_INPUT = frozenset({ErrorCode.BAD_JSON, ErrorCode.BAD_MESSAGE, ErrorCode.BAD_IMAGE})
"""Codes that count towards ``max_bad_messages``: the client sent something it should not have."""

RETRYABLE = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.OVERLOADED})
"""Codes of a refusal that says nothing about the image: the same request later may succeed; such an
error carries ``retry_after_ms``."""


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


NON_RETRYABLE_CLOSE_CODES = frozenset({1000, 1002, 1003, 1007, 1008, 1009, 1010})
"""Close codes that mean "this client did something wrong" (or closed itself): reconnecting would not help."""


# Outcomes: what the batcher decided for one image.


REPLY_DECIMALS = 6
"""Decimal places of the probabilities (and so the confidence) in a ``prediction`` reply."""


@dataclass(frozen=True, slots=True)
class Scored:
    """The model ran: ten (calibrated) probabilities, the verdict, and the 28x28 input it saw as the
    8-bit pixels of a reply's ``preview`` (``None`` where no input was kept); with the most probable
    ``digit`` and the probabilities as the reply shows them (``shown``, :data:`REPLY_DECIMALS` places).
    Build them with :meth:`each`."""

    probabilities: np.ndarray
    preview: np.ndarray | None
    verdict: Verdict
    digit: int
    shown: list[float]

    @classmethod
    def each(
        cls,
        probabilities: np.ndarray,
        previews: np.ndarray | Sequence[np.ndarray | None],
        verdicts: Sequence[Verdict],
    ) -> list[Scored]:
        """The outcome of each row of a (n, 10) batch, with its (n, 28, 28) previews: the digits and shown
        probabilities of all rows in two numpy calls (``argmax`` takes the lower digit of equals), not in
        Python for every reply."""
        digits, shown = probabilities.argmax(axis=1).tolist(), np.round(probabilities, REPLY_DECIMALS).tolist()
        return [
            cls(row, preview, verdict, digit, row_shown)
            for row, preview, verdict, digit, row_shown in zip(
                probabilities, previews, verdicts, digits, shown, strict=True
            )
        ]


@dataclass(frozen=True, slots=True)
class NoDigit:
    """The drawing has no digit to recognise (no ink, or only a dot)."""


@dataclass(frozen=True, slots=True)
class Shed:
    """A snapshot that was not run; ``reason`` says why."""

    reason: DropReason


class Failure(StrEnum):
    """Why an image could not be served; :mod:`livedigit.protocol` words each for the client."""

    BUSY = "busy"
    """The queue of pending submits is full."""
    NOT_READY = "not_ready"
    """The batcher is not running (starting, or stopped)."""
    SHUTTING_DOWN = "shutting_down"
    """The server stopped while the image waited."""
    BAD_IMAGE = "bad_image"
    """Preprocessing refused the image; ``Failed.detail`` says why."""
    BAD_MESSAGE = "bad_message"
    """A snapshot decoded only when taken into a batch was not a valid message; ``Failed.detail`` says why."""
    PREPROCESS_FAILED = "preprocess_failed"
    """Preprocessing raised where it should not (a defect), for this batch."""
    MODEL_FAILED = "model_failed"
    """The model raised on the batch holding this image."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The image could not be served; ``detail`` is the preprocessing's message for ``BAD_IMAGE``, and
    ``retry_after`` (seconds) when to try again after ``BUSY``."""

    failure: Failure
    detail: str = ""
    retry_after: float | None = None


Outcome = Scored | NoDigit | Shed | Failed


# Results: the replies to snapshots and submits, as the server sends them and a client reads them.


@dataclass(frozen=True)
class Prediction:
    """The model's answer: the most probable ``digit``, its ``confidence``, all ten probabilities, and the
    ``verdict`` (``digit``, ``unsure`` between the two ``candidates``, or ``not_a_digit``)."""

    id: MessageId
    final: bool
    digit: int
    confidence: float
    probabilities: tuple[float, ...]
    latency_ms: float | None = None
    preview: np.ndarray | None = field(default=None, compare=False, repr=False)
    """The 28x28 uint8 image the model saw (ink high), when the request asked for it."""
    verdict: str = Verdict.DIGIT
    """A :class:`Verdict` value; kept as the server's text, so a verdict added later still parses."""
    candidates: tuple[int, int] | None = None
    """With ``unsure``: the two digits that fit, the more probable first."""

    def to_wire(self) -> dict[str, Any]:
        return prediction_reply(
            self.id,
            self.final,
            self.digit,
            self.confidence,
            list(self.probabilities),
            self.latency_ms,
            self.verdict,
            self.candidates,
            self.preview,
        )

    @classmethod
    def from_wire(cls, reply: dict[str, Any]) -> Prediction:
        preview = reply.get("preview")
        candidates = reply.get("candidates")
        return cls(
            id=reply.get("id"),
            final=bool(reply.get("final")),
            digit=int(reply["digit"]),
            confidence=float(reply["confidence"]),
            probabilities=tuple(float(p) for p in reply["probabilities"]),
            latency_ms=reply.get("latency_ms"),
            preview=None
            if preview is None
            else np.frombuffer(base64.b64decode(preview), np.uint8).reshape(PREVIEW_SIDE, PREVIEW_SIDE),
            # A server from before verdicts existed answers without one: its answers were all "digit".
            verdict=str(reply.get("verdict", Verdict.DIGIT)),
            candidates=None if candidates is None else (int(candidates[0]), int(candidates[1])),
        )


def prediction_reply(
    message_id: MessageId,
    final: bool,
    digit: int,
    confidence: float,
    probabilities: list[float],
    latency_ms: float | None,
    verdict: str,
    candidates: tuple[int, int] | None = None,
    preview: np.ndarray | None = None,
) -> dict[str, Any]:
    """A :class:`Prediction`'s JSON fields; the server builds a reply with it directly, as it does so on
    the event loop for every scored snapshot."""
    reply: dict[str, Any] = {
        "type": ReplyType.PREDICTION.value,
        "id": message_id,
        "final": final,
        "digit": digit,
        "confidence": confidence,
        "probabilities": probabilities,
        "latency_ms": latency_ms,
        "verdict": str(verdict),
    }
    if candidates is not None:
        reply["candidates"] = list(candidates)
    if preview is not None:
        reply["preview"] = base64.b64encode(np.ascontiguousarray(preview, np.uint8).tobytes()).decode()
    return reply


@dataclass(frozen=True)
class Empty:
    """The drawing holds no digit (no ink, or only a dot); the page shows nothing rather than a guess."""

    id: MessageId
    final: bool

    def to_wire(self) -> dict[str, Any]:
        return {"type": ReplyType.EMPTY.value, "id": self.id, "final": self.final}

    @classmethod
    def from_wire(cls, reply: dict[str, Any]) -> Empty:
        return cls(id=reply.get("id"), final=bool(reply.get("final")))


@dataclass(frozen=True)
class Dropped:
    """A snapshot the server did not run: ``stale`` (overtaken), ``rate_limited`` or ``overloaded``."""

    id: MessageId
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": ReplyType.DROPPED.value, "id": self.id, "reason": self.reason}

    @classmethod
    def from_wire(cls, reply: dict[str, Any]) -> Dropped:
        return cls(id=reply.get("id"), reason=str(reply.get("reason")))


@dataclass(frozen=True)
class Stored:
    """A ``label`` the server has committed to its database: ``label_id`` names the stored row."""

    id: MessageId
    label_id: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": ReplyType.STORED.value, "id": self.id, "label_id": self.label_id}

    @classmethod
    def from_wire(cls, reply: dict[str, Any]) -> Stored:
        return cls(id=reply.get("id"), label_id=int(reply["label_id"]))


Result = Prediction | Empty
"""What a submit is answered with, unless an error."""

Reply = Prediction | Empty | Dropped
"""What a snapshot is answered with, unless an error."""
