"""Every HTTP route of the real app, in-process: status codes, content types, security headers and the
error replies of ``POST /api/predict``.

The app is the one ``livedigit serve`` runs (``create_app`` with the shipped model, its lifespan run as
under uvicorn), called through Starlette's TestClient without a socket, so these checks take
milliseconds; the tests over a real uvicorn server (``test_server_http.py``) cover what needs one.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient
from wsutil import ONE, SEVEN, drawing, legacy_field, pixels_field, png_field

from livedigit import wire
from livedigit.app import create_app
from livedigit.config import Settings

SETTINGS = Settings(submit_burst=1_000_000)
"""Defaults, except that the tests' many predictions (all from one client address) are never rate limited."""

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}


BASE_URL = "http://localhost"
"""A Host the server answers to by default (``--allowed-hosts``)."""


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(SETTINGS), base_url=BASE_URL) as client:
        yield client


def predict(client: TestClient, body: dict[str, Any] | bytes, content_type: str = "application/json") -> Any:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return client.post("/api/predict", content=content, headers={"content-type": content_type})


def test_the_page_is_html_whose_every_asset_is_served(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', response.text)
    assert "/static/app.js" in assets and "/static/style.css" in assets
    assert all(client.get(asset).status_code == 200 for asset in assets), assets
    assert not re.search(r"<script(?![^>]*\bsrc=)", response.text), "an inline script, which the policy blocks"


def test_the_page_policy_allows_its_own_host_and_nothing_inline(client: TestClient) -> None:
    policy = client.get("/", headers={"host": "localhost:8443"}).headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self' ws://localhost:8443 wss://localhost:8443"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


@pytest.mark.parametrize("host", ["evil.example", "localhost.evil.example", "localhost; script-src *"])
def test_a_host_the_server_does_not_answer_to_is_400(client: TestClient, host: str) -> None:
    response = client.get("/", headers={"host": host})
    assert response.status_code == 400 and response.text == "Invalid host header"
    assert "script-src 'self';" in response.headers["content-security-policy"]
    assert "*" not in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/healthz", 200),
        ("GET", "/readyz", 200),
        ("GET", "/api/model", 200),
        ("GET", "/metrics", 200),
        ("GET", "/static/app.js", 200),
        ("POST", "/api/predict", 400),
        ("GET", "/api/predict", 405),
        ("GET", "/no/such/page", 404),
        ("GET", "/static/no-such-file.js", 404),
    ],
)
def test_every_response_carries_the_security_headers(client: TestClient, method: str, path: str, status: int) -> None:
    response = client.request(method, path, content=b"{}" if method == "POST" else None)
    assert response.status_code == status
    assert {name: response.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    assert "default-src 'self'" in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/style.css", "text/css; charset=utf-8"),
        ("/static/icon.svg", "image/svg+xml"),
    ],
)
def test_static_files_have_their_content_types(client: TestClient, path: str, content_type: str) -> None:
    response = client.get(path)
    assert response.status_code == 200 and response.headers["content-type"] == content_type


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fconfig.py"])
def test_static_paths_cannot_leave_their_folder(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404 and "import" not in response.text


def test_unknown_paths_and_methods(client: TestClient) -> None:
    assert client.get("/api/nothing").status_code == 404
    response = client.get("/api/predict")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert client.post("/healthz").status_code == 405


def test_health_and_readiness_are_json(client: TestClient) -> None:
    for path, body in (("/healthz", {"status": "alive"}), ("/readyz", {"status": "ready"})):
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        assert response.json() == body


def test_model_describes_the_shipped_model_and_the_limits(client: TestClient) -> None:
    response = client.get("/api/model")
    assert response.headers["content-type"] == "application/json"
    info = response.json()
    assert info["name"] == "livedigit-cnn" and info["runtime"] == "litert" and info["card"] is True
    assert info["protocol"] == wire.VERSION
    assert info["input_forms"] == ["pixels", "strokes", "png", "image", "binary"]
    assert info["limits"]["max_message_bytes"] == SETTINGS.max_message_bytes
    assert info["limits"]["submit_burst"] == SETTINGS.submit_burst
    assert isinstance(info["parameters"], int) and info["parameters"] > 0
    assert 0.98 < info["accuracy"]["mnist_test"] <= 1.0


def test_metrics_are_prometheus_text_and_count_http_predictions(client: TestClient) -> None:
    def http_messages() -> float:
        response = client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain; version=")
        for line in response.text.splitlines():
            if line.startswith('livedigit_messages_total{type="http"}'):
                return float(line.split()[-1])
        return 0.0

    before = http_messages()
    assert predict(client, {"strokes": ONE}).status_code == 200
    assert http_messages() == before + 1


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ("strokes", SEVEN),
        ("pixels", pixels_field(drawing())),
        ("png", png_field(drawing(64))),
        ("png", png_field(drawing(64), data_url=True)),
        ("image", legacy_field(drawing())),
    ],
)
def test_every_image_form_is_predicted(client: TestClient, form: str, field: Any) -> None:
    response = predict(client, {form: field})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    reply = response.json()
    assert reply["type"] == "prediction" and reply["id"] is None and reply["final"] is True
    assert reply["digit"] == 7 and len(reply["probabilities"]) == 10
    assert abs(sum(reply["probabilities"]) - 1.0) < 1e-3


def test_a_preview_is_the_28x28_image_the_model_saw(client: TestClient) -> None:
    reply = predict(client, {"strokes": ONE, "preview": True}).json()
    preview = np.frombuffer(base64.b64decode(reply["preview"]), dtype=np.uint8)
    assert reply["digit"] == 1 and preview.size == 28 * 28 and preview.max() > 200
    assert "preview" not in predict(client, {"strokes": ONE}).json()


def test_no_ink_is_empty(client: TestClient) -> None:
    response = predict(client, {"strokes": []})
    assert response.status_code == 200 and response.json() == {"type": "empty", "id": None, "final": True}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        pytest.param(b'{"strokes": [[[0, 0]', "application/json", 400, "bad_json", id="truncated-json"),
        pytest.param(b"\xff\xfe\x00", "application/json", 400, "bad_json", id="not-utf8"),
        pytest.param(b"", "application/json", 400, "bad_json", id="empty-body"),
        pytest.param(b"[1, 2]", "application/json", 400, "bad_json", id="json-array"),
        pytest.param(b"strokes=1", "application/x-www-form-urlencoded", 400, "bad_json", id="form-encoded"),
        pytest.param(b"{}", "application/json", 400, "bad_message", id="no-image"),
        pytest.param(b'{"svg": "<svg/>"}', "application/json", 400, "bad_message", id="unknown-image-form"),
        pytest.param(
            json.dumps({"strokes": ONE, "png": png_field(drawing())}).encode(),
            "application/json",
            400,
            "bad_message",
            id="two-image-forms",
        ),
        pytest.param(b'{"png": "not base64!"}', "application/json", 400, "bad_image", id="png-not-base64"),
        pytest.param(
            json.dumps({"png": base64.b64encode(b"GIF89a" + bytes(40)).decode()}).encode(),
            "application/json",
            400,
            "bad_image",
            id="gif-not-png",
        ),
        pytest.param(
            json.dumps({"pixels": {"width": 28, "height": 28, "data": ""}}).encode(),
            "application/json",
            400,
            "bad_image",
            id="pixels-too-few",
        ),
        pytest.param(b'{"strokes": "one"}', "application/json", 400, "bad_message", id="field-of-the-wrong-type"),
        pytest.param(b'{"strokes": [[[0, NaN]]]}', "application/json", 400, "bad_json", id="nan-is-not-json"),
        pytest.param(
            json.dumps({"pixels": {"width": 5000, "height": 1, "data": ""}}).encode(),
            "application/json",
            400,
            "bad_image",
            id="side-over-the-limit",
        ),
        pytest.param(
            b'{"strokes": [[[0, 0], [1, 1]]], "pad": "' + b"x" * SETTINGS.max_message_bytes + b'"}',
            "application/json",
            413,
            "bad_message",
            id="over-the-size-limit",
        ),
    ],
)
def test_predict_errors_are_documented_json_replies(
    client: TestClient, body: bytes, content_type: str, status: int, code: str
) -> None:
    response = predict(client, body, content_type)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    reply = response.json()
    assert reply["type"] == "error" and reply["id"] is None and reply["code"] == code
    assert isinstance(reply["message"], str) and reply["message"]


def test_a_body_declared_over_the_limit_is_refused_before_it_is_read(client: TestClient) -> None:
    response = client.post(
        "/api/predict",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": str(SETTINGS.max_message_bytes + 1)},
    )
    assert response.status_code == 413 and response.json()["code"] == "bad_message"


def test_the_body_is_json_whatever_its_content_type_and_unknown_fields_are_ignored(client: TestClient) -> None:
    for content_type in ("text/plain", "application/octet-stream", ""):
        reply = predict(client, {"strokes": ONE}, content_type).json()
        assert reply["type"] == "prediction" and reply["digit"] == 1, (content_type, reply)
    reply = predict(client, {"strokes": ONE, "type": "snapshot", "id": 9, "colour": "red"}).json()
    assert reply["type"] == "prediction" and reply["id"] is None and reply["final"] is True


def test_predictions_over_the_rate_are_429_with_when_to_retry() -> None:
    busy = Settings(submit_rate=0.5, submit_burst=2, busy_queue_share=0)  # the rate applies at once, as when busy
    with TestClient(create_app(busy), base_url=BASE_URL) as client:
        answers = [predict(client, {"strokes": ONE}) for _ in range(3)]
    assert [response.status_code for response in answers] == [200, 200, 429]
    refused = answers[2]
    assert refused.headers["content-type"] == "application/json" and refused.json()["code"] == "rate_limited"
    assert 0 < refused.json()["retry_after_ms"] <= 2000
    assert refused.headers["retry-after"] in ("1", "2")
