"""OpenTelemetry tracing: the real app served by uvicorn on a loopback port in this process (so that the
in-memory exporter sees its spans), called with a W3C ``traceparent``."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from service_support import BASE_ENV, MODEL, PNG, WEIGHTS_DIR, free_port, require_model

from service import Settings, create_app

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[str, InMemorySpanExporter]]:
    require_model()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(
        models=[MODEL],
        weights_dir=WEIGHTS_DIR,
        **{k.removeprefix("HASTE_").lower(): v for k, v in BASE_ENV.items() if k != "HASTE_LOG_LEVEL"},
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, tracer_provider=provider), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < end and thread.is_alive(), "the traced server did not become ready"
        time.sleep(0.05)
    try:
        yield url, exporter
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_server_span_continues_the_callers_trace_with_decode_queue_and_inference(traced, api):
    url, exporter = traced
    exporter.clear()
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    if api == "v1":
        response = httpx.post(f"{url}/v1/classify?level=high", content=PNG, headers=headers, timeout=60)
    else:
        body = {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(PNG).decode()]}],
            "parameters": {"level": "high"},
        }
        response = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(servers) == 1, [s.name for s in spans]
    root = servers[0]
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_ID and root.parent.is_remote
    children = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id}
    assert {"decode", "queue", "inference"} <= set(children), [s.name for s in spans]
    for name in ("decode", "queue", "inference"):
        assert children[name].context.trace_id == root.context.trace_id
        assert root.start_time <= children[name].start_time <= children[name].end_time <= root.end_time, name
    assert children["queue"].end_time <= children["inference"].start_time + 1_000_000  # queue, then the forward
    inference = children["inference"].attributes
    assert inference["haste.level"] == "high" and inference["haste.model"] == MODEL
    assert inference["haste.flops_dense"] > inference["haste.flops_executed"] > 0
    assert inference["haste.flops_saved"] == pytest.approx(
        inference["haste.flops_dense"] - inference["haste.flops_executed"]
    )
    assert inference["haste.batch_size"] == 1


def test_probes_are_not_traced(traced):
    url, exporter = traced
    exporter.clear()
    for path in ("/livez", "/readyz", "/metrics", "/v2/health/ready"):
        assert httpx.get(url + path, timeout=10).status_code == 200
    assert exporter.get_finished_spans() == ()
