"""Under load: several hundred concurrent mixed-level requests against a small queue. Every request gets
an answer (200, or 503 queue_full with Retry-After), memory stays bounded, and the server answers
correctly afterwards."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import pytest
from service_support import FIXTURES, MANIFEST, MODEL, Server, metrics, require_model, sample

import haste

REQUESTS = 300
IMAGES = [(FIXTURES / m["file"]).read_bytes() for m in MANIFEST if m["file"].endswith(".png")][:6]


@pytest.fixture(scope="module")
def busy_server():
    require_model()
    srv = Server(queue_size=8, max_inflight=64, max_batch_size=4)
    srv.wait()
    yield srv
    srv.stop()


async def _burst(url: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        jobs = zip(range(n), itertools.cycle(haste.LEVELS), itertools.cycle(IMAGES))
        return await asyncio.gather(
            *(
                c.post("/v1/classify", params={"level": level}, content=image, headers={"Content-Type": "image/png"})
                for _, level, image in jobs
            )  # fmt: skip
        )


def test_hundreds_of_concurrent_requests_all_get_an_answer(busy_server, offline):
    with httpx.Client(base_url=busy_server.url, timeout=60) as c:
        before = metrics(c)
    rss_start = busy_server.rss_bytes()
    rounds = [asyncio.run(_burst(busy_server.url, REQUESTS)) for _ in range(2)]
    rss_end = busy_server.rss_bytes()
    statuses = [r.status_code for responses in rounds for r in responses]
    assert len(statuses) == 2 * REQUESTS
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) >= 8 and statuses.count(503) >= 1
    for r in (r for responses in rounds for r in responses if r.status_code == 503):
        assert r.json()["code"] == "queue_full" and int(r.headers["retry-after"]) >= 0
    assert rss_end - rss_start < 300 * 2**20, (rss_start, rss_end)
    with httpx.Client(base_url=busy_server.url, timeout=60) as c:
        after = metrics(c)
        answered = sum(
            sample(after, "haste_requests_total", model=MODEL, level=level, code=code)
            - sample(before, "haste_requests_total", model=MODEL, level=level, code=code)
            for level in haste.LEVELS
            for code in ("200", "503")
        )
        assert answered == 2 * REQUESTS
        assert sample(after, "haste_inflight_requests", model=MODEL) == 0
        assert sample(after, "haste_queue_depth", model=MODEL) == 0
        # still correct afterwards
        probs, _, _ = offline.predict(FIXTURES / MANIFEST[0]["file"], "high")
        body = c.post("/v1/classify", params={"level": "high", "top_k": 10},
                      content=(FIXTURES / MANIFEST[0]["file"]).read_bytes(),
                      headers={"Content-Type": "image/png"}).json()  # fmt: skip
        assert all(abs(p["score"] - float(probs[p["index"]])) <= 1e-4 for p in body["predictions"])
