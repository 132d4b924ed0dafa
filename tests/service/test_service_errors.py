"""Bad input over HTTP: each case gets its status code and the common JSON error, never a 500, and the
server keeps answering correctly afterwards."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from service_support import FIXTURES, MANIFEST, MODEL, PNG, assert_error

MAX_BYTES = 1024 * 1024  # BASE_ENV's HASTE_MAX_BYTES
JPEG = (FIXTURES / "photo-chelsea.jpg").read_bytes()


def png_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width), 128, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height RGB pixels, with one short IDAT chunk of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1024)))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF) is patched to claim width x height pixels."""
    data = bytearray((FIXTURES / "fmnist-0000-ankle-boot.jpg").read_bytes())
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):  # walk the marker segments to the SOF
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def raw(client, data, content_type="image/png", **params):
    return client.post("/v1/classify", params=params, content=data, headers={"Content-Type": content_type})


def multipart(client, data, name="image.png", field="file", **params):
    return client.post("/v1/classify", params=params, files={field: (name, data, "application/octet-stream")})


CASES = {
    # name: (request maker, status, code)
    "empty body": (lambda c: raw(c, b""), 400, "invalid_image"),
    "empty multipart file": (lambda c: multipart(c, b""), 400, "invalid_image"),
    "truncated JPEG": (lambda c: raw(c, JPEG[: len(JPEG) // 2], "image/jpeg"), 400, "invalid_image"),
    "JPEG cut after the header": (lambda c: raw(c, JPEG[:700], "image/jpeg"), 400, "invalid_image"),
    "truncated PNG": (lambda c: multipart(c, PNG[: len(PNG) // 2]), 400, "invalid_image"),
    "text with an image content type": (lambda c: raw(c, b"hello, I am not a picture\n" * 20), 400, "invalid_image"),
    "text in multipart": (lambda c: multipart(c, b"just text", name="notes.txt"), 400, "invalid_image"),
    "text/plain content type": (lambda c: raw(c, PNG, "text/plain"), 415, "unsupported_media_type"),
    "application/json content type": (lambda c: raw(c, b"{}", "application/json"), 415, "unsupported_media_type"),
    "GIF content type": (lambda c: raw(c, encoded("GIF"), "image/gif"), 415, "unsupported_media_type"),
    "GIF bytes as octet-stream": (
        lambda c: raw(c, encoded("GIF"), "application/octet-stream"),
        415,
        "unsupported_media_type",
    ),
    "BMP in multipart": (lambda c: multipart(c, encoded("BMP"), name="x.bmp"), 415, "unsupported_media_type"),
    "TIFF as image/png": (lambda c: raw(c, encoded("TIFF")), 415, "unsupported_media_type"),
    "1x1 image": (lambda c: raw(c, png_bytes(1, 1)), 400, "invalid_image"),
    "7x7 image": (lambda c: multipart(c, png_bytes(7, 7)), 400, "invalid_image"),
    "extreme aspect ratio": (lambda c: raw(c, png_bytes(4000, 10)), 400, "invalid_image"),
    "huge dimensions in the header": (lambda c: raw(c, png_header_only(100_000, 100_000)), 413, "payload_too_large"),
    "huge dimensions, small image": (lambda c: raw(c, png_header_only(65_535, 1)), 400, "invalid_image"),
    "decompression bomb": (
        lambda c: multipart(c, (FIXTURES / "bomb-8000x8000.png").read_bytes()),
        413,
        "payload_too_large",
    ),
    "body over the byte cap": (lambda c: raw(c, b"\xff\xd8\xff" + bytes(MAX_BYTES)), 413, "payload_too_large"),
    "streamed body over the byte cap": (
        lambda c: raw(c, (b"\x00" * 65536 for _ in range(MAX_BYTES // 65536 + 1))),
        413,
        "payload_too_large",
    ),
    "multipart file over the byte cap": (lambda c: multipart(c, bytes(MAX_BYTES + 1)), 413, "payload_too_large"),
    "multipart without a file field": (lambda c: multipart(c, PNG, field="image"), 400, "invalid_request"),
    "huge dimensions in a JPEG header": (lambda c: raw(c, jpeg_claiming(60_000, 60_000)), 413, "payload_too_large"),
    "unknown model": (lambda c: raw(c, PNG, model="resnet9000"), 404, "unknown_model"),
    "unknown level": (lambda c: raw(c, PNG, level="extreme"), 400, "invalid_level"),
    "level by number": (lambda c: raw(c, PNG, level="7"), 400, "invalid_level"),
    "top_k zero": (lambda c: raw(c, PNG, top_k=0), 400, "invalid_top_k"),
    "top_k above the label count": (lambda c: raw(c, PNG, top_k=11), 400, "invalid_top_k"),
    "top_k not a number": (lambda c: raw(c, PNG, top_k="five"), 400, "invalid_top_k"),
    "empty level": (lambda c: raw(c, PNG, level=""), 400, "invalid_level"),
    "empty top_k": (lambda c: raw(c, PNG, top_k=""), 400, "invalid_top_k"),
    "empty model": (lambda c: raw(c, PNG, model=""), 400, "invalid_request"),
    "level twice": (lambda c: raw(c, PNG, level=["high", "low"]), 400, "invalid_level"),
    "top_k twice": (lambda c: raw(c, PNG, top_k=["3", "3"]), 400, "invalid_top_k"),
    "model twice": (lambda c: raw(c, PNG, model=[MODEL, MODEL]), 400, "invalid_request"),
    "unknown query parameter": (lambda c: raw(c, PNG, levle="high"), 400, "invalid_request"),
    "non-ASCII content type": (lambda c: raw(c, PNG, "image/png\u00a9".encode()), 415, "unsupported_media_type"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_its_status_and_json_error(client, case):
    make, status, code = CASES[case]
    body = assert_error(make(client), status, code)
    if code == "invalid_level":
        assert "off, low, medium, high" in body["error"]


@pytest.mark.parametrize(
    "data, size",
    [(png_header_only(100_000, 100_000), "100000x100000"), (jpeg_claiming(60_000, 60_000), "60000x60000")],
    ids=["png", "jpeg"],
)
def test_images_over_the_decoders_own_limit_are_refused_with_the_configured_cap(client, data, size):
    """Headers claiming more pixels than even Pillow opens get the same message as any image over
    HASTE_MAX_PIXELS (25,000,000 by default), not Pillow's limit."""
    body = assert_error(raw(client, data), 413, "payload_too_large")
    assert size in body["error"] and "at most 25000000 pixels" in body["error"], body
    assert "178956970" not in body["error"]


@pytest.mark.parametrize(
    "params, code, words",
    [
        ("level=", "invalid_level", ["level is empty", "off, low, medium, high"]),
        ("model=", "invalid_request", ["model is empty", MODEL]),
        ("level=high&level=low", "invalid_level", ["level is given 2 times", "off, low, medium, high"]),
        ("top_k=3&top_k=4", "invalid_top_k", ["top_k is given 2 times", "positive integer"]),
        ("levle=high", "invalid_request", ["'levle'", "accepted: level, top_k, model"]),
        ("levle=high&topk=3", "invalid_request", ["'levle', 'topk'", "accepted: level, top_k, model"]),
    ],
)
def test_query_errors_say_what_is_accepted(client, params, code, words):
    response = client.post(f"/v1/classify?{params}", content=PNG, headers={"Content-Type": "image/png"})
    body = assert_error(response, 400, code)
    for word in words:
        assert word in body["error"], (word, body)


def test_a_non_ascii_content_type_is_echoed_safely(client):
    body = assert_error(raw(client, PNG, "image/png\u00a9".encode()), 415, "unsupported_media_type")
    assert "not ASCII" in body["error"] and r"b'image/png\xc2\xa9'" in body["error"], body
    assert "\u00c2" not in body["error"]  # no mojibake


def test_body_exactly_at_the_cap_is_read_and_judged_as_an_image(client):
    assert_error(raw(client, b"\xff\xd8\xff" + bytes(MAX_BYTES - 3), "image/jpeg"), 400, "invalid_image")


def test_unknown_routes_and_methods_use_the_error_shape(client):
    assert_error(client.get("/v2/everything"), 404, "not_found")
    assert_error(client.get("/v1/classify"), 405, "method_not_allowed")
    assert_error(client.get("/v1/models/resnet9000"), 404, "unknown_model")


def test_server_still_answers_correctly_after_bad_input(client, offline):
    for make, _, _ in CASES.values():
        make(client)
    response = raw(client, PNG, level="high", top_k=10)
    assert response.status_code == 200
    body = response.json()
    probs, _, _ = offline.predict(FIXTURES / MANIFEST[0]["file"], "high")
    assert body["model"] == MODEL
    for p in body["predictions"]:
        assert abs(p["score"] - float(probs[p["index"]])) <= 1e-4
