"""Which engine a served model runs on: GET /v1/models/{name} and the haste_engine_info gauge say it, and a
fused kernel that cannot be built is an ERROR in the log (the service then runs the several times slower
reference engine), on servers that really build (or fail to build) the CPU kernel."""

from __future__ import annotations

import httpx
from service_support import MODEL, PNG, Server, metrics, require_model, sample

import haste.engine


def test_the_models_api_and_metrics_name_the_engine(client):
    expected = "cpu" if haste.engine.cpu_kernel_available() else "reference"  # same machine, same build cache
    detail = client.get(f"/v1/models/{MODEL}").json()
    assert detail["engine"] == expected
    assert (detail["engine_unavailable"] is None) == (expected == "cpu")
    (listed,) = [m for m in client.get("/v1/models").json()["models"] if m["name"] == MODEL]
    assert listed["engine"] == expected
    values = metrics(client)
    assert sample(values, "haste_engine_info", model=MODEL, engine=expected) == 1.0
    assert [labels for name, labels in values if name == "haste_engine_info"] == [
        (("engine", expected), ("model", MODEL))
    ]


def test_a_kernel_that_cannot_be_built_is_reported_and_logged_as_an_error(tmp_path):
    """No C++ compiler (CXX names a missing one) and an empty build cache: the server still serves, on the
    reference engine, says why in /v1/models/{name} and the gauge, and logs it at ERROR."""
    require_model()
    srv = Server(
        env={"CXX": str(tmp_path / "no-such-c++"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")},
        log_level="info",
    )
    try:
        srv.wait()
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            detail = c.get(f"/v1/models/{MODEL}").json()
            assert detail["engine"] == "reference"
            assert "no-such-c++" in detail["engine_unavailable"] and len(detail["engine_unavailable"]) <= 300
            values = metrics(c)
            assert sample(values, "haste_engine_info", model=MODEL, engine="reference") == 1.0
            assert ("haste_engine_info", (("engine", "cpu"), ("model", MODEL))) not in values
            reply = c.post("/v1/classify", params={"level": "high"}, content=PNG,
                           headers={"Content-Type": "image/png"})  # fmt: skip
            assert reply.status_code == 200, reply.text
        lines = srv.output().splitlines()
        compiling = [i for i, line in enumerate(lines) if "compiling the fused CPU kernel" in line]
        errors = [i for i, line in enumerate(lines) if " ERROR service: " in line and "reference engine" in line]
        assert compiling and " INFO service: " in lines[compiling[0]]
        assert errors and MODEL in lines[errors[0]] and "no-such-c++" in lines[errors[0]], "\n".join(lines)
    finally:
        srv.stop()
