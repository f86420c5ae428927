"""Limits and policies as a client sees them: rate limits, bad messages, sizes, connection caps, Origin."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import InvalidStatus
from wsutil import ONE, SEVEN, ask, closed, http_json, open_ws, replies, sample


async def test_snapshots_over_the_rate_are_dropped_rate_limited(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(snapshot_rate=0.5, snapshot_burst=3)
    ws, hello = await open_ws(live.ws_url)
    async with ws:
        assert hello["limits"]["snapshot_rate"] == 0.5 and hello["limits"]["snapshot_burst"] == 3
        for index in range(8):
            await ws.send(json.dumps({"type": "snapshot", "id": index, "strokes": ONE}))
        answers = await replies(ws, 8)
        submit = await ask(ws, {"type": "submit", "id": "s", "strokes": ONE})
    limited = [a for a in answers if a["type"] == "dropped" and a["reason"] == "rate_limited"]
    assert [a["id"] for a in limited] == [3, 4, 5, 6, 7]
    assert submit["type"] == "prediction"


async def test_connections_read_in_turns_once_the_event_loop_is_busy(app_server) -> None:  # type: ignore[no-untyped-def]
    """With ``pace_reads_above`` so low that the server's own clock keeps it busy, connections take turns
    to read: a burst of frames is read a turn at a time, yet every frame gets its one reply, in order, and
    the submit after them its prediction; ``/metrics`` shows the rate meanwhile."""
    from livedigit.readpacer import MIN_RATE

    live = app_server(pace_reads_above=1e-6)
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        async with asyncio.timeout(30):  # the first half second's CPU starts the pacing
            while sample(live.service, "livedigit_read_rate") == 0:
                await asyncio.sleep(0.05)
        rate, turns = sample(live.service, "livedigit_read_rate"), sample(live.service, "livedigit_read_turns_total")
        for index in range(40):
            await ws.send(json.dumps({"type": "snapshot", "id": index, "strokes": ONE}))
        await ws.send(json.dumps({"type": "submit", "id": "s", "strokes": ONE}))
        answers = await replies(ws, 41)
    assert [answer["id"] for answer in answers] == [*range(40), "s"]
    assert all(answer["type"] in ("prediction", "dropped") for answer in answers[:40]), answers
    assert answers[-1]["type"] == "prediction" and answers[-1]["final"] is True
    assert rate >= MIN_RATE
    read_on_turns = sample(live.service, "livedigit_read_turns_total") - turns
    assert read_on_turns >= 40  # all but the frame its reader was already waiting for


async def test_submits_over_the_rate_of_a_busy_server_get_an_error_with_a_retry_hint(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(submit_rate=0.5, submit_burst=2, busy_queue_share=0)
    ws, hello = await open_ws(live.ws_url)
    async with ws:
        assert hello["limits"]["busy_submits"] == 0
        for index in range(4):
            await ws.send(json.dumps({"type": "submit", "id": index, "strokes": SEVEN}))
        answers = await replies(ws, 4)
        assert await ask(ws, {"type": "ping", "id": "p"}) == {"type": "pong", "id": "p"}
    assert [a["type"] for a in answers] == ["prediction", "prediction", "error", "error"]
    assert {a.get("code") for a in answers[2:]} == {"rate_limited"}
    # The bucket refills one token every 2 s: the hint says when the next submit will be accepted.
    assert all(1000 < a["retry_after_ms"] <= 2000 for a in answers[2:]), answers


async def test_a_server_with_spare_capacity_does_not_pace_a_lone_script(app_server) -> None:  # type: ignore[no-untyped-def]
    """The submit rate is an abuse guard for a busy server: while fewer than busy_submits wait, a
    script's submits beyond its bucket are all accepted."""
    live = app_server(submit_rate=0.5, submit_burst=2)
    ws, hello = await open_ws(live.ws_url)
    async with ws:
        assert hello["limits"]["busy_submits"] > hello["limits"]["max_pending_submits_per_client"]
        for index in range(12):
            await ws.send(json.dumps({"type": "submit", "id": index, "strokes": SEVEN}))
        answers = await replies(ws, 12)
    assert [a["type"] for a in answers] == ["prediction"] * 12


async def test_too_many_bad_messages_in_a_row_close_with_1008(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(max_bad_messages=3)
    ws, _ = await open_ws(live.ws_url)
    for frame in ("x", json.dumps({"type": "nope"}), json.dumps({"type": "submit", "png": "@@"})):
        await ws.send(frame)
    answers = await replies(ws, 3)
    assert [a["code"] for a in answers] == ["bad_json", "bad_message", "bad_image"]
    code, reason = await closed(ws)
    assert code == 1008 and "3 invalid messages in a row" in reason


async def test_a_good_message_resets_the_bad_message_count(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(max_bad_messages=3)
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        for _ in range(4):
            await ws.send("x")
            await ws.send("y")
            await ws.send(json.dumps({"type": "ping"}))
        answers = await replies(ws, 12)
        assert [a["type"] for a in answers] == ["error", "error", "pong"] * 4
        assert (await ask(ws, {"type": "submit", "strokes": ONE}))["type"] == "prediction"


async def test_a_frame_over_the_size_limit_closes_with_1009(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(max_message_bytes=2000)
    ws, hello = await open_ws(live.ws_url)
    assert hello["limits"]["max_message_bytes"] == 2000
    await ws.send(json.dumps({"type": "submit", "strokes": [[[i, i] for i in range(400)]]}))
    code, _ = await closed(ws)
    assert code == 1009
    other, _ = await open_ws(live.ws_url)
    async with other:
        assert (await ask(other, {"type": "submit", "strokes": ONE}))["type"] == "prediction"


async def test_images_over_the_stroke_and_side_limits_are_bad_image(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(max_strokes=2, max_points=10, max_side=64)
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        strokes = await ask(ws, {"type": "submit", "strokes": [ONE[0]] * 3})
        points = await ask(ws, {"type": "submit", "strokes": [[[i, i] for i in range(11)]]})
        side = await ask(ws, {"type": "submit", "pixels": {"width": 65, "height": 1, "data": ""}})
    assert strokes["code"] == points["code"] == side["code"] == "bad_image"
    assert "3 strokes" in strokes["message"] and "10 points" in points["message"] and "65x1" in side["message"]


async def test_the_connection_cap_closes_with_1013(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(max_connections=2)
    first, _ = await open_ws(live.ws_url)
    second, _ = await open_ws(live.ws_url)
    third = await asyncio.wait_for(connect_raw(live.ws_url), 10)
    assert await closed(third) == (1013, "too many connections to this server; retry later")
    await first.close()
    while live.service.connections.total > 1:
        await asyncio.sleep(0.01)
    fourth, _ = await open_ws(live.ws_url)
    await fourth.close()
    await second.close()


async def test_the_per_client_cap_uses_trusted_forwarded_addresses(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(max_connections_per_client=1, forwarded_allow_ips="127.0.0.1")
    a, _ = await open_ws(live.ws_url, additional_headers={"X-Forwarded-For": "203.0.113.1"})
    b, _ = await open_ws(live.ws_url, additional_headers={"X-Forwarded-For": "203.0.113.2"})
    again = await connect_raw(live.ws_url, additional_headers={"X-Forwarded-For": "203.0.113.1"})
    assert await closed(again) == (1013, "too many connections from your address; retry later")
    for ws in (a, b):
        await ws.close()


async def test_forwarded_addresses_from_untrusted_peers_are_ignored(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(max_connections_per_client=1, forwarded_allow_ips="192.0.2.1")
    a, _ = await open_ws(live.ws_url, additional_headers={"X-Forwarded-For": "203.0.113.1"})
    spoofed = await connect_raw(live.ws_url, additional_headers={"X-Forwarded-For": "203.0.113.2"})
    assert (await closed(spoofed))[0] == 1013
    await a.close()


async def connect_raw(url: str, **options):  # type: ignore[no-untyped-def]
    from websockets.asyncio.client import connect

    return await connect(url, **options)


@pytest.mark.parametrize(
    ("options", "origin", "accepted"),
    [
        ({}, None, True),
        ({}, "same", True),
        ({}, "http://evil.example", False),
        ({}, "null", False),
        ({"allowed_origins": "https://app.example, http://other.example:8080"}, "https://app.example", True),
        ({"allowed_origins": "https://app.example"}, "https://app.example.evil", False),
        ({"allowed_origins": "https://app.example"}, "same", True),
        ({"allowed_origins": "*"}, "http://anything.example", True),
        ({"allow_no_origin": False}, None, False),
        ({"allow_no_origin": False}, "same", True),
    ],
)
async def test_origin_policy(app_server, options, origin, accepted) -> None:  # type: ignore[no-untyped-def]
    live = app_server(**options)
    if origin == "same":
        origin = live.http_url
    extra = {} if origin is None else {"origin": origin}
    if accepted:
        ws, _ = await open_ws(live.ws_url, **extra)
        await ws.close()
        return
    with pytest.raises(InvalidStatus) as refused:
        await open_ws(live.ws_url, **extra)
    assert refused.value.response.status_code == 403
    assert live.service.connections.total == 0


def test_http_body_over_the_limit_is_413(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(max_message_bytes=1000)
    status, _, body = http_json(live.http_url + "/api/predict", {"strokes": [[[i, i] for i in range(200)]]})
    assert status == 413 and body["type"] == "error" and "1000 bytes" in body["message"]


def test_http_predictions_over_the_rate_of_a_busy_server_are_429(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(submit_rate=0.5, submit_burst=2, busy_queue_share=0)
    statuses = [http_json(live.http_url + "/api/predict", {"strokes": ONE})[0] for _ in range(3)]
    status, headers, body = http_json(live.http_url + "/api/predict", {"strokes": ONE})
    assert statuses == [200, 200, 429]
    assert status == 429 and body["code"] == "rate_limited" and body["id"] is None
    assert 0 < body["retry_after_ms"] <= 2000 and headers["retry-after"] in ("1", "2")
