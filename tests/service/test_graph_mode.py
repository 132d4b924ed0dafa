"""Graph mode (HASTE_GRAPH_MODE): each level's plans run as torch.jit traces, with the answers and FLOPs of the
eager model; what warm-up traces, what /v1/models says, and what happens where tracing cannot run."""

from __future__ import annotations

import logging

import httpx
import pytest
import torch
from service_support import MODEL, Server, require_model

import haste
from haste_lab.bench import _real_images
from service import Settings, registry

pytestmark = pytest.mark.skipif(not haste.engine.cpu_kernel_available(), reason="graph mode needs the CPU kernel")


@pytest.fixture(scope="module")
def images():
    require_model()
    return _real_images(haste.zoo.card(MODEL), 8)[0]


def started(graph_mode: bool, **settings) -> registry.ServedModel:
    s = Settings(models=[MODEL], graph_mode=graph_mode, warmup_rounds=1, warmup_min_s=0, **settings)
    served = registry.load(MODEL, s, torch.device("cpu"))
    served.start(s)
    return served


def test_every_level_and_batch_size_answers_and_counts_as_the_eager_model(images):
    graph, eager = started(True), started(False)
    assert graph.graph_mode and not eager.graph_mode and not eager.graphs
    for level in haste.LEVELS:
        for batch in (1, 2, 3, 5, 8):
            a, b = graph.run(level, images[:batch]), eager.run(level, images[:batch])
            assert a.plan == b.plan
            assert torch.equal(a.probs, b.probs), (level, batch)
            assert a.flops == b.flops, (level, batch)
    assert graph.describe()["graph_mode"] and not eager.describe()["graph_mode"]
    assert graph.served == eager.served  # the levels table's served savings


def test_warm_up_traces_every_plan_entry_up_to_the_largest_batch(images):
    served = started(True, max_batch_size=4)
    plans = haste.conversion(served.model).plans
    sizes = {1, 4} | {e["batch"] for entries in plans.get("cpu", {}).values() for e in entries if e["batch"] <= 4}
    expected = {"off"} | {
        served.plan(level, n)
        for level in haste.LEVELS
        for n in sizes
        if level != "off" and not haste.plans.runs_dense(plans, "cpu", level, n)
    }
    assert set(served.graphs) == expected  # one trace per plan entry (or level table) met at warm-up
    assert all(isinstance(t, haste.Traced) for t in served.graphs.values())
    traced = dict(served.graphs)
    served.run("high", images[:8])  # a batch beyond warm-up: its plan entry is traced on first use
    new = set(served.graphs) - set(traced)
    assert new <= {served.plan("high", 8)} and all(served.graphs[k] is traced[k] for k in traced)


def test_a_model_that_cannot_be_traced_runs_eagerly_and_says_why(images, caplog):
    served = started(True)
    name = served.plan("high", 1)
    served.graphs.pop(name)
    caplog.set_level(logging.WARNING, logger="service")
    with haste.engine.forced("reference"):  # a HASTE layer that would not run the kernel cannot be traced
        assert served.graph("high", images[:1]) is None
    assert f"{MODEL}: {name} runs eagerly: torch.jit.trace failed: HASTE layer" in caplog.text
    assert "would run the reference engine" in caplog.text
    assert served.graphs[name] is None
    eager = started(False)
    a, b = served.run("high", images[:1]), eager.run("high", images[:1])
    assert torch.equal(a.probs, b.probs) and a.flops == b.flops


def test_without_the_kernel_the_service_runs_eagerly():
    require_model()
    server = Server(env={"HASTE_ENGINE": "reference"}, warmup_rounds=1, warmup_min_s=0)
    try:
        server.wait()
        detail = httpx.get(f"{server.url}/v1/models/{MODEL}", timeout=10).json()
        assert detail["engine"] == "reference" and detail["graph_mode"] is False
    finally:
        server.stop()


def test_the_server_reports_graph_mode():
    require_model()
    for setting, expected in (("true", True), ("false", False)):
        server = Server(graph_mode=setting, warmup_rounds=1, warmup_min_s=0)
        try:
            server.wait()
            assert httpx.get(f"{server.url}/v1/models/{MODEL}", timeout=10).json()["graph_mode"] is expected
        finally:
            server.stop()
