"""OpenTelemetry tracing, off unless ``HASTE_TRACING`` is ``console`` or ``otlp`` (or a test passes its own
tracer provider). When on, opentelemetry-instrumentation-fastapi makes one server span per request (a child
of the caller's ``traceparent``, W3C trace context), and the classify and infer handlers add three child
spans: ``decode`` (body to model input), ``queue`` (waiting for a batch) and ``inference`` (the batch's
forward pass), with the model, level, batch size and per-image FLOPs as attributes. Probes, readiness and
/metrics are not traced.

    HASTE_TRACING=otlp OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 OTEL_SERVICE_NAME=haste haste serve
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI
from opentelemetry import trace

from .settings import Settings

#: Paths left untraced (opentelemetry's excluded_urls: comma-separated regular expressions).
EXCLUDED = "/livez,/readyz,/metrics,/v2/health/.*,/v2/models/[^/]+/ready,/docs,/redoc,/openapi.json"


def install(app: FastAPI, settings: Settings, provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """Instrument ``app`` when tracing is configured (or ``provider`` is given) and return the tracer of the
    handlers' spans; a no-op tracer otherwise (its spans cost next to nothing and export nothing)."""
    if provider is None and settings.tracing == "off":
        return trace.NoOpTracer()
    if provider is None:
        provider = _provider(settings)
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls=EXCLUDED, exclude_spans=["receive", "send"]
    )
    return provider.get_tracer("haste.service")


def _provider(settings: Settings) -> trace.TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "haste"}))  # OTEL_SERVICE_NAME wins
    if settings.tracing == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


@contextmanager
def span(tracer: trace.Tracer, name: str, **attributes: object) -> Iterator[trace.Span]:
    """A child span of the current one around the block."""
    with tracer.start_as_current_span(name, attributes={f"haste.{k}": v for k, v in attributes.items()}) as s:
        yield s


def wall_ns(monotonic_s: float) -> int:
    """A ``time.monotonic()`` instant as the wall-clock nanoseconds OpenTelemetry timestamps use."""
    return time.time_ns() - int((time.monotonic() - monotonic_s) * 1e9)


def record(tracer: trace.Tracer, name: str, start_s: float, end_s: float, **attributes: object) -> None:
    """A finished child span of the current one, from ``start_s`` to ``end_s`` (``time.monotonic()``
    seconds): the queue and inference phases, which happen on the model's worker thread."""
    s = tracer.start_span(
        name, start_time=wall_ns(start_s), attributes={f"haste.{k}": v for k, v in attributes.items()}
    )
    s.end(end_time=wall_ns(end_s))
