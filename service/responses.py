"""The documented responses of the routes for the OpenAPI document: each error status with the common error
shape, its headers and a real message of each code, and the classify request body's media types."""

from __future__ import annotations

from .schemas import ErrorResponse

REQUEST_ID_HEADER = {
    "X-Request-ID": {"description": "The request id (echoed or created).", "schema": {"type": "string"}}
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
_CLOSE = {
    "Connection": {"description": "`close` when the upload was cut at the deadline.", "schema": {"type": "string"}}
}
_RID = "4f1c2a9e0b6d4c0f8e7a1b2c3d4e5f60"


def _error(description: str, examples: dict[str, str], headers: dict | None = None) -> dict:
    """One documented error status: the common shape and its headers; ``examples`` maps an example name
    (the code, first word) to a real message of that code."""
    return {
        "model": ErrorResponse,
        "description": description,
        "headers": {**REQUEST_ID_HEADER, **(headers or {})},
        "content": {
            "application/json": {
                "examples": {
                    code: {"value": {"error": message, "code": code.split(" ")[0], "request_id": _RID}}
                    for code, message in examples.items()
                }
            }
        },
    }


#: The error statuses of /v1/classify, with a real message of each code.
CLASSIFY_ERRORS = {
    400: _error(
        "invalid_image (empty, undecodable, truncated, too small, extreme aspect ratio), invalid_level, "
        "invalid_top_k, invalid_priority, invalid_timeout, invalid_request (malformed multipart, no field `file`; "
        "an empty, repeated or unknown query parameter)",
        {
            "invalid_image": "not a JPEG, PNG or WebP image (unrecognised leading bytes)",
            "invalid_level": "level must be one of off, low, medium, high; got 'max'",
            "invalid_top_k": "top_k must be from 1 to 10 for fmnist-resnet34; got 11",
            "invalid_priority": "priority must be an integer from 0 (the default, 2) to 2; 1 runs first; got '3'",
            "invalid_request": "unknown query parameter 'levle'; accepted: level, top_k, model, priority, timeout_ms",
        },
    ),
    401: _error(
        "unauthorized: HASTE_API_TOKEN is set and the request has no `Authorization: Bearer <token>` with it",
        {"unauthorized": "this route needs an API token: send the header 'Authorization: Bearer <token>'"},
        {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    ),
    404: _error("unknown_model", {"unknown_model": "unknown model 'resnet9000'; served: fmnist-resnet34"}),
    413: _error(
        "payload_too_large: body over the byte cap (Content-Length or counted), or image over the pixel cap "
        "(from its header, before decoding)",
        {
            "payload_too_large": "image is 8000x8000 = 64000000 pixels; at most 25000000 pixels are accepted",
            "payload_too_large (bytes)": "body is 20971520 bytes; the limit is 10485760 bytes",
        },
    ),
    415: _error(
        "unsupported_media_type: a Content-Type other than an image or multipart/form-data; GIF, BMP, TIFF... bytes",
        {"unsupported_media_type": "GIF images are not supported; send JPEG, PNG or WebP"},
    ),
    500: _error(
        "internal_error: unexpected; the message is masked, the request id is logged",
        {"internal_error": "internal error; quote the request_id when reporting it"},
    ),
    503: _error(
        "queue_full (queue or in-flight limit reached) or not_ready (warming up, shutting down), with Retry-After",
        {
            "queue_full": "fmnist-resnet34 has 64 requests waiting (queue size 64); retry later",
            "not_ready": "not ready: fmnist-resnet34 warming",
        },
        _RETRY_AFTER,
    ),
    504: _error(
        "timeout: the request deadline passed while the body was being received (the connection is then "
        "closed), or before the request could run (it is dropped, never executed)",
        {
            "timeout": "request deadline of 10000 ms passed",
            "timeout (queue)": "timeout of 50 ms passed before the request could run",
            "timeout (upload)": "request deadline passed while the body was being received (10 bytes in)",
        },
        _CLOSE,
    ),
}
MODEL_ERRORS = {401: CLASSIFY_ERRORS[401], 404: CLASSIFY_ERRORS[404]}
READY_ERRORS = {
    503: _error("not_ready, with Retry-After", {"not_ready": "not ready: fmnist-resnet34 warming"}, _RETRY_AFTER)
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image: multipart field `file` (`curl -F file=@shoe.png`), or the raw bytes with an "
        "image Content-Type (`curl -H 'Content-Type: image/png' --data-binary @shoe.png`). JPEG, PNG or WebP.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "image/jpeg": _BINARY,
            "image/png": _BINARY,
            "image/webp": _BINARY,
        },
    }
}
