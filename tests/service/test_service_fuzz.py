"""Property-based fuzzing of image decoding (hypothesis): random bytes, mutated and truncated real images,
and forged headers either decode to a model input or fail with a 4xx ServiceError, in process and over
HTTP (never a 500), and the server still answers correctly afterwards."""

from __future__ import annotations

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_support import FIXTURES, MANIFEST

from haste.zoo.registry import FMNIST_SPEC
from service.decode import Limits, to_input
from service.errors import ServiceError

SEEDS = [(FIXTURES / name).read_bytes() for name in (
    MANIFEST[0]["file"], MANIFEST[1]["file"], "fmnist-0019-t-shirt-top.webp", "fmnist-0019-t-shirt-top-exif6.png",
    "fmnist-0019-t-shirt-top-palette.png",
)]  # fmt: skip
MAGIC = [b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
         b"RIFF\xff\xff\xff\x7fWEBPVP8L", b"GIF89a", b"BM"]  # fmt: skip
LIMITS = Limits(max_pixels=4_000_000, min_side=8, max_aspect_ratio=32)


@st.composite
def mutated(draw) -> bytes:
    """A real image with some bytes overwritten, a slice removed or duplicated, and/or truncated."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        a = draw(st.integers(0, len(data)))
        b = draw(st.integers(a, min(len(data), a + 64)))
        data[a:b] = data[a:b] * draw(st.integers(0, 3))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@st.composite
def forged(draw) -> bytes:
    """A known magic number followed by random bytes."""
    return draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=512))


IMAGE_BYTES = st.one_of(st.binary(max_size=1024), mutated(), forged())


@settings(max_examples=400, deadline=None, derandomize=True)
@given(IMAGE_BYTES)
def test_decoder_returns_an_input_or_a_4xx(data):
    try:
        x = to_input(data, FMNIST_SPEC, LIMITS)
    except ServiceError as exc:
        assert exc.status in (400, 413, 415), exc.message
        assert exc.message
        return
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())


CONTENT_TYPES = ["image/png", "image/jpeg", "image/webp", "application/octet-stream", "image/gif", "text/plain",
                 "", "multipart/form-data"]  # fmt: skip


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@settings(
    max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=IMAGE_BYTES, content_type=st.sampled_from(CONTENT_TYPES), as_file=st.booleans(),
       level=st.sampled_from(["off", "high", "medium", "low"]))  # fmt: skip
def test_http_never_answers_500(http, data, content_type, as_file, level):
    if as_file:
        response = http.post("/v1/classify", params={"level": level}, files={"file": ("x", data, content_type or None)})
    else:
        headers = {"Content-Type": content_type} if content_type else {}
        response = http.post("/v1/classify", params={"level": level}, content=data, headers=headers)
    assert response.status_code in (200, 400, 413, 415), response.text
    body = response.json()
    if response.status_code != 200:
        assert set(body) == {"error", "code", "request_id"}


def test_server_answers_correctly_after_fuzzing(http, offline):
    probs, _, _ = offline.predict(FIXTURES / MANIFEST[0]["file"], "medium")
    response = http.post("/v1/classify", params={"level": "medium", "top_k": 10},
                         content=SEEDS[0], headers={"Content-Type": "image/png"})  # fmt: skip
    assert response.status_code == 200
    assert all(abs(p["score"] - float(probs[p["index"]])) <= 1e-4 for p in response.json()["predictions"])
