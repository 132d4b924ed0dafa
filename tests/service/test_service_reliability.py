"""Defects the reliability soak (scripts/soak.py) found, each pinned by a test against the real server:
error messages that echoed a client's value in full, and connections held open forever by clients that
never finish their request headers (slowloris)."""

from __future__ import annotations

import re

import pytest
from service_support import PNG, assert_error

LONG = "a" * 5000
#: Longest error message a client value can produce: the value is quoted shortened, with its length.
MAX_MESSAGE = 400


@pytest.mark.parametrize(
    ("method", "url", "status", "code"),
    [
        ("POST", f"/v1/classify?model={LONG}", 404, "unknown_model"),
        ("POST", f"/v1/classify?level={LONG}", 400, "invalid_level"),
        ("POST", f"/v1/classify?top_k={LONG}", 400, "invalid_top_k"),
        ("POST", f"/v1/classify?{LONG}=1", 400, "invalid_request"),
        ("GET", f"/v1/models/{LONG}", 404, "unknown_model"),
        ("GET", f"/{LONG}", 404, "not_found"),
        ("DELETE", f"/v1/{LONG}", 404, "not_found"),
    ],
)
def test_a_long_client_value_is_quoted_shortened_in_the_error(client, method, url, status, code):
    response = client.request(method, url, content=PNG, headers={"Content-Type": "image/png"})
    body = assert_error(response, status, code)
    assert len(body["error"]) <= MAX_MESSAGE, len(body["error"])
    assert "aaaaaaaa" in body["error"] and re.search(r"\(500\d characters\)", body["error"]), body["error"]


def test_a_long_content_type_is_quoted_shortened(client):
    response = client.post("/v1/classify", content=PNG, headers={"Content-Type": "text/" + LONG})
    body = assert_error(response, 415, "unsupported_media_type")
    assert len(body["error"]) <= MAX_MESSAGE + 200, len(body["error"])
