"""The WebSocket endpoint against real servers: image forms, replies, ordering, latest wins, batching."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from wsutil import (
    ONE,
    SEVEN,
    ask,
    binary_frame,
    drawing,
    legacy_field,
    open_ws,
    pixels_field,
    png_field,
    replies,
    reply,
    sample,
)

from livedigit.batcher import IN_FLIGHT
from livedigit.preprocess import Pixels, preprocess
from livedigit.protocol import ProtocolError, parse_text


async def test_hello_and_a_submit_through_livedigit_serve(server) -> None:  # type: ignore[no-untyped-def]
    ws, hello = await open_ws(server.ws_url)
    async with ws:
        assert hello["protocol"] == 1
        assert hello["model"] == {"name": "livedigit-cnn", "runtime": "litert"}
        assert hello["limits"] == {
            "max_message_bytes": 65536,
            "max_side": 1024,
            "max_png_bytes": 49152,
            "max_strokes": 64,
            "max_points": 1024,
            "snapshot_rate": 30.0,
            "snapshot_burst": 30,
            "submit_rate": 5.0,
            "submit_burst": 10,
            "busy_submits": 224,
            "max_batch_items": 64,
            "max_pending_submits": 256,
            "max_pending_submits_per_client": 192,
            "max_bad_messages": 32,
            "message_rate": 100.0,
            "address_byte_rate": 4000000.0,
            "max_connections_per_client": 50,
            "label_rate": 1.0,
            "label_burst": 10,
            "label_rate_per_client": 5.0,
            "label_burst_per_client": 30,
        }
        answer = await ask(ws, {"type": "submit", "id": 1, "strokes": ONE})
    assert answer["type"] == "prediction" and answer["id"] == 1 and answer["final"] is True
    assert len(answer["probabilities"]) == 10 and abs(sum(answer["probabilities"]) - 1) < 1e-4
    assert answer["digit"] == int(np.argmax(answer["probabilities"]))
    assert answer["confidence"] == max(answer["probabilities"]) and answer["latency_ms"] >= 0


async def test_every_raster_form_gives_the_same_prediction(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server()
    raster = drawing()
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        answers = [
            await ask(ws, {"type": "submit", "id": "pixels", "pixels": pixels_field(raster)}),
            await ask(ws, {"type": "submit", "id": "png", "png": png_field(raster)}),
            await ask(ws, {"type": "submit", "id": "data-url", "png": png_field(raster, data_url=True)}),
            await ask(ws, {"type": "submit", "id": "legacy", "image": legacy_field(raster)}),
            await ask(ws, binary_frame(2, 77, raster)),
        ]
    assert [a["id"] for a in answers] == ["pixels", "png", "data-url", "legacy", 77]
    assert all(a["type"] == "prediction" and a["final"] for a in answers)
    for other in answers[1:]:
        np.testing.assert_allclose(other["probabilities"], answers[0]["probabilities"], atol=2e-6)


async def test_strokes_snapshots_and_submits(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server()
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        snapshot = await ask(ws, {"type": "snapshot", "id": 1, "strokes": SEVEN, "surface": [280, 280]})
        submit = await ask(ws, {"type": "submit", "id": 2, "strokes": SEVEN})
        binary_snapshot = await ask(ws, binary_frame(1, 3, drawing()))
    assert snapshot["type"] == "prediction" and snapshot["final"] is False
    assert submit["type"] == "prediction" and submit["final"] is True
    assert binary_snapshot["type"] == "prediction" and binary_snapshot["final"] is False
    assert snapshot["probabilities"] == submit["probabilities"]


async def test_no_ink_or_a_dot_is_empty(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server()
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        blank = await ask(ws, {"type": "snapshot", "id": 1, "pixels": pixels_field(np.zeros((40, 30), np.uint8))})
        dot = await ask(ws, {"type": "submit", "id": 2, "strokes": [[[100, 100], [101, 100]]], "surface": [300, 300]})
        nothing = await ask(ws, {"type": "submit", "id": 3, "strokes": []})
    assert blank == {"type": "empty", "id": 1, "final": False}
    assert dot == {"type": "empty", "id": 2, "final": True}
    assert nothing == {"type": "empty", "id": 3, "final": True}


async def test_preview_is_the_image_the_model_saw(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server()
    raster = drawing(140)
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        answer = await ask(ws, {"type": "submit", "id": 1, "preview": True, "pixels": pixels_field(raster)})
        without = await ask(ws, {"type": "submit", "id": 2, "pixels": pixels_field(raster)})
        binary = await ask(ws, binary_frame(2, 3, raster, preview=True))
    expected = np.clip(np.rint(preprocess(Pixels(raster)) * 255), 0, 255).astype(np.uint8)  # type: ignore[operator]
    seen = np.frombuffer(base64.b64decode(answer["preview"]), np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(seen, expected)
    assert "preview" not in without and binary["preview"] == answer["preview"]


async def test_each_message_gets_exactly_one_reply_in_order(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server()
    frames: list[str | bytes] = [
        json.dumps({"type": "submit", "id": 1, "strokes": ONE}),
        json.dumps({"type": "ping", "id": 2}),
        "{not json",
        json.dumps({"type": "submit", "id": 4, "strokes": SEVEN}),
        json.dumps({"type": "wave", "id": 5}),
        json.dumps({"type": "submit", "id": 6, "strokes": [[[0, 0], [1e12, 1]]]}),
        binary_frame(2, 7, drawing()),
        json.dumps({"type": "snapshot", "id": 8, "pixels": pixels_field(np.zeros((5, 5), np.uint8))}),
        json.dumps({"type": "ping"}),
    ]
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        for frame in frames:
            await ws.send(frame)
        answers = await replies(ws, len(frames))
        await ws.send(json.dumps({"type": "ping", "id": "last"}))
        assert await reply(ws) == {"type": "pong", "id": "last"}
    assert [a["id"] for a in answers] == [1, 2, None, 4, 5, 6, 7, 8, None]
    assert [a["type"] for a in answers] == [
        "prediction",
        "pong",
        "error",
        "prediction",
        "error",
        "error",
        "prediction",
        "empty",
        "pong",
    ]
    assert [a.get("code") for a in answers if a["type"] == "error"] == ["bad_json", "bad_message", "bad_image"]


async def test_a_flood_of_snapshots_keeps_only_the_latest(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(snapshot_burst=1000)
    model = live.runtime
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        model.pause()
        await ws.send(json.dumps({"type": "snapshot", "id": 0, "strokes": ONE}))
        assert await asyncio.to_thread(model.blocked.wait, 10)
        for index in range(1, 60):
            stroke = [[[50, 10], [52 + index, 60], [51, 110 + index]]]
            await ws.send(json.dumps({"type": "snapshot", "id": index, "strokes": stroke}))
        while sample(live.service, "livedigit_messages_total", {"type": "snapshot"}) < 60:
            await asyncio.sleep(0.01)
        model.resume()
        answers = await replies(ws, 60)
        final = await ask(ws, {"type": "submit", "id": "final", "strokes": SEVEN})
    assert [a["id"] for a in answers] == list(range(60))
    assert answers[0]["type"] == "prediction" and answers[-1]["type"] == "prediction"
    stale = [a for a in answers if a["type"] == "dropped"]
    assert all(a["reason"] == "stale" for a in stale)
    assert {a["type"] for a in answers} == {"prediction", "dropped"}
    # At most the one in the model, one taken by each other feed while it waited, and the newest were computed.
    assert len(stale) >= 60 - (1 + IN_FLIGHT)
    assert final["type"] == "prediction"


async def test_a_replaced_snapshot_is_dropped_before_its_drawing_is_read(app_server) -> None:  # type: ignore[no-untyped-def]
    """Latest wins before decoding: a snapshot replaced while the model is busy is answered stale without
    its points ever being read, so even a broken one costs nothing; the newest is read when a batch
    takes it and answered as it would have been on arrival."""
    live = app_server(snapshot_burst=1000)
    model = live.runtime
    broken = [[[0, 0], [1e10, 5]]]  # a coordinate beyond 1e9: bad_image, once read
    last = json.dumps({"type": "snapshot", "id": 40, "strokes": [[["a", 1]]]})  # bad_message, once read
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        model.pause()
        await ws.send(json.dumps({"type": "snapshot", "id": 0, "strokes": ONE}))
        assert await asyncio.to_thread(model.blocked.wait, 10)
        # Each other feed takes the next snapshot and sends it to the busy worker: nothing more is taken
        # until the worker answers.
        for index in range(1, IN_FLIGHT):
            await ws.send(json.dumps({"type": "snapshot", "id": index, "strokes": SEVEN}))
            while live.service.batcher.in_flight < 1 + index:
                await asyncio.sleep(0.01)
        for index in range(IN_FLIGHT, 40):
            await ws.send(json.dumps({"type": "snapshot", "id": index, "strokes": broken}))
        await ws.send(last)
        while sum(sample(live.service, "livedigit_messages_total", {"type": k}) for k in ("snapshot", "invalid")) < 41:
            await asyncio.sleep(0.01)
        model.resume()
        answers = await replies(ws, 41)
    assert [a["id"] for a in answers] == list(range(41))
    read = IN_FLIGHT
    assert [a["type"] for a in answers[:read]] == ["prediction"] * read
    assert all(a["type"] == "dropped" and a["reason"] == "stale" for a in answers[read:-1]), answers[read:-1]
    with pytest.raises(ProtocolError) as refused:
        parse_text(last, live.service.limits)
    assert answers[-1] == {"type": "error", "id": 40, "code": "bad_message", "message": refused.value.message}
    # Read: the snapshots taken while the model was busy and the last; none of the replaced ones.
    assert sample(live.service, "livedigit_preprocess_seconds_count") == read + 1


async def test_a_submit_of_the_last_snapshots_drawing_is_answered_with_its_result(app_server) -> None:  # type: ignore[no-untyped-def]
    """The page submits what its last snapshot showed: that answer is known, and given again without
    preprocessing or running the model; a submit of any other drawing is computed."""
    live = app_server()
    service = live.service
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        snapshot = await ask(ws, {"type": "snapshot", "id": 1, "strokes": SEVEN, "surface": [100, 140]})
        images = sample(service, "livedigit_preprocess_seconds_count")
        submit = await ask(ws, {"type": "submit", "id": 2, "strokes": SEVEN, "surface": [100, 140], "preview": True})
        assert sample(service, "livedigit_preprocess_seconds_count") == images
        assert sample(service, "livedigit_batch_size_sum") == images
        assert sample(service, "livedigit_submits_reused_total") == 1
        moved = await ask(ws, {"type": "submit", "id": 3, "strokes": SEVEN, "surface": [200, 140]})
        assert sample(service, "livedigit_preprocess_seconds_count") == images + 1
    assert snapshot["type"] == submit["type"] == "prediction"
    assert (submit["id"], submit["final"], snapshot["final"]) == (2, True, False)
    for field in ("digit", "confidence", "probabilities", "verdict"):
        assert submit[field] == snapshot[field], field
    assert "preview" in submit and "preview" not in snapshot
    assert moved["type"] == "prediction" and moved["final"] is True


async def test_submits_are_answered_while_snapshots_flood(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(snapshot_burst=1000, submit_burst=100)
    model = live.runtime
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        model.pause()
        await ws.send(json.dumps({"type": "snapshot", "id": 0, "strokes": ONE}))
        assert await asyncio.to_thread(model.blocked.wait, 10)
        sent = []
        for index in range(1, 61):
            kind = "submit" if index % 6 == 0 else "snapshot"
            sent.append((index, kind))
            await ws.send(json.dumps({"type": kind, "id": index, "strokes": SEVEN if kind == "submit" else ONE}))
        model.resume()
        answers = await replies(ws, 61)
    assert [a["id"] for a in answers] == list(range(61))
    by_id = {a["id"]: a for a in answers}
    for index, kind in sent:
        if kind == "submit":
            assert by_id[index]["type"] == "prediction" and by_id[index]["final"] is True
    assert answers[-1]["type"] == "prediction"


async def test_several_connections_share_batches(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server()
    model = live.runtime
    sockets = [(await open_ws(live.ws_url))[0] for _ in range(12)]
    try:
        model.pause()
        await sockets[0].send(json.dumps({"type": "snapshot", "id": "first", "strokes": ONE}))
        assert await asyncio.to_thread(model.blocked.wait, 10)
        for index, ws in enumerate(sockets[1:]):
            await ws.send(json.dumps({"type": "snapshot", "id": index, "strokes": SEVEN}))
        while sample(live.service, "livedigit_messages_total", {"type": "snapshot"}) < 12:
            await asyncio.sleep(0.01)
        model.resume()
        answers = [await reply(ws) for ws in sockets]
    finally:
        for ws in sockets:
            await ws.close()
    assert all(a["type"] == "prediction" for a in answers)
    assert sample(live.service, "livedigit_batch_size_sum") == 12
    assert sample(live.service, "livedigit_batch_size_count") < 12
    assert max(model.batch_sizes) > 1


async def test_replies_never_go_back_in_time_with_many_clients(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(snapshot_burst=1000, max_batch=8)

    async def draw(client: int) -> list[dict]:
        ws, _ = await open_ws(live.ws_url)
        async with ws:
            for index in range(40):
                stroke = [[[10 + client, 10], [50, 60 + index], [20, 100]]]
                await ws.send(json.dumps({"type": "snapshot", "id": index, "strokes": stroke}))
            await ws.send(json.dumps({"type": "submit", "id": 40, "strokes": SEVEN}))
            return await replies(ws, 41)

    results = await asyncio.gather(*(draw(client) for client in range(8)))
    for answers in results:
        assert [a["id"] for a in answers] == list(range(41))
        assert answers[-1]["type"] == "prediction" and answers[-1]["final"] is True
        assert {a["type"] for a in answers} <= {"prediction", "dropped"}
        assert all(a["reason"] == "stale" for a in answers if a["type"] == "dropped")


async def test_a_client_leaving_mid_flight_leaks_nothing(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(max_batch=1)
    model, service = live.runtime, live.service
    ws, _ = await open_ws(live.ws_url)
    model.pause()
    await ws.send(json.dumps({"type": "snapshot", "id": 1, "strokes": ONE}))
    assert await asyncio.to_thread(model.blocked.wait, 10)
    for index in range(2, 6):
        await ws.send(json.dumps({"type": "submit" if index % 2 else "snapshot", "id": index, "strokes": SEVEN}))
    while sample(service, "livedigit_messages_total", {"type": "submit"}) < 2:
        await asyncio.sleep(0.01)
    await ws.close()
    while service.sessions:
        await asyncio.sleep(0.01)
    model.resume()
    for _ in range(500):
        if service.batcher.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert service.batcher.in_flight == 0 and service.batcher.queued == (0, 0)
    assert service.connections.total == 0 and sample(service, "livedigit_connections") == 0
    other, _ = await open_ws(live.ws_url)
    async with other:
        assert (await ask(other, {"type": "submit", "id": 1, "strokes": ONE}))["type"] == "prediction"


async def test_a_model_failure_is_internal_and_the_connection_stays_usable(  # type: ignore[no-untyped-def]
    app_server,
) -> None:
    live = app_server()
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        live.runtime.fail = True
        failed = await ask(ws, {"type": "submit", "id": 1, "strokes": ONE})
        assert not live.service.ready
        live.runtime.fail = False
        recovered = await ask(ws, {"type": "submit", "id": 2, "strokes": ONE})
    assert failed["type"] == "error" and failed["code"] == "internal" and failed["id"] == 1
    assert recovered["type"] == "prediction"
    assert live.service.ready


@pytest.mark.parametrize("frame", [b"", b"\x01\x01\x00\x00", "[]", "null"])
async def test_malformed_frames_leave_the_connection_open(app_server, frame) -> None:  # type: ignore[no-untyped-def]
    live = app_server()
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        answer = await ask(ws, frame)
        assert answer["type"] == "error" and answer["code"] == "bad_json"
        assert await ask(ws, {"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
