"""HTTP endpoints: classify, models, health and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

import haste

from .batching import Job
from .body import read_image
from .decode import to_input
from .errors import ServiceError, request_id_of
from .metrics import NO_LABEL
from .schemas import ClassifyResponse, ErrorResponse, ModelDetail, ModelList, Status
from .state import ServiceState


def service(request: Request) -> ServiceState:
    return request.app.state.service


class MeteredRoute(APIRoute):
    """Counts every classify request in haste_requests_total / haste_request_duration_seconds with its
    final status code, including query validation errors and unexpected failures."""

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
            finally:
                service(request).metrics.observe_request(
                    request.state.metric_model, request.state.metric_level, code, time.perf_counter() - start
                )

        return metered


ERRORS = {
    400: {"model": ErrorResponse, "description": "invalid_image, invalid_level, invalid_top_k, invalid_request"},
    404: {"model": ErrorResponse, "description": "unknown_model"},
    413: {"model": ErrorResponse, "description": "payload_too_large (bytes or pixels)"},
    415: {"model": ErrorResponse, "description": "unsupported_media_type"},
    503: {"model": ErrorResponse, "description": "queue_full or not_ready (with Retry-After)"},
    504: {"model": ErrorResponse, "description": "timeout: the request deadline passed before it ran"},
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image: multipart field `file` (`curl -F file=@shoe.png`), or the raw bytes with an "
        "image Content-Type (`curl -H 'Content-Type: image/png' --data-binary @shoe.png`). JPEG, PNG or WebP.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "image/jpeg": _BINARY,
            "image/png": _BINARY,
            "image/webp": _BINARY,
        },
    }
}

classify_router = APIRouter(route_class=MeteredRoute, tags=["classify"])
router = APIRouter()


async def classify(
    request: Request,
    level: str | None = Query(
        None, description="off, low, medium or high (default: the configured level).", examples=["high"]
    ),
    top_k: int = Query(5, ge=1, description="Number of classes returned, 1 to the model's label count.", examples=[3]),
    model: str | None = Query(
        None, description="A served model (default: the configured one).", examples=["fmnist-resnet34"]
    ),
) -> ClassifyResponse:
    """Classify one image at the requested compression level."""
    state = service(request)
    settings = state.settings
    name = model or settings.default_model
    if name not in state.models:
        raise ServiceError("unknown_model", f"unknown model {name!r}; served: {', '.join(state.models)}")
    request.state.metric_model = name
    level = level or settings.default_level
    if level not in haste.LEVELS:
        raise ServiceError("invalid_level", f"level must be one of {', '.join(haste.LEVELS)}; got {level!r}")
    request.state.metric_level = level
    served = state.models[name]
    if top_k > len(served.labels):
        raise ServiceError("invalid_top_k", f"top_k must be from 1 to {len(served.labels)} for {name}; got {top_k}")
    state.check_ready()
    start = request.state.started
    deadline = time.monotonic() + settings.request_deadline_s
    batcher = state.batchers[name]
    with state.admit(name):
        with batcher.arriving(level):
            data = await read_image(request, settings.max_bytes)
            t0 = time.perf_counter()
            loop = asyncio.get_running_loop()
            inputs = await loop.run_in_executor(state.decoder, to_input, data, served.spec, state.limits)
            decode_s = time.perf_counter() - t0
            if time.monotonic() >= deadline:
                raise ServiceError("timeout", "request deadline passed while the image was read and decoded")
            job = Job(inputs=inputs, level=level, deadline=deadline, future=loop.create_future(), loop=loop)
            batcher.submit(job)
        try:
            result = await asyncio.wait_for(job.future, timeout=max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            job.abandoned = True
            raise ServiceError("timeout", f"request deadline of {settings.request_deadline_ms:g} ms passed") from None
        except asyncio.CancelledError:
            job.abandoned = True
            raise
    scores, indices = result.probs.topk(top_k)
    saved = result.flops_dense - result.flops_executed
    return ClassifyResponse(
        request_id=request_id_of(request),
        model=name,
        model_version=served.version,
        level=level,
        predictions=[
            {"index": int(i), "label": served.labels[int(i)], "score": float(s)} for s, i in zip(scores, indices)
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
        responses=ERRORS,
        openapi_extra=CLASSIFY_BODY,
        summary="Classify an image" + (" (alias of /v1/classify)" if _path == "/classify" else ""),
    )


@router.get("/v1/models", response_model=ModelList, tags=["models"])
async def list_models(request: Request) -> dict:
    """The served models, the default model and level, and the level names."""
    state = service(request)
    return {
        "default_model": state.settings.default_model,
        "default_level": state.settings.default_level,
        "levels": list(haste.LEVELS),
        "models": [m.summary() for m in state.models.values()],
    }


@router.get(
    "/v1/models/{name:path}", response_model=ModelDetail, responses={404: {"model": ErrorResponse}}, tags=["models"]
)
async def get_model(request: Request, name: str) -> dict:
    """Architecture, version, input spec and preprocessing, labels, device, and the per-level table
    (hyperplanes, calibrated accuracy drop and FLOPs saving, warm-up latency, saving on served images)."""
    state = service(request)
    if name not in state.models:
        raise ServiceError("unknown_model", f"unknown model {name!r}; served: {', '.join(state.models)}")
    return state.models[name].describe()


@router.get("/livez", response_model=Status, response_model_exclude_none=True, tags=["health"])
async def livez() -> dict:
    """The process is alive and serving HTTP (independent of the models)."""
    return {"status": "alive"}


@router.get("/readyz", response_model=Status, responses={503: {"model": ErrorResponse}}, tags=["health"])
async def readyz(request: Request) -> dict:
    """200 once every model is loaded and warmed at every level; 503 not_ready before."""
    state = service(request)
    state.check_ready()
    return {"status": "ready", "models": state.model_states()}


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    body, content_type = service(request).metrics.render()
    return Response(body, media_type=content_type)
