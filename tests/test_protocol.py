"""Parsing client frames into requests, and the reply objects, as docs/protocol.md defines them."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from livedigit import protocol
from livedigit.preprocess import Limits, Pixels, Png, Strokes
from livedigit.protocol import ProtocolError
from livedigit.wire import HTTP_STATUS, DropReason, ErrorCode, Prediction, Stored, Verdict

LIMITS = Limits(max_side=64, max_png_bytes=1000, max_strokes=4, max_points=100)
ONE = [[[50, 10], [52, 60], [51, 110]]]


def parse(message: object) -> protocol.Request:
    return protocol.parse_text(json.dumps(message), LIMITS)


def error_of(message: object | str) -> ProtocolError:
    text = message if isinstance(message, str) else json.dumps(message)
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_text(text, LIMITS)
    return caught.value


def frame(kind: int, message_id: int, pixels: np.ndarray, flags: int = 0, version: int = 1) -> bytes:
    height, width = pixels.shape
    return struct.pack(">BBBBIHH", version, kind, flags, 0, message_id, width, height) + pixels.tobytes()


def test_strokes_snapshot_with_surface_and_id() -> None:
    request = parse({"type": "snapshot", "id": "a-1", "strokes": ONE, "surface": [280, 280]})
    assert (request.kind, request.id, request.preview, request.final) == ("snapshot", "a-1", False, False)
    assert isinstance(request.image, Strokes) and request.image.surface == (280.0, 280.0)
    # Strokes leave the parser as compact arrays: what a queued request holds is bounded by the limits.
    assert [stroke.tolist() for stroke in request.image.strokes] == ONE
    assert all(isinstance(stroke, np.ndarray) for stroke in request.image.strokes)


def test_pixels_submit_with_preview() -> None:
    raster = np.arange(6, dtype=np.uint8).reshape(2, 3)
    request = parse(
        {
            "type": "submit",
            "id": 7,
            "preview": True,
            "pixels": {"width": 3, "height": 2, "data": base64.b64encode(raster.tobytes()).decode()},
        }
    )
    assert request.kind == "submit" and request.final and request.preview and request.id == 7
    assert isinstance(request.image, Pixels)
    np.testing.assert_array_equal(request.image.array, raster)


@pytest.mark.parametrize("prefix", ["", "data:image/png;base64,"])
def test_png_plain_or_data_url(prefix: str) -> None:
    payload = b"\x89PNG\r\n\x1a\nnot really"
    request = parse({"type": "submit", "png": prefix + base64.b64encode(payload).decode()})
    assert request.image == Png(payload)


def test_legacy_image_string() -> None:
    values = [0] * 784
    values[400] = 255
    request = parse({"type": "submit", "image": ",".join(map(str, values))})
    assert isinstance(request.image, Pixels)
    assert request.image.array.shape == (28, 28) and request.image.array[14, 8] == 255


def test_ping_needs_no_image_and_keeps_its_id() -> None:
    assert parse({"type": "ping", "id": 9}) == protocol.Request("ping", 9)


def test_binary_frame() -> None:
    raster = np.full((28, 28), 200, dtype=np.uint8)
    request = protocol.parse_binary(frame(2, 4_000_000_000, raster, flags=1), LIMITS)
    assert request.kind == "submit" and request.id == 4_000_000_000 and request.preview
    assert len(frame(1, 1, raster)) == 796
    np.testing.assert_array_equal(request.image.array, raster)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", ErrorCode.BAD_JSON),
        ("[1, 2]", ErrorCode.BAD_JSON),
        ("[" * 100_000 + "]" * 100_000, ErrorCode.BAD_JSON),
        ('{"type": "draw", "strokes": []}', ErrorCode.BAD_MESSAGE),
        ('{"strokes": []}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit"}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "strokes": [], "png": ""}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "id": 1.5, "strokes": []}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "id": true, "strokes": []}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "id": "' + "x" * 65 + '", "strokes": []}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "id": 9223372036854775808, "strokes": []}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "strokes": {}}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "strokes": [], "surface": "big"}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "strokes": [], "surface": [0, 10]}', ErrorCode.BAD_IMAGE),
        ('{"type": "submit", "strokes": [], "surface": [1e10, 1]}', ErrorCode.BAD_IMAGE),
        ('{"type": "submit", "strokes": [], "preview": "yes"}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "pixels": [1, 2]}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "pixels": {"width": "2", "height": 1, "data": "AAA="}}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "pixels": {"width": 2, "height": 1, "data": 5}}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "pixels": {"width": 2, "height": 1, "data": "AAAA"}}', ErrorCode.BAD_IMAGE),
        ('{"type": "submit", "pixels": {"width": 2, "height": 1, "data": "%%%"}}', ErrorCode.BAD_IMAGE),
        ('{"type": "submit", "pixels": {"width": 65, "height": 1, "data": ""}}', ErrorCode.BAD_IMAGE),
        ('{"type": "submit", "pixels": {"width": 0, "height": 1, "data": ""}}', ErrorCode.BAD_IMAGE),
        ('{"type": "submit", "png": 12}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "png": "data:image/gif;base64,AAAA"}', ErrorCode.BAD_IMAGE),
        ('{"type": "submit", "png": "' + "A" * 2000 + '"}', ErrorCode.BAD_IMAGE),
        ('{"type": "submit", "image": [0, 0]}', ErrorCode.BAD_MESSAGE),
        ('{"type": "submit", "image": "1,2,3"}', ErrorCode.BAD_IMAGE),
        ('{"type": "submit", "image": "' + ",".join(["256"] * 784) + '"}', ErrorCode.BAD_IMAGE),
        ('{"type": "submit", "image": "' + ",".join(["x"] * 784) + '"}', ErrorCode.BAD_IMAGE),
    ],
)
def test_invalid_frames_get_the_documented_code(text: str, code: ErrorCode) -> None:
    assert error_of(text).code == code


def test_errors_echo_a_valid_id_and_not_an_invalid_one() -> None:
    assert error_of({"type": "submit", "id": "k", "png": 3}).id == "k"
    assert error_of({"type": "dance", "id": 4}).id == 4
    assert error_of({"type": "submit", "id": [1], "strokes": ONE}).id is None


@pytest.mark.parametrize(
    ("data", "message_id"),
    [
        (b"\x01\x01", None),
        (frame(1, 3, np.zeros((2, 2), np.uint8), version=2), 3),
        (frame(4, 4, np.zeros((2, 2), np.uint8)), 4),
        (frame(1, 5, np.zeros((2, 2), np.uint8))[:-1], 5),
        (frame(3, 6, np.zeros((2, 2), np.uint8))[:-1], 6),
        (frame(3, 7, np.zeros((2, 2), np.uint8))[:12], 7),
    ],
)
def test_malformed_binary_frames_are_bad_json(data: bytes, message_id: int | None) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_binary(data, LIMITS)
    assert caught.value.code == ErrorCode.BAD_JSON and caught.value.id == message_id


def test_a_binary_batch_is_its_rasters_in_order() -> None:
    rasters = np.stack([np.full((3, 2), value, np.uint8) for value in (10, 20, 30)])
    header = struct.pack(">BBBBIHH", 1, 3, 0, 0, 9, 2, 3)
    request = protocol.parse_binary(header[:2] + b"\x01" + header[3:] + rasters.tobytes(), LIMITS, max_items=3)
    assert request.kind == "batch" and request.id == 9 and request.final
    assert [item.kind for item in request.items] == ["submit"] * 3  # type: ignore[union-attr]
    assert all(item.preview for item in request.items)  # type: ignore[union-attr]
    got = [item.image.array for item in request.items]  # type: ignore[union-attr]
    np.testing.assert_array_equal(np.stack(got), rasters)
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_binary(header + rasters.tobytes(), LIMITS, max_items=2)
    assert caught.value.code == ErrorCode.BAD_JSON and "1 to 2 rasters" in caught.value.message


def test_a_batch_holds_its_items_in_order_each_valid_or_its_own_error() -> None:
    raster = base64.b64encode(bytes(6)).decode()
    request = parse(
        {
            "type": "batch",
            "id": "b",
            "items": [
                {"strokes": ONE, "preview": True},
                {"pixels": {"width": 65, "height": 1, "data": ""}},
                {"pixels": {"width": 3, "height": 2, "data": raster}},
                {"strokes": "no"},
                7,
                {},
            ],
        }
    )
    assert request.kind == "batch" and request.id == "b" and request.final
    first, side, pixels, strokes, number, empty = request.items
    assert isinstance(first, protocol.Request) and isinstance(first.image, Strokes) and first.preview
    assert isinstance(pixels, protocol.Request) and isinstance(pixels.image, Pixels) and first.id is None
    assert isinstance(side, ProtocolError) and side.code == ErrorCode.BAD_IMAGE and "65x1" in side.message
    assert isinstance(strokes, ProtocolError) and strokes.code == ErrorCode.BAD_MESSAGE
    assert strokes.message.startswith("strokes:")
    assert isinstance(number, ProtocolError) and number.code == ErrorCode.BAD_MESSAGE
    assert isinstance(empty, ProtocolError) and "exactly one of" in empty.message
    body = protocol.parse_body(json.dumps({"items": [{"strokes": ONE}]}).encode(), LIMITS)
    assert body.kind == "batch" and body.id is None and len(body.items) == 1


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"type": "batch", "id": 1}, "needs items"),
        ({"type": "batch", "id": 1, "items": []}, "needs items"),
        ({"type": "batch", "id": 1, "items": {"strokes": ONE}}, "items:"),
        ({"type": "batch", "id": 1, "items": [{"strokes": ONE}] * 4}, "4 items; the limit is 3"),
    ],
)
def test_a_malformed_batch_is_one_bad_message(message: dict, expected: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_text(json.dumps(message), LIMITS, max_items=3)
    assert caught.value.code == ErrorCode.BAD_MESSAGE and caught.value.id == 1
    assert expected in caught.value.message


def test_binary_frame_over_the_side_limit_is_bad_image() -> None:
    header = struct.pack(">BBBBIHH", 1, 1, 0, 0, 6, 65, 1)
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_binary(header + bytes(65), LIMITS)
    assert caught.value.code == ErrorCode.BAD_IMAGE and "65x1" in caught.value.message


def test_http_body_is_a_submit_without_id() -> None:
    request = protocol.parse_body(json.dumps({"strokes": ONE, "preview": True}).encode(), LIMITS)
    assert request.kind == "submit" and request.id is None and request.preview


def test_a_label_carries_its_drawing_and_what_it_corrects() -> None:
    request = parse(
        {
            "type": "label",
            "id": "l-1",
            "strokes": ONE,
            "surface": [280, 280],
            "digit": 7,
            "writer": "browser-0001",
            "key": "key-00000001",
            "submit_id": 12,
            "predicted": 1,
            "probabilities": [0.1] * 10,
            "verdict": "unsure",
        }
    )
    assert (request.kind, request.id, request.final) == ("label", "l-1", False)
    assert isinstance(request.image, Strokes) and request.image.surface == (280.0, 280.0)
    assert request.correction == protocol.Correction(
        digit=7,
        writer="browser-0001",
        key="key-00000001",
        submit_id=12,
        predicted=1,
        probabilities=(0.1,) * 10,
        verdict="unsure",
    )
    body = protocol.parse_label_body(json.dumps({"png": "AAAA", "digit": 3, "writer": "browser-0001"}).encode(), LIMITS)
    assert body.kind == "label" and body.id is None and isinstance(body.image, Png)
    assert body.correction == protocol.Correction(digit=3, writer="browser-0001")


def test_label_fields_stay_unknown_to_snapshots_and_submits() -> None:
    request = parse({"type": "submit", "strokes": ONE, "digit": "seven", "writer": 5, "submit_id": [1]})
    assert request.kind == "submit" and request.correction is None


@pytest.mark.parametrize(
    ("message", "code", "words"),
    [
        ({"strokes": ONE, "writer": "browser-0001"}, ErrorCode.BAD_MESSAGE, "digit"),
        ({"strokes": ONE, "digit": 7}, ErrorCode.BAD_MESSAGE, "writer"),
        ({"strokes": ONE, "digit": 7.0, "writer": "browser-0001"}, ErrorCode.BAD_MESSAGE, "digit: expected int"),
        ({"strokes": ONE, "digit": 7, "writer": "browser-0001", "submit_id": 2**63}, ErrorCode.BAD_MESSAGE,
         "submit_id"),
        ({"strokes": ONE, "digit": 7, "writer": "browser-0001", "probabilities": "all"}, ErrorCode.BAD_MESSAGE,
         "probabilities"),
        ({"strokes": [[], []], "digit": 7, "writer": "browser-0001"}, ErrorCode.BAD_IMAGE, "at least one point"),
        ({"digit": 7, "writer": "browser-0001"}, ErrorCode.BAD_MESSAGE, "exactly one of"),
        ({"strokes": ONE * 5, "digit": 7, "writer": "browser-0001"}, ErrorCode.BAD_IMAGE, "strokes"),
    ],
)  # fmt: skip
def test_bad_labels_get_the_documented_code_over_both_transports(
    message: dict[str, object], code: ErrorCode, words: str
) -> None:
    error = error_of({"type": "label", "id": 9, **message})
    assert (error.code, error.id, words in error.message) == (code, 9, True), error.message
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_label_body(json.dumps(message).encode(), LIMITS)
    assert (caught.value.code, caught.value.id, words in caught.value.message) == (code, None, True)


def test_a_label_body_that_is_not_an_object_is_bad_json() -> None:
    for body in (b"[1, 2]", b"{", b"null"):
        with pytest.raises(ProtocolError) as caught:
            protocol.parse_label_body(body, LIMITS)
        assert caught.value.code == ErrorCode.BAD_JSON


def test_prediction_reply() -> None:
    probabilities = np.array([0.1, 0.0, 0.0, 0.7, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0])
    model_input = np.zeros((28, 28), np.uint8)
    model_input[3, 4] = 255
    reply = protocol.prediction(5, True, probabilities, 1.23456, model_input)
    assert reply["type"] == "prediction" and reply["id"] == 5 and reply["final"] is True
    assert reply["digit"] == 3 and reply["confidence"] == 0.7 and reply["latency_ms"] == 1.235
    assert len(reply["probabilities"]) == 10 and abs(sum(reply["probabilities"]) - 1) < 1e-6
    preview = np.frombuffer(base64.b64decode(reply["preview"]), np.uint8).reshape(28, 28)
    assert preview[3, 4] == 255 and preview.sum() == 255
    assert "preview" not in protocol.prediction(5, True, probabilities, 1.0)
    assert reply["verdict"] == "digit" and "candidates" not in reply
    json.loads(protocol.dumps(reply))


@pytest.mark.parametrize("verdict", list(Verdict))
def test_prediction_reply_carries_the_verdict_and_the_client_reads_it(verdict: Verdict) -> None:
    probabilities = np.array([0.0, 0.0, 0.0, 0.0, 0.46, 0.0, 0.0, 0.0, 0.0, 0.54])
    reply = json.loads(protocol.dumps(protocol.prediction(7, False, probabilities, 1.0, verdict=verdict)))
    assert reply["verdict"] == verdict.value and reply["digit"] == 9
    assert abs(sum(reply["probabilities"]) - 1) < 1e-6
    parsed = Prediction.from_wire(reply)
    assert parsed.verdict == verdict and parsed.digit == 9
    if verdict == Verdict.UNSURE:
        assert reply["candidates"] == [9, 4] and parsed.candidates == (9, 4)
    else:
        assert "candidates" not in reply and parsed.candidates is None


def test_a_prediction_without_a_verdict_reads_as_a_digit() -> None:
    """What a server from before verdicts sends."""
    reply = {"type": "prediction", "id": 1, "final": True, "digit": 3, "confidence": 0.9, "probabilities": [0.1] * 10}
    assert Prediction.from_wire(reply).verdict == Verdict.DIGIT


def test_other_replies() -> None:
    assert protocol.empty(1, False) == {"type": "empty", "id": 1, "final": False}
    assert protocol.dropped(2, DropReason.STALE) == {"type": "dropped", "id": 2, "reason": "stale"}
    assert protocol.error(3, ErrorCode.BAD_IMAGE, "no") == {
        "type": "error",
        "id": 3,
        "code": "bad_image",
        "message": "no",
    }
    assert protocol.pong(None) == {"type": "pong", "id": None}
    assert protocol.stored("l-1", 42) == {"type": "stored", "id": "l-1", "label_id": 42}
    assert Stored.from_wire(protocol.stored("l-1", 42)) == Stored("l-1", 42)


def test_every_error_code_has_an_http_status() -> None:
    assert set(HTTP_STATUS) == set(ErrorCode)


@pytest.mark.parametrize("kind", ["snapshot", "submit"])
def test_a_live_drawing_stays_undecoded_until_a_worker_decodes_it(kind: str) -> None:
    """A connection's snapshot or submit of strokes is queued as its frame; the worker it is pickled to
    decodes it to the drawing the full parse gives, or to the failure the full parse would have answered."""
    import pickle

    from livedigit.wire import Failed, Failure

    text = json.dumps({"type": kind, "id": 7, "strokes": ONE, "surface": [280, 280]})
    live = protocol.parse_text(text, LIMITS, live=True)
    assert isinstance(live.image, protocol.Undecoded) and (live.kind, live.id, live.final) == (
        kind,
        7,
        kind == "submit",
    )
    assert live.drawing is not None
    travelled = pickle.loads(pickle.dumps(live.image, pickle.HIGHEST_PROTOCOL))
    assert (travelled.text, travelled.limits, travelled.cost) == (text, LIMITS, live.image.cost)
    decoded, expected = travelled.decode(), parse(json.loads(text)).image
    assert isinstance(decoded, Strokes) and isinstance(expected, Strokes)
    assert decoded.surface == expected.surface
    assert [stroke.tolist() for stroke in decoded.strokes] == [stroke.tolist() for stroke in expected.strokes]
    bad = protocol.parse_text(json.dumps({"type": kind, "strokes": [[[1, 2], [3, 1e300]]]}), LIMITS, live=True)
    assert isinstance(bad.image, protocol.Undecoded)
    failure = pickle.loads(pickle.dumps(bad.image)).decode()
    assert isinstance(failure, Failed) and failure.failure == Failure.BAD_IMAGE


def test_a_request_without_its_image_keeps_every_other_field() -> None:
    import dataclasses

    correction = protocol.Correction(digit=3, writer="w", predicted=5, probabilities=(0.1,) * 10, verdict="digit")
    request = protocol.Request(
        "label", "id-1", Strokes(ONE), True, correction, (ProtocolError(ErrorCode.BAD_IMAGE, "x"),), True, b"d"
    )
    assert all(getattr(request, field.name) not in (None, False, ()) for field in dataclasses.fields(request))
    assert request.without_image() == dataclasses.replace(request, image=None)
