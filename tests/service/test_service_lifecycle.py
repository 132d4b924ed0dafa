"""Start-up, deadlines and settings on servers of their own: /readyz is 503 until warm-up ends while /livez
answers; requests past their deadline are dropped before execution with 504, and uploads that stall or
trickle are cut at the deadline, freeing their in-flight slot; a bad setting or a model that cannot load
stops `haste serve` at once with one line naming the setting (exit status 2)."""

from __future__ import annotations

import functools
import json
import select
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from service_support import (
    MODEL,
    PNG,
    Server,
    assert_error,
    metrics,
    read_response,
    require_model,
    sample,
    start_upload,
)

DEADLINE_S = 1.0


@pytest.fixture(scope="module")
def slow_server():
    """Warm-up of at least 0.5 s per level, batches of 2 that wait up to 3 s for a companion on its way,
    a 1 s deadline and two requests in flight at most."""
    require_model()
    srv = Server(warmup_min_s=0.5, max_batch_size=2, max_batch_delay_ms=3000,
                 request_deadline_ms=DEADLINE_S * 1000, max_inflight=2)  # fmt: skip
    yield srv
    srv.stop()


def wait_inflight(client: httpx.Client, n: int) -> None:
    """Poll /metrics until ``n`` classify requests are in flight."""
    end = time.monotonic() + 30
    while sample(metrics(client), "haste_inflight_requests", model=MODEL) != n:
        assert time.monotonic() < end, f"never {n} requests in flight"
        time.sleep(0.01)


def assert_timeout_reply(sock) -> dict:
    """The stalled upload on ``sock`` is answered 504 timeout, and the server closes the connection."""
    status, headers, body = read_response(sock, timeout=10 * DEADLINE_S)
    assert status == 504, body
    error = json.loads(body)
    assert error["code"] == "timeout" and "deadline" in error["error"] and error["request_id"]
    assert headers["connection"] == "close" and headers["x-request-id"] == error["request_id"]
    sock.settimeout(10 * DEADLINE_S)
    assert sock.recv(1) == b""  # closed by the server
    return error


def test_readyz_is_503_until_warm_up_ends_and_livez_is_independent(slow_server):
    slow_server.wait("/livez")
    with httpx.Client(base_url=slow_server.url, timeout=30) as c:
        ready = c.get("/readyz")
        if ready.status_code == 503:
            body = assert_error(ready, 503, "not_ready")
            assert "warming" in body["error"] and ready.headers["retry-after"]
            early = c.post("/v1/classify", content=PNG, headers={"Content-Type": "image/png"})
            gauge = sample(metrics(c), "haste_ready")
            still_warming = c.get("/readyz").status_code == 503
            if still_warming:  # readiness only goes one way: the classify and the gauge saw it warming too
                assert_error(early, 503, "not_ready")
                assert gauge == 0.0
        seen_not_ready = ready.status_code == 503
        while (status := c.get("/readyz").status_code) == 503:
            assert c.get("/livez").status_code == 200
            time.sleep(0.01)
        assert status == 200
        assert seen_not_ready, "warm-up ended before the first /readyz poll"
        assert c.get("/readyz").json() == {"status": "ready", "models": {MODEL: "ready"}}
        assert sample(metrics(c), "haste_ready") == 1.0
        assert c.get("/livez").json() == {"status": "alive"}


def test_request_past_its_deadline_is_dropped_before_execution(slow_server):
    """Request A of level low uploads slowly but completes within its deadline; meanwhile upload B of level
    low (admitted after A, so its deadline is later) stalls, so the worker holds A for a companion on its
    way (up to the 3 s batch delay). A's deadline passes first: 504, and A is never executed; B is cut at
    its own deadline: 504."""
    slow_server.wait()

    def slow_body():
        yield PNG[:10]
        time.sleep(0.6 * DEADLINE_S)
        yield PNG[10:]

    with httpx.Client(base_url=slow_server.url, timeout=30) as c, ThreadPoolExecutor(1) as pool:
        before = metrics(c)
        upload = pool.submit(c.post, "/v1/classify", params={"level": "low"}, content=slow_body(),
                             headers={"Content-Type": "image/png"})  # fmt: skip
        wait_inflight(c, 1)  # A is admitted and being read
        stalled = start_upload(slow_server, "/v1/classify?level=low", len(PNG), PNG[:10])
        with stalled:
            body = assert_error(upload.result(), 504, "timeout")
            assert "deadline" in body["error"]
            assert_timeout_reply(stalled)
        time.sleep(0.2)
        after = metrics(c)
        labels = {"model": MODEL, "level": "low"}
        assert sample(after, "haste_requests_total", **labels, code="504") == (
            sample(before, "haste_requests_total", **labels, code="504") + 2
        )
        assert sample(after, "haste_images_total", **labels) == sample(before, "haste_images_total", **labels)
        assert sample(after, "haste_queue_depth", model=MODEL) == 0
        assert sample(after, "haste_inflight_requests", model=MODEL) == 0
        # a lone request with nothing else on its way runs at once, well within the deadline
        assert c.post("/v1/classify", params={"level": "low"}, content=PNG,
                      headers={"Content-Type": "image/png"}).status_code == 200  # fmt: skip


def test_stalled_uploads_are_cut_at_the_deadline_and_free_their_slots(slow_server):
    """Two clients send their headers and 10 of the announced bytes, then stall, filling both in-flight
    slots: other requests get 503 queue_full meanwhile; at the deadline both stalled uploads are answered
    504 and disconnected, and requests are served again."""
    slow_server.wait()
    with httpx.Client(base_url=slow_server.url, timeout=30) as c:
        stalled = [start_upload(slow_server, "/v1/classify", 468, PNG[:10]) for _ in range(2)]
        try:
            wait_inflight(c, 2)
            busy = c.post("/v1/classify", content=PNG, headers={"Content-Type": "image/png"})
            assert_error(busy, 503, "queue_full")
            for sock in stalled:
                assert_timeout_reply(sock)
        finally:
            for sock in stalled:
                sock.close()
        wait_inflight(c, 0)
        response = c.post("/v1/classify", content=PNG, headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text


def test_a_trickling_upload_is_answered_at_its_deadline_not_after_it_ends(slow_server):
    """A body sent one byte every 20 ms (the whole would take about 11 s) gets its 504 while it is still
    being sent."""
    slow_server.wait()
    sock = start_upload(slow_server, "/v1/classify", len(PNG), PNG[:1])
    with sock:
        sent = 1
        while sent < len(PNG):
            readable, _, _ = select.select([sock], [], [], 0.02)
            if readable:
                break
            try:
                sock.sendall(PNG[sent : sent + 1])
            except OSError:  # closed by the server after its reply: read it
                break
            sent += 1
        assert sent < len(PNG), "the reply came only after the whole body"
        assert_timeout_reply(sock)


def post_high(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/classify", params={"level": "high"}, content=PNG, headers={"Content-Type": "image/png"})


def _delta(before: dict, after: dict, labels: dict, name: str, **extra: str) -> float:
    return sample(after, name, **labels, **extra) - sample(before, name, **labels, **extra)


def test_a_request_whose_batch_runs_at_its_deadline_is_answered_and_counted_once():
    """The audit's case: a 120 ms deadline, 60 concurrent requests, on the slower reference engine so that
    batches take a while. A request taken into a batch before its deadline runs to completion and is
    answered 200 even when the batch ends after the deadline; a request still queued at its deadline is
    dropped, answered 504 and never executed. So the images and FLOPs counted are exactly those of the 200
    replies, whatever the timing. Rounds repeat until one request was answered after its deadline (the
    case of interest), at most 5."""
    require_model()
    deadline_ms = 120
    srv = Server(request_deadline_ms=deadline_ms, max_batch_size=8, max_batch_delay_ms=5,
                 env={"HASTE_ENGINE": "reference"})  # fmt: skip
    labels = {"model": MODEL, "level": "high"}
    try:
        srv.wait()
        with httpx.Client(base_url=srv.url, timeout=30) as c, ThreadPoolExecutor(60) as pool:
            late = 0
            for _ in range(5):
                before = metrics(c)
                replies = list(pool.map(post_high, [c] * 60))
                ok = [r.json() for r in replies if r.status_code == 200]
                timeouts = [r for r in replies if r.status_code == 504]
                assert len(ok) + len(timeouts) == 60, sorted({r.status_code for r in replies})
                after = metrics(c)
                delta = functools.partial(_delta, before, after, labels)
                assert delta("haste_requests_total", code="200") == len(ok)
                assert delta("haste_requests_total", code="504") == len(timeouts)
                assert delta("haste_images_total") == len(ok), (len(ok), len(timeouts))
                assert delta("haste_flops_dense_total") == pytest.approx(sum(r["compute"]["flops_dense"] for r in ok))
                assert delta("haste_flops_executed_total") == pytest.approx(
                    sum(r["compute"]["flops_executed"] for r in ok)
                )
                # answered after its deadline (plus a margin for the time before admission): its batch was running
                late += sum(r["timing_ms"]["total"] > deadline_ms + 10 for r in ok)
                if late:
                    break
            assert late, "no request was answered after its deadline: the case was not exercised"
            assert sample(metrics(c), "haste_inflight_requests", model=MODEL) == 0
    finally:
        srv.stop()


BAD_SETTINGS = {
    # variable, value, words of the one-line message
    "unknown model": ("HASTE_MODELS", "nope", ["HASTE_MODELS", "unknown model 'nope'", "fmnist-resnet34"]),
    "unknown reference model": ("HASTE_MODELS", "fmnist-resnet9000", ["HASTE_MODELS", "fmnist-resnet9000"]),
    "cuda without a GPU": ("HASTE_DEVICE", "cuda", ["HASTE_DEVICE", "CUDA is not available", "auto or cpu"]),
    "batch size 0": ("HASTE_MAX_BATCH_SIZE", "0", ["HASTE_MAX_BATCH_SIZE", "greater than or equal to 1"]),
    "unknown level": ("HASTE_DEFAULT_LEVEL", "max", ["HASTE_DEFAULT_LEVEL", "off, low, medium, high"]),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_a_bad_setting_stops_haste_serve_with_one_line_naming_it(case):
    variable, value, words = BAD_SETTINGS[case]
    if variable == "HASTE_DEVICE" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    srv = Server(**{variable.removeprefix("HASTE_").lower(): value})
    try:
        assert srv.proc.wait(120) == 2
        output = srv.output().strip()
        assert "Traceback" not in output
        assert len(output.splitlines()) == 1, output
        assert output.startswith("haste serve: error: ")
        for word in words:
            assert word in output, (word, output)
    finally:
        srv.stop()
