"""One error shape for every failure: ``{"error": "<message>", "code": "<machine_code>", "request_id": "..."}``.

Codes (HTTP status): invalid_image, invalid_level, invalid_top_k, invalid_priority, invalid_timeout,
invalid_request (400); unauthorized (401, with ``WWW-Authenticate: Bearer``); unknown_model, not_found
(404); method_not_allowed (405); payload_too_large (413); unsupported_media_type (415); queue_full,
not_ready (503, with Retry-After); timeout (504: the request deadline passed while the body was received,
or before it ran, or the request's own queue timeout passed); internal_error (500, message masked).
FastAPI's 422 is never used: query validation errors are 400 with the code of the parameter.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import haste

#: HTTP status of each machine code.
STATUS = {
    "invalid_image": 400,
    "invalid_level": 400,
    "invalid_top_k": 400,
    "invalid_request": 400,
    "invalid_priority": 400,
    "invalid_timeout": 400,
    "unauthorized": 401,
    "unknown_model": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "internal_error": 500,
    "queue_full": 503,
    "not_ready": 503,
    "timeout": 504,
}


#: Characters of a client's value that an error message quotes; past them the value is cut and its length
#: given, so that a 5000-character model name or path is not echoed back in full.
QUOTE_CHARS = 64


def quote(value: object) -> str:
    """A value from the client, safe and short to put in an error message: its repr, cut after
    ``QUOTE_CHARS`` characters with its length added."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= QUOTE_CHARS:
        return repr(value)
    return f"{text[:QUOTE_CHARS]!r}... ({len(text)} characters)"


class ServiceError(Exception):
    """An error answered with the common JSON shape. ``code`` picks the HTTP status (see STATUS)."""

    def __init__(self, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = STATUS[code]
        self.message = message
        self.headers = headers or {}


def request_id_of(request: Request) -> str:
    """The request id set by the RequestIdMiddleware ("" outside it)."""
    return request.scope.get("state", {}).get("request_id", "")


def error_response(code: str, message: str, request_id: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The common error body with ``X-Request-ID``."""
    return JSONResponse(
        {"error": message, "code": code, "request_id": request_id},
        status_code=STATUS[code],
        headers={**(headers or {}), "X-Request-ID": request_id},
    )


def _validation_code(exc: RequestValidationError) -> tuple[str, str]:
    """Map FastAPI's validation errors of the classify query to our codes and messages."""
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        if loc[-1:] == ("top_k",):
            return (
                "invalid_top_k",
                f"top_k must be a positive integer (at most the model's label count); got {quote(err.get('input'))}",
            )
        if loc[-1:] == ("level",):
            return "invalid_level", f"level must be one of {', '.join(haste.LEVELS)}; got {quote(err.get('input'))}"
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return "invalid_request", f"{where}: {first.get('msg', 'invalid request')}"


def install(app: FastAPI) -> None:
    """Register the handlers that turn ServiceError, validation errors and HTTP errors into the shape."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.code, exc.message, request_id_of(request), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        code, message = _validation_code(exc)
        return error_response(code, message, request_id_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            code, message = "not_found", f"no route {quote(request.url.path)}; see /docs"
        elif exc.status_code == 405:
            code, message = "method_not_allowed", f"{request.method} is not allowed on {quote(request.url.path)}"
        elif exc.status_code == 413:
            code, message = "payload_too_large", str(exc.detail)
        elif exc.status_code == 415:
            code, message = "unsupported_media_type", str(exc.detail)
        elif 400 <= exc.status_code < 500:
            code, message = "invalid_request", str(exc.detail)
        else:
            code, message = "internal_error", "internal error; quote the request_id when reporting it"
        response = error_response(code, message, request_id_of(request), dict(exc.headers or {}))
        response.status_code = exc.status_code
        return response
