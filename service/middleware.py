"""Pure ASGI middleware: request ids (echo ``X-Request-ID`` or create one), masking of unexpected errors
as a 500 in the common error shape, logged with the request id, and the access log (one line per request
with its id, logger ``service.access``; probes and scrapes at debug level)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")

#: Paths polled by probes and Prometheus every few seconds: their access lines are at debug level, so that
#: the info-level log shows traffic, not heartbeats.
QUIET_PATHS = frozenset({"/livez", "/readyz", "/metrics"})

#: Client-supplied ids are echoed only if they look like ids (bounded length, safe characters).
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Puts the request id in ``scope["state"]["request_id"]`` and the ``X-Request-ID`` response header;
    turns an exception escaping the app into a masked 500 (if the response has not started).

    A client's ``X-Request-ID`` is echoed (leading and trailing blanks stripped) only if it is 1 to 128
    characters of ``A-Z a-z 0-9 . _ : -``; any other value (longer, spaces, other characters, not ASCII)
    is replaced by a new id (32 hex digits) so that ids are safe to log and to put in headers. The
    replacement is silent for the client (the reply carries the new id, in ``X-Request-ID`` and in the
    body) and logged at debug level (logger ``service``) with the length of the value that was refused.

    Every request gets one access line (logger ``service.access``, replacing uvicorn's, which cannot
    show the id): ``<client> - "<method> <path?query> HTTP/<version>" <status> <ms> ms request_id=<id>``;
    at info level, except /livez, /readyz and /metrics (probes, scrapes) at debug level.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = ""
        for key, value in scope.get("headers", []):
            if key == b"x-request-id":
                supplied = value.decode("latin-1").strip()
                break
        if _VALID_ID.match(supplied):
            request_id = supplied
        else:
            request_id = new_request_id()
            if supplied:
                log.debug(
                    "X-Request-ID of %d characters is not 1-128 of [A-Za-z0-9._:-]; replaced by %s",
                    len(supplied),
                    request_id,
                )
        scope.setdefault("state", {})["request_id"] = request_id
        started = False
        status = 0
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
            await send(message)

        try:
            await self._call(scope, receive, send_with_id, request_id, lambda: started)
        finally:
            _log_access(scope, status or 500, request_id, time.perf_counter() - start)

    async def _call(self, scope: Scope, receive: Receive, send: Send, request_id: str, started) -> None:
        """The app; an exception escaping it is logged and answered as a masked 500 unless the response
        has started."""
        try:
            await self.app(scope, receive, send)
        except Exception:
            log.exception(
                "unhandled error in request %s %s (request_id=%s)", scope.get("method"), scope.get("path"), request_id
            )
            if started():
                raise
            body = json.dumps(
                {
                    "error": "internal error; quote the request_id when reporting it",
                    "code": "internal_error",
                    "request_id": request_id,
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


def _log_access(scope: Scope, status: int, request_id: str, seconds: float) -> None:
    level = logging.DEBUG if scope.get("path") in QUIET_PATHS else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    client = scope.get("client")
    query = scope.get("query_string", b"").decode("latin-1")
    target = scope.get("path", "") + (f"?{query}" if query else "")
    access_log.log(
        level,
        '%s - "%s %s HTTP/%s" %d %.1f ms request_id=%s',
        f"{client[0]}:{client[1]}" if client else "-",
        scope.get("method"),
        target,
        scope.get("http_version", "1.1"),
        status,
        seconds * 1000,
        request_id,
    )
