"""The Open Inference Protocol (KServe v2 REST) against a real server: NVIDIA's own client
(``tritonclient.http``) unchanged, plain JSON as the specification writes it, and the error paths."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from wsutil import drawing, http_json, pixels_field

tritonclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")

MODEL = "livedigit-cnn"


def rasters() -> np.ndarray:
    """Three 28x28 rasters, ink high: a 7, the same 7 mirrored, and a blank."""
    seven = drawing()
    return np.stack([seven, seven[:, ::-1].copy(), np.zeros((28, 28), np.uint8)])


def reference(url: str, images: np.ndarray) -> list[dict]:
    """What ``POST /api/predict`` answers for each image: the same pipeline's other door."""
    return [http_json(url + "/api/predict", {"pixels": pixels_field(image)})[2] for image in images]


def test_tritonclient_health_metadata_and_infer(server) -> None:  # type: ignore[no-untyped-def]
    client = tritonclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert not client.is_model_ready("another-model")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
    assert metadata["inputs"][0] == {
        "name": "images", "datatype": "UINT8", "shape": [-1, -1, -1], "parameters": metadata["inputs"][0]["parameters"],
    }  # fmt: skip
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("probabilities", "FP32", [-1, 10]),
        ("digit", "INT64", [-1]),
    ]
    images = rasters()
    expected = reference(server.http_url, images)
    # UINT8 in the binary extension (the client's default), every output in binary.
    tensor = tritonclient.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    result = client.infer(MODEL, [tensor], request_id="r-1")
    assert result.get_response()["id"] == "r-1" and result.get_response()["model_name"] == MODEL
    probabilities, digits = result.as_numpy("probabilities"), result.as_numpy("digit")
    assert probabilities.shape == (3, 10) and probabilities.dtype == np.float32
    assert digits.tolist() == [expected[0]["digit"], expected[1]["digit"], -1]
    np.testing.assert_allclose(probabilities[:2], [e["probabilities"] for e in expected[:2]], atol=1e-5)
    assert expected[2]["type"] == "empty" and not probabilities[2].any()
    # FP32 0..1 as JSON, one output asked for as JSON.
    tensor = tritonclient.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images.astype(np.float32) / 255.0, binary_data=False)
    wanted = [tritonclient.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer(MODEL, [tensor], outputs=wanted)
    assert [output["name"] for output in result.get_response()["outputs"]] == ["probabilities"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, atol=1e-4)


def test_tritonclient_sees_the_errors(server) -> None:  # type: ignore[no-untyped-def]
    from tritonclient.utils import InferenceServerException

    client = tritonclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("another-model")
    assert missing.value.status() == "404" and "livedigit-cnn" in missing.value.message()
    tensor = tritonclient.InferInput("images", [1, 2000, 28], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 2000, 28), np.uint8))
    with pytest.raises(InferenceServerException) as too_big:
        client.infer(MODEL, [tensor])
    assert too_big.value.status() == "400" and "2000x28" in too_big.value.message()


def test_plain_json_as_the_specification_writes_it(server) -> None:  # type: ignore[no-untyped-def]
    images = rasters()[:2]
    expected = reference(server.http_url, images)
    url = f"{server.http_url}/v2/models/{MODEL}/versions/1/infer"
    for data in (images.ravel().tolist(), images.tolist()):  # flat, and nested row-major
        tensor = {"name": "images", "shape": [2, 28, 28], "datatype": "UINT8", "data": data}
        response = httpx.post(url, json={"id": "x", "inputs": [tensor]})
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["id"] == "x" and body["model_version"] == "1"
        [probabilities, digits] = body["outputs"]
        assert probabilities["shape"] == [2, 10] and probabilities["datatype"] == "FP32"
        np.testing.assert_allclose(
            np.reshape(probabilities["data"], (2, 10)), [e["probabilities"] for e in expected], atol=1e-5
        )
        assert digits["data"] == [e["digit"] for e in expected]
    assert httpx.get(f"{server.http_url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.http_url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{server.http_url}/v2/models/{MODEL}/ready").status_code == 200
    assert httpx.get(f"{server.http_url}/v2/models/{MODEL}/versions/2").status_code == 404


@pytest.mark.parametrize(
    ("request_body", "status", "expected"),
    [
        (b"{", 400, "not valid JSON"),
        ({"inputs": []}, 400, "one input"),
        ({"inputs": [{"name": "x", "shape": [1, 1, 1], "datatype": "UINT8", "data": [0]}]}, 400, "'images'"),
        ({"inputs": [{"name": "images", "shape": [1, 1, 1], "datatype": "INT8", "data": [0]}]}, 400, "UINT8"),
        ({"inputs": [{"name": "images", "shape": [1, 1], "datatype": "UINT8", "data": [0]}]}, 400, "[N, H, W]"),
        ({"inputs": [{"name": "images", "shape": [65, 1, 1], "datatype": "UINT8", "data": [0] * 65}]}, 400, "1 to 64"),
        ({"inputs": [{"name": "images", "shape": [1, 2, 2], "datatype": "UINT8", "data": [0] * 3}]}, 400, "needs 4"),
        ({"inputs": [{"name": "images", "shape": [1, 1, 1], "datatype": "UINT8", "data": [256]}]}, 400, "0..255"),
        ({"inputs": [{"name": "images", "shape": [1, 1, 1], "datatype": "UINT8", "data": [0.5]}]}, 400, "0..255"),
        ({"inputs": [{"name": "images", "shape": [1, 1, 1], "datatype": "FP32", "data": [1.5]}]}, 400, "0..1"),
        ({"inputs": [{"name": "images", "shape": [1, 1, 1], "datatype": "FP32", "data": ["a"]}]}, 400, "numbers"),
        ({"inputs": [{"name": "images", "shape": [1, 1, 1], "datatype": "UINT8"}]}, 400, "no data"),
        (
            {
                "inputs": [{"name": "images", "shape": [1, 1, 1], "datatype": "UINT8", "data": [0]}],
                "outputs": [{"name": "logits"}],
            },
            400,
            "unknown output",
        ),
        (
            {"inputs": [{"name": "images", "shape": [1, 1, 1], "datatype": "UINT8", "data": [0] * 30_000}]},
            413,
            "larger than",
        ),
    ],
)
def test_v2_errors_are_the_error_object_with_a_status(server, request_body, status, expected) -> None:  # type: ignore[no-untyped-def]
    content = request_body if isinstance(request_body, bytes) else json.dumps(request_body).encode()
    response = httpx.post(f"{server.http_url}/v2/models/{MODEL}/infer", content=content)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and expected in response.json()["error"], response.text


def test_v2_refusals_carry_retry_after(app_server) -> None:  # type: ignore[no-untyped-def]
    """A busy server's rate limit is 429, a full queue 503, both with Retry-After; a request is admitted
    whole or not at all, so a refused one leaves nothing queued."""
    image = {"name": "images", "shape": [2, 28, 28], "datatype": "UINT8", "data": rasters()[:2].ravel().tolist()}
    limited = app_server(submit_rate=0.5, submit_burst=3, busy_queue_share=0)
    url = f"{limited.http_url}/v2/models/{MODEL}/infer"
    assert httpx.post(url, json={"inputs": [image]}).status_code == 200
    refused = httpx.post(url, json={"inputs": [image]})
    assert refused.status_code == 429 and "submits per second" in refused.json()["error"]
    assert refused.headers["retry-after"] in ("1", "2", "3")
    full = app_server(max_pending_submits=4, client_queue_share=0.25)  # one per address
    response = httpx.post(f"{full.http_url}/v2/models/{MODEL}/infer", json={"inputs": [image]})
    assert response.status_code == 503 and "busy" in response.json()["error"]
    assert int(response.headers["retry-after"]) >= 1
    assert full.service.batcher.queued == (0, 0)
