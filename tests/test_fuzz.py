"""Property-based fuzzing of protocol v1 against a real ``livedigit serve``.

Hypothesis generates every kind of frame a client could send: arbitrary JSON, well-formed messages with
fields of the wrong type, huge numbers, NaN and infinities, negative and oversized dimensions, truncated
and invalid base64, corrupted PNGs, PNGs whose header declares billions of pixels, real zlib bombs within
the size cap, text-chunk bombs, stroke lists past their caps, binary garbage and binary frames with
inconsistent headers. Frames are pipelined a few at a time on one connection. For each frame the test
knows what the contract promises:

* exactly one reply, in order, carrying the frame's ``id`` when it had a valid one;
* a ``label`` (the drawing forms above, with its own fields each valid or broken) is ``stored`` exactly
  when all of it is valid, and otherwise gets the error code its fault calls for;
* a documented reply type, error code or drop reason (read from ``docs/protocol.md``);
* the error codes that are certain (not JSON: ``bad_json``; a wrong ``id``: ``bad_message``; a valid
  image: never an error; a broken one: an invalid-input error);
* the connection closes with 1008 exactly when ``max_bad_messages`` invalid messages came in a row, and
  never otherwise (the test then reconnects).

Meanwhile a well-behaved client on its own connection keeps getting the right prediction, and at the end
the server's log holds no traceback, no error and no defect the batcher absorbed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import ServerProcess
from hardutil import (
    INVALID_INPUT,
    check_reply,
    ihdr_bomb,
    log_problems,
    lying_png,
    png_file,
    raw_png,
    scrape,
    text_chunk_bomb,
    zlib_bomb,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from wsutil import ONE, SEVEN, drawing, pixels_field

pytestmark = pytest.mark.slow

MAX_SIDE = 256
MAX_PNG_BYTES = 16384
MAX_STROKES = 16
MAX_POINTS = 512
MAX_BAD = 32
MAX_BATCH_ITEMS = 64
MAX_MESSAGE_BYTES = 262144
TIMEOUT = 30.0

FUZZ_FLAGS = [
    "--max-side",
    str(MAX_SIDE),
    "--max-png-bytes",
    str(MAX_PNG_BYTES),
    "--max-strokes",
    str(MAX_STROKES),
    "--max-points",
    str(MAX_POINTS),
    "--max-bad-messages",
    str(MAX_BAD),
    "--max-message-bytes",
    str(MAX_MESSAGE_BYTES),
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
    "--label-rate",
    "0",
    "--label-rate-per-client",
    "0",
]
"""Rate limits and pacing off so that every frame reaches parsing and preprocessing at full speed; small
caps so that frames crossing them are cheap to generate."""

FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
"""Derandomized: every run sends the same cases, so a failure reproduces."""

OK = "ok"
BAD = "bad"
ANY = "any"
"""What a generated image field is: certainly valid, certainly invalid, or either (the contract then only
promises a documented reply)."""


# Building blocks.


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
huge_numbers = st.sampled_from([2**31, 2**53 + 1, 2**63, 2**64, -(2**63), 10**30, 1e300, -1e300, 1e-320])
awkward_numbers = st.one_of(
    huge_numbers,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 0),
    st.booleans(),
    st.text(max_size=4),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


message_ids = st.one_of(
    st.integers(-(2**63) + 1, 2**63 - 1),
    st.text(max_size=64),
    st.text(min_size=65, max_size=80),
    huge_numbers,
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)
"""Valid ``id`` values (strings of at most 64 characters, 64-bit integers) and every kind of invalid one."""


@st.composite
def pixels_fields(draw: st.DrawFn) -> tuple[Any, str]:
    width = draw(st.integers(1, 24) | st.sampled_from([1, MAX_SIDE]))
    height = draw(st.integers(1, 24) | st.sampled_from([1, MAX_SIDE])) if width < MAX_SIDE else 1
    raster = draw(st.binary(min_size=width * height, max_size=width * height))
    data = _b64(raster)
    variant = draw(
        st.sampled_from(
            [
                "valid",
                "valid",
                "valid",
                "not-object",
                "width",
                "height",
                "data-type",
                "side",
                "zero",
                "negative",
                "truncated",
                "short",
                "long",
                "garbage",
                "unpadded",
                "data-url",
            ]
        )
    )
    field: Any = {"width": width, "height": height, "data": data}
    verdict = BAD
    if variant == "valid":
        verdict = OK
    elif variant == "not-object":
        field = draw(json_scalars | st.lists(st.integers(), max_size=3))
    elif variant in ("width", "height"):
        field[variant] = draw(awkward_numbers.filter(lambda v: not (isinstance(v, int) and not isinstance(v, bool))))
    elif variant == "data-type":
        field["data"] = draw(json_values.filter(lambda v: not isinstance(v, str)))
    elif variant == "side":
        field[draw(st.sampled_from(["width", "height"]))] = draw(
            st.integers(MAX_SIDE + 1, 2**70) | huge_numbers.filter(lambda v: isinstance(v, int) and v > MAX_SIDE)
        )
    elif variant == "zero":
        field[draw(st.sampled_from(["width", "height"]))] = 0
    elif variant == "negative":
        field[draw(st.sampled_from(["width", "height"]))] = draw(st.integers(max_value=-1))
    elif variant == "truncated":
        field["data"] = data[: draw(st.integers(0, len(data) - 1))]
    elif variant == "short":
        field["data"] = _b64(raster[:-1])
    elif variant == "long":
        field["data"] = _b64(raster + draw(st.binary(min_size=1, max_size=8)))
    elif variant == "garbage":
        position = draw(st.integers(0, len(data)))
        field["data"] = (
            data[:position] + draw(st.sampled_from(["!", "@", " ", "\n", "é", "\x00", "-_"])) + data[position:]
        )
    elif variant == "unpadded":
        stripped = data.rstrip("=")
        field["data"] = stripped
        verdict = OK if stripped == data else BAD
    elif variant == "data-url":
        field["data"] = "data:image/png;base64," + data
    return field, verdict


def _raster(draw: st.DrawFn, side_max: int = 32) -> np.ndarray:
    height = draw(st.integers(1, side_max))
    width = draw(st.integers(1, side_max))
    seed = draw(st.integers(0, 2**32 - 1))
    raster = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    if draw(st.booleans()):  # a drawing-like raster: mostly background with a bar of ink
        raster[:] = 0
        raster[height // 4 : 3 * height // 4 + 1, width // 3 : 2 * width // 3 + 1] = 255
    return raster


VALID_PNGS = {
    "bar-bomb-8": zlib_bomb(MAX_SIDE),
    "bar-bomb-16-rgba": zlib_bomb(MAX_SIDE, 16, 6),
    "bar-bomb-16-grey-alpha": zlib_bomb(MAX_SIDE, 16, 4),
    "text-chunk-bomb": text_chunk_bomb(True),
    "iccp-bomb": text_chunk_bomb(False),
}
"""Real decompression bombs within the caps: a few KB that inflate to MAX_SIDE x MAX_SIDE pixels, or carry
metadata that would inflate to 8 MB (never read)."""

INVALID_PNGS = {
    "ihdr-huge": ihdr_bomb(),
    "ihdr-over-side": ihdr_bomb(MAX_SIDE + 1, 1),
    "ihdr-2^31": ihdr_bomb(2**31 - 1, 2**31 - 1),
    "ihdr-zero": ihdr_bomb(0, 7),
    "lying-ihdr": lying_png(),
    "over-size-cap": raw_png(8, 8, rows=b"\x00" * 72, extra=b"\x00\x00\x40\x00tEXt" + b"x" * MAX_PNG_BYTES),
    "no-idat": raw_png(8, 8),
    "signature-only": b"\x89PNG\r\n\x1a\n",
    "jpeg-magic": b"\xff\xd8\xff\xe0" + b"\x00" * 40,
}


@st.composite
def png_fields(draw: st.DrawFn) -> tuple[Any, str]:
    variant = draw(
        st.sampled_from(
            [
                "valid",
                "valid",
                "valid",
                "bomb",
                "hostile",
                "truncated",
                "flipped",
                "ihdr",
                "type",
                "base64",
                "data-url",
                "wrong-mime",
                "random",
            ]
        )
    )
    if variant == "bomb":
        name = draw(st.sampled_from(sorted(VALID_PNGS)))
        return _b64(VALID_PNGS[name]), OK
    if variant == "hostile":
        name = draw(st.sampled_from(sorted(INVALID_PNGS)))
        return _b64(INVALID_PNGS[name]), BAD
    if variant == "type":
        return draw(json_values.filter(lambda v: not isinstance(v, str))), BAD
    if variant == "random":
        return _b64(draw(st.binary(max_size=200))), BAD
    raster = _raster(draw)
    mode = draw(st.sampled_from(["L", "LA", "RGB", "RGBA", "P", "1", "I;16"]))
    data = png_file(raster.astype(np.uint16) * 257, mode) if mode == "I;16" else png_file(raster, mode)
    if variant == "valid":
        return _b64(data), OK
    if variant == "data-url":
        return "data:image/png;base64," + _b64(data), OK
    if variant == "wrong-mime":
        return draw(st.sampled_from(["data:image/jpeg;base64,", "data:,", "data:image/png,"])) + _b64(data), BAD
    if variant == "truncated":
        return _b64(data[: draw(st.integers(0, len(data) - 1))]), ANY
    if variant == "flipped":
        position = draw(st.integers(0, len(data) - 1))
        flipped = bytearray(data)
        flipped[position] ^= draw(st.integers(1, 255))
        return _b64(bytes(flipped)), ANY
    if variant == "ihdr":  # rewrite the declared size, keeping the chunk's CRC valid or not
        width, height = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
        patched = bytearray(data)
        patched[16:24] = struct.pack(">II", width, height)
        return _b64(bytes(patched)), BAD if width == 0 or height == 0 or max(width, height) > MAX_SIDE else ANY
    encoded = _b64(data)
    return encoded[: draw(st.integers(1, len(encoded) - 1))] + draw(st.sampled_from(["", "*", "="])), ANY


coordinates = st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-(10**6), 10**6)
bad_coordinates = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e10, -1e300, 2**70]),
    st.text(max_size=3),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def stroke_fields(draw: st.DrawFn) -> tuple[Any, str, Any]:
    """A ``strokes`` value, its verdict, and a ``surface`` (``None``: leave it out)."""
    points = st.lists(st.tuples(coordinates, coordinates).map(list), max_size=12)
    strokes = draw(st.lists(points, max_size=4))
    surface = None
    verdict = OK
    variant = draw(
        st.sampled_from(
            [
                "valid",
                "valid",
                "valid",
                "surface",
                "bad-surface",
                "coordinate",
                "shape",
                "type",
                "too-many-strokes",
                "too-many-points",
                "nested",
                "arbitrary",
            ]
        )
    )
    if variant == "surface":
        surface = [draw(st.floats(1.0, 1e6)), draw(st.floats(1.0, 1e6))]
    elif variant == "bad-surface":
        surface = draw(
            st.one_of(
                st.lists(st.floats(1, 100), min_size=0, max_size=3).filter(lambda s: len(s) != 2),
                st.tuples(
                    awkward_numbers.filter(
                        lambda v: not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e9)
                    ),
                    st.floats(1, 100),
                ).map(list),
                st.sampled_from([[0, 10], [-5, 10], [math.nan, 1], [math.inf, 1], [1e10, 1], "280x280", {"w": 1}]),
            )
        )
        verdict = BAD
    elif variant == "coordinate":
        strokes.append([[0, 0], [draw(bad_coordinates), 5]])
        verdict = BAD
    elif variant == "shape":
        strokes.append(draw(st.sampled_from([[[1, 2, 3]], [[1]], [5], [[[1, 2]]], "ab", [{"x": 1, "y": 2}]])))
        verdict = BAD
    elif variant == "type":
        strokes = draw(json_values.filter(lambda v: not isinstance(v, list)))
        verdict = BAD
    elif variant == "too-many-strokes":
        strokes = [[[index, index], [index + 1, index + 2]] for index in range(draw(st.integers(MAX_STROKES + 1, 64)))]
        verdict = BAD
    elif variant == "too-many-points":
        count = draw(st.integers(MAX_POINTS + 1, 2 * MAX_POINTS))
        strokes = [[[index % 97, index % 89] for index in range(count)]]
        verdict = BAD
    elif variant == "nested":
        strokes = draw(st.sampled_from([[[[[[1, 2]]]]], [[["1", "2"]]], [[[True, False]]]]))
        verdict = BAD
    elif variant == "arbitrary":
        strokes = draw(json_values)
        verdict = ANY
    return strokes, verdict, surface


@st.composite
def legacy_fields(draw: st.DrawFn) -> tuple[Any, str]:
    values = draw(st.lists(st.integers(0, 255), min_size=784, max_size=784))
    variant = draw(st.sampled_from(["valid", "valid", "count", "range", "text", "type", "spaces"]))
    if variant == "valid":
        return ",".join(map(str, values)), OK
    if variant == "spaces":
        return ", ".join(map(str, values)), OK
    if variant == "count":
        return ",".join(
            map(str, values[: draw(st.integers(0, 783))] + draw(st.lists(st.integers(0, 9), max_size=3)))
        ), ANY
    if variant == "range":
        values[draw(st.integers(0, 783))] = draw(st.sampled_from([-1, 256, 10**20, -(10**20)]))
        return ",".join(map(str, values)), BAD
    if variant == "text":
        values_text = list(map(str, values))
        values_text[draw(st.integers(0, 783))] = draw(st.sampled_from(["", "x", "1.5", "NaN", "0x10", "1e3"]))
        return ",".join(values_text), BAD
    return draw(json_values.filter(lambda v: not isinstance(v, str))), BAD


@dataclass(frozen=True)
class Frame:
    """One frame to send, and what its reply must be."""

    payload: str | bytes
    expected_id: Any
    allowed: frozenset[str]
    """Reply kinds allowed: ``prediction``, ``empty``, ``dropped``, ``pong``, or ``error:<code>``."""

    @property
    def size(self) -> int:
        return len(self.payload.encode() if isinstance(self.payload, str) else self.payload)


ANSWERS = frozenset({"prediction", "empty"})
INVALID = frozenset(f"error:{code}" for code in INVALID_INPUT)
EVERYTHING = (
    ANSWERS
    | {"dropped", "pong", "stored"}
    | {
        f"error:{code}"
        for code in ("bad_json", "bad_message", "bad_image", "rate_limited", "overloaded", "internal", "unavailable")
    }
)


def _integer(digits: str) -> int:
    """An integer literal of any length; past Python's default digit limit, one as far out of range."""
    return int(digits) if len(digits) < 100 else 10**100


def _not_json(constant: str) -> Any:
    """Python's reader accepts ``NaN`` and ``Infinity``; JSON does not, and neither does the protocol."""
    raise ValueError(f"{constant} is not JSON")


def _valid_unicode(value: Any) -> bool:
    """Whether every string in ``value`` is valid Unicode: JSON text may spell a lone surrogate
    (``"\\ud800"``), which Python's reader accepts but the protocol refuses as not valid JSON."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_valid_unicode(key) and _valid_unicode(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_valid_unicode(item) for item in value)
    return True


def expectation_for_text(text: str, image_verdict: str = ANY) -> tuple[Any, frozenset[str]]:
    """What the contract promises for a text frame, decided the way any JSON reader would."""
    try:
        message = json.loads(text, parse_constant=_not_json, parse_int=_integer)
    except (ValueError, RecursionError):
        return None, frozenset({"error:bad_json"})
    if not isinstance(message, dict) or not _valid_unicode(message):
        return None, frozenset({"error:bad_json"})
    message_id = message.get("id")
    id_ok = (
        message_id is None
        or (isinstance(message_id, str) and len(message_id) <= 64)
        or (isinstance(message_id, int) and not isinstance(message_id, bool) and abs(message_id) < 2**63)
    )
    if not id_ok:
        return None, frozenset({"error:bad_message"})
    kind = message.get("type")
    if kind == "ping":
        return message_id, frozenset({"pong"})
    if kind not in ("snapshot", "submit", "label"):
        return message_id, frozenset({"error:bad_message"})
    forms = [name for name in ("pixels", "strokes", "png", "image") if name in message]
    if len(forms) != 1:
        return message_id, frozenset({"error:bad_message"})
    preview = message.get("preview", False)
    if not isinstance(preview, bool):
        image_verdict = BAD if image_verdict == OK else image_verdict
    if kind == "label":
        return message_id, label_expectation(message, image_verdict)
    # A snapshot may be overtaken (``stale``) before preprocessing finds a fault in its image.
    dropped = {"dropped"} if kind == "snapshot" else set()
    if image_verdict == OK:
        return message_id, frozenset(ANSWERS | dropped)
    if image_verdict == BAD:
        return message_id, frozenset(INVALID - {"error:bad_json"} | dropped)
    return message_id, frozenset(ANSWERS | INVALID - {"error:bad_json"} | dropped)


def text_frame(message: Any, verdict: str = ANY) -> Frame:
    text = json.dumps(message, allow_nan=True)
    expected_id, allowed = expectation_for_text(text, verdict)
    return Frame(text, expected_id, allowed)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


WORD = re.compile(r"[A-Za-z0-9_-]{8,64}")
VERDICT = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def label_fields_valid(message: dict[str, Any]) -> bool:
    """Whether a label's own fields are all valid, as docs/protocol.md defines them."""
    digit, writer = message.get("digit"), message.get("writer")
    key, submit_id = message.get("key"), message.get("submit_id")
    predicted, probabilities, verdict = message.get("predicted"), message.get("probabilities"), message.get("verdict")
    return (
        _is_int(digit)
        and 0 <= digit <= 9
        and isinstance(writer, str)
        and bool(WORD.fullmatch(writer))
        and (key is None or (isinstance(key, str) and bool(WORD.fullmatch(key))))
        and (
            submit_id is None
            or (isinstance(submit_id, str) and len(submit_id) <= 64)
            or (_is_int(submit_id) and abs(submit_id) < 2**63)
        )
        and (predicted is None or (_is_int(predicted) and 0 <= predicted <= 9))
        and (
            probabilities is None
            or (
                isinstance(probabilities, list)
                and len(probabilities) == 10
                and all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p <= 1 for p in probabilities)
            )
        )
        and (verdict is None or (isinstance(verdict, str) and bool(VERDICT.fullmatch(verdict))))
    )


def label_expectation(message: dict[str, Any], image_verdict: str) -> frozenset[str]:
    """A label is stored exactly when its drawing and its fields are valid; a drawing without a single
    point, fine for a submit (``empty``), is no label (``bad_image``)."""
    strokes = message.get("strokes")
    if isinstance(strokes, list) and all(isinstance(stroke, list) and not stroke for stroke in strokes):
        image_verdict = BAD
    invalid = INVALID - {"error:bad_json"}
    if not label_fields_valid(message):
        return frozenset({"error:bad_message"}) if image_verdict == OK else invalid
    if image_verdict == OK:
        return frozenset({"stored"})
    return invalid if image_verdict == BAD else invalid | {"stored"}


KNOWN_FIELDS = frozenset(
    {"type", "id", "pixels", "strokes", "png", "image", "surface", "preview", "digit", "writer", "key", "submit_id"}
    | {"predicted", "probabilities", "verdict", "items"}
)

writer_ids = st.from_regex(WORD, fullmatch=True)
label_values = {
    "digit": (st.integers(0, 9), st.integers().filter(lambda v: not 0 <= v <= 9) | awkward_numbers),
    "writer": (writer_ids, st.text(max_size=70).filter(lambda v: not WORD.fullmatch(v)) | json_scalars),
    "key": (writer_ids | st.none(), st.text(max_size=70).filter(lambda v: not WORD.fullmatch(v)) | huge_numbers),
    "submit_id": (st.integers(-(2**63) + 1, 2**63 - 1) | st.text(max_size=64) | st.none(), message_ids),
    "predicted": (st.integers(0, 9) | st.none(), awkward_numbers),
    "probabilities": (
        st.lists(st.floats(0, 1) | st.integers(0, 1), min_size=10, max_size=10) | st.none(),
        st.lists(st.floats(0, 2) | awkward_numbers, max_size=12) | json_scalars,
    ),
    "verdict": (st.from_regex(VERDICT, fullmatch=True) | st.none(), st.text(max_size=40) | huge_numbers),
}
"""For each field of a label: values that are valid, and values that are mostly not (the expectation is
decided from the value itself, not from which of the two it was drawn from)."""


@st.composite
def label_fields(draw: st.DrawFn) -> dict[str, Any]:
    """A label's own fields: usually all valid, sometimes one of them broken or left out."""
    fields = {"digit": draw(label_values["digit"][0]), "writer": draw(label_values["writer"][0])}
    for name in ("key", "submit_id", "predicted", "probabilities", "verdict"):
        if draw(st.booleans()):
            fields[name] = draw(label_values[name][0])
    broken = draw(st.sampled_from([None, None, None, *label_values, "missing-digit", "missing-writer"]))
    if broken == "missing-digit":
        del fields["digit"]
    elif broken == "missing-writer":
        del fields["writer"]
    elif broken is not None:
        fields[broken] = draw(label_values[broken][1])
    return fields


@st.composite
def messages(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A message shaped like the protocol's, each field valid or broken, and its image's verdict."""
    if draw(st.integers(0, 9)) < 8:
        kind = draw(st.sampled_from(["snapshot", "submit", "snapshot", "submit", "ping", "label", "label"]))
    else:
        kind = draw(st.sampled_from(["Submit", "", "hello", "prediction", "stored", "Label"]) | json_scalars)
    message: dict[str, Any] = {"type": kind}
    if kind == "label":
        message.update(draw(label_fields()))
    id_choice = draw(st.integers(0, 3))
    if id_choice == 1:
        message["id"] = draw(st.integers(-(2**63) + 1, 2**63 - 1) | st.text(max_size=64))
    elif id_choice >= 2:
        message["id"] = draw(message_ids)
    form = draw(st.sampled_from(["pixels", "png", "strokes", "image"] * 3 + ["none", "two"]))
    verdict = OK
    if form == "pixels":
        message["pixels"], verdict = draw(pixels_fields())
    elif form == "png":
        message["png"], verdict = draw(png_fields())
    elif form == "strokes":
        message["strokes"], verdict, surface = draw(stroke_fields())
        if surface is not None:
            message["surface"] = surface
    elif form == "image":
        message["image"], verdict = draw(legacy_fields())
    elif form == "two":
        message["strokes"], message["png"] = ONE, "AAAA"
    if draw(st.integers(0, 5)) == 0:
        message["preview"] = draw(st.booleans() | json_scalars)
    if draw(st.integers(0, 5)) == 0:
        message[draw(st.text(max_size=6).filter(lambda key: key not in KNOWN_FIELDS))] = draw(json_values)
    return message, verdict


def message_frames() -> st.SearchStrategy[Frame]:
    return messages().map(lambda pair: text_frame(*pair))


SPECIAL_TEXTS = [
    "",
    " ",
    "null",
    "[]",
    "{}",
    "0",
    '"submit"',
    "NaN",
    "-Infinity",
    "1e999",
    "\ufeff{}",
    "{}\x00",
    "\x00",
    "[" * 100_000,
    '{"a":' * 30_000,
    '{"type":"ping","id":' + "9" * 5000 + "}",
    '{"type":"ping","id":1e400}',
    '{"type":"ping","id":-9223372036854775808}',
    '{"type":"ping","id":9223372036854775807}',
    '{"type":"ping","id":"\\ud800"}',
    '{"type":"ping","type":"submit","strokes":[]}',
    '{"type":"ping",}',
    '{"type":"submit","strokes":[[[1e999,0],[0,0]]]}',
    '{"type":"submit","strokes":[[[NaN,0],[1,1]]]}',
    '{"type":"submit","pixels":{"width":1e999,"height":1,"data":""}}',
    '{"type":"submit","surface":[NaN,Infinity],"strokes":[[[0,0],[9,9]]]}',
    '{"type":"submit","pixels":{"width":-1,"height":-1,"data":"AA=="}}',
    '{"type":"submit","pixels":{"width":65536,"height":65536,"data":""}}',
    '{"type":"submit","image":"' + ",".join(["1"] * 100_000) + '"}',
]


def special_frames() -> st.SearchStrategy[Frame]:
    return st.sampled_from(SPECIAL_TEXTS).map(lambda text: Frame(text, *expectation_for_text(text)))


def arbitrary_json_frames() -> st.SearchStrategy[Frame]:
    return json_values.map(text_frame)


def text_garbage_frames() -> st.SearchStrategy[Frame]:
    return st.text(max_size=64).map(lambda text: Frame(text, *expectation_for_text(text)))


HEADER = struct.Struct(">BBBBIHH")


@st.composite
def binary_frames(draw: st.DrawFn) -> Frame:
    """Binary frames: random bytes, and headers with every field right or wrong."""
    if draw(st.integers(0, 3)) == 0:
        data = draw(st.binary(max_size=64))
        if len(data) < HEADER.size:
            return Frame(data, None, frozenset({"error:bad_json"}))
        return Frame(data, HEADER.unpack_from(data)[4], frozenset(EVERYTHING - {"pong", "error:bad_message"}))
    version = draw(st.sampled_from([1, 1, 1, 0, 2, 255]))
    kind = draw(st.sampled_from([1, 2, 1, 2, 0, 3, 255]))
    flags, reserved = draw(st.integers(0, 255)), draw(st.sampled_from([0, 0, 7]))
    message_id = draw(st.integers(0, 2**32 - 1))
    width = draw(st.integers(0, 24) | st.sampled_from([MAX_SIDE, MAX_SIDE + 1, 65535]))
    height = draw(st.integers(0, 24) | st.sampled_from([1, MAX_SIDE + 1, 65535]))
    needed = width * height
    delta = draw(st.sampled_from([0, 0, 0, -1, 1, 7]))
    count = needed + delta if needed <= 4096 else draw(st.integers(0, 64))
    count = max(0, count)
    pixels = draw(st.binary(min_size=count, max_size=count)) if count <= 4096 else bytes(count)
    frame = HEADER.pack(version, kind, flags, reserved, message_id, width, height) + pixels
    if version != 1 or kind not in (1, 2, 3):
        allowed = {"error:bad_json"}
    elif width < 1 or height < 1 or width > MAX_SIDE or height > MAX_SIDE:
        allowed = {"error:bad_image"}
    elif kind == 3:  # a batch: one or more whole rasters of the header's size
        rasters, left = divmod(len(pixels), needed)
        allowed = {"batch"} if not left and 1 <= rasters <= MAX_BATCH_ITEMS else {"error:bad_json"}
    elif len(pixels) != needed:
        allowed = {"error:bad_json"}
    else:
        allowed = ANSWERS | {"dropped"} if kind == 1 else ANSWERS
    return Frame(frame, message_id, frozenset(allowed))


frames = st.one_of(
    message_frames(),
    message_frames(),
    message_frames(),
    message_frames(),
    message_frames(),
    arbitrary_json_frames(),
    text_garbage_frames(),
    special_frames(),
    binary_frames(),
    binary_frames(),
)


# The connections.


NO_KEEPALIVE = None
"""The test's clients send no keepalive pings: the client's ping thread draws its payload from the global
``random`` module, and when that lands while hypothesis generates a case, hypothesis reports it as
randomness inside a strategy (a warning that prints the whole strategy). The server's pings keep the
connections checked."""


class Fuzzer:
    """The hostile connection: sends pipelined frames, checks every reply, reconnects after a 1008."""

    def __init__(self, url: str, connections: contextlib.ExitStack) -> None:
        self.url = url
        self.connections = connections
        self.ws: ClientConnection | None = None
        self.bad_in_a_row = 0
        self.frames = 0
        self.policy_closes = 0
        self.seen: dict[str, int] = {}

    def connection(self) -> ClientConnection:
        if self.ws is None:
            self.ws = self.connections.enter_context(
                connect(self.url, open_timeout=TIMEOUT, ping_interval=NO_KEEPALIVE, max_size=None)
            )
            assert json.loads(self.ws.recv(timeout=TIMEOUT))["type"] == "hello"
            self.bad_in_a_row = 0
        return self.ws

    def exchange(self, batch: list[Frame]) -> None:
        """Send ``batch`` pipelined and check each reply; after a failed check, start on a new connection
        so that one failure does not shift the replies of the cases after it."""
        try:
            self._exchange(batch)
        except BaseException:
            if self.ws is not None:
                self.ws.close()
                self.ws = None
            raise

    def _exchange(self, batch: list[Frame]) -> None:
        ws = self.connection()
        sent = []
        for frame in batch:
            try:
                ws.send(frame.payload)
            except ConnectionClosed:
                break
            sent.append(frame)
        for frame in sent:
            if self.bad_in_a_row >= MAX_BAD:
                self._expect_policy_close(ws)
                return
            try:
                reply = json.loads(ws.recv(timeout=TIMEOUT))
            except ConnectionClosed as closed:
                raise AssertionError(
                    f"closed ({closed.rcvd}) after {self.bad_in_a_row} invalid messages in a row, awaiting the "
                    f"reply to {frame.payload[:200]!r}"
                ) from None
            self.frames += 1
            check_reply(reply)
            tag = reply["type"] if reply["type"] != "error" else f"error:{reply['code']}"
            self.seen[tag] = self.seen.get(tag, 0) + 1
            assert tag in frame.allowed, (tag, reply, frame.allowed, frame.payload[:300])
            assert reply["id"] == frame.expected_id and type(reply["id"]) is type(frame.expected_id), (
                reply,
                frame.expected_id,
                frame.payload[:300],
            )
            if reply["type"] == "batch":  # rasters of a binary batch: each answered, none of them invalid
                assert len(reply["results"]) == (len(frame.payload) - 12) // (
                    frame.payload[8] << 8 | frame.payload[9]
                ) // (frame.payload[10] << 8 | frame.payload[11]), reply
                assert {result["type"] for result in reply["results"]} <= ANSWERS, reply
            if reply["type"] == "stored":
                assert json.loads(frame.payload)["type"] == "label"
            if reply["type"] in ("prediction", "empty"):
                assert reply["final"] is (
                    json.loads(frame.payload)["type"] == "submit"
                    if isinstance(frame.payload, str)
                    else frame.payload[1] == 2
                )
            if tag in INVALID:
                self.bad_in_a_row += 1
            elif reply["type"] in ("prediction", "empty", "pong", "stored", "batch"):
                self.bad_in_a_row = 0
        if self.bad_in_a_row >= MAX_BAD:
            self._expect_policy_close(ws)

    def _expect_policy_close(self, ws: ClientConnection) -> None:
        try:
            extra = ws.recv(timeout=TIMEOUT)
            raise AssertionError(f"a reply after {MAX_BAD} invalid messages in a row: {extra[:200]!r}")
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1008, closed
            assert closed.rcvd.reason == f"{MAX_BAD} invalid messages in a row"
        self.policy_closes += 1
        ws.close()
        self.ws = None


class Bystander:
    """A well-behaved client on its own connection: its answers must not change while the fuzzer runs."""

    def __init__(self, url: str, connections: contextlib.ExitStack) -> None:
        self.ws = connections.enter_context(connect(url, open_timeout=TIMEOUT, ping_interval=NO_KEEPALIVE))
        assert json.loads(self.ws.recv(timeout=TIMEOUT))["type"] == "hello"
        self.count = 0
        raster = drawing()
        self.messages = [
            {"type": "submit", "strokes": SEVEN},
            {"type": "snapshot", "strokes": ONE, "surface": [200, 200]},
            {"type": "submit", "pixels": pixels_field(raster)},
        ]
        self.reference = [self._ask(message) for message in self.messages]
        assert all(answer["type"] == "prediction" for answer in self.reference)

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        self.count += 1
        self.ws.send(json.dumps({**message, "id": self.count}))
        answer = json.loads(self.ws.recv(timeout=TIMEOUT))
        assert answer["id"] == self.count, answer
        return answer  # type: ignore[no-any-return]

    def check(self) -> None:
        which = self.count % len(self.messages)
        answer = self._ask(self.messages[which])
        reference = self.reference[which]
        if self.messages[which]["type"] == "snapshot" and answer["type"] == "dropped":
            assert answer["reason"] == "overloaded", answer  # a lone snapshot can only be shed, never stale
            return
        assert answer["type"] == "prediction" and answer["final"] == reference["final"], answer
        assert answer["digit"] == reference["digit"]
        np.testing.assert_allclose(answer["probabilities"], reference["probabilities"], atol=1e-4)


@dataclass
class Fuzzing:
    server: ServerProcess
    fuzzer: Fuzzer
    bystander: Bystander


@pytest.fixture(scope="module")
def fuzzing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzing]:
    server = ServerProcess(FUZZ_FLAGS).start(tmp_path_factory.mktemp("fuzz"))
    try:
        with contextlib.ExitStack() as connections:
            yield Fuzzing(server, Fuzzer(server.ws_url, connections), Bystander(server.ws_url, connections))
    finally:
        server.stop()


# The properties.


@settings(FUZZ_SETTINGS, max_examples=700)
@given(batch=st.lists(frames, min_size=1, max_size=6))
def test_every_frame_gets_a_documented_reply(fuzzing: Fuzzing, batch: list[Frame]) -> None:
    fuzzing.fuzzer.exchange(batch)
    fuzzing.bystander.check()


@settings(FUZZ_SETTINGS, max_examples=250)
@given(frame=st.one_of(message_frames(), binary_frames()))
def test_frames_one_at_a_time(fuzzing: Fuzzing, frame: Frame) -> None:
    """Unpipelined: each frame meets an idle connection."""
    fuzzing.fuzzer.exchange([frame])


HTTP_STATUS = {"bad_json": 400, "bad_message": 400, "bad_image": 400}


@st.composite
def http_label_bodies(draw: st.DrawFn) -> tuple[bytes, frozenset[str]]:
    """Bodies for ``POST /api/labels``: a label message's fields without ``type`` and ``id``, arbitrary
    JSON, or bytes; with the replies the contract allows for each."""
    choice = draw(st.integers(0, 4))
    if choice == 0:
        body = draw(st.binary(max_size=64))
    elif choice == 1:
        body = json.dumps(draw(json_values), allow_nan=True).encode()
    else:
        message, verdict = draw(messages().filter(lambda pair: pair[0]["type"] == "label"))
        fields = {key: value for key, value in message.items() if key not in ("type", "id")}
        _, allowed = expectation_for_text(json.dumps({"type": "label", **fields}, allow_nan=True), verdict)
        return json.dumps(fields, allow_nan=True).encode(), allowed
    try:
        parsed = json.loads(body, parse_constant=_not_json, parse_int=_integer)
    except (ValueError, RecursionError):
        return body, frozenset({"error:bad_json"})
    if not isinstance(parsed, dict) or not _valid_unicode(parsed):
        return body, frozenset({"error:bad_json"})
    return body, frozenset(INVALID - {"error:bad_json"} | {"stored"})


@settings(FUZZ_SETTINGS, max_examples=120)
@given(case=http_label_bodies())
def test_rest_answers_every_label_body_with_a_documented_reply(
    fuzzing: Fuzzing, case: tuple[bytes, frozenset[str]]
) -> None:
    body, allowed = case
    response = httpx.post(
        fuzzing.server.http_url + "/api/labels",
        content=body,
        timeout=TIMEOUT,
        headers={"content-type": "application/json"},
    )
    reply = response.json()
    check_reply(reply)
    assert reply["id"] is None and reply["type"] in ("stored", "error"), reply
    tag = reply["type"] if reply["type"] != "error" else f"error:{reply['code']}"
    assert response.status_code == (200 if tag == "stored" else HTTP_STATUS[reply["code"]]), (response, reply)
    assert tag in allowed, (tag, reply, body[:300])


@st.composite
def http_bodies(draw: st.DrawFn) -> tuple[bytes, frozenset[str]]:
    """Bodies for ``POST /api/predict`` (always a submit, no ``id``): a message's image fields, arbitrary
    JSON, or bytes; with the replies the contract allows for each."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        body = draw(st.binary(max_size=64))
    elif choice == 1:
        body = json.dumps(draw(json_values), allow_nan=True).encode()
    else:
        message, verdict = draw(messages())
        message = {key: value for key, value in message.items() if key not in ("type", "id")}
        _, allowed = expectation_for_text(json.dumps({"type": "submit", **message}, allow_nan=True), verdict)
        return json.dumps(message, allow_nan=True).encode(), allowed
    try:
        parsed = json.loads(body, parse_constant=_not_json, parse_int=_integer)
    except (ValueError, RecursionError):
        return body, frozenset({"error:bad_json"})
    if not isinstance(parsed, dict) or not _valid_unicode(parsed):
        return body, frozenset({"error:bad_json"})
    return body, frozenset(ANSWERS | INVALID - {"error:bad_json"})


@settings(FUZZ_SETTINGS, max_examples=200)
@given(case=http_bodies())
def test_rest_answers_every_body_with_a_documented_reply(fuzzing: Fuzzing, case: tuple[bytes, frozenset[str]]) -> None:
    body, allowed = case
    response = httpx.post(
        fuzzing.server.http_url + "/api/predict",
        content=body,
        timeout=TIMEOUT,
        headers={"content-type": "application/json"},
    )
    reply = response.json()
    check_reply(reply)
    assert reply["id"] is None and reply["type"] != "dropped" and reply["type"] != "pong"
    tag = reply["type"] if reply["type"] != "error" else f"error:{reply['code']}"
    if reply["type"] == "error":
        assert response.status_code == HTTP_STATUS[reply["code"]], (response.status_code, reply)
    else:
        assert response.status_code == 200 and reply["final"] is True
    assert tag in allowed, (tag, reply, body[:300])


def test_the_fuzzed_server_stayed_healthy(fuzzing: Fuzzing) -> None:
    """After thousands of hostile frames: answers still right, nothing queued, no error in the log."""
    fuzzing.bystander.check()
    fuzzer = fuzzing.fuzzer
    assert fuzzer.frames >= 2000, fuzzer.frames
    served = sum(fuzzer.seen.get(kind, 0) for kind in ("prediction", "empty", "dropped", "stored"))
    # The valid paths were well exercised. How many valid frames are answered before a connection is
    # closed for 32 invalid ones in a row depends on timing (a snapshot dropped as stale does not reset
    # the count, a prediction does): 149 to 241 have been seen.
    assert fuzzer.policy_closes >= 1 and served > 100, fuzzer.seen
    samples = scrape(fuzzing.server.http_url)
    assert samples["livedigit_queued_snapshots"] == 0 and samples["livedigit_queued_submits"] == 0
    assert samples["livedigit_ready"] == 1
    assert samples.get('livedigit_closes_total{code="1008"}') == fuzzer.policy_closes
    problems = log_problems(fuzzing.server.log())
    assert not problems, "\n".join(problems[:20])
