"""Per-request priority and timeout (Triton's semantics) on both APIs, and the optional bearer token, on a
real server whose worker is held on purpose: a level-off request waits for a companion that is still being
uploaded (a stalled upload of the same level), so that requests of level high pile up behind it; closing
the stalled connection lets the worker go."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from service_support import MODEL, PNG, Server, assert_error, metrics, require_model, sample
from tritonclient.utils import InferenceServerException

TOKEN = "s3cret-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # pass tritonclient a copy: it adds its own headers to the dict
MAX_BATCH = 4


@pytest.fixture(scope="module")
def held() -> Iterator[Server]:
    require_model()
    srv = Server(
        max_batch_size=MAX_BATCH,
        max_batch_delay_ms=8000,  # the held level-off batch waits this long for its companion at most
        request_deadline_ms=30000,
        queue_size=64,
        api_token=TOKEN,
    )
    try:
        srv.wait()
        yield srv
    finally:
        srv.stop()


def _depth(client: httpx.Client) -> float:
    return sample(metrics(client), "haste_queue_depth", model=MODEL)


def _until(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.01)


def test_priority_runs_in_the_first_batch_and_a_1ms_timeout_answers_504(held):
    client = httpx.Client(base_url=held.url, timeout=60, headers=AUTH)
    before = metrics(client)
    # hold the worker: a level-off request will wait for the companion this stalled level-off upload announces
    head = (
        f"POST /v1/classify?level=off HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(PNG)}\r\n\r\n"
    )
    stalled = socket.create_connection(("127.0.0.1", held.port), timeout=30)
    stalled.sendall(head.encode() + PNG[:10])
    order: list[str] = []
    lock = threading.Lock()
    replies: dict[str, httpx.Response] = {}

    def classify(tag: str, **params) -> None:
        response = httpx.post(f"{held.url}/v1/classify", params=params, content=PNG, headers=AUTH, timeout=60)
        with lock:
            order.append(tag)
            replies[tag] = response

    first = threading.Thread(target=classify, args=("off",), kwargs={"level": "off"})
    first.start()
    _until(lambda: _depth(client) == 1)
    others = [threading.Thread(target=classify, args=(f"high-{i}",), kwargs={"level": "high"}) for i in range(20)]
    for t in others:
        t.start()
    _until(lambda: _depth(client) == 21)

    tc = triton.InferenceServerClient(held.url.removeprefix("http://"), network_timeout=60.0)
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([PNG], dtype=object))
    result: dict[str, object] = {}

    def prioritised() -> None:  # a client of its own: tritonclient's connections belong to one thread
        own = triton.InferenceServerClient(held.url.removeprefix("http://"), network_timeout=60.0)
        result["reply"] = own.infer(MODEL, [tensor], parameters={"level": "high"}, priority=1, headers=dict(AUTH))
        with lock:
            order.append("priority")

    priority = threading.Thread(target=prioritised)
    priority.start()
    _until(lambda: _depth(client) == 22)

    # 1 ms in the queue, on both APIs: 504, never run
    late = client.post("/v1/classify", params={"level": "high", "timeout_ms": "1"}, content=PNG)
    assert_error(late, 504, "timeout")
    assert "timeout of 1 ms" in late.json()["error"]
    with pytest.raises(InferenceServerException) as info:
        tc.infer(MODEL, [tensor], parameters={"level": "high"}, timeout=1000, headers=dict(AUTH))
    assert info.value.status() == "504"

    stalled.close()  # the level-off batch runs, then the level-high batches, best priority first
    for t in [first, *others, priority]:
        t.join(60)
    assert all(r.status_code == 200 for r in replies.values()), [r.text for r in replies.values()]
    high = [tag for tag in order if tag != "off"]
    assert len(high) == 21
    assert high.index("priority") < MAX_BATCH, high  # in the first batch of level high
    assert result["reply"].as_numpy("probabilities").shape == (1, 10)

    after = metrics(client)
    images = {"model": MODEL, "level": "high"}
    # 20 + the priority request; the two timed-out requests never ran
    assert sample(after, "haste_images_total", **images) - sample(before, "haste_images_total", **images) == 21
    timeouts = {"model": MODEL, "level": "high", "code": "504"}
    assert sample(after, "haste_requests_total", **timeouts) - sample(before, "haste_requests_total", **timeouts) == 2
    client.close()


def test_priority_and_timeout_are_validated_on_v1(held):
    with httpx.Client(base_url=held.url, timeout=60, headers=AUTH) as client:
        for params, code in (
            ({"priority": "3"}, "invalid_priority"),  # 2 levels by default
            ({"priority": "-1"}, "invalid_priority"),
            ({"priority": "high"}, "invalid_priority"),
            ({"timeout_ms": "-5"}, "invalid_timeout"),
            ({"timeout_ms": "soon"}, "invalid_timeout"),
            ({"timeout_ms": "nan"}, "invalid_timeout"),
        ):
            assert_error(client.post("/v1/classify", params=params, content=PNG), 400, code)
        ok = client.post("/v1/classify", params={"priority": "1", "timeout_ms": "20000"}, content=PNG)
        assert ok.status_code == 200, ok.text


def test_token_guards_inference_and_models_but_not_health_or_metrics(held):
    with httpx.Client(base_url=held.url, timeout=60) as client:
        missing = client.post("/v1/classify", content=PNG)
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = client.post("/v1/classify", content=PNG, headers={"Authorization": "Bearer not-the-token-at-all"})
        assert_error(wrong, 401, "unauthorized")
        assert_error(client.get("/v1/models"), 401, "unauthorized")
        assert_error(client.get(f"/v1/models/{MODEL}"), 401, "unauthorized")
        v2 = client.post(f"/v2/models/{MODEL}/infer", json={"inputs": []})
        assert v2.status_code == 401 and set(v2.json()) == {"error"}
        assert client.get(f"/v2/models/{MODEL}").status_code == 401
        for path in (
            "/livez",
            "/readyz",
            "/metrics",
            "/v2/health/live",
            "/v2/health/ready",
            f"/v2/models/{MODEL}/ready",
        ):
            assert client.get(path).status_code == 200, path
        assert client.post("/v1/classify", content=PNG, headers=AUTH).status_code == 200
        unauthorized = {"model": "none", "level": "none", "code": "401"}
        assert sample(metrics(client), "haste_requests_total", **unauthorized) >= 2
    tc = triton.InferenceServerClient(held.url.removeprefix("http://"))
    with pytest.raises(InferenceServerException) as info:
        tc.get_model_metadata(MODEL)
    assert info.value.status() == "401"
    assert tc.get_model_metadata(MODEL, headers=dict(AUTH))["name"] == MODEL
    assert tc.is_server_ready() and tc.is_model_ready(MODEL)
