"""The API's self-description over HTTP: the OpenAPI document lists the statuses the API really answers
with the error shape (no 422), the level as an enum, and a real example reply; /docs and /redoc load
their assets from the server itself; every GET route answers HEAD."""

from __future__ import annotations

import json
import re

import pytest
from service_support import FIXTURES, MODEL, WEIGHTS_DIR, Offline

import haste
import haste.zoo
from service import Settings
from service.schemas import CLASSIFY_EXAMPLE

LEVELS = list(haste.LEVELS)
#: The file and query of the recorded example (service/schemas.py).
EXAMPLE_FILE, EXAMPLE_TOP_K = "fmnist-0000-ankle-boot.png", 3


def test_openapi_documents_the_real_statuses_with_the_error_shape(client):
    spec = client.get("/openapi.json").json()
    error_ref = "#/components/schemas/ErrorResponse"
    expected = {
        ("/v1/classify", "post"): {"200", "400", "401", "404", "413", "415", "500", "503", "504"},
        ("/classify", "post"): {"200", "400", "401", "404", "413", "415", "500", "503", "504"},
        ("/v1/models/{name}", "get"): {"200", "401", "404"},
        ("/readyz", "get"): {"200", "503"},
    }
    for (path, method), statuses in expected.items():
        responses = spec["paths"][path][method]["responses"]
        assert set(responses) == statuses, (path, sorted(responses))
        for status in statuses - {"200"}:
            content = responses[status]["content"]["application/json"]
            assert content["schema"] == {"$ref": error_ref}, (path, status)
            for example in content["examples"].values():
                assert set(example["value"]) == {"error", "code", "request_id"}
    assert "Retry-After" in spec["paths"]["/v1/classify"]["post"]["responses"]["503"]["headers"]
    text = client.get("/openapi.json").text
    assert '"422"' not in text and "HTTPValidationError" not in text
    # validation errors really are 400
    assert client.post("/v1/classify", params={"top_k": "x"}, content=b"").status_code == 400


def test_openapi_query_parameters_name_what_they_accept(client):
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/classify"]["post"]
    assert {"multipart/form-data", "image/jpeg", "image/png", "image/webp"} <= set(post["requestBody"]["content"])
    params = {p["name"]: p for p in post["parameters"]}
    assert set(params) == {"level", "top_k", "model", "priority", "timeout_ms"}
    assert params["level"]["schema"]["enum"] == LEVELS
    assert params["level"]["schema"]["default"] == haste.DEFAULT_LEVEL  # the server's configured default
    assert params["model"]["schema"]["enum"] == [MODEL] and params["model"]["schema"]["default"] == MODEL
    assert params["top_k"]["schema"]["minimum"] == 1
    schemas = spec["components"]["schemas"]
    assert schemas["ClassifyResponse"]["properties"]["level"]["enum"] == LEVELS


def test_the_example_reply_is_what_the_model_answers(client):
    """The documented example is the shipped default model's real answer for its file and level: same
    labels and scores (to the rounding of the example), the same FLOPs."""
    example = client.get("/openapi.json").json()["components"]["schemas"]["ClassifyResponse"]["examples"][0]
    assert example == CLASSIFY_EXAMPLE
    name = example["model"]
    assert name == Settings.model_fields["models"].default[0]  # the shipped default model
    if not all(p.is_file() for p in haste.zoo.paths(name, WEIGHTS_DIR)):
        pytest.skip(f"no weights for {name}")
    offline = Offline(name)
    probs, dense, executed = offline.predict(FIXTURES / EXAMPLE_FILE, example["level"])
    scores, indices = probs.topk(EXAMPLE_TOP_K)
    assert [p["index"] for p in example["predictions"]] == indices.tolist()
    for p, score in zip(example["predictions"], scores.tolist()):
        assert p["label"] == offline.labels[p["index"]]
        assert p["score"] == pytest.approx(score, abs=1e-4)
    compute = example["compute"]
    assert compute["flops_dense"] == pytest.approx(dense, rel=1e-9)
    assert compute["flops_dense"] == haste.zoo.card(name, WEIGHTS_DIR)["flops_dense"]
    assert compute["flops_executed"] == pytest.approx(executed, rel=1e-9)
    assert compute["flops_saved"] == pytest.approx(dense - executed, rel=1e-9)
    assert compute["saved_ratio"] == pytest.approx((dense - executed) / dense, rel=1e-9)
    timing = example["timing_ms"]
    assert timing["total"] >= timing["queue"] + timing["decode"] + timing["inference"] - 1e-9


def test_the_service_page_shows_the_same_example_reply():
    """docs/service.md's example reply is the recorded one checked above, for the request its first curl line sends."""
    readme = (FIXTURES.parents[1] / "docs" / "service.md").read_text()
    block = readme.split("A reply (scores are", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(block) == CLASSIFY_EXAMPLE
    curl = next(line for line in readme.splitlines() if line.startswith("curl -F file=@$F"))
    assert f"level={CLASSIFY_EXAMPLE['level']}" in curl and f"top_k={EXAMPLE_TOP_K}" in curl
    assert f"F=tests/fixtures/{EXAMPLE_FILE}" in readme


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_their_assets_from_the_server(client, page):
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    urls = re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", response.text)
    urls += re.findall(r"""url\s*:\s*["']([^"']+)["']""", response.text)
    assert urls and not [u for u in urls if "//" in u], urls  # no absolute or protocol-relative URL
    assert "/openapi.json" in urls
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.content
    for url in scripts:
        assert "javascript" in client.get(url).headers["content-type"]


@pytest.mark.parametrize(
    "path", ["/livez", "/readyz", "/metrics", "/v1/models", f"/v1/models/{MODEL}", "/v1/models/nope", "/docs"]
)
def test_head_answers_like_get_without_a_body(client, path):
    get, head = client.get(path), client.head(path)
    assert head.status_code == get.status_code
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["x-request-id"]
    if path in ("/livez", "/v1/models", "/docs"):  # replies that do not change between two calls
        assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))
