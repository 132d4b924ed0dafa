"""Real images classified over HTTP at every level give the offline model's answer for the same file."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest
import torch
from service_support import FIXTURES, MANIFEST, MODEL, Offline, trained

import haste

LEVELS = list(haste.LEVELS)
SCORE_TOL = 1e-4

FMNIST_PNG = [m for m in MANIFEST if m["source"] == "fashion-mnist test" and m["file"] == m["upright"]]
OTHERS = [m for m in MANIFEST if m["file"] != m["upright"] or m["source"] != "fashion-mnist test"]
MEDIA = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


def classify(client: httpx.Client, name: str, level: str, *, raw: bool = False, **params) -> httpx.Response:
    data = (FIXTURES / name).read_bytes()
    if raw:
        headers = {"Content-Type": MEDIA[name.rsplit(".", 1)[1]]}
        return client.post("/v1/classify", params={"level": level, **params}, content=data, headers=headers)
    return client.post("/v1/classify", params={"level": level, **params}, files={"file": (name, data)})


def assert_same(body: dict, offline: Offline, reference: str, level: str) -> None:
    """The reply equals the offline model's answer for ``reference`` at ``level``: every label's score
    within SCORE_TOL, the same top label, the same per-image FLOPs."""
    probs, dense, executed = offline.predict(FIXTURES / reference, level)
    assert body["level"] == level and body["model"] == MODEL
    served = {p["index"]: p["score"] for p in body["predictions"]}
    for index, score in served.items():
        assert (
            body["predictions"][[p["index"] for p in body["predictions"]].index(index)]["label"]
            == (offline.labels[index])
        )
        assert abs(score - float(probs[index])) <= SCORE_TOL, (reference, level, index, score, float(probs[index]))
    assert body["predictions"][0]["index"] == int(probs.argmax()) or (
        float(probs.max()) - float(probs[body["predictions"][0]["index"]]) <= SCORE_TOL
    )
    compute = body["compute"]
    assert compute["flops_dense"] == pytest.approx(dense, rel=1e-9)
    assert compute["flops_executed"] == pytest.approx(executed, rel=1e-9)
    assert compute["flops_saved"] == pytest.approx(dense - executed, rel=1e-9, abs=1e-3)
    assert compute["saved_ratio"] == pytest.approx((dense - executed) / dense, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("level", LEVELS)
def test_fashion_mnist_images_equal_offline_model(client, offline, level):
    for entry in FMNIST_PNG:
        response = classify(client, entry["file"], level, top_k=len(offline.labels))
        assert response.status_code == 200, response.text
        assert_same(response.json(), offline, entry["file"], level)


@pytest.mark.parametrize("level", LEVELS)
def test_other_encodings_exif_and_photo_equal_offline_model_of_upright_image(client, offline, level):
    """RGB/palette/RGBA PNG, WebP, EXIF-rotated PNG/WebP and the photo: served like the upright file."""
    for entry in OTHERS:
        response = classify(client, entry["file"], level, raw=True, top_k=len(offline.labels))
        assert response.status_code == 200, (entry["file"], response.text)
        assert_same(response.json(), offline, entry["upright"], level)


def test_trained_model_is_right_on_most_fixtures(client):
    """Sanity of the whole path: the reference model recognises the exported test images."""
    correct = 0
    for entry in FMNIST_PNG:
        body = classify(client, entry["file"], "off").json()
        correct += body["predictions"][0]["index"] == entry["label"]
    assert correct >= 7


def test_concurrent_mixed_levels_are_batched_and_still_exact(server, offline):
    """Many requests at once: batches form per level, and each answer still equals the offline one."""
    jobs = [(entry["file"], level) for entry in FMNIST_PNG[:5] for level in LEVELS]
    with httpx.Client(base_url=server.url, timeout=120) as c:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda job: classify(c, *job, top_k=3), jobs))
    for (name, level), response in zip(jobs, responses):
        assert response.status_code == 200, response.text
        assert_same(response.json(), offline, name, level)


def test_reply_shape_defaults_and_request_id(client):
    response = client.post("/classify", files={"file": ("x.png", (FIXTURES / FMNIST_PNG[0]["file"]).read_bytes())},
                           headers={"X-Request-ID": "trace-123"})  # fmt: skip
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"request_id", "model", "model_version", "level", "plan", "predictions", "compute", "timing_ms"}
    assert body["request_id"] == "trace-123" == response.headers["x-request-id"]
    assert body["level"] == haste.DEFAULT_LEVEL and body["model"] == MODEL
    assert len(body["predictions"]) == 5
    scores = [p["score"] for p in body["predictions"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert set(body["compute"]) == {"flops_dense", "flops_executed", "flops_saved", "saved_ratio"}
    assert set(body["timing_ms"]) == {"queue", "decode", "inference", "total"}
    timing = body["timing_ms"]
    assert all(v >= 0 for v in timing.values()) and timing["total"] >= timing["inference"]
    # no id supplied, or an unusable one: the server makes one
    other = client.post("/classify", content=(FIXTURES / FMNIST_PNG[0]["file"]).read_bytes(),
                        headers={"Content-Type": "image/png", "X-Request-ID": "bad id with spaces"})  # fmt: skip
    assert other.status_code == 200
    assert other.headers["x-request-id"] == other.json()["request_id"] != "bad id with spaces"


def test_curl_upload_style_put_gets_the_post_answer(client):
    """`curl -T file URL` sends the file as a raw PUT body without a Content-Type: answered as a POST is."""
    data = (FIXTURES / FMNIST_PNG[0]["file"]).read_bytes()
    put = client.put("/v1/classify", params={"level": "high"}, content=data)
    post = client.post("/v1/classify", params={"level": "high"}, content=data, headers={"Content-Type": "image/png"})
    assert put.status_code == post.status_code == 200
    assert put.json()["predictions"] == post.json()["predictions"] and put.json()["compute"] == post.json()["compute"]


def test_top_k_and_level_savings(client):
    name = FMNIST_PNG[0]["file"]
    assert len(classify(client, name, "off", top_k=1).json()["predictions"]) == 1
    ratios = {level: classify(client, name, level).json()["compute"]["saved_ratio"] for level in LEVELS}
    assert ratios["off"] == 0.0
    assert ratios["high"] > 0.0


def test_models_endpoints(client):
    listing = client.get("/v1/models").json()
    assert listing["default_model"] == MODEL and listing["levels"] == LEVELS
    assert [m["name"] for m in listing["models"]] == [MODEL]
    detail = client.get(f"/v1/models/{MODEL}").json()
    for key in ("arch", "version", "device", "input", "preprocessing", "labels", "conversion", "levels"):
        assert key in detail
    assert detail["device"] == "cpu" and detail["layout"] == "channels_last"  # HASTE_CHANNELS_LAST's default
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in trained(MODEL).modules())
    assert detail["conversion"]["fused_batchnorms"] == norms > 0  # HASTE_FUSE_BATCHNORM's default: all of them
    assert [row["level"] for row in detail["levels"]] == LEVELS
    assert detail["levels"][0]["hyperplanes"] == 0
    assert all(row["latency_ms"] > 0 for row in detail["levels"])
    assert len(detail["labels"]) == detail["num_labels"]
