"""Protocol v1 on the server: client frames in, typed requests out; outcomes in, reply objects out.

``docs/protocol.md`` is the contract and :mod:`livedigit.wire` its vocabulary; this module is the only
place the server reads a client frame or words a reply. JSON is decoded by msgspec straight into typed
structs: a field of the wrong JSON type is refused while the frame is decoded, and a number that does not
fit a float is refused there too, so nothing downstream ever sees an unchecked value.

Every limit that does not need the decoded image applies here, before the request is queued: ids, image
sides, the PNG and raster sizes, the stroke and point counts. Strokes leave this module as compact numpy
arrays, so what a queued request holds is bounded by the limits, not by how the JSON spelled it. What
costs CPU (PNG decoding, rasterising, normalizing) is left to :mod:`livedigit.preprocess` in the
batcher's worker threads. The one exception is a WebSocket snapshot of strokes: only its type, id and
``preview`` are read on arrival, and its drawing is decoded, checked and answered by this same parse
when a batch takes it (:class:`Undecoded`), since latest wins replaces most snapshots before then (its
frame, within ``max_message_bytes``, is what it holds meanwhile). A frame that cannot become a request
raises :class:`ProtocolError`, which carries the error code, a message for the user and the ``id`` to
echo when one could be read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from livedigit.preprocess import (
    COST_POINTS,
    Image,
    Limits,
    Pixels,
    Png,
    PreprocessError,
    Strokes,
    validate_strokes,
    validate_surface,
)
from livedigit.verdict import ranked
from livedigit.wire import (
    BINARY_BATCH,
    BINARY_HEADER,
    BINARY_KINDS,
    BINARY_PREVIEW_FLAG,
    IMAGE_FIELDS,
    LEGACY_SIDE,
    MAX_BATCH_ITEMS,
    MAX_ID_LENGTH,
    MAX_ID_MAGNITUDE,
    PNG_DATA_URL,
    VERSION,
    Dropped,
    DropReason,
    Empty,
    ErrorCode,
    Failed,
    Failure,
    Kind,
    MessageId,
    NoDigit,
    Outcome,
    ReplyType,
    Scored,
    Shed,
    Stored,
    Verdict,
    Work,
    prediction_reply,
)

FAILURES: dict[Failure, tuple[ErrorCode, str]] = {
    Failure.BUSY: (ErrorCode.OVERLOADED, "the server is busy; try the submit again"),
    Failure.NOT_READY: (ErrorCode.OVERLOADED, "the server is not ready; try again"),
    Failure.SHUTTING_DOWN: (ErrorCode.OVERLOADED, "the server is shutting down; try again"),
    Failure.BAD_IMAGE: (ErrorCode.BAD_IMAGE, "this image could not be processed"),
    Failure.BAD_MESSAGE: (ErrorCode.BAD_MESSAGE, "this message could not be read"),
    Failure.PREPROCESS_FAILED: (ErrorCode.INTERNAL, "this message could not be processed; try again"),
    Failure.MODEL_FAILED: (ErrorCode.INTERNAL, "the model failed on this message's batch; try again"),
}
"""How each batcher failure is answered: its error code, and the message when it brings no detail."""


RETRY_AFTER = 1.0
"""Seconds an ``overloaded`` refusal asks a client to wait when the batcher gives no estimate (it is
starting or stopping)."""


class ProtocolError(Exception):
    """A frame that cannot be served; becomes an ``error`` reply and leaves the connection open."""

    def __init__(self, code: ErrorCode, message: str, id: MessageId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


@dataclass(frozen=True, slots=True)
class Correction:
    """What a ``label`` message says besides its drawing: the true digit, the browser that sent it, and
    what the model had answered as the client showed it. The ranges and formats of these fields are
    checked where a label is stored (:meth:`livedigit.labels.store.Label.row`), their one home."""

    digit: int
    writer: str
    key: str | None = None
    submit_id: MessageId = None
    predicted: int | None = None
    probabilities: tuple[float, ...] | None = None
    verdict: str | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """One client message, validated: what is asked, the id to echo and, unless a ping or a batch, the
    drawing; a ``label`` also carries its :class:`Correction`. A batch holds its items instead: each a
    submit (id ``None``), or the error that item gets."""

    kind: Kind
    id: MessageId = None
    image: Image | Undecoded | None = None
    preview: bool = False
    correction: Correction | None = None
    items: tuple[Request | ProtocolError, ...] = ()
    whole: bool = False
    """For a batch: admit all of its items or none (a tensor of ``/v2`` infer cannot be half answered)."""
    drawing: bytes | None = None
    """For a WebSocket snapshot or submit of strokes: a digest of its ``strokes`` and ``surface`` exactly as
    sent. Equal digests mean the same drawing, so a submit can be answered with the result of the
    snapshot that carried it (:mod:`livedigit.pipeline`)."""

    @property
    def final(self) -> bool:
        return self.kind == "submit" or self.kind == "batch"

    def without_image(self) -> Request:
        """This request without its drawing, all that its reply needs: a ticket waiting behind slower
        ones must not pin an image. Built field by field, once per message: ``dataclasses.replace``
        looks the fields up on every call, three times as long."""
        return Request(self.kind, self.id, None, self.preview, self.correction, self.items, self.whole, self.drawing)


# The JSON shapes, as msgspec decodes them. UNSET tells "absent" from "null", which is an error.


class _PixelsField(msgspec.Struct):
    width: int
    height: int
    data: str


class _Item(msgspec.Struct):
    """One image form with its options: a batch item; unknown fields are ignored."""

    pixels: _PixelsField | msgspec.UnsetType = msgspec.UNSET
    strokes: list[list[tuple[float, float]]] | msgspec.UnsetType = msgspec.UNSET
    png: str | msgspec.UnsetType = msgspec.UNSET
    image: str | msgspec.UnsetType = msgspec.UNSET
    surface: tuple[float, float] | None = None
    preview: bool = False


class _Body(_Item):
    """``POST /api/predict``'s body: one image form, or ``items`` (a batch)."""

    items: list[msgspec.Raw] | msgspec.UnsetType = msgspec.UNSET
    """Kept raw, so that one malformed item is that item's error, not the whole message's."""


class _Message(_Body):
    """A WebSocket text frame: a body with a ``type`` and an optional ``id``."""

    type: str | msgspec.UnsetType = msgspec.UNSET
    id: int | str | None = None


class _LabelBody(_Item, kw_only=True):
    """``POST /api/labels``'s body: one image form and the correction's fields.

    A separate shape, decoded only for labels, so that these field names stay unknown (and ignored) in a
    snapshot or a submit, as they always were.
    """

    digit: int
    writer: str
    key: str | None = None
    submit_id: int | str | None = None
    predicted: int | None = None
    probabilities: list[float] | None = None
    verdict: str | None = None


class _LabelMessage(_LabelBody, kw_only=True):
    """A ``label`` text frame."""

    type: str | msgspec.UnsetType = msgspec.UNSET
    id: int | str | None = None


class _Envelope(msgspec.Struct):
    """A text frame without its drawing: the fields its reply needs, and which image forms it holds
    (left undecoded). A live snapshot is read this far when it arrives (see :class:`Undecoded`)."""

    type: str | msgspec.UnsetType = msgspec.UNSET
    id: int | str | None = None
    preview: bool = False
    strokes: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    pixels: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    png: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    image: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    surface: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


@dataclass(frozen=True, slots=True)
class Undecoded:
    """A WebSocket snapshot or submit of strokes whose drawing is decoded only when a batch takes it.

    Latest wins: most live snapshots queued while the model is busy are replaced by a newer one from the
    same connection before a batch takes them, and are answered ``dropped``/``stale`` without their
    points ever being decoded and checked. What is taken, a submit included, is decoded by :meth:`decode`
    in the worker with :func:`parse_text`, so its reply (an error included) is what it would have been
    when it arrived, and the event loop never spends its time on the points. What it holds is its frame,
    bounded by ``max_message_bytes``: less than the decoded drawing.
    """

    text: str | bytes
    limits: Limits
    cost: int
    """Its preprocessing work in drawn snapshots (:func:`livedigit.preprocess.cost`), from its brackets:
    a point is one, so this is at least the points' cost."""

    def __reduce__(self) -> tuple[type[Undecoded], tuple[str | bytes, Limits, int]]:
        """Rebuilt from its fields in order: it travels to a worker with every batch, and the default of a
        frozen dataclass with slots, which looks each field up by name, takes the event loop four times
        as long to pickle."""
        return Undecoded, (self.text, self.limits, self.cost)

    def decode(self) -> Image | Failed:
        """The drawing, or the failure that answers the snapshot or submit with the error parsing it raises."""
        try:
            image = parse_text(self.text, self.limits).image
        except ProtocolError as error:
            failure = Failure.BAD_IMAGE if error.code == ErrorCode.BAD_IMAGE else Failure.BAD_MESSAGE
            return Failed(failure, error.message)
        assert image is not None and not isinstance(image, Undecoded)
        return image


LEGACY_FORMAT = re.compile(rf" *[0-9]{{1,3}} *(?:, *[0-9]{{1,3}} *){{{LEGACY_SIDE * LEGACY_SIDE - 1}}}", re.ASCII)
"""784 decimal integers of one to three ASCII digits, separated by commas, spaces allowed around each."""

_MESSAGE = msgspec.json.Decoder(_Message)
_ENVELOPE = msgspec.json.Decoder(_Envelope)
_BODY = msgspec.json.Decoder(_Body)
_ITEM = msgspec.json.Decoder(_Item)
_LABEL_MESSAGE = msgspec.json.Decoder(_LabelMessage)
_LABEL_BODY = msgspec.json.Decoder(_LabelBody)
_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_SCALAR = msgspec.json.Decoder(int | str | bool | None)
_ENCODER = msgspec.json.Encoder()


def parse_text(text: str | bytes, limits: Limits, max_items: int = MAX_BATCH_ITEMS, live: bool = False) -> Request:
    """Parse a JSON text frame sent over the WebSocket; a batch holds at most ``max_items`` images.

    ``live`` (a connection's frames, as the server reads them): a snapshot or submit of strokes keeps its
    drawing :class:`Undecoded` and carries the digest of its drawing."""
    brackets = _brackets(text)
    if (ping := _check_arrays(text, brackets, limits, "frame", max_items)) is not None:
        return ping
    if not live:
        return _parse_text(text, limits, max_items)
    envelope, drawing = _strokes_envelope(text)
    if envelope is not None:
        kind: Work = "snapshot" if envelope.type == "snapshot" else "submit"
        undecoded = Undecoded(text, limits, max(1, math.ceil(brackets / COST_POINTS)))
        return Request(kind, _message_id(envelope.id), undecoded, envelope.preview, drawing=drawing)
    return _parse_text(text, limits, max_items)


def _strokes_envelope(text: str | bytes) -> tuple[_Envelope | None, bytes | None]:
    """The frame's envelope and the digest of its drawing, when it is a snapshot or submit of strokes with
    a valid id and preview; ``(None, None)`` otherwise (the full parse answers it as it always did)."""
    try:
        envelope = _ENVELOPE.decode(text)
        _message_id(envelope.id)
    except (msgspec.MsgspecError, RecursionError, ProtocolError):
        return None, None
    unset = msgspec.UNSET
    if (
        (envelope.type != "snapshot" and envelope.type != "submit")
        or envelope.strokes is unset
        or envelope.pixels is not unset
        or envelope.png is not unset
        or envelope.image is not unset
    ):
        return None, None
    digest = hashlib.blake2b(bytes(envelope.strokes), digest_size=16)
    if not isinstance(envelope.surface, msgspec.UnsetType):
        digest.update(b"|" + bytes(envelope.surface))
    return envelope, digest.digest()


def _parse_text(text: str | bytes, limits: Limits, max_items: int) -> Request:
    """:func:`parse_text` of every frame in full, after its brackets were counted."""
    try:
        message = _MESSAGE.decode(text)
    except msgspec.ValidationError as exc:
        return _misshapen(text, exc, "frame")
    except (msgspec.DecodeError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_JSON, "the frame is not valid JSON") from None
    message_id = _message_id(message.id)
    kind = message.type
    if kind == "ping":
        return Request("ping", message_id)
    if kind == "label":
        return _label(_LABEL_MESSAGE, text, limits, message_id)
    if kind != "snapshot" and kind != "submit" and kind != "batch":
        shown = kind if isinstance(kind, str) and len(kind) <= MAX_ID_LENGTH else "(missing)"
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"unknown type {shown!r}; use snapshot, submit, batch, label or ping", message_id
        )
    try:
        if kind == "batch":
            return _batch(message.items, message_id, limits, max_items)
        work: Work = "snapshot" if kind == "snapshot" else "submit"
        return Request(work, message_id, _image(message, limits), message.preview)
    except ProtocolError as error:
        error.id = message_id
        raise


def parse_body(body: bytes, limits: Limits, max_items: int = MAX_BATCH_ITEMS) -> Request:
    """Parse the JSON body of ``POST /api/predict``: one image form (a submit, no id), or ``items`` (a
    batch of at most ``max_items``)."""
    _check_arrays(body, _brackets(body), limits, "body", max_items)
    try:
        message = _BODY.decode(body)
    except msgspec.ValidationError as exc:
        _misshapen(body, exc, "body")
    except (msgspec.DecodeError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_JSON, "the body is not valid JSON") from None
    if not isinstance(message.items, msgspec.UnsetType):
        return _batch(message.items, None, limits, max_items)
    return Request("submit", None, _image(message, limits), message.preview)


def _batch(
    items: list[msgspec.Raw] | msgspec.UnsetType, message_id: MessageId, limits: Limits, max_items: int
) -> Request:
    """A batch: its items parsed one by one, each into a submit or the error that item alone gets."""
    if isinstance(items, msgspec.UnsetType) or not items:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a batch needs items: a list of one or more images")
    if len(items) > max_items:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"the batch holds {len(items)} items; the limit is {max_items}")
    return Request("batch", message_id, items=tuple(_item(raw, limits) for raw in items))


def _item(raw: msgspec.Raw, limits: Limits) -> Request | ProtocolError:
    try:
        item = _ITEM.decode(raw)
        return Request("submit", None, _image(item, limits), item.preview)
    except msgspec.ValidationError as exc:
        if bytes(raw)[:1] != b"{":
            return ProtocolError(ErrorCode.BAD_MESSAGE, "a batch item must be a JSON object")
        return ProtocolError(ErrorCode.BAD_MESSAGE, _field_error(exc))
    except RecursionError:
        return ProtocolError(ErrorCode.BAD_MESSAGE, "a batch item is nested too deeply")
    except ProtocolError as error:
        return error


def parse_label_body(body: bytes, limits: Limits) -> Request:
    """Parse the JSON body of ``POST /api/labels``: one image form and a correction, no id."""
    _check_arrays(body, _brackets(body), limits, "body")
    return _label(_LABEL_BODY, body, limits, None)


def _label(decoder: msgspec.json.Decoder[Any], text: str | bytes, limits: Limits, message_id: MessageId) -> Request:
    """A ``label``: its drawing checked like a submit's (same limits, same codes), its fields typed.

    ``text`` is read a second time here (a frame was first decoded as a :class:`_Message` to find its
    type); labels are rare next to snapshots, and this keeps their fields out of the other messages.
    """
    try:
        message = decoder.decode(text)
    except msgspec.ValidationError as exc:
        if message_id is None:
            _misshapen(text, exc, "body")
        raise ProtocolError(ErrorCode.BAD_MESSAGE, _field_error(exc), message_id) from None
    except (msgspec.DecodeError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_JSON, "the body is not valid JSON") from None
    try:
        image = _image(message, limits)
        if isinstance(image, Strokes) and not image.strokes:
            raise ProtocolError(ErrorCode.BAD_IMAGE, "a label's strokes must hold at least one point")
        submit_id = _message_id(message.submit_id, "submit_id")
    except ProtocolError as error:
        error.id = message_id
        raise
    correction = Correction(
        digit=message.digit,
        writer=message.writer,
        key=message.key,
        submit_id=submit_id,
        predicted=message.predicted,
        probabilities=None if message.probabilities is None else tuple(message.probabilities),
        verdict=message.verdict,
    )
    return Request("label", message_id, image, correction=correction)


def parse_binary(frame: bytes, limits: Limits, max_items: int = MAX_BATCH_ITEMS) -> Request:
    """Parse a binary frame (``pixels`` only): a snapshot, a submit, or a batch of at most ``max_items``
    rasters of one size; see the layout in ``docs/protocol.md``."""
    if len(frame) < BINARY_HEADER.size:
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"binary frame is {len(frame)} bytes; the header alone is {BINARY_HEADER.size}"
        )
    version, kind_code, flags, _reserved, message_id, width, height = BINARY_HEADER.unpack_from(frame)
    if version != VERSION:
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"binary frame version {version}; this server speaks {VERSION}", message_id
        )
    kind: Work | None = BINARY_KINDS.get(kind_code)
    if kind is None and kind_code != BINARY_BATCH:
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"binary frame type {kind_code}; use 1 (snapshot), 2 (submit) or 3 (batch)", message_id
        )
    _check_side(width, height, limits, message_id)
    data = memoryview(frame)[BINARY_HEADER.size :]
    preview = bool(flags & BINARY_PREVIEW_FLAG)
    if kind is None:
        count, left = divmod(len(data), width * height)
        if left or not 1 <= count <= max_items:
            raise ProtocolError(
                ErrorCode.BAD_JSON,
                f"a binary batch holds 1 to {max_items} rasters of {width}x{height} ({width * height} bytes "
                f"each); this one holds {len(data)} pixel bytes",
                message_id,
            )
        rasters = np.frombuffer(data, dtype=np.uint8).reshape(count, height, width).copy()
        return Request(
            "batch", message_id, items=tuple(Request("submit", None, Pixels(raster), preview) for raster in rasters)
        )
    if len(data) != width * height:
        raise ProtocolError(
            ErrorCode.BAD_JSON,
            f"binary frame holds {len(data)} pixel bytes; a {width}x{height} image needs {width * height}",
            message_id,
        )
    array = np.frombuffer(data, dtype=np.uint8).reshape(height, width).copy()
    return Request(kind, message_id, Pixels(array), preview)


def _brackets(text: str | bytes) -> int:
    """How many JSON arrays a frame can open: its ``[`` characters (those inside strings included)."""
    return text.count("[") if isinstance(text, str) else text.count(b"[")


def _check_arrays(text: str | bytes, brackets: int, limits: Limits, what: str, max_items: int = 1) -> Request | None:
    """Refuse, before decoding, a frame with more JSON arrays than a drawing within the limits can have.

    Each point is an array, so a frame under ``max_message_bytes`` can spell ten times ``max_points``
    points, and decoding them all would cost a millisecond of the event loop before the count is seen.
    Counting brackets costs microseconds. The allowance covers every array of a valid message (the
    strokes, their points, ``surface``) and brackets inside a string id, and for a batch (``items``) as
    many times that as it may hold images. Such a frame is then read as an object of undecoded values, to
    answer it as a full decoding would: its id echoed, a ``ping`` answered (its other fields do not
    matter), a wrong type or form named. ``brackets`` is :func:`_brackets` of ``text``.
    """
    drawing = limits.max_points + limits.max_strokes + 4
    if brackets <= drawing + MAX_ID_LENGTH:
        return None
    try:
        fields = _FIELDS.decode(text)
    except (msgspec.MsgspecError, RecursionError):
        return None  # not an object: the full decoding says what is wrong, at once
    if "items" in fields and brackets <= drawing * max_items + MAX_ID_LENGTH + 1:
        return None  # a batch: each item is checked against the limits as it is decoded
    message_id = _message_id(_raw_value(fields.get("id"))) if what == "frame" else None
    if what == "frame":
        kind = _raw_value(fields.get("type"))
        if kind == "ping":
            return Request("ping", message_id)
        if kind not in ("snapshot", "submit", "label", "batch"):
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, "unknown type; use snapshot, submit, batch, label or ping", message_id
            )
    if "items" in fields:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"more arrays than {max_items} drawings within the limits can hold", message_id
        )
    forms = [name for name in IMAGE_FIELDS if name in fields]
    if len(forms) != 1:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"send exactly one of {', '.join(IMAGE_FIELDS)}", message_id)
    raise ProtocolError(
        ErrorCode.BAD_IMAGE, f"more than {limits.max_points} points in all; send fewer (downsample)", message_id
    )


def _misshapen(text: str | bytes, exc: msgspec.ValidationError, what: str) -> Request:
    """A frame that is JSON but not shaped like a message: a ``ping`` (whose other fields do not matter),
    or the error to raise, with the frame's id when it has a valid one.

    Only this path reads a frame a second time: as an object of raw (undecoded) values, to tell "not an
    object" (``bad_json``) from "an object with a wrong field" (``bad_message``) and to find the type
    and id, whatever the other fields hold.
    """
    try:
        fields = _FIELDS.decode(text)
    except (msgspec.MsgspecError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_JSON, f"the {what} must be a JSON object") from None
    message_id = _message_id(_raw_value(fields.get("id")))
    if what == "frame" and _raw_value(fields.get("type")) == "ping":
        return Request("ping", message_id)
    raise ProtocolError(ErrorCode.BAD_MESSAGE, _field_error(exc), message_id)


def _raw_value(raw: msgspec.Raw | None) -> object:
    """A raw JSON value decoded on its own; ``...`` when it is not a plain scalar (never a valid id)."""
    if raw is None:
        return None
    try:
        return _SCALAR.decode(raw)
    except (msgspec.MsgspecError, RecursionError):
        return ...


def _field_error(exc: msgspec.ValidationError) -> str:
    """msgspec's message with the JSON path in the protocol's terms: "pixels.width: expected int"."""
    text = str(exc)
    detail, _, path = text.partition(" - at `$")
    if not path:
        return detail
    return f"{path.rstrip('`').lstrip('.')}: {detail[0].lower()}{detail[1:]}".replace("`", "")


def _message_id(message_id: object, name: str = "id") -> MessageId:
    """``message_id`` when it is a valid id (or ``None``); ``name`` is the field it came from."""
    if message_id is None:
        return None
    if isinstance(message_id, str):
        if len(message_id) > MAX_ID_LENGTH:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, f"{name} is {len(message_id)} characters; the limit is {MAX_ID_LENGTH}"
            )
        return message_id
    if isinstance(message_id, int) and not isinstance(message_id, bool):
        if abs(message_id) >= MAX_ID_MAGNITUDE:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"an integer {name} must fit in a signed 64-bit integer")
        return message_id
    raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{name} must be a string or an integer")


def _image(message: _Item, limits: Limits) -> Image:
    """Turn the one image field of ``message`` into a :data:`livedigit.preprocess.Image`."""
    present = [name for name in IMAGE_FIELDS if getattr(message, name) is not msgspec.UNSET]
    if len(present) != 1:
        found = f"got {', '.join(present)}" if present else "got none"
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"send exactly one of {', '.join(IMAGE_FIELDS)}; {found}")
    if not isinstance(message.pixels, msgspec.UnsetType):
        return _pixels(message.pixels, limits)
    if not isinstance(message.png, msgspec.UnsetType):
        return _png(message.png, limits)
    if not isinstance(message.image, msgspec.UnsetType):
        return _legacy(message.image)
    assert not isinstance(message.strokes, msgspec.UnsetType)
    return _strokes(message.strokes, message.surface, limits)


def _pixels(value: _PixelsField, limits: Limits) -> Pixels:
    width, height = value.width, value.height
    _check_side(width, height, limits)
    raw = _base64(value.data, "pixels.data", width * height)
    if len(raw) != width * height:
        raise ProtocolError(
            ErrorCode.BAD_IMAGE, f"pixels.data holds {len(raw)} bytes; a {width}x{height} image needs {width * height}"
        )
    return Pixels(np.frombuffer(raw, dtype=np.uint8).reshape(height, width))


def _png(value: str, limits: Limits) -> Png:
    if value.startswith("data:"):
        if not value.startswith(PNG_DATA_URL):
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"a png data URL must start with {PNG_DATA_URL}")
        value = value[len(PNG_DATA_URL) :]
    return Png(_base64(value, "png", limits.max_png_bytes))


def _legacy(value: str) -> Pixels:
    """The old design's payload: exactly 784 comma-separated decimal integers 0..255 (see the docs)."""
    if not LEGACY_FORMAT.fullmatch(value):
        parts = value.count(",") + 1
        if parts != LEGACY_SIDE * LEGACY_SIDE:
            raise ProtocolError(
                ErrorCode.BAD_IMAGE,
                f"image holds {parts} values; it must hold {LEGACY_SIDE * LEGACY_SIDE} comma-separated integers",
            )
        raise ProtocolError(ErrorCode.BAD_IMAGE, "image values must be decimal integers 0..255 separated by commas")
    numbers = np.array(value.split(","), dtype=np.int32)
    if numbers.max() > 255:
        raise ProtocolError(ErrorCode.BAD_IMAGE, "image values must lie in 0..255")
    return Pixels(numbers.astype(np.uint8).reshape(LEGACY_SIDE, LEGACY_SIDE))


def _strokes(value: list[list[tuple[float, float]]], surface: tuple[float, float] | None, limits: Limits) -> Strokes:
    try:
        validate_surface(surface)
        return Strokes(validate_strokes(value, limits), surface)
    except PreprocessError as exc:
        raise ProtocolError(ErrorCode.BAD_IMAGE, str(exc)) from None


def _check_side(width: int, height: int, limits: Limits, message_id: MessageId = None) -> None:
    if not (1 <= width <= limits.max_side and 1 <= height <= limits.max_side):
        size = f"{_number(width)}x{_number(height)}"
        if width < 1 or height < 1:
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"image is {size}; both sides must be at least 1 px", message_id)
        raise ProtocolError(
            ErrorCode.BAD_IMAGE, f"image is {size}; the limit is {limits.max_side} px per side", message_id
        )


def _number(value: int) -> str:
    """An integer as a message may quote it: a client can send one of thousands of digits."""
    return str(value) if abs(value) < 10**12 else ("-" if value < 0 else "") + "(huge)"


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


# Replies: plain dicts, encoded by dumps().


def reply(request: Request, outcome: Outcome, latency_ms: float) -> dict[str, Any]:
    """The reply to ``request`` for the batcher's ``outcome``."""
    if isinstance(outcome, Scored):
        return _prediction(request.id, request.final, outcome, latency_ms, request.preview)
    if isinstance(outcome, NoDigit):
        return Empty(request.id, request.final).to_wire()
    if isinstance(outcome, Shed):
        return dropped(request.id, outcome.reason)
    return failed(request.id, outcome)


def prediction(
    message_id: MessageId,
    final: bool,
    probabilities: np.ndarray,
    latency_ms: float,
    preview: np.ndarray | None = None,
    verdict: Verdict = Verdict.DIGIT,
) -> dict[str, Any]:
    """A ``prediction`` reply for one row of probabilities; ``preview`` (the 28x28 image the model saw,
    8-bit) adds ``preview``, an ``unsure`` verdict adds the two ``candidates``."""
    (outcome,) = Scored.each(np.asarray(probabilities, np.float64)[None], [preview], [verdict])
    return _prediction(message_id, final, outcome, latency_ms, preview is not None)


def _prediction(
    message_id: MessageId, final: bool, outcome: Scored, latency_ms: float, preview: bool
) -> dict[str, Any]:
    """The ``prediction`` reply of a scored image; ``preview``: with the image the model saw."""
    verdict = outcome.verdict
    return prediction_reply(
        message_id,
        final,
        outcome.digit,
        outcome.shown[outcome.digit],
        outcome.shown,
        round(latency_ms, 3),
        verdict,
        ranked(outcome.probabilities, verdict)[1] if verdict == Verdict.UNSURE else None,
        outcome.preview if preview else None,
    )


def empty(message_id: MessageId, final: bool) -> dict[str, Any]:
    return Empty(message_id, final).to_wire()


def dropped(message_id: MessageId, reason: DropReason) -> dict[str, Any]:
    return Dropped(message_id, str(reason)).to_wire()


def failed(message_id: MessageId, outcome: Failed) -> dict[str, Any]:
    code, text = FAILURES[outcome.failure]
    retry_after = outcome.retry_after
    if retry_after is None and code == ErrorCode.OVERLOADED:
        retry_after = RETRY_AFTER
    return error(message_id, code, outcome.detail or text, retry_after)


def batch(message_id: MessageId, results: list[dict[str, Any]], latency_ms: float) -> dict[str, Any]:
    """A ``batch`` reply: one result per item, in the items' order, each the reply a submit of that
    image alone would get, without its ``id``."""
    for result in results:
        result.pop("id", None)
    return {"type": ReplyType.BATCH.value, "id": message_id, "results": results, "latency_ms": round(latency_ms, 3)}


def error(message_id: MessageId, code: ErrorCode, message: str, retry_after: float | None = None) -> dict[str, Any]:
    """An ``error`` reply; ``retry_after`` (seconds) adds ``retry_after_ms``, when to try again."""
    reply: dict[str, Any] = {"type": ReplyType.ERROR.value, "id": message_id, "code": str(code), "message": message}
    if retry_after is not None:
        reply["retry_after_ms"] = max(1, math.ceil(retry_after * 1000.0))
    return reply


def rate_limited(message_id: MessageId, rate: float, retry_after: float, what: str = "submits") -> dict[str, Any]:
    """The ``rate_limited`` error of a submit or a label (WebSocket) or a request (HTTP) over its rate."""
    return error(message_id, ErrorCode.RATE_LIMITED, f"more than {rate:g} {what} per second; slow down", retry_after)


def stored(message_id: MessageId, label_id: int) -> dict[str, Any]:
    """The reply to a ``label`` whose row is committed."""
    return Stored(message_id, label_id).to_wire()


def pong(message_id: MessageId) -> dict[str, Any]:
    return {"type": ReplyType.PONG.value, "id": message_id}


def hello(model_name: str, runtime: str, limits: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": ReplyType.HELLO.value,
        "protocol": VERSION,
        "model": {"name": model_name, "runtime": runtime},
        "limits": limits,
    }


def dumps(reply: dict[str, Any]) -> bytes:
    """Encode a reply as compact JSON; replies never hold NaN (the batcher checks model outputs)."""
    return _ENCODER.encode(reply)
