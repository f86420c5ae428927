"""The HTTP side: the page and its headers, REST predictions, health, model card and metrics."""

from __future__ import annotations

import json
import shutil
import urllib.request

import numpy as np
import pytest
from modelutil import raw_outputs
from wsutil import ONE, SEVEN, ask, drawing, http_json, legacy_field, open_ws, pixels_field, png_field

from livedigit.config import DEFAULT_MODEL
from livedigit.preprocess import Strokes


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_the_page_is_served_with_security_headers(server) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = get(server.http_url + "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"<html" in body
    policy = headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert f"ws://127.0.0.1:{server.port}" in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


def test_static_files_are_served_and_cannot_escape_their_folder(server) -> None:  # type: ignore[no-untyped-def]
    status, headers, _ = get(server.http_url + "/static/icon.svg")
    assert status == 200 and headers["x-content-type-options"] == "nosniff"
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/%2e%2e%2fconfig.py"):
        status, _, body = get(server.http_url + path)
        assert status == 404, path
        assert b"import" not in body


def test_health_and_readiness(server) -> None:  # type: ignore[no-untyped-def]
    assert http_json(server.http_url + "/healthz")[0] == 200
    assert http_json(server.http_url + "/readyz")[:3:2] == (200, {"status": "ready"})


def test_readiness_fails_after_a_model_failure_until_a_batch_succeeds(  # type: ignore[no-untyped-def]
    app_server,
) -> None:
    live = app_server()
    live.runtime.fail = True
    status, _, body = http_json(live.http_url + "/api/predict", {"strokes": ONE})
    assert status == 500 and body["code"] == "internal"
    status, _, body = http_json(live.http_url + "/readyz")
    assert status == 503 and body["reason"] == "the last model call failed"
    assert http_json(live.http_url + "/healthz")[0] == 200
    live.runtime.fail = False
    assert http_json(live.http_url + "/api/predict", {"strokes": ONE})[0] == 200
    assert http_json(live.http_url + "/readyz")[0] == 200


def test_model_info_reports_the_card(server) -> None:  # type: ignore[no-untyped-def]
    status, _, info = http_json(server.http_url + "/api/model")
    assert status == 200
    assert info["name"] == "livedigit-cnn" and info["runtime"] == "litert" and info["protocol"] == 1
    assert info["input_forms"] == ["pixels", "strokes", "png", "image", "binary"]
    assert info["limits"]["max_side"] == 1024 and info["card"] is True
    assert set(info["accuracy"]) >= {"mnist_test", "pen_digits_test"}


def test_model_info_without_a_card(app_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    shutil.copy(DEFAULT_MODEL.with_suffix(".tflite"), tmp_path / "bare.tflite")
    live = app_server(model=str(tmp_path / "bare"))
    status, _, info = http_json(live.http_url + "/api/model")
    assert status == 200 and info["name"] == "bare" and info["card"] is False and info["accuracy"] is None


@pytest.mark.parametrize("verdict", [None, {"temperature": "warm"}])
def test_without_a_usable_verdict_rule_probabilities_are_served_as_the_model_gives_them(
    app_server, model_runtime, tmp_path, capfd, verdict
) -> None:  # type: ignore[no-untyped-def]
    """A card without a verdict rule, or with a malformed one: the model's own probabilities, every verdict digit."""
    shutil.copy(DEFAULT_MODEL.with_suffix(".tflite"), tmp_path / "plain.tflite")
    card = {"name": "plain"} if verdict is None else {"name": "plain", "verdict": verdict}
    (tmp_path / "plain.json").write_text(json.dumps(card))
    live = app_server(model=str(tmp_path / "plain"))
    scribble = [[[0, 0], [90, 10], [10, 40], [80, 60], [0, 100], [100, 100]]]
    status, _, answer = http_json(live.http_url + "/api/predict", {"strokes": scribble})
    assert status == 200 and answer["verdict"] == "digit" and "candidates" not in answer
    raw = raw_outputs(model_runtime, [Strokes(scribble)])[0]
    np.testing.assert_allclose(answer["probabilities"], raw, atol=1e-6)
    assert (verdict is not None) == ("verdict is malformed" in capfd.readouterr().err)  # the server's log


@pytest.mark.parametrize("form", ["strokes", "pixels", "png", "image"])
async def test_rest_and_websocket_give_the_same_answer(app_server, form) -> None:  # type: ignore[no-untyped-def]
    live = app_server()
    raster = drawing()
    value = {"strokes": SEVEN, "pixels": pixels_field(raster), "png": png_field(raster), "image": legacy_field(raster)}[
        form
    ]
    status, headers, rest = http_json(live.http_url + "/api/predict", {form: value, "preview": True})
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        live_reply = await ask(ws, {"type": "submit", "id": None, form: value, "preview": True})
    assert status == 200 and headers["content-type"] == "application/json"
    assert rest["type"] == "prediction" and rest["final"] is True and rest["id"] is None
    for key in ("digit", "confidence", "probabilities", "preview"):
        assert rest[key] == live_reply[key], key


def test_rest_empty_and_error_replies(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server()
    url = live.http_url + "/api/predict"
    assert http_json(url, {"pixels": pixels_field(np.zeros((8, 8), np.uint8))})[::2] == (
        200,
        {"type": "empty", "id": None, "final": True},
    )
    cases = [
        (b"{oops", "bad_json"),
        (b"[1]", "bad_json"),
        ({"nothing": 1}, "bad_message"),
        ({"strokes": ONE, "png": "x"}, "bad_message"),
        ({"png": "AAAA"}, "bad_image"),
        ({"strokes": [[[0, 0], [1e300, 0]]]}, "bad_image"),
    ]
    for body, code in cases:
        status, _, reply = http_json(url, body)
        assert (status, reply["type"], reply["code"]) == (400, "error", code), body
    status, _, _ = http_json(live.http_url + "/api/predict")
    assert status == 405


def test_rest_submit_queue_full_is_503(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(max_pending_submits=0)
    status, headers, reply = http_json(live.http_url + "/api/predict", {"strokes": ONE})
    assert status == 503 and reply["code"] == "overloaded"
    assert 1 <= reply["retry_after_ms"] <= 5000 and int(headers["retry-after"]) >= 1


async def test_websocket_submit_queue_full_is_overloaded(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server(max_pending_submits=0)
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        refused = await ask(ws, {"type": "submit", "id": 1, "strokes": ONE})
        snapshot = await ask(ws, {"type": "snapshot", "id": 2, "strokes": ONE})
    assert refused["type"] == "error" and refused["code"] == "overloaded" and refused["id"] == 1
    assert 1 <= refused["retry_after_ms"] <= 5000
    assert snapshot["type"] == "prediction"


async def test_metrics_count_what_happened(app_server) -> None:  # type: ignore[no-untyped-def]
    live = app_server()
    ws, _ = await open_ws(live.ws_url)
    async with ws:
        await ask(ws, {"type": "snapshot", "id": 1, "strokes": ONE})
        await ask(ws, {"type": "submit", "id": 2, "strokes": SEVEN})
        await ask(ws, "garbage")
        await ask(ws, {"type": "ping"})
        _, _, text = get(live.http_url + "/metrics")
    metrics = text.decode()
    for line in (
        "livedigit_connections 1.0",
        'livedigit_messages_total{type="snapshot"} 1.0',
        'livedigit_messages_total{type="submit"} 1.0',
        'livedigit_messages_total{type="ping"} 1.0',
        'livedigit_messages_total{type="invalid"} 1.0',
        'livedigit_errors_total{code="bad_json"} 1.0',
        'livedigit_replies_total{type="prediction"} 2.0',
        "livedigit_batch_size_sum 2.0",
        "livedigit_preprocess_seconds_count 2.0",
        "livedigit_queue_wait_seconds_count 2.0",
        "livedigit_inference_seconds_count 2.0",
        "livedigit_preprocess_cpu_seconds_count 2.0",
        "livedigit_inference_cpu_seconds_count 2.0",
        "livedigit_ready 1.0",
    ):
        assert line in metrics, line
    sums = {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in metrics.splitlines())
        if name.endswith("_seconds_sum")
    }
    # The stages' CPU time is the working thread's own: above zero, and never above the wall time around it.
    for stage in ("preprocess", "inference"):
        assert 0 < sums[f"livedigit_{stage}_cpu_seconds_sum"] <= sums[f"livedigit_{stage}_seconds_sum"] + 1e-4
