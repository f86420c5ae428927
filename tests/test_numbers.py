"""Client numbers in every field and image form: huge integers, floats beyond range, NaN, negative zero
and booleans in number places each get a documented reply, never an exception or a dropped connection.

The property test drives the parser (where every number enters); the server test sends the same
literals over a real WebSocket and HTTP and checks the connection stays usable and no traceback is
logged.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from livedigit import protocol
from livedigit.preprocess import Limits, PreprocessError, preprocess
from livedigit.protocol import ProtocolError
from livedigit.wire import ErrorCode

LIMITS = Limits()

SPECIAL_NUMBERS = [
    "1" + "0" * 400,
    "-1" + "0" * 400,
    "1" + "0" * 5000,
    "1e400",
    "-1e400",
    "1e-400",
    "NaN",
    "Infinity",
    "-Infinity",
    "-0",
    "-0.0",
    "0.0",
    "true",
    "false",
    "null",
    "1.5",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "4294967296",
    "1e308",
    '"7"',
]

PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
        "3a7e9b550000000a49444154789c63600000000200015fe3c4560000000049454e44ae426082"
    )
).decode()

TEMPLATES = [
    '{"type": "submit", "id": @, "strokes": [[[0, 0], [0, 50]]]}',
    '{"type": "submit", "strokes": [[[@, 0], [0, 50]]]}',
    '{"type": "submit", "strokes": [[[0, 0], [0, @]]]}',
    '{"type": "snapshot", "strokes": [[[0, 0], [0, 50]]], "surface": [@, 280]}',
    '{"type": "snapshot", "strokes": [[[0, 0], [0, 50]]], "surface": [280, @]}',
    '{"type": "submit", "pixels": {"width": @, "height": 1, "data": "AA=="}}',
    '{"type": "submit", "pixels": {"width": 1, "height": @, "data": "AA=="}}',
    '{"type": "submit", "pixels": {"width": 1, "height": 1, "data": @}}',
    '{"type": "submit", "png": @}',
    '{"type": "submit", "image": @}',
    '{"type": "submit", "strokes": [[[0, 0], [0, 50]]], "preview": @}',
    '{"type": @, "strokes": [[[0, 0], [0, 50]]]}',
    '{"type": "ping", "id": @}',
    '{"type": "submit", "png": "' + PNG + '", "extra": @}',
    "@",
]

DOCUMENTED = {ErrorCode.BAD_JSON, ErrorCode.BAD_MESSAGE, ErrorCode.BAD_IMAGE}


def outcome(text: str) -> str:
    """What the server would answer ``text`` with, up to the batcher: ``ok`` or the error code."""
    try:
        request = protocol.parse_text(text, LIMITS)
    except ProtocolError as exc:
        assert exc.code in DOCUMENTED, (exc.code, text[:200])
        assert exc.message and len(exc.message) < 300, exc.message
        return str(exc.code)
    if request.image is not None:
        try:
            preprocess(request.image, LIMITS)
        except PreprocessError:
            return "bad_image"
    return "ok"


@settings(max_examples=600, deadline=None)
@given(template=st.sampled_from(TEMPLATES), number=st.sampled_from(SPECIAL_NUMBERS), as_body=st.booleans())
def test_every_special_number_in_every_field_gets_a_documented_answer(
    template: str, number: str, as_body: bool
) -> None:
    text = template.replace("@", number)
    if as_body:
        try:
            request = protocol.parse_body(text.encode(), LIMITS)
        except ProtocolError as exc:
            assert exc.code in DOCUMENTED
        else:
            assert request.kind == "submit" and request.id is None
    else:
        outcome(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type": "submit", "strokes": [[[0, 0], [0, 50]]], "surface": [1' + "0" * 400 + ", 1]}", "bad_message"),
        ('{"type": "submit", "strokes": [[[1e400, 0], [0, 50]]]}', "bad_message"),
        ('{"type": "submit", "strokes": [[[true, 0], [0, 50]]]}', "bad_message"),
        ('{"type": "submit", "strokes": [[[-0.0, 0], [-0, 50]]]}', "ok"),
        ('{"type": "submit", "strokes": [[[NaN, 0], [0, 50]]]}', "bad_json"),
        ('{"type": "submit", "strokes": [[[1e10, 0], [0, 50]]]}', "bad_image"),
        ('{"type": "submit", "pixels": {"width": 1' + "0" * 30 + ', "height": 1, "data": ""}}', "bad_image"),
        ('{"type": "submit", "pixels": {"width": true, "height": 1, "data": "AA=="}}', "bad_message"),
        ('{"type": "submit", "id": 1' + "0" * 30 + ', "strokes": [[[0, 0], [0, 50]]]}', "bad_message"),
        ('{"type": "submit", "id": -0, "strokes": [[[0, 0], [0, 50]]]}', "ok"),
    ],
)
def test_the_documented_code_for_each_kind_of_number(text: str, expected: str) -> None:
    assert outcome(text) == expected


@pytest.mark.slow
async def test_huge_numbers_over_a_real_server_get_one_reply_each_and_no_traceback(server) -> None:  # type: ignore[no-untyped-def]
    """The same literals over /ws (the connection stays open, every frame answered in order, a submit
    after them predicted) and over HTTP (a JSON 400, never a 500)."""
    frames = [template.replace("@", number) for template in TEMPLATES[:-1] for number in SPECIAL_NUMBERS[:6]]
    async with connect(server.ws_url, max_size=None) as ws:
        json.loads(await ws.recv())
        for index, frame in enumerate(frames):
            await ws.send(frame)
            reply = json.loads(await ws.recv())
            assert reply["type"] in ("prediction", "empty", "error", "pong", "dropped"), reply
            if reply["type"] == "error":
                assert reply["code"] in {str(code) for code in DOCUMENTED}, (reply, frame[:120])
            if index % 20 == 19:  # stay under max_bad_messages with a good message now and then
                await ws.send(json.dumps({"type": "ping", "id": index}))
                assert json.loads(await ws.recv())["type"] == "pong"
        await ws.send(json.dumps({"type": "submit", "id": "last", "strokes": [[[50, 10], [52, 60], [51, 110]]]}))
        assert json.loads(await ws.recv())["digit"] == 1
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        for number in SPECIAL_NUMBERS[:6]:
            body = '{"strokes": [[[0, 0], [0, 50]]], "surface": [@, 1]}'.replace("@", number)
            response = await http.post("/api/predict", content=body)
            assert response.status_code in (200, 400, 429), (response.status_code, response.text[:200])
            assert response.headers["content-type"] == "application/json"
    assert "Traceback" not in server.log()
