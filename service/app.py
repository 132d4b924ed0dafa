"""The app factory: ``create_app(settings)`` builds a FastAPI app whose lifespan loads the configured models
once, converts them with ``haste.convert``, puts them on the device and starts one batching worker per
model; the workers warm every level, after which /readyz answers 200.

    uvicorn --factory service.app:create_app      # or: haste serve

One process per container: run a single uvicorn worker (the metrics registry is per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI
from opentelemetry.trace import TracerProvider

import haste

from . import docs, errors, oip, registry, threads, tracing
from .batching import Batcher
from .metrics import Metrics
from .middleware import RequestIdMiddleware
from .routes import classify_router, router
from .settings import Settings
from .state import ServiceState

log = logging.getLogger("service")

DESCRIPTION = """\
Image classification with HASTE-compressed CNNs: every request picks its own accuracy/compute level
(`off`, `low`, `medium`, `high`) and gets back its predictions, the level applied, the multiply-adds it
cost and saved, and where the time went. Errors share one JSON shape
`{"error": ..., "code": ..., "request_id": ...}` (statuses and codes below; unknown paths are 404
`not_found`, other methods 405 `method_not_allowed`); every reply carries `X-Request-ID`. Every GET
route also answers HEAD.

    curl -F file=@shoe.png 'http://127.0.0.1:8000/v1/classify?level=high&top_k=3'
"""


async def _start(state: ServiceState) -> None:
    settings = state.settings
    threads.one_thread()  # the event loop's thread: the models' worker threads run inference (service.threads)
    device = registry.resolve_device(settings.device)
    for name in settings.models:
        served = await asyncio.to_thread(threads.loaded_with_one_thread, registry.load, name, settings, device)
        state.models[name] = served
        state.metrics.model_info.labels(name, served.version, str(device)).set(1)
        state.metrics.queue_depth.labels(name).set(0)
        state.metrics.inflight.labels(name).set(0)
        for level in haste.LEVELS:
            for metric in (
                state.metrics.queue_duration,
                state.metrics.inference_duration,
                state.metrics.batch_size,
                state.metrics.flops_saved_ratio,
                state.metrics.images,
                state.metrics.batches,
                state.metrics.flops_dense,
                state.metrics.flops_executed,
                state.metrics.flops_saved,
            ):
                metric.labels(name, level)
    state.decoder = ThreadPoolExecutor(
        settings.decode_threads, thread_name_prefix="haste-decode", initializer=threads.one_thread
    )
    for name, served in state.models.items():
        state.batchers[name] = Batcher(served, settings, state.metrics, state.warm_lock)
        state.batchers[name].start()
    state.loading = False


async def _stop(state: ServiceState) -> None:
    state.shutting_down = True
    await asyncio.to_thread(lambda: [b.stop() for b in state.batchers.values()])
    if state.decoder is not None:
        state.decoder.shutdown(wait=False, cancel_futures=True)


def create_app(settings: Settings | None = None, tracer_provider: TracerProvider | None = None) -> FastAPI:
    """A new app with its own state and metrics registry; models load when its lifespan starts. Tracing
    (service.tracing) is on when HASTE_TRACING says so, or with ``tracer_provider`` (its spans go there)."""
    settings = settings or Settings()
    state = ServiceState(settings=settings, metrics=Metrics(settings.max_batch_size))
    state.metrics.ready.set_function(lambda: 1.0 if state.ready else 0.0)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _start(state)
        try:
            yield
        finally:
            await _stop(state)

    app = FastAPI(
        title="haste",
        version=haste.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # docs.install serves /docs and /redoc with local assets
        redoc_url=None,
    )
    app.state.service = state
    docs.install(app, settings)
    errors.install(app)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(classify_router)
    app.include_router(router)
    app.include_router(oip.infer_router)
    app.include_router(oip.router)
    state.tracer = tracing.install(app, settings, tracer_provider)
    return app
