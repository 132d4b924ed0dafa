"""HTTP endpoints: classify, models, health and metrics."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

import haste

from . import inference
from .auth import require_token
from .body import read_image
from .errors import ServiceError, quote, request_id_of
from .metrics import NO_LABEL
from .responses import CLASSIFY_BODY, CLASSIFY_ERRORS, MODEL_ERRORS, READY_ERRORS, REQUEST_ID_HEADER
from .schemas import ClassifyResponse, ModelDetail, ModelList, Status
from .state import ServiceState

log = logging.getLogger("service")

#: Status counted for a request whose client closed the connection before it could be answered (nginx's
#: "client closed request"): not a server error, and no reply is sent (there is no one to read it).
CLIENT_CLOSED_REQUEST = 499


def service(request: Request) -> ServiceState:
    return request.app.state.service


class MeteredRoute(APIRoute):
    """Counts every classify request in haste_requests_total / haste_request_duration_seconds with its
    final status code, including query validation errors and unexpected failures. A client that closes
    the connection while its body is being read is counted with code 499 and logged at info level: the
    client went away, the server did nothing wrong (the 5xx ratio and its alert do not count it)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def metered(request: Request) -> Response:
            start = time.perf_counter()
            request.state.started = start
            request.state.metric_model = NO_LABEL
            request.state.metric_level = NO_LABEL
            code = 500
            try:
                response = await handler(request)
                code = response.status_code
                return response
            except ServiceError as exc:
                code = exc.status
                raise
            except RequestValidationError:
                code = 400
                raise
            except ClientDisconnect:
                code = CLIENT_CLOSED_REQUEST
                log.info(
                    "client closed the connection before the request was read: %s %s (request_id=%s)",
                    request.method,
                    request.url.path,
                    request_id_of(request),
                )
                return Response(status_code=CLIENT_CLOSED_REQUEST)
            finally:
                service(request).metrics.observe_request(
                    request.state.metric_model, request.state.metric_level, code, time.perf_counter() - start
                )

        return metered


classify_router = APIRouter(route_class=MeteredRoute, tags=["classify"])
router = APIRouter()


#: The classify query parameters and what each accepts (for error messages).
QUERY = {
    "level": ("invalid_level", f"one of {', '.join(haste.LEVELS)}"),
    "top_k": ("invalid_top_k", "a positive integer, at most the model's label count"),
    "model": ("invalid_request", "one of the served models"),
    "priority": ("invalid_priority", "an integer from 0 (the default) to the priority levels; 1 runs first"),
    "timeout_ms": ("invalid_timeout", "a non-negative number of milliseconds (0: none)"),
}


async def strict_query(request: Request) -> None:
    """400 for a classify query FastAPI would otherwise half-accept: an unknown parameter name (a typo
    such as ``levle`` would silently get the default), a parameter given twice (FastAPI keeps the last),
    or an empty value (``level=`` would get the default). A coroutine, as ``auth.require_token``: no thread hop."""
    items = request.query_params.multi_items()
    unknown = sorted({key for key, _ in items} - set(QUERY))
    if unknown:
        raise ServiceError(
            "invalid_request",
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(quote, unknown))}; "
            f"accepted: {', '.join(QUERY)}",
        )
    counts = Counter(key for key, _ in items)
    served = ", ".join(service(request).models) or ", ".join(service(request).settings.models)
    for key, value in items:
        code, accepted = QUERY[key]
        if key == "model":
            accepted = f"one of {served}"
        if counts[key] > 1:
            raise ServiceError(code, f"{key} is given {counts[key]} times; give it once, {accepted}")
        if not value.strip():
            raise ServiceError(code, f"{key} is empty; leave it out for the default or give {accepted}")


async def classify(
    request: Request,
    # level is an enum in the OpenAPI document (docs.finish) but checked in the body, after the model, so
    # that haste_requests_total counts a request with an invalid level under its model.
    level: str | None = Query(
        None, description="The compression level (default: the configured level).", examples=["high"]
    ),
    top_k: int = Query(5, ge=1, description="Number of classes returned, 1 to the model's label count.", examples=[3]),
    model: str | None = Query(
        None, description="A served model (default: the configured one).", examples=["fmnist-resnet34"]
    ),
    priority: str | None = Query(
        None,
        description="Priority within the level's queue (Triton's): 1 runs first, up to HASTE_PRIORITY_LEVELS; "
        "0 or none is HASTE_DEFAULT_PRIORITY_LEVEL.",
        examples=["1"],
    ),
    timeout_ms: str | None = Query(
        None,
        description="Longest the request may wait in the queue, in ms (Triton's timeout; capped by the request "
        "deadline; 0: none). Past it, the request is answered 504 and never runs.",
        examples=["50"],
    ),
) -> ClassifyResponse:
    """Classify one image at the requested compression level."""
    state = service(request)
    settings = state.settings
    name = model or settings.default_model
    if name not in state.models:
        raise ServiceError("unknown_model", f"unknown model {quote(name)}; served: {', '.join(state.models)}")
    request.state.metric_model = name
    level = level or settings.default_level
    if level not in haste.LEVELS:
        raise ServiceError("invalid_level", f"level must be one of {', '.join(haste.LEVELS)}; got {quote(level)}")
    request.state.metric_level = level
    served = state.models[name]
    if top_k > len(served.labels):
        raise ServiceError("invalid_top_k", f"top_k must be from 1 to {len(served.labels)} for {name}; got {top_k}")
    scheduling = inference.Scheduling(
        priority=inference.priority_of(priority, settings.priority_levels, settings.default_priority_level),
        timeout_s=inference.timeout_of(timeout_ms, 1e-3, "timeout_ms"),
    )
    state.check_ready()
    start = request.state.started
    deadline = time.monotonic() + settings.request_deadline_s
    batcher = state.batchers[name]
    with state.admit(name):
        with batcher.arriving(level):
            data = await read_image(request, settings.max_bytes, deadline)
            [inputs], decode_s = await inference.decode(state, served, [data], deadline, state.tracer)
            jobs = inference.submit(state, name, [inputs], level, scheduling, deadline)
        [result] = await inference.wait(state, name, jobs, scheduling, state.tracer)
    scores, indices = result.probs.topk(top_k)
    saved = result.flops_dense - result.flops_executed
    return ClassifyResponse(
        request_id=request_id_of(request),
        model=name,
        model_version=served.version,
        level=level,
        plan=result.plan,
        predictions=[
            {"index": i, "label": served.labels[i], "score": s} for s, i in zip(scores.tolist(), indices.tolist())
        ],
        compute={
            "flops_dense": result.flops_dense,
            "flops_executed": result.flops_executed,
            "flops_saved": saved,
            "saved_ratio": saved / result.flops_dense if result.flops_dense else 0.0,
        },
        timing_ms={
            "queue": round(result.queue_s * 1000, 3),
            "decode": round(decode_s * 1000, 3),
            "inference": round(result.inference_s * 1000, 3),
            "total": round((time.perf_counter() - start) * 1000, 3),
        },
    )


for _path in ("/v1/classify", "/classify"):
    classify_router.add_api_route(
        _path,
        classify,
        methods=["POST"],
        response_model=ClassifyResponse,
        responses={200: {"headers": REQUEST_ID_HEADER}, **CLASSIFY_ERRORS},
        dependencies=[Depends(require_token), Depends(strict_query)],
        openapi_extra=CLASSIFY_BODY,
        summary="Classify an image" + (" (alias of /v1/classify)" if _path == "/classify" else ""),
    )
    # `curl -T image.jpg URL` uploads a raw body with PUT (SERVICE.md's "curl -T style"): the same handler
    classify_router.add_api_route(
        _path, classify, methods=["PUT"], response_model=ClassifyResponse,
        dependencies=[Depends(require_token), Depends(strict_query)], include_in_schema=False,
    )  # fmt: skip


def get(path: str, **kwargs: Any) -> Callable:
    """Register a GET route that also answers HEAD (same status and headers, no body: load balancers
    probe with HEAD); the HEAD twin is left out of the OpenAPI document."""

    def register(endpoint: Callable) -> Callable:
        router.add_api_route(path, endpoint, methods=["GET"], **kwargs)
        router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False, **kwargs)
        return endpoint

    return register


@get("/v1/models", response_model=ModelList, dependencies=[Depends(require_token)], tags=["models"])
async def list_models(request: Request) -> dict:
    """The served models, the default model and level, and the level names."""
    state = service(request)
    return {
        "default_model": state.settings.default_model,
        "default_level": state.settings.default_level,
        "levels": list(haste.LEVELS),
        "models": [m.summary() for m in state.models.values()],
    }


@get(
    "/v1/models/{name:path}",
    response_model=ModelDetail,
    responses=MODEL_ERRORS,
    dependencies=[Depends(require_token)],
    tags=["models"],
)
async def get_model(request: Request, name: str) -> dict:
    """Architecture, version, input spec and preprocessing, labels, device, and the per-level table
    (hyperplanes, calibrated accuracy drop and FLOPs saving, latency measured after warm-up, saving on
    served images)."""
    state = service(request)
    if name not in state.models:
        raise ServiceError("unknown_model", f"unknown model {quote(name)}; served: {', '.join(state.models)}")
    return state.models[name].describe()


@get("/livez", response_model=Status, response_model_exclude_none=True, tags=["health"])
async def livez() -> dict:
    """The process is alive and serving HTTP (independent of the models)."""
    return {"status": "alive"}


@get("/readyz", response_model=Status, responses=READY_ERRORS, tags=["health"])
async def readyz(request: Request) -> dict:
    """200 once every model is loaded and warmed at every level; 503 not_ready before."""
    state = service(request)
    state.check_ready()
    return {"status": "ready", "models": state.model_states()}


@get("/metrics", tags=["health"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    body, content_type = service(request).metrics.render()
    return Response(body, media_type=content_type)
