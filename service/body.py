"""Reading the image out of a request: a raw body with an image Content-Type, or the multipart field
``file``. The byte cap is enforced from Content-Length before reading and by counting while streaming; the
request deadline bounds the whole read, so a client that stalls or trickles its upload is answered 504 at
the deadline (with ``Connection: close``) instead of holding an in-flight slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from .decode import RAW_CONTENT_TYPES
from .errors import ServiceError, quote

#: Room for multipart boundaries and part headers on top of the image byte cap.
MULTIPART_OVERHEAD = 16 * 1024
#: A rejected body is read and discarded up to this many times the cap (and no later than the request
#: deadline), so that the client, which is still sending, receives the 413 instead of a reset connection;
#: beyond it the connection is dropped.
DRAIN_FACTOR = 4


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _quoted(request: Request) -> str:
    """The media type of the Content-Type as the client sent it, safe to echo: its repr if ASCII, else
    the repr of its bytes (the header arrives as bytes, decoded as latin-1); shortened as errors.quote does."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip()
    if kind.isascii():
        return quote(kind)
    return f"{quote(kind.encode('latin-1', 'replace'))} (not ASCII)"


async def _chunks(request: Request, deadline: float) -> AsyncGenerator[bytes, None]:
    """The request body in chunks as they arrive; raises timeout (504, ``Connection: close``) when the
    ``time.monotonic()`` deadline passes before the body is complete."""
    stream = request.stream()
    received = 0
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), max(deadline - time.monotonic(), 0.0))
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ServiceError(
                "timeout",
                f"request deadline passed while the body was being received ({received} bytes in)",
                headers={"Connection": "close"},
            ) from None
        received += len(chunk)
        yield chunk


async def _drain(chunks: AsyncIterator[bytes], budget: int) -> None:
    try:
        async for chunk in chunks:
            budget -= len(chunk)
            if budget < 0:
                return
    except Exception:  # the client went away or the deadline passed: nothing more to drain
        return


async def _limited(chunks: AsyncIterator[bytes], cap: int, max_bytes: int) -> AsyncGenerator[bytes, None]:
    """``chunks``; raises payload_too_large as soon as more than ``cap`` bytes arrive."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > cap:
            await _drain(chunks, DRAIN_FACTOR * cap)
            raise ServiceError("payload_too_large", f"body is larger than the {max_bytes}-byte limit")
        yield chunk


async def read_image(request: Request, max_bytes: int, deadline: float) -> bytes:
    """The image bytes of a classify request (at most ``max_bytes``), or ServiceError 413/415/400, or 504
    if the body is not complete by ``deadline`` (``time.monotonic()`` seconds)."""
    kind = media_type(request)
    multipart = kind == "multipart/form-data"
    if not multipart and kind and kind not in RAW_CONTENT_TYPES:
        raise ServiceError(
            "unsupported_media_type",
            f"Content-Type {_quoted(request)} is not accepted; send image/jpeg, image/png or image/webp as the "
            "body, or multipart/form-data with the image in the field 'file'",
        )
    cap = max_bytes + (MULTIPART_OVERHEAD if multipart else 0)
    chunks = _chunks(request, deadline)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        if int(length) <= DRAIN_FACTOR * cap:
            await _drain(chunks, DRAIN_FACTOR * cap)
        raise ServiceError("payload_too_large", f"body is {int(length)} bytes; the limit is {max_bytes} bytes")
    stream = _limited(chunks, cap, max_bytes)
    if not multipart:
        return b"".join([chunk async for chunk in stream])
    parser = MultiPartParser(request.headers, stream, max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ServiceError("invalid_request", f"malformed multipart body: {exc.message}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ServiceError("invalid_request", "multipart body has no file field 'file'")
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ServiceError("payload_too_large", f"file is larger than the {max_bytes}-byte limit")
        return data
    finally:
        await form.close()
