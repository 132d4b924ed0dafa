"""What the service logs and counts for the requests that are not ordinary: a client that disconnects in
the middle of its upload (code 499, info level, no traceback), the access log (one line per request with its
id; probes and scrapes only at debug level), and idle keep-alive connections (closed after
HASTE_KEEP_ALIVE_S). On a server of their own, logging at info level."""

from __future__ import annotations

import time

import httpx
import pytest
from service_support import (
    MODEL,
    PNG,
    Server,
    metrics,
    read_response,
    require_model,
    sample,
    start_upload,
)

from service import Settings


@pytest.fixture(scope="module")
def info_server():
    require_model()
    srv = Server(log_level="info", keep_alive_s=1)
    try:
        srv.wait()
        yield srv
    finally:
        srv.stop()


def _eventually(check, what: str, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < end, f"never {what}"
        time.sleep(0.02)
    return value


def _output_with(server: Server, text: str) -> str:
    """The server's output once it contains ``text``."""
    return _eventually(lambda: text in server.output() and server.output(), f"{text!r} in the log")


def test_a_client_that_disconnects_mid_upload_is_counted_499_and_logged_at_info(info_server):
    labels = {"model": MODEL, "level": "low"}
    with httpx.Client(base_url=info_server.url, timeout=30) as c:
        before = metrics(c)
        sock = start_upload(info_server, "/v1/classify?level=low", 100_000, bytes(1024))
        with sock:
            _eventually(lambda: sample(metrics(c), "haste_inflight_requests", model=MODEL) == 1, "in flight")
        _eventually(
            lambda: (
                sample(metrics(c), "haste_requests_total", **labels, code="499")
                > sample(before, "haste_requests_total", **labels, code="499")
            ),
            "counted as 499",
        )
        after = metrics(c)
    for code in ("500", "499"):
        delta = sample(after, "haste_requests_total", **labels, code=code) - sample(
            before, "haste_requests_total", **labels, code=code
        )
        assert delta == (1 if code == "499" else 0), code
    assert sample(after, "haste_inflight_requests", model=MODEL) == 0
    output = _output_with(info_server, "client closed the connection")
    (line,) = [line for line in output.splitlines() if "client closed the connection" in line]
    assert " INFO service: " in line and "/v1/classify" in line and "request_id=" in line
    for word in ("ERROR", "Traceback", "ClientDisconnect"):
        assert word not in output, output


def test_access_log_lines_carry_the_request_id_and_probes_are_left_out(info_server):
    with httpx.Client(base_url=info_server.url, timeout=30) as c:
        reply = c.post("/v1/classify", params={"level": "high"}, content=PNG,
                       headers={"Content-Type": "image/png", "X-Request-ID": "trace-access-1"})  # fmt: skip
        assert reply.status_code == 200
        missing = c.post("/v1/classify", params={"model": "nope"}, content=PNG, headers={"Content-Type": "image/png"})
        for path in ("/livez", "/readyz", "/metrics"):
            assert c.get(path).status_code == 200
    output = _output_with(info_server, f"request_id={missing.headers['x-request-id']}")
    access = [line for line in output.splitlines() if " service.access: " in line]
    (ok,) = [line for line in access if "request_id=trace-access-1" in line]
    assert " INFO " in ok and '"POST /v1/classify?level=high HTTP/1.1" 200 ' in ok
    (not_found,) = [line for line in access if f"request_id={missing.headers['x-request-id']}" in line]
    assert '"POST /v1/classify?model=nope HTTP/1.1" 404 ' in not_found
    for path in ("/livez", "/readyz", "/metrics"):  # polled every few seconds: debug level only
        assert not [line for line in output.splitlines() if f"GET {path} " in line], path


def test_idle_keep_alive_connections_close_after_the_setting(info_server):
    """HASTE_KEEP_ALIVE_S=1 here: the server closes the idle connection (default 75 s: longer than a load
    balancer's idle timeout, so the balancer, not the server, closes idle connections)."""
    assert Settings.model_fields["keep_alive_s"].default == 75
    sock = start_upload(info_server, "/livez", 0, b"")  # a POST /livez: 405, but the connection stays open
    with sock:
        status, headers, _ = read_response(sock)
        assert status == 405 and headers.get("connection") != "close"
        sock.settimeout(4)  # under uvicorn's own 5 s default, a socket.timeout here
        assert sock.recv(1) == b"", "the idle connection was not closed"
