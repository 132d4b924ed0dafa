"""The Open Inference Protocol (KServe v2) over HTTP, spoken by its reference client, tritonclient.http: the
same answers, FLOPs and metrics as /v1/classify; bad requests in the protocol's error shape."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from service_support import FIXTURES, MANIFEST, MODEL, PNG, metrics, sample
from tritonclient.utils import InferenceServerException

JPEG = (FIXTURES / "photo-chelsea.jpg").read_bytes()


def triton_client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60.0)


def image_input(images: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(images, dtype=object))
    else:  # JSON tensors carry the images as base64 text
        tensor.set_data_from_numpy(np.array([base64.b64encode(x) for x in images], dtype=object), binary_data=False)
    return tensor


def test_tritonclient_health_metadata_and_infer_match_v1(server, client):
    tc = triton_client(server)
    assert tc.is_server_live() and tc.is_server_ready() and tc.is_model_ready(MODEL)
    meta = tc.get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    labels = client.get(f"/v1/models/{MODEL}").json()["labels"]
    assert {(o["name"], o["datatype"]) for o in meta["outputs"]} == {("probabilities", "FP32"), ("labels", "BYTES")}
    assert [o["shape"] for o in meta["outputs"] if o["name"] == "probabilities"] == [[-1, len(labels)]]
    assert tc.get_server_metadata()["name"] == "haste"
    config = tc.get_model_config(MODEL)
    assert config["input"][0]["name"] == "image" and config["dynamic_batching"]["priority_levels"] >= 1

    entry = next(e for e in MANIFEST if e["file"].endswith(".png") and e["label_name"] != "T-shirt/top")
    data = (FIXTURES / entry["file"]).read_bytes()
    before = metrics(client)
    v1 = client.post("/v1/classify", params={"level": "high", "top_k": 3}, content=data)
    assert v1.status_code == 200, v1.text
    v1 = v1.json()
    answers = []
    for binary in (True, False):
        outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "labels")]
        result = tc.infer(
            MODEL, [image_input([data], binary)], outputs=outputs, parameters={"level": "high", "top_k": 3}
        )
        probs, top = result.as_numpy("probabilities"), result.as_numpy("labels")
        assert probs.dtype == np.float32 and probs.shape == (1, len(labels)) and top.shape == (1, 3)
        reply = result.get_response()
        assert reply["parameters"]["level"] == "high" and reply["model_name"] == MODEL
        for key in ("flops_dense", "flops_executed", "flops_saved", "saved_ratio"):
            assert reply["parameters"][key] == pytest.approx(v1["compute"][key], rel=1e-9), key
        assert reply["parameters"]["flops_saved"] > 0  # high really merges
        answers.append((probs[0], [x.decode() if isinstance(x, bytes) else x for x in top[0]]))
    for probs, top in answers:
        assert top == [p["label"] for p in v1["predictions"]]
        for p in v1["predictions"]:
            assert abs(float(probs[p["index"]]) - p["score"]) <= 1e-6
    np.testing.assert_allclose(answers[0][0], answers[1][0], atol=1e-6, rtol=0)
    after = metrics(client)
    labels_ok = {"model": MODEL, "level": "high", "code": "200"}
    assert sample(after, "haste_requests_total", **labels_ok) - sample(before, "haste_requests_total", **labels_ok) == 3
    images = {"model": MODEL, "level": "high"}
    assert sample(after, "haste_images_total", **images) - sample(before, "haste_images_total", **images) == 3


def test_several_images_per_request_and_header_parameters(server, client):
    """N images in one tensor answer N rows, in order; the level from a header when parameters lack it."""
    tc = triton_client(server)
    files = [e for e in MANIFEST if e["file"].endswith(".png")][:3]
    images = [(FIXTURES / e["file"]).read_bytes() for e in files]
    result = tc.infer(MODEL, [image_input(images)], headers={"X-Haste-Level": "medium", "X-Haste-Top-K": "2"})
    assert result.get_response()["parameters"]["level"] == "medium"
    top = result.as_numpy("labels")
    assert top.shape == (3, 2)
    for data, row in zip(images, top):
        v1 = client.post("/v1/classify", params={"level": "medium", "top_k": 2}, content=data).json()
        assert [x.decode() for x in row] == [p["label"] for p in v1["predictions"]]
    assert result.as_numpy("probabilities").sum(axis=1) == pytest.approx([1.0] * 3, abs=1e-5)


def _json(document: dict) -> bytes:
    return json.dumps(document).encode()


def _binary(document: dict, tail: bytes) -> tuple[bytes, dict[str, str]]:
    head = _json(document)
    return head + tail, {_LENGTH: str(len(head))}


def _tensor(**overrides) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(PNG).decode()]} | overrides


_LENGTH = "Inference-Header-Content-Length"


def _binary_tensor(size: int) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": size}}


def _one(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


BAD = {
    # name: (path, body, headers, status)
    "wrong tensor name": ("infer", _json({"inputs": [_tensor(name="input0")]}), {}, 400),
    "wrong datatype": ("infer", _json({"inputs": [_tensor(datatype="UINT8")]}), {}, 400),
    "shape larger than the data": ("infer", _json({"inputs": [_tensor(shape=[2])]}), {}, 400),
    "shape of rank 3": ("infer", _json({"inputs": [_tensor(shape=[1, 1, 1])]}), {}, 400),
    "empty batch": ("infer", _json({"inputs": [_tensor(shape=[0], data=[])]}), {}, 400),
    "more images than max_batch_size": ("infer", _json({"inputs": [_tensor(shape=[99], data=["x"] * 99)]}), {}, 400),
    "two inputs": ("infer", _json({"inputs": [_tensor(), _tensor()]}), {}, 400),
    "no inputs": ("infer", _json({"id": "x"}), {}, 400),
    "non-image bytes (binary)": (
        "infer",
        *_binary(
            {"inputs": [_binary_tensor(13)]},
            _one(b"not image"),
        ),
        400,
    ),
    "non-image bytes (JSON base64)": (
        "infer",
        _json({"inputs": [_tensor(data=[base64.b64encode(b"hello").decode()])]}),
        {},
        400,
    ),
    "not base64": ("infer", _json({"inputs": [_tensor(data=["***"])]}), {}, 400),
    "truncated binary element": (
        "infer",
        *_binary({"inputs": [_binary_tensor(8)]}, struct.pack("<I", 100) + b"abcd"),
        400,
    ),
    "binary size mismatch": (
        "infer",
        *_binary({"inputs": [_binary_tensor(3)]}, _one(PNG)),
        400,
    ),
    "unknown level": ("infer", _json({"inputs": [_tensor()], "parameters": {"level": "max"}}), {}, 400),
    "unknown level header": ("infer", _json({"inputs": [_tensor()]}), {"X-Haste-Level": "max"}, 400),
    "top_k zero": ("infer", _json({"inputs": [_tensor()], "parameters": {"top_k": 0}}), {}, 400),
    "top_k as a float": ("infer", _json({"inputs": [_tensor()], "parameters": {"top_k": 2.5}}), {}, 400),
    "priority out of range": ("infer", _json({"inputs": [_tensor()], "parameters": {"priority": 99}}), {}, 400),
    "negative timeout": ("infer", _json({"inputs": [_tensor()], "parameters": {"timeout": -1}}), {}, 400),
    "unknown output": ("infer", _json({"inputs": [_tensor()], "outputs": [{"name": "logits"}]}), {}, 400),
    "not JSON": ("infer", b"\x89PNG not json", {}, 400),
    "JSON array": ("infer", b"[]", {}, 400),
    "header length beyond the body": ("infer", _json({"inputs": [_tensor()]}), {_LENGTH: "99999"}, 400),
    "unknown model": ("/v2/models/resnet9000/infer", _json({"inputs": [_tensor()]}), {}, 404),
    "unknown version": ("versions/7/infer", _json({"inputs": [_tensor()]}), {}, 404),
    "unknown model metadata": ("GET /v2/models/resnet9000", b"", {}, 404),
    "unknown model ready": ("GET /v2/models/resnet9000/ready", b"", {}, 404),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_answer_the_protocol_error_shape(client, case):
    path, body, headers, status = BAD[case]
    method = "POST"
    if path.startswith("GET "):
        method, path = "GET", path[4:]
    elif not path.startswith("/"):
        path = f"/v2/models/{MODEL}/{path}"
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    document = response.json()
    assert set(document) == {"error"} and isinstance(document["error"], str) and document["error"], document
    assert response.headers["x-request-id"]


def test_bad_requests_are_counted_and_the_server_still_answers(server, client):
    tc = triton_client(server)
    before = metrics(client)
    with pytest.raises(InferenceServerException) as info:
        tc.infer(MODEL, [image_input([b"GIF89a not really"])], parameters={"level": "high"})
    assert info.value.status() == "415" and "GIF" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        tc.infer(MODEL, [image_input([PNG])], parameters={"level": "maximum"})
    assert info.value.status() == "400" and "level must be one of" in info.value.message()
    after = metrics(client)
    for level, code in (("high", "415"), ("none", "400")):
        key = {"model": MODEL, "level": level, "code": code}
        assert sample(after, "haste_requests_total", **key) - sample(before, "haste_requests_total", **key) == 1
    assert tc.infer(MODEL, [image_input([JPEG])]).as_numpy("probabilities").shape[0] == 1
    assert not [s for s in after if s[0] == "haste_requests_total" and dict(s[1]).get("code", "").startswith("5")]


def test_health_routes_answer_without_the_model(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{MODEL}/ready").json()["ready"] is True
    assert client.head("/v2/health/ready").status_code == 200
    assert httpx.get(str(client.base_url) + "/v2", timeout=10).json()["extensions"]


def test_mangled_requests_never_answer_500(client):
    """Seeded random mutations of a valid JSON infer request (fields replaced by values of other types, or
    dropped): each answer is 200, a 4xx or a timeout's 504, in the protocol's shape; never a 500."""
    import random

    rng = random.Random(17)
    junk = [None, True, 0, -1, 2**40, 1.5, float("1e308"), "", "x", "high", [], [1], ["x"], {}, {"a": 1}, [[[]]]]
    valid = {
        "id": "r",
        "inputs": [_tensor()],
        "outputs": [{"name": "labels", "parameters": {"binary_data": False}}],
        "parameters": {"level": "high", "top_k": 2, "priority": 1, "timeout": 0},
    }
    paths = [
        ("id",), ("inputs",), ("inputs", 0), ("inputs", 0, "name"), ("inputs", 0, "datatype"), ("inputs", 0, "shape"),
        ("inputs", 0, "data"), ("inputs", 0, "parameters"), ("outputs",), ("outputs", 0), ("outputs", 0, "name"),
        ("outputs", 0, "parameters"), ("parameters",), ("parameters", "level"), ("parameters", "top_k"),
        ("parameters", "priority"), ("parameters", "timeout"), ("parameters", "binary_data_output"),
    ]  # fmt: skip
    statuses = set()
    for _ in range(120):
        document = json.loads(json.dumps(valid))
        for _ in range(rng.randint(1, 3)):
            *parents, last = rng.choice(paths)
            target = document
            try:
                for key in parents:
                    target = target[key]
                if rng.random() < 0.2 and isinstance(target, dict):
                    target.pop(last, None)
                else:
                    target[last] = rng.choice(junk)
            except (KeyError, IndexError, TypeError):
                continue
        response = client.post(f"/v2/models/{MODEL}/infer", content=json.dumps(document))
        statuses.add(response.status_code)
        # 504: a tiny mangled timeout (microseconds) really passes before the request can run
        assert response.status_code in (200, 504) or 400 <= response.status_code < 500, (document, response.text)
        if response.status_code != 200:
            assert set(response.json()) == {"error"}, response.text
    assert 200 in statuses and 400 in statuses
