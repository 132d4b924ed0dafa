"""/metrics parsed with prometheus_client's parser: every metric of SERVICE.md is there, histogram counts
equal the requests sent, and the FLOPs counters add up to what the replies said."""

from __future__ import annotations

import pytest
from service_support import MODEL, PNG, metrics, sample

import haste
from service.metrics import RATIO_BUCKETS

LEVELS = list(haste.LEVELS)

#: SERVICE.md: family name -> label names (counters are exposed as <name>_total).
FAMILIES = {
    "haste_request_duration_seconds": {"model", "level", "code"},
    "haste_queue_duration_seconds": {"model", "level"},
    "haste_inference_duration_seconds": {"model", "level"},
    "haste_batch_size": {"model", "level"},
    "haste_flops_saved_ratio": {"model", "level"},
    "haste_requests_total": {"model", "level", "code"},
    "haste_images_total": {"model", "level"},
    "haste_batches_total": {"model", "level"},
    "haste_flops_dense_total": {"model", "level"},
    "haste_flops_executed_total": {"model", "level"},
    "haste_flops_saved_total": {"model", "level"},
    "haste_inflight_requests": {"model"},
    "haste_queue_depth": {"model"},
    "haste_ready": set(),
    "haste_model_info": {"model", "version", "device"},
}


def post(client, **params):
    return client.post("/v1/classify", params=params, content=PNG, headers={"Content-Type": "image/png"})


def test_every_metric_of_service_md_is_exposed(client):
    client.post("/v1/classify", content=PNG, headers={"Content-Type": "image/png"})  # at least one request
    values = metrics(client)
    names = {name for name, _ in values}
    for family, labels in FAMILIES.items():
        found = [lbl for (name, lbl) in values if name in (family, f"{family}_count")]
        assert found, f"{family} missing; exposed: {sorted(names)}"
        for lbl in found:
            assert {k for k, _ in lbl} == labels, (family, lbl)
    assert sample(values, "haste_ready") == 1.0
    detail = client.get(f"/v1/models/{MODEL}").json()
    assert sample(values, "haste_model_info", model=MODEL, version=detail["version"], device="cpu") == 1.0
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


def test_counts_and_flops_match_the_requests_sent(client):
    before = metrics(client)
    sent = {"off": 2, "low": 1, "medium": 3, "high": 2}
    replies = {level: [] for level in LEVELS}
    for level, n in sent.items():
        for _ in range(n):
            response = post(client, level=level)
            assert response.status_code == 200
            replies[level].append(response.json())
    errors = [
        (post(client, level="max"), MODEL, "none", "400"),
        (post(client, model="nope"), "none", "none", "404"),
        (client.post("/v1/classify", params={"level": "high"}, content=b"garbage",
                     headers={"Content-Type": "image/png"}), MODEL, "high", "400"),
        (post(client, top_k=99, level="low"), MODEL, "low", "400"),
    ]  # fmt: skip
    after = metrics(client)

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    for response, *_ in errors:
        assert response.status_code >= 400
    for level, n in sent.items():
        ml = {"model": MODEL, "level": level}
        assert delta("haste_requests_total", **ml, code="200") == n
        assert delta("haste_request_duration_seconds_count", **ml, code="200") == n
        assert delta("haste_request_duration_seconds_bucket", **ml, code="200", le="+Inf") == n
        assert delta("haste_queue_duration_seconds_count", **ml) == n
        assert delta("haste_images_total", **ml) == n
        assert delta("haste_flops_saved_ratio_count", **ml) == n
        batches = delta("haste_batches_total", **ml)
        assert 1 <= batches <= n
        assert delta("haste_batch_size_count", **ml) == batches == delta("haste_inference_duration_seconds_count", **ml)
        assert delta("haste_batch_size_sum", **ml) == n
        compute = [r["compute"] for r in replies[level]]
        assert delta("haste_flops_dense_total", **ml) == pytest.approx(sum(c["flops_dense"] for c in compute))
        assert delta("haste_flops_executed_total", **ml) == pytest.approx(sum(c["flops_executed"] for c in compute))
        assert delta("haste_flops_saved_total", **ml) == pytest.approx(sum(max(c["flops_saved"], 0) for c in compute))
        assert delta("haste_flops_saved_ratio_sum", **ml) == pytest.approx(sum(c["saved_ratio"] for c in compute))
        for le in RATIO_BUCKETS:  # every image in the right bucket; level off's exactly 0 in le="0.0"
            below = sum(c["saved_ratio"] <= le for c in compute)
            assert delta("haste_flops_saved_ratio_bucket", **ml, le=str(le)) == below, (level, le)
        if level == "off":
            assert delta("haste_flops_saved_ratio_bucket", **ml, le="0.0") == n
        total_s = sum(r["timing_ms"]["total"] for r in replies[level]) / 1000
        assert delta("haste_request_duration_seconds_sum", **ml, code="200") >= total_s * 0.99
    for _, model, level, code in errors:  # distinct label sets, one request each
        assert delta("haste_requests_total", model=model, level=level, code=code) == 1
        assert delta("haste_request_duration_seconds_count", model=model, level=level, code=code) == 1
    assert sample(after, "haste_inflight_requests", model=MODEL) == 0
    assert sample(after, "haste_queue_depth", model=MODEL) == 0


def test_saved_ratio_buckets_resolve_level_off_and_the_calibrated_savings():
    """A 0 bucket (level off saves exactly 0, so its median is 0, not half the first bucket) and 0.01 steps
    over the calibrated range: a median per image read from the histogram is within 0.01 of the truth."""
    assert RATIO_BUCKETS[0] == 0.0 and list(RATIO_BUCKETS) == sorted(set(RATIO_BUCKETS)) and RATIO_BUCKETS[-1] == 1.0
    fine = [b for b in RATIO_BUCKETS if 0 <= b <= 0.5]
    assert max(b - a for a, b in zip(fine, fine[1:])) <= 0.01 + 1e-12 and fine[-1] == 0.5


def test_metrics_and_health_requests_are_not_counted_as_classify_requests(client):
    before = metrics(client)
    client.get("/livez")
    client.get("/readyz")
    client.get("/v1/models")
    after = metrics(client)
    total = lambda values: sum(v for (name, _), v in values.items() if name == "haste_requests_total")  # noqa: E731
    assert total(after) == total(before)
