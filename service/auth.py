"""Optional bearer-token authentication of the inference and model routes.

With ``HASTE_API_TOKEN`` set, ``/v1/classify``, ``/classify``, ``/v1/models*`` and the Open Inference
Protocol's model routes (``/v2/models/{name}``, ``.../config``, ``.../infer``) need
``Authorization: Bearer <token>``; a request without it, or with another token, is answered 401
``unauthorized`` with ``WWW-Authenticate: Bearer``. Liveness, readiness (``/livez``, ``/readyz``,
``/v2/health/*``, ``/v2/models/{name}/ready``), ``/v2``, ``/metrics`` and the docs stay open: probes and
Prometheus carry no token. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import ServiceError


async def require_token(request: Request) -> None:
    """FastAPI dependency: 401 unless the configured token (if any) is presented as a bearer token. A coroutine:
    FastAPI runs a plain function dependency on its thread pool, a thread hop on every request."""
    token = request.app.state.service.settings.api_token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ServiceError(
            "unauthorized",
            "this route needs an API token: send the header 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="haste"'},
        )
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise ServiceError(
            "unauthorized",
            "the API token is not valid",
            headers={"WWW-Authenticate": 'Bearer realm="haste", error="invalid_token"'},
        )
