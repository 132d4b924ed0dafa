"""The HASTE inference service: FastAPI app, settings, dynamic batching, Prometheus metrics, image decoding.

The data path: request body (body.py) -> decode + shared preprocessing (decode.py) -> per-model queue and
worker (batching.py) -> converted model at the request's level (served.py, loaded by registry.py) -> reply
(routes.py for /v1, oip.py for the Open Inference Protocol's /v2, both through inference.py) and metrics
(metrics.py); auth.py checks the optional API token, tracing.py the OpenTelemetry spans; the API's
documentation in docs.py. ``create_app`` (app.py) wires them; ``haste
serve`` (cli.py) checks the settings and runs it.
"""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
