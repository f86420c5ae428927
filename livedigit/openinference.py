"""The Open Inference Protocol (KServe v2 REST, as Triton, KServe and MLServer speak it) on the server.

``/v2`` lets an existing client of those servers (``tritonclient.http``, KServe's ``InferenceRESTClient``,
plain JSON) use the model unchanged: it sends a ``[N, H, W]`` tensor of grayscale rasters (``UINT8``
0..255 or ``FP32`` 0..1, ink high) and gets ``[N, 10]`` probabilities back. This module only translates:
an infer request becomes a whole batch of submits (:class:`livedigit.protocol.Request`), which goes
through the one pipeline (:mod:`livedigit.pipeline`) with the same preprocessing, limits, rate limit
and fairness as every other image, and the batch's reply becomes the v2 response. The routes are in
:mod:`livedigit.app`; ``docs/protocol.md`` says what each answers.

The tensor data may be JSON (``data``, flat or nested, row-major) or binary (the ``binary_tensor_data``
extension: the JSON header, then the raw bytes, its length in the ``Inference-Header-Content-Length``
header), which is what ``tritonclient`` sends by default and which carries 64 digits in 50 kB instead of
about 170 kB of JSON. Outputs are JSON unless asked for as binary (``binary_data`` on an output, or
``binary_data_output`` on the request).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from livedigit import __version__
from livedigit.preprocess import Limits, Pixels
from livedigit.protocol import Request
from livedigit.runtime import CLASSES
from livedigit.wire import HTTP_STATUS, MAX_ID_LENGTH, ErrorCode, ReplyType

VERSION = "1"
"""The one model version the server has."""

INPUT = "images"
PROBABILITIES = "probabilities"
DIGIT = "digit"
OUTPUTS = (PROBABILITIES, DIGIT)

DATATYPES: dict[str, np.dtype[Any]] = {"UINT8": np.dtype(np.uint8), "FP32": np.dtype("<f4")}
"""The input datatypes accepted and their wire layout (binary data is little-endian, as the spec says)."""

HEADER_LENGTH = "inference-header-content-length"
"""The request and response header that says where the JSON ends and the binary tensor data begins."""

EXTENSIONS = ("binary_tensor_data",)


class V2Error(Exception):
    """A request refused before it reached the pipeline: an HTTP status and the ``{"error": ...}`` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Tensor(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class _Output(msgspec.Struct):
    name: str
    parameters: dict[str, Any] = {}


class _InferRequest(msgspec.Struct):
    inputs: list[_Tensor]
    id: str | msgspec.UnsetType = msgspec.UNSET
    parameters: dict[str, Any] = {}
    outputs: list[_Output] | msgspec.UnsetType = msgspec.UNSET


_DECODER = msgspec.json.Decoder(_InferRequest)
_INTEGERS = msgspec.json.Decoder(list[int])
_NUMBERS = msgspec.json.Decoder(list[float])
_ANY = msgspec.json.Decoder()


@dataclass(frozen=True)
class Infer:
    """A decoded infer request: the id to echo, the outputs asked for (name, binary), and the rasters."""

    id: str | None
    outputs: tuple[tuple[str, bool], ...]
    rasters: np.ndarray
    """``[N, H, W]``, uint8 or float32."""

    def request(self, limits: Limits) -> Request:
        """The pipeline's request: a batch admitted whole (a tensor cannot be half answered)."""
        items = tuple(Request("submit", None, Pixels(raster)) for raster in self.rasters)
        return Request("batch", self.id, items=items, whole=True)


def read_infer(body: bytes, header_length: str | None, limits: Limits, max_items: int) -> Infer:
    """Decode and check an infer request body; raise :class:`V2Error` (400) with what is wrong."""
    json_part, binary = body, b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise V2Error(400, f"{HEADER_LENGTH} is {header_length[:20]!r}; the body is {len(body)} bytes")
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        request = _DECODER.decode(json_part)
    except msgspec.ValidationError as exc:
        raise V2Error(400, f"not an inference request: {exc}") from None
    except (msgspec.DecodeError, RecursionError):
        raise V2Error(400, "the request is not valid JSON") from None
    if not isinstance(request.id, msgspec.UnsetType) and len(request.id) > MAX_ID_LENGTH:
        raise V2Error(400, f"id is {len(request.id)} characters; the limit is {MAX_ID_LENGTH}")
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
        names = ", ".join(repr(tensor.name[:MAX_ID_LENGTH]) for tensor in request.inputs) or "none"
        raise V2Error(400, f"this model takes one input, {INPUT!r} [N, H, W]; got {names}")
    rasters = _rasters(request.inputs[0], binary, limits, max_items)
    return Infer(None if isinstance(request.id, msgspec.UnsetType) else request.id, _outputs(request), rasters)


def _rasters(tensor: _Tensor, binary: bytes, limits: Limits, max_items: int) -> np.ndarray:
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise V2Error(400, f"datatype {tensor.datatype[:20]!r}; use UINT8 (0..255) or FP32 (0..1), ink high")
    if len(tensor.shape) != 3:
        raise V2Error(400, f"shape {tensor.shape[:8]}; the input is [N, H, W]")
    count, height, width = tensor.shape
    if not 1 <= count <= max_items:
        raise V2Error(400, f"{count} images in one request; send 1 to {max_items}")
    if not (1 <= height <= limits.max_side and 1 <= width <= limits.max_side):
        raise V2Error(400, f"images of {height}x{width}; each side must be 1 to {limits.max_side} px")
    size = count * height * width
    if "shared_memory_region" in tensor.parameters:
        raise V2Error(400, "shared memory is not supported; send the data in the request")
    binary_size = tensor.parameters.get("binary_data_size")
    if binary_size is not None:
        if binary_size != size * dtype.itemsize or len(binary) != binary_size:
            raise V2Error(
                400,
                f"binary data of {len(binary)} bytes (binary_data_size {binary_size}); a {tensor.shape} "
                f"{tensor.datatype} tensor is {size * dtype.itemsize}",
            )
        values = np.frombuffer(binary, dtype=dtype)
    elif isinstance(tensor.data, msgspec.UnsetType):
        raise V2Error(400, f"input {INPUT!r} has no data")
    else:
        values = _json_values(tensor.data, dtype, size)
    if dtype == np.uint8:
        return values.astype(np.uint8).reshape(count, height, width)
    if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
        raise V2Error(400, "FP32 pixels must be finite and lie in 0..1 (ink = 1)")
    return values.astype(np.float32).reshape(count, height, width)


def _json_values(data: msgspec.Raw, dtype: np.dtype[Any], size: int) -> np.ndarray:
    """The values of a JSON ``data`` array, flat (decoded straight into numbers) or nested in row-major
    order (checked one by one)."""
    integers = dtype == np.uint8
    try:
        values: list[Any] = (_INTEGERS if integers else _NUMBERS).decode(data)
        typed = True
    except msgspec.ValidationError:
        try:
            values = _flatten(_ANY.decode(data))
        except (TypeError, RecursionError):
            raise V2Error(400, "data must be an array of numbers (flat or nested)") from None
        typed = False
    if len(values) != size:
        raise V2Error(400, f"data holds {len(values)} values; the shape needs {size}")
    if integers:
        if not typed and not all(type(value) is int for value in values):
            raise V2Error(400, "UINT8 data must be integers 0..255")
        if values and not 0 <= min(values) <= max(values) <= 255:
            raise V2Error(400, "UINT8 data must be integers 0..255")
        return np.array(values, dtype=np.uint8)
    if not typed and not all(type(value) in (int, float) for value in values):
        raise V2Error(400, "FP32 data must be numbers")
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:
        raise V2Error(400, "FP32 pixels must be finite and lie in 0..1 (ink = 1)") from None


def _flatten(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("not an array")
    flat: list[Any] = []
    stack = [iter(value)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _outputs(request: _InferRequest) -> tuple[tuple[str, bool], ...]:
    """(name, binary) for each output to send, in the order asked."""
    binary_default = bool(request.parameters.get("binary_data_output", False))
    if isinstance(request.outputs, msgspec.UnsetType):
        return tuple((name, binary_default) for name in OUTPUTS)
    chosen = []
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise V2Error(400, f"unknown output {output.name[:MAX_ID_LENGTH]!r}; this model has {', '.join(OUTPUTS)}")
        if "classification" in output.parameters or "shared_memory_region" in output.parameters:
            raise V2Error(400, "classification and shared memory outputs are not supported")
        chosen.append((output.name, bool(output.parameters.get("binary_data", binary_default))))
    return tuple(chosen)


# Responses.


def response(model_name: str, infer: Infer, reply: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """The HTTP status, headers and body for the pipeline's ``reply`` to ``infer``.

    A refused request (rate limit, full queue) or any item that failed makes the whole request fail with
    that error's status and text; otherwise the results become the output tensors: ten probabilities per
    image, and the digit (``-1`` with a row of zeros for an image with no digit in it).
    """
    if reply["type"] == ReplyType.ERROR:
        return _error(reply)
    results = reply["results"]
    for index, result in enumerate(results):
        if result["type"] == ReplyType.ERROR:
            return _error(result, f"image {index}: ")
    probabilities = np.zeros((len(results), CLASSES), np.float32)
    digits = np.full(len(results), -1, np.int64)
    for index, result in enumerate(results):
        if result["type"] == ReplyType.PREDICTION:
            probabilities[index] = result["probabilities"]
            digits[index] = result["digit"]
    tensors: dict[str, tuple[str, list[int], np.ndarray]] = {
        PROBABILITIES: ("FP32", [len(results), CLASSES], probabilities),
        DIGIT: ("INT64", [len(results)], digits),
    }
    outputs, blobs = [], []
    for name, binary in infer.outputs:
        datatype, shape, values = tensors[name]
        output: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()
            output["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            output["data"] = values.ravel().tolist()
        outputs.append(output)
    body: dict[str, Any] = {"model_name": model_name, "model_version": VERSION, "outputs": outputs}
    if infer.id is not None:
        body["id"] = infer.id
    header = msgspec.json.encode(body)
    if not blobs:
        return 200, {"content-type": "application/json"}, header
    return (
        200,
        {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))},
        header + b"".join(blobs),
    )


def _error(reply: dict[str, Any], prefix: str = "") -> tuple[int, dict[str, str], bytes]:
    """The v2 error for an ``error`` reply: its status, and ``Retry-After`` for a passing refusal."""
    headers = {"content-type": "application/json"}
    if "retry_after_ms" in reply:
        headers["retry-after"] = str(math.ceil(reply["retry_after_ms"] / 1000.0))
    return HTTP_STATUS[ErrorCode(reply["code"])], headers, error_body(prefix + reply["message"])


def error_body(message: str) -> bytes:
    """The v2 error object."""
    return json.dumps({"error": message}).encode()


def server_metadata() -> dict[str, Any]:
    return {"name": "livedigit", "version": __version__, "extensions": list(EXTENSIONS)}


def model_metadata(model_name: str, runtime: str, max_side: int) -> dict[str, Any]:
    """What ``GET /v2/models/<name>`` answers: the tensors' names, datatypes and shapes (-1: any)."""
    return {
        "name": model_name,
        "versions": [VERSION],
        "platform": runtime,
        "inputs": [
            {
                "name": INPUT,
                "datatype": "UINT8",
                "shape": [-1, -1, -1],
                "parameters": {"also_accepted_datatypes": "FP32", "max_side": max_side},
            }
        ],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, CLASSES]},
            {"name": DIGIT, "datatype": "INT64", "shape": [-1]},
        ],
    }
