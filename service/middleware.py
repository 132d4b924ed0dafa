"""Pure ASGI middleware: request ids (echo ``X-Request-ID`` or create one) and masking of unexpected
errors as a 500 in the common error shape, logged with the request id."""

from __future__ import annotations

import json
import logging
import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("service")

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

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception(
                "unhandled error in request %s %s (request_id=%s)", scope.get("method"), scope.get("path"), request_id
            )
            if started:
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
