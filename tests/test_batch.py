"""The batch form: several images in one message, on the WebSocket (JSON and binary) and over HTTP."""

from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
from wsutil import ONE, SEVEN, ask, closed, drawing, http_json, open_ws, pixels_field, png_field, replies, sample

from livedigit.batcher import IN_FLIGHT

BLANK = np.zeros((28, 28), np.uint8)


async def until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def batch_frame(message_id: int, rasters: np.ndarray) -> bytes:
    """A binary batch: the header with type 3, then the rasters (all of one size) back to back."""
    _, height, width = rasters.shape
    return struct.pack(">BBBBIHH", 1, 3, 0, 0, message_id, width, height) + rasters.tobytes()


async def test_one_reply_with_each_items_result_in_order(app_server) -> None:  # type: ignore[no-untyped-def]
    """A batch mixing forms, a blank, a broken item and an oversized one: one ``batch`` reply, its
    results in the items' order, each what a submit of that image alone gets; then the same images as
    separate submits give the same answers."""
    live = app_server()
    items = [
        {"strokes": SEVEN},
        {"pixels": pixels_field(BLANK)},
        {"png": "not base64!"},
        {"pixels": pixels_field(drawing())},
        {"strokes": ONE, "preview": True},
        {"pixels": {"width": 5000, "height": 1, "data": ""}},
        "seven",
        {"png": png_field(drawing())},
    ]
    ws, hello = await open_ws(live.ws_url)
    async with ws:
        assert hello["limits"]["max_batch_items"] == 64
        answer = await ask(ws, {"type": "batch", "id": "b1", "items": items})
        alone = [await ask(ws, {"type": "submit", "id": index, **item}) for index, item in enumerate(items[:2])]
        more = [await ask(ws, {"type": "submit", "id": 9, **item}) for item in (items[3], items[7])]
    assert answer["type"] == "batch" and answer["id"] == "b1" and answer["latency_ms"] > 0
    results = answer["results"]
    assert [r["type"] for r in results] == [
        "prediction", "empty", "error", "prediction", "prediction", "error", "error", "prediction",
    ]  # fmt: skip
    assert all("id" not in result for result in results)
    assert [r.get("code") for r in results if r["type"] == "error"] == ["bad_image", "bad_image", "bad_message"]
    assert "5000x1" in results[5]["message"]
    assert "preview" in results[4] and "preview" not in results[0]
    assert all(r["final"] is True for r in results if r["type"] != "error")
    for got, single in zip([results[0], results[1], results[3], results[7]], [*alone, *more], strict=True):
        assert got["type"] == single["type"] and got.get("digit") == single.get("digit")
        if got["type"] == "prediction":
            np.testing.assert_allclose(got["probabilities"], single["probabilities"], atol=1e-5)
    assert sample(live.service, "livedigit_batch_items_total") == len(items)
    assert sample(live.service, "livedigit_batch_results_total", {"type": "prediction"}) == 4


async def test_a_binary_batch_answers_every_raster_in_order(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server()
    rasters = np.stack([drawing(), BLANK, drawing().T.copy(), drawing()])
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        await ws.send(batch_frame(77, rasters))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 20))
    assert answer["type"] == "batch" and answer["id"] == 77
    assert [r["type"] for r in answer["results"]] == ["prediction", "empty", "prediction", "prediction"]
    assert answer["results"][0]["probabilities"] == answer["results"][3]["probabilities"]


async def test_batch_limits_and_replies_in_order_with_other_messages(app_server) -> None:  # type: ignore[no-untyped-def]
    """More items than max_batch_items is one bad_message; a batch is answered in its place among the
    connection's other replies; a frame over max_message_bytes still closes with 1009."""
    live = app_server(max_batch_items=3, max_message_bytes=4000)
    ws, hello = await open_ws(live.ws_url)
    assert hello["limits"]["max_batch_items"] == 3
    await ws.send(json.dumps({"type": "submit", "id": 1, "strokes": ONE}))
    await ws.send(json.dumps({"type": "batch", "id": 2, "items": [{"strokes": ONE}] * 4}))
    await ws.send(json.dumps({"type": "batch", "id": 3, "items": [{"strokes": SEVEN}] * 3}))
    await ws.send(batch_frame(4, np.stack([BLANK] * 4)))
    await ws.send(json.dumps({"type": "ping", "id": 5}))
    answers = await replies(ws, 5)
    assert [(a["id"], a["type"]) for a in answers] == [
        (1, "prediction"), (2, "error"), (3, "batch"), (4, "error"), (5, "pong"),
    ]  # fmt: skip
    assert answers[1]["code"] == "bad_message" and "4 items; the limit is 3" in answers[1]["message"]
    assert answers[3]["code"] == "bad_json" and "1 to 3 rasters" in answers[3]["message"]
    await ws.send(json.dumps({"type": "batch", "items": [{"strokes": [[[i, i] for i in range(300)]]}] * 3}))
    assert (await closed(ws))[0] == 1009


async def test_batch_items_count_one_by_one_towards_the_rate_limit(app_server) -> None:  # type: ignore[no-untyped-def]
    """On a busy server (busy_queue_share 0) a batch of five with a bucket of three: the first three items
    are served, the last two are refused with the hint, and a single submit right after is refused."""
    live = app_server(submit_rate=1.0, submit_burst=3, busy_queue_share=0)
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        answer = await ask(ws, {"type": "batch", "id": 1, "items": [{"strokes": SEVEN}] * 5})
        single = await ask(ws, {"type": "submit", "id": 2, "strokes": SEVEN})
    results = answer["results"]
    assert [r["type"] for r in results] == ["prediction"] * 3 + ["error"] * 2
    assert {r["code"] for r in results[3:]} == {"rate_limited"}
    assert all(0 < r["retry_after_ms"] <= 1000 for r in results[3:])
    assert single["type"] == "error" and single["code"] == "rate_limited"


async def test_batch_items_count_towards_the_per_address_queue(app_server) -> None:  # type: ignore[no-untyped-def]
    """With the model held, one address's batch of six against a share of four: four queued, two
    refused as overloaded with a hint; another address's submit still finds room."""
    live = app_server(max_pending_submits=8, client_queue_share=0.5, max_batch=1)  # four per address
    crowd, _ = await open_ws(live.ws_url, additional_headers={"X-Forwarded-For": "203.0.113.1"})
    other, _ = await open_ws(live.ws_url, additional_headers={"X-Forwarded-For": "203.0.113.2"})
    async with crowd, other:
        live.runtime.pause()
        await crowd.send(json.dumps({"type": "submit", "id": "first", "strokes": ONE}))
        assert await asyncio.to_thread(live.runtime.blocked.wait, 10)
        for index in range(IN_FLIGHT - 1):  # each taken into a batch sent to the worker, after the blocked one
            await crowd.send(json.dumps({"type": "submit", "id": f"next-{index}", "strokes": ONE}))
        await until(lambda: live.service.batcher.in_flight == IN_FLIGHT)
        await crowd.send(json.dumps({"type": "batch", "id": "b", "items": [{"strokes": SEVEN}] * 6}))
        await other.send(json.dumps({"type": "submit", "id": "other", "strokes": SEVEN}))
        await until(lambda: live.service.batcher.queued[1] == 5)
        live.runtime.resume()
        *before, answer = await replies(crowd, 1 + IN_FLIGHT)
        theirs = await asyncio.wait_for(other.recv(), 20)
    assert [reply["type"] for reply in before] == ["prediction"] * IN_FLIGHT
    results = answer["results"]
    assert [r["type"] for r in results] == ["prediction"] * 4 + ["error"] * 2
    assert {r["code"] for r in results[4:]} == {"overloaded"}
    assert all(0 < r["retry_after_ms"] <= 5000 for r in results[4:])
    assert json.loads(theirs)["type"] == "prediction"


async def test_a_batch_of_only_invalid_items_counts_as_one_invalid_message(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(max_bad_messages=2)
    ws, _ = await open_ws(live.ws_url)
    await ws.send(json.dumps({"type": "batch", "items": [{"png": "@@"}, {}]}))
    await ws.send(json.dumps({"type": "batch", "items": [{"png": "@@"}, {"strokes": ONE}]}))
    await ws.send(json.dumps({"type": "batch", "items": [{"png": "@@"}]}))
    await ws.send(json.dumps({"type": "batch", "items": [7]}))
    answers = await replies(ws, 4)
    assert [a["type"] for a in answers] == ["batch"] * 4
    code, reason = await closed(ws)
    assert code == 1008 and "2 invalid messages in a row" in reason


def test_http_batch_results_and_statuses(app_server) -> None:  # type: ignore[no-untyped-def]
    """Over HTTP the batch is ``{"items": [...]}`` with the same reply; a batch whose every item was
    refused by the rate limit is 429 with Retry-After; malformed batches are 400."""
    live = app_server(submit_rate=0.5, submit_burst=2, busy_queue_share=0, max_batch_items=4)
    url = live.http_url + "/api/predict"
    status, _, body = http_json(url, {"items": [{"strokes": SEVEN}, {"png": "@@"}]})
    assert status == 200 and body["type"] == "batch" and body["id"] is None
    assert [r["type"] for r in body["results"]] == ["prediction", "error"]
    status, _, body = http_json(url, {"items": [{"strokes": SEVEN}] * 2})
    assert status == 200 and [r["type"] for r in body["results"]] == ["prediction", "error"]
    status, headers, body = http_json(url, {"items": [{"strokes": SEVEN}] * 2})
    assert status == 429 and body["type"] == "batch"
    assert {r["code"] for r in body["results"]} == {"rate_limited"} and headers["retry-after"] in ("1", "2")
    status, _, body = http_json(url, {"items": [{"strokes": SEVEN}] * 5})
    assert status == 400 and body["code"] == "bad_message" and "limit is 4" in body["message"]
    status, _, body = http_json(url, {"items": "all"})
    assert status == 400 and body["code"] == "bad_message"


def test_http_batch_over_a_full_queue_is_503(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(max_pending_submits=0)
    status, headers, body = http_json(live.http_url + "/api/predict", {"items": [{"strokes": SEVEN}] * 3})
    assert status == 503 and {r["code"] for r in body["results"]} == {"overloaded"}
    assert int(headers["retry-after"]) >= 1
