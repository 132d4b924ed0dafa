"""``haste serve``: run the inference service with uvicorn (one process; scale out with replicas).

Settings are checked before the server starts: a bad ``HASTE_*`` value, an unknown or missing model, or
``HASTE_DEVICE=cuda`` without CUDA is one line on stderr naming the variable and what is accepted, and exit
status 2 (``haste``'s error convention), without a traceback."""

from __future__ import annotations

import argparse
import logging

#: Seconds uvicorn lets in-flight requests finish after SIGTERM; then the batchers stop (up to 10 s more).
#: Deployments give the container at least this plus the batcher join (compose stop_grace_period 45 s; k8s
#: terminationGracePeriodSeconds 60 s, which also covers the preStop sleep).
GRACEFUL_SHUTDOWN_S = 30


def add_command(sub) -> None:
    """Register ``haste serve`` on the ``haste`` command's subparsers."""
    p = sub.add_parser(
        "serve",
        help="run the HTTP inference service (configured by HASTE_* environment variables)",
        description="Serve the configured models over HTTP. Settings come from HASTE_* environment variables "
        "(see README, section Service); --host and --port override HASTE_HOST and HASTE_PORT.",
    )
    p.add_argument("--host", help="address to bind (default: HASTE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default: HASTE_PORT or 8000)")
    p.set_defaults(func=_run)


def settings_error(exc) -> str:
    """A pydantic ValidationError of Settings as one line: ``HASTE_<FIELD>: <problem> (got <value>)``."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if loc:
            got = "" if "got " in message else f" (got {err.get('input')!r})"
            parts.append(f"HASTE_{loc[0].upper()}: {message}{got}")
        else:  # a check across fields (models / default_model): the message names them
            parts.append(message)
    return "; ".join(parts)


def _run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from . import registry
    from .app import create_app
    from .connection import with_header_timeout
    from .settings import Settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ValueError(settings_error(exc)) from None
    registry.resolve_device(settings.device)
    for name in settings.models:
        registry.check(name, settings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One worker process: the metrics registry and the batching queues live in this process. The access
    # log is the service's own (service.middleware: with the request id, probes and scrapes at debug).
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_s,
        http=with_header_timeout(settings.header_timeout_s),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return 0
