"""The reply and /metrics say which plan entry of a level ran (haste.plans), on the real server."""

from __future__ import annotations

from service_support import FIXTURES, MODEL, metrics, sample

import haste
from haste.plans import describe

PNG = FIXTURES / "fmnist-0000-ankle-boot.png"


def test_each_reply_names_the_plan_its_batch_ran_and_metrics_count_it(client, offline):
    engine = client.get(f"/v1/models/{MODEL}").json()["engine"]
    plans = haste.conversion(offline.model).plans
    before = metrics(client)
    for level in haste.LEVELS:
        reply = client.post(f"/v1/classify?level={level}", files={"file": ("x.png", PNG.read_bytes(), "image/png")})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        expected = describe(plans, engine, level, 1) or level  # a lone request runs as a batch of 1
        assert body["plan"] == expected
        after = metrics(client)
        counted = sample(after, "haste_plan_batches_total", model=MODEL, level=level, plan=expected)
        assert counted == sample(before, "haste_plan_batches_total", model=MODEL, level=level, plan=expected) + 1
        before = after
    assert describe(plans, engine, "off", 1) is None  # off is the dense model: never a plan entry
