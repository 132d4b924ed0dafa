"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST API) beside ``/v1/classify``: the same
decode -> batch -> model path (service.inference) and the same metrics, so that tritonclient, perf_analyzer
and KServe can talk to haste unchanged.

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     liveness, readiness (every model warm)
    GET  /v2/models/{name}[/versions/{v}]      model metadata: the tensors
    GET  /v2/models/{name}[/versions/{v}]/ready
    GET  /v2/models/{name}[/versions/{v}]/config   Triton's model configuration extension
    POST /v2/models/{name}[/versions/{v}]/infer

Input ``image``: BYTES, shape [N] (or [N, 1]), each element one encoded JPEG, PNG or WebP image, 1 <= N <=
HASTE_MAX_BATCH_SIZE. With the binary tensor extension (tritonclient's default) the elements are raw bytes,
each preceded by its 4-byte little-endian length; in JSON ``data`` they are base64 strings (JSON cannot
carry raw bytes). Outputs: ``probabilities`` FP32 [N, classes] (softmax scores) and ``labels`` BYTES [N, k]
(the top-k class names, best first); binary when asked (``binary_data`` on the output or
``binary_data_output`` on the request), JSON otherwise. Request ``parameters``: ``level``, ``top_k``,
``priority`` (1 runs first; 0 the default), ``timeout`` (microseconds in the queue, Triton's); headers
``X-Haste-Level`` and ``X-Haste-Top-K`` stand in for the first two for tools that can only send headers
(a parameter wins over its header). Response ``parameters``: ``level``, ``top_k``, and the request's
multiply-adds summed over its images: ``flops_dense``, ``flops_executed``, ``flops_saved``, ``saved_ratio``.

Errors have the protocol's shape ``{"error": "<message>"}`` (the request id in ``X-Request-ID``) with the
status ``/v1/classify`` would answer: 400 for a bad tensor name, datatype, shape, image, level or top_k,
404 for an unknown model or version, 401, 413, 503, 504 as there.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

import torch
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

import haste

from . import inference
from .auth import require_token
from .errors import STATUS, ServiceError, request_id_of
from .routes import MeteredRoute, service
from .served import ServedModel
from .state import ServiceState

INPUT = "image"
PROBABILITIES, LABELS = "probabilities", "labels"
OUTPUTS = (PROBABILITIES, LABELS)
#: The header of the binary tensor extension: the length of the JSON part of the body.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Room for the JSON part on top of the images, and base64's growth (4/3) with margin.
JSON_OVERHEAD = 64 * 1024
#: Request parameters the protocol or Triton's clients send that haste does not act on (accepted, ignored).
IGNORED_PARAMETERS = {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "headers"}
EXTENSIONS = ["binary_tensor_data", "model_configuration", "parameters", "schedule_policy"]


def oip_error(code: str, message: str, request: Request, headers: dict[str, str] | None = None) -> JSONResponse:
    """The protocol's error body ``{"error": message}`` with the status of ``code``."""
    return JSONResponse(
        {"error": message},
        status_code=STATUS[code],
        headers={**(headers or {}), "X-Request-ID": request_id_of(request)},
    )


def _protocol_errors(
    handler: Callable[[Request], Coroutine[Any, Any, Response]],
) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except ServiceError as exc:
            return oip_error(exc.code, exc.message, request, exc.headers)
        except RequestValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {}
            return oip_error("invalid_request", str(first.get("msg", "invalid request")), request)

    return answer


class OipRoute(MeteredRoute):
    """The infer route: metered as /v1/classify (haste_requests_total...), errors in the protocol's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return _protocol_errors(super().get_route_handler())


class OipInfoRoute(APIRoute):
    """Metadata, health and config routes: errors in the protocol's shape; not counted as requests."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return _protocol_errors(super().get_route_handler())


infer_router = APIRouter(route_class=OipRoute, tags=["open inference protocol"])
router = APIRouter(route_class=OipInfoRoute, tags=["open inference protocol"])


def _served(state: ServiceState, name: str, version: str | None) -> ServedModel:
    if name not in state.models:
        raise ServiceError("unknown_model", f"unknown model {name!r}; served: {', '.join(state.models)}")
    served = state.models[name]
    if version not in (None, "", served.version):
        raise ServiceError("unknown_model", f"model {name!r} has version {served.version!r} only; got {version!r}")
    return served


def _paths(suffix: str) -> list[str]:
    return [f"/v2/models/{{name}}{suffix}", f"/v2/models/{{name}}/versions/{{version}}{suffix}"]


def _get(paths: list[str], **kwargs: Any) -> Callable:
    """Register a GET (and HEAD) route on every path."""

    def register(endpoint: Callable) -> Callable:
        for i, path in enumerate(paths):
            router.add_api_route(path, endpoint, methods=["GET"], include_in_schema=i == 0, **kwargs)
            router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False, **kwargs)
        return endpoint

    return register


@_get(["/v2"])
async def server_metadata() -> dict:
    """Server metadata: name, version and the protocol extensions served."""
    return {"name": "haste", "version": haste.__version__, "extensions": EXTENSIONS}


@_get(["/v2/health/live"])
async def server_live() -> dict:
    """200 while the process serves HTTP (as /livez)."""
    return {"live": True}


@_get(["/v2/health/ready"])
async def server_ready(request: Request) -> dict:
    """200 once every model is warm at every level (as /readyz); 503 before."""
    service(request).check_ready()
    return {"ready": True}


@_get(_paths("/ready"))
async def model_ready(request: Request, name: str, version: str | None = None) -> dict:
    """200 once this model is warm at every level; 503 before."""
    state = service(request)
    served = _served(state, name, version)
    status = state.model_states().get(name)
    if status != "ready" or state.shutting_down:
        raise ServiceError(
            "not_ready", f"{name} is {status}", headers={"Retry-After": str(state.settings.retry_after_s)}
        )
    return {"name": name, "version": served.version, "ready": True}


@_get(_paths(""), dependencies=[Depends(require_token)])
async def model_metadata(request: Request, name: str, version: str | None = None) -> dict:
    """The model's tensors: input ``image`` BYTES [-1]; outputs ``probabilities`` FP32 [-1, classes] and
    ``labels`` BYTES [-1, -1] (top-k)."""
    served = _served(service(request), name, version)
    return {
        "name": name,
        "versions": [served.version],
        "platform": "haste_pytorch",
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(served.labels)]},
            {"name": LABELS, "datatype": "BYTES", "shape": [-1, -1]},
        ],
        "parameters": {"levels": ",".join(haste.LEVELS), "labels": ",".join(served.labels)},
    }


@_get(_paths("/config"), dependencies=[Depends(require_token)])
async def model_config(request: Request, name: str, version: str | None = None) -> dict:
    """Triton's model configuration: the tensors, and the batching and queue policy the server applies."""
    state = service(request)
    served = _served(state, name, version)
    s = state.settings
    return {
        "name": name,
        "platform": "haste_pytorch",
        "backend": "haste",
        "version_policy": {"specific": {"versions": [served.version]}},
        "max_batch_size": 0,  # the batch dimension is part of the shape; the server batches across requests
        "input": [{"name": INPUT, "data_type": "TYPE_STRING", "dims": [-1]}],
        "output": [
            {"name": PROBABILITIES, "data_type": "TYPE_FP32", "dims": [-1, len(served.labels)]},
            {"name": LABELS, "data_type": "TYPE_STRING", "dims": [-1, -1]},
        ],
        "dynamic_batching": {
            "preferred_batch_size": [s.max_batch_size],
            "max_queue_delay_microseconds": int(s.max_batch_delay_ms * 1000),
            "priority_levels": s.priority_levels,
            "default_priority_level": s.default_priority_level,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": int(s.request_deadline_ms * 1000),
                "allow_timeout_override": True,
                "max_queue_size": s.queue_size,
            },
        },
        "parameters": {
            "levels": {"string_value": ",".join(haste.LEVELS)},
            "default_level": {"string_value": s.default_level},
            "max_images_per_request": {"string_value": str(s.max_batch_size)},
        },
    }


# -- infer ------------------------------------------------------------------------------------------------


async def _read_body(request: Request, cap: int, deadline: float) -> bytes:
    """The whole body, at most ``cap`` bytes (413 past it), complete by ``deadline`` (504)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise ServiceError("payload_too_large", f"body is {int(length)} bytes; the limit is {cap} bytes")
    parts, total = [], 0
    stream = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), max(deadline - time.monotonic(), 0.0))
        except StopAsyncIteration:
            return b"".join(parts)
        except TimeoutError:
            raise ServiceError(
                "timeout",
                f"request deadline passed while the body was being received ({total} bytes in)",
                headers={"Connection": "close"},
            ) from None
        total += len(chunk)
        if total > cap:
            raise ServiceError("payload_too_large", f"body is larger than the {cap}-byte limit")
        parts.append(chunk)


def _split(request: Request, body: bytes) -> tuple[dict, bytes]:
    """(the JSON inference request, the binary part after it)."""
    header = request.headers.get(HEADER_LENGTH.lower())
    if header is None:
        json_part, binary = body, b""
    else:
        if not header.strip().isdigit() or int(header) > len(body):
            raise ServiceError(
                "invalid_request",
                f"{HEADER_LENGTH} must be the length of the JSON part of the body (0 to {len(body)}); got {header!r}",
            )
        json_part, binary = body[: int(header)], body[int(header) :]
    try:
        document = json.loads(json_part)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServiceError("invalid_request", f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ServiceError("invalid_request", "the inference request must be a JSON object")
    return document, binary


def _images(document: dict, binary: bytes, max_images: int) -> list[bytes]:
    """The encoded images of the request's one input ``image`` (BYTES, shape [N] or [N, 1])."""
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ServiceError("invalid_request", f"inputs must be a list of one tensor, {INPUT!r}; got {inputs!r:.200}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise ServiceError("invalid_request", f"unknown input tensor {tensor.get('name')!r}; the input is {INPUT!r}")
    if tensor.get("datatype") != "BYTES":
        raise ServiceError(
            "invalid_request", f"input {INPUT!r} must have datatype BYTES; got {tensor.get('datatype')!r}"
        )
    shape = tensor.get("shape")
    ok = isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    if not ok or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or not 1 <= shape[0] <= max_images:
        raise ServiceError(
            "invalid_request",
            f"input {INPUT!r} must have shape [N] or [N, 1] with N from 1 to {max_images} (HASTE_MAX_BATCH_SIZE); "
            f"got {shape!r}",
        )
    count = shape[0]
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ServiceError("invalid_request", f"parameters of input {INPUT!r} must be an object")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise ServiceError("invalid_request", f"input {INPUT!r} has both data and binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or size != len(binary):
            raise ServiceError(
                "invalid_request",
                f"binary_data_size of input {INPUT!r} is {size!r} but {len(binary)} bytes follow the JSON header",
            )
        images = _deserialize_bytes(binary)
    else:
        data = tensor.get("data")
        if isinstance(data, list) and all(isinstance(row, list) for row in data):
            data = [item for row in data for item in row]  # [[...], ...] for shape [N, 1]
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            raise ServiceError(
                "invalid_request",
                f"input {INPUT!r} needs data: a list of base64 strings (one encoded image each), or the binary "
                "tensor extension (parameters.binary_data_size)",
            )
        images = [_base64(item, i) for i, item in enumerate(data)]
    if len(images) != count:
        raise ServiceError("invalid_request", f"input {INPUT!r} has shape {shape!r} but carries {len(images)} elements")
    return images


def _deserialize_bytes(binary: bytes) -> list[bytes]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then that many bytes."""
    items, offset = [], 0
    while offset < len(binary):
        if offset + 4 > len(binary):
            raise ServiceError("invalid_request", f"binary data of input {INPUT!r} ends inside an element length")
        (n,) = struct.unpack_from("<I", binary, offset)
        offset += 4
        if offset + n > len(binary):
            raise ServiceError(
                "invalid_request", f"binary data of input {INPUT!r}: an element of {n} bytes overruns the data"
            )
        items.append(binary[offset : offset + n])
        offset += n
    return items


def _base64(text: str, index: int) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(
            "invalid_image", f"element {index} of input {INPUT!r} is not base64 (JSON data carries images as base64)"
        ) from None


def _outputs(document: dict) -> dict[str, bool]:
    """Requested output name -> binary?, in the order of OUTPUTS; all outputs when none is named."""
    parameters = document.get("parameters") or {}
    binary_default = bool(parameters.get("binary_data_output", False)) if isinstance(parameters, dict) else False
    requested = document.get("outputs")
    if requested is None:
        return dict.fromkeys(OUTPUTS, binary_default)
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise ServiceError("invalid_request", "outputs must be a list of objects with a name")
    chosen = {}
    for output in requested:
        name = output.get("name")
        if name not in OUTPUTS:
            raise ServiceError("invalid_request", f"unknown output tensor {name!r}; outputs: {', '.join(OUTPUTS)}")
        params = output.get("parameters") or {}
        if not isinstance(params, dict):
            raise ServiceError("invalid_request", f"parameters of output {name!r} must be an object")
        if params.get("classification"):
            raise ServiceError(
                "invalid_request", f"the classification extension is not served; read {LABELS!r} (top-k labels)"
            )
        chosen[name] = bool(params.get("binary_data", binary_default))
    return {name: chosen[name] for name in OUTPUTS if name in chosen}


def _parameter(document: dict, request: Request, key: str, header: str | None = None) -> object:
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ServiceError("invalid_request", "parameters must be an object")
    if key in parameters:
        return parameters[key]
    return request.headers.get(header) if header else None


def _top_k(value: object, labels: int) -> int:
    if value is None:
        return min(5, labels)
    number = value
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= labels:
        raise ServiceError("invalid_top_k", f"top_k must be an integer from 1 to {labels}; got {value!r}")
    return number


def _serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Classify the N images of input ``image`` at the requested level (see the module's description)."""
    state = service(request)
    settings = state.settings
    served = _served(state, name, version)
    request.state.metric_model = name
    state.check_ready()
    deadline = time.monotonic() + settings.request_deadline_s
    cap = settings.max_batch_size * (settings.max_bytes * 4 // 3 + 4) + JSON_OVERHEAD
    with state.admit(name):
        body = await _read_body(request, cap, deadline)
        document, binary = _split(request, body)
        level = _parameter(document, request, "level", "x-haste-level") or settings.default_level
        if not isinstance(level, str) or level not in haste.LEVELS:
            raise ServiceError("invalid_level", f"level must be one of {', '.join(haste.LEVELS)}; got {level!r}")
        request.state.metric_level = level
        top_k = _top_k(_parameter(document, request, "top_k", "x-haste-top-k"), len(served.labels))
        scheduling = inference.Scheduling(
            priority=inference.priority_of(
                _parameter(document, request, "priority"), settings.priority_levels, settings.default_priority_level
            ),
            timeout_s=inference.timeout_of(_parameter(document, request, "timeout"), 1e-6, "timeout (microseconds)"),
        )
        outputs = _outputs(document)
        images = _images(document, binary, settings.max_batch_size)
        for i, data in enumerate(images):
            if len(data) > settings.max_bytes:
                raise ServiceError(
                    "payload_too_large", f"image {i} is {len(data)} bytes; the limit is {settings.max_bytes} bytes"
                )
        batcher = state.batchers[name]
        with batcher.arriving(level):
            inputs, _ = await inference.decode(state, served, images, deadline, state.tracer)
            jobs = inference.submit(state, name, inputs, level, scheduling, deadline)
        results = await inference.wait(state, name, jobs, scheduling, state.tracer)
    return _response(document, request, served, level, top_k, outputs, results)


def _response(document, request, served, level, top_k, outputs, results) -> Response:
    probs = torch.stack([r.probs for r in results]).float()
    indices = probs.topk(top_k, dim=1).indices
    labels = [[served.labels[int(i)].encode() for i in row] for row in indices]
    dense = sum(r.flops_dense for r in results)
    executed = sum(r.flops_executed for r in results)
    reply: dict[str, Any] = {
        "model_name": served.name,
        "model_version": served.version,
        "parameters": {
            "level": level,
            "top_k": top_k,
            "flops_dense": dense,
            "flops_executed": executed,
            "flops_saved": dense - executed,
            "saved_ratio": (dense - executed) / dense if dense else 0.0,
            "plan": ",".join(dict.fromkeys(r.plan for r in results)),  # the plan entries the images ran
        },
        "outputs": [],
    }
    if isinstance(document.get("id"), str):
        reply["id"] = document["id"]
    n = len(results)
    binaries: list[bytes] = []
    for name, binary in outputs.items():
        if name == PROBABILITIES:
            tensor = {"name": name, "datatype": "FP32", "shape": [n, probs.shape[1]]}
            raw = probs.numpy().astype("<f4").tobytes() if binary else None
            values = None if binary else [float(v) for v in probs.flatten().tolist()]
        else:
            tensor = {"name": name, "datatype": "BYTES", "shape": [n, top_k]}
            raw = _serialize_bytes([label for row in labels for label in row]) if binary else None
            values = None if binary else [label.decode() for row in labels for label in row]
        if raw is not None:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            binaries.append(raw)
        else:
            tensor["data"] = values
        reply["outputs"].append(tensor)
    text = json.dumps(reply, allow_nan=False).encode()
    headers = {"X-Request-ID": request_id_of(request)}
    if not binaries:
        return Response(text, media_type="application/json", headers=headers)
    headers[HEADER_LENGTH] = str(len(text))
    return Response(text + b"".join(binaries), media_type="application/octet-stream", headers=headers)


for _path in _paths("/infer"):
    infer_router.add_api_route(
        _path,
        infer,
        methods=["POST"],
        dependencies=[Depends(require_token)],
        include_in_schema=_path == _paths("/infer")[0],
        summary="Infer (Open Inference Protocol v2)",
        response_class=Response,
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "A KServe v2 inference request (JSON, image data as base64 strings), or its JSON "
                "header followed by the binary tensor data (header Inference-Header-Content-Length).",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
