"""Start-up and deadlines on servers of their own: /readyz is 503 until warm-up ends while /livez answers;
a model that cannot load stops the process with a clear error; requests past their deadline are dropped
before execution with 504."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from service_support import FIXTURES, MANIFEST, MODEL, Server, assert_error, metrics, require_model, sample

PNG = (FIXTURES / MANIFEST[0]["file"]).read_bytes()


@pytest.fixture(scope="module")
def slow_server():
    """Warm-up of at least 0.5 s per level, batches of 2 that wait up to 1 s for a companion on its way,
    and a 150 ms deadline."""
    require_model()
    srv = Server(warmup_min_s=0.5, max_batch_size=2, max_batch_delay_ms=1000, request_deadline_ms=150)
    yield srv
    srv.stop()


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
    """A slow upload of level low is on its way, so the worker holds a queued low request for companions
    (up to the 1 s batch delay); its 150 ms deadline passes first: 504, and it is never executed."""
    slow_server.wait()

    def slow_body():
        yield PNG[:10]
        time.sleep(1.5)
        yield PNG[10:]

    with httpx.Client(base_url=slow_server.url, timeout=30) as c, ThreadPoolExecutor(1) as pool:
        before = metrics(c)
        upload = pool.submit(c.post, "/v1/classify", params={"level": "low"}, content=slow_body(),
                             headers={"Content-Type": "image/png"})  # fmt: skip
        time.sleep(0.3)  # the upload is admitted and being read
        response = c.post("/v1/classify", params={"level": "low"}, content=PNG, headers={"Content-Type": "image/png"})
        body = assert_error(response, 504, "timeout")
        assert "deadline" in body["error"]
        assert_error(upload.result(), 504, "timeout")  # its own deadline passed while it was being read
        time.sleep(0.5)
        after = metrics(c)
        labels = {"model": MODEL, "level": "low"}
        assert sample(after, "haste_requests_total", **labels, code="504") == (
            sample(before, "haste_requests_total", **labels, code="504") + 2
        )
        assert sample(after, "haste_images_total", **labels) == sample(before, "haste_images_total", **labels)
        assert sample(after, "haste_queue_depth", model=MODEL) == 0
        # a lone request with nothing else on its way runs at once, well within the deadline
        assert c.post("/v1/classify", params={"level": "low"}, content=PNG,
                      headers={"Content-Type": "image/png"}).status_code == 200  # fmt: skip


def test_a_model_that_cannot_load_stops_the_server_with_its_error():
    srv = Server(models="fmnist-resnet9000")
    try:
        assert srv.proc.wait(120) != 0
        assert "fmnist-resnet9000" in srv.output()
    finally:
        srv.stop()
