"""Defects the reliability soak (scripts/soak.py) found, each pinned by a test against the real server:
error messages that echoed a client's value in full, and connections held open forever by clients that
never finish their request headers (slowloris)."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import httpx
import pytest
from service_support import PNG, Server, assert_error, read_response, require_model

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


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


@pytest.fixture(scope="module")
def header_timeout_server():
    require_model()
    srv = Server(header_timeout_s=1)
    try:
        srv.wait()
        yield srv
    finally:
        srv.stop()


def test_clients_that_never_finish_their_headers_are_disconnected(header_timeout_server):
    """Slowloris: sockets that trickle header lines, or send nothing, are closed at HASTE_HEADER_TIMEOUT_S
    (they were held open for ever: enough of them exhaust the process's file descriptors)."""
    port = header_timeout_server.port
    trickling = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    for sock in trickling:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    end = time.monotonic() + 3
    while time.monotonic() < end:  # one more header line every 0.3 s: never idle, never complete
        for sock in trickling:
            try:
                sock.send(b"X-Slow: 1\r\n")
            except OSError:
                pass
        time.sleep(0.3)
    try:
        assert all(_closed_by_server(s, 2) for s in trickling), "a trickling socket is still open"
        assert all(_closed_by_server(s, 2) for s in silent), "a silent socket is still open"
    finally:
        for sock in trickling + silent:
            sock.close()
    response = httpx.post(
        header_timeout_server.url + "/v1/classify", content=PNG, headers={"Content-Type": "image/png"}, timeout=30
    )
    assert response.status_code == 200, response.text


def test_an_idle_keep_alive_connection_outlives_the_header_timeout(header_timeout_server):
    """The header timeout runs from a request's first byte (or the connection's start) to the end of its
    headers; between requests a connection is idle under HASTE_KEEP_ALIVE_S only."""
    with socket.create_connection(("127.0.0.1", header_timeout_server.port), timeout=5) as sock:
        for _ in range(2):
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, _, _ = read_response(sock, timeout=5)
            assert status == 200
            time.sleep(2.5)  # past the header timeout, idle


CAPS = ("max_bytes", "max_pixels", "min_side", "max_aspect_ratio", "max_inflight", "queue_size",
        "request_deadline_ms", "retry_after_s", "header_timeout_s", "keep_alive_s")  # fmt: skip


def test_every_cap_is_documented_with_its_default():
    from service.settings import Settings

    page = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text()
    for name in CAPS:
        default = Settings.model_fields[name].default
        assert f"| `HASTE_{name.upper()}` | {default} |" in page, (name, default)
