"""What one app instance holds: settings, metrics, loaded models, their batchers, the decode pool, and
the admission count. Lives on ``app.state.service``; nothing is module-global."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from opentelemetry import trace

from .batching import Batcher
from .decode import Limits
from .errors import ServiceError
from .metrics import Metrics
from .served import ServedModel
from .settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    models: dict[str, ServedModel] = field(default_factory=dict)
    batchers: dict[str, Batcher] = field(default_factory=dict)
    decoder: ThreadPoolExecutor | None = None
    #: Serialises the models' warm-ups (see Batcher).
    warm_lock: threading.Lock = field(default_factory=threading.Lock)
    #: The tracer of the handlers' spans (service.tracing; a no-op one when tracing is off).
    tracer: trace.Tracer = field(default_factory=trace.NoOpTracer)
    inflight: int = 0
    loading: bool = True
    shutting_down: bool = False

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(max_pixels=s.max_pixels, min_side=s.min_side, max_aspect_ratio=s.max_aspect_ratio)

    def model_states(self) -> dict[str, str]:
        """name -> loading | warming | ready | failed."""
        states = {name: "loading" for name in self.settings.models}
        for name, batcher in self.batchers.items():
            states[name] = "failed" if batcher.failed else "ready" if batcher.warm.is_set() else "warming"
        return states

    @property
    def ready(self) -> bool:
        return (
            not self.shutting_down and bool(self.batchers) and all(s == "ready" for s in self.model_states().values())
        )

    def check_ready(self) -> None:
        """Raise not_ready (503 + Retry-After) unless every model is warm."""
        if self.ready:
            return
        if self.shutting_down:
            message = "the server is shutting down"
        else:
            failed = [b.failed for b in self.batchers.values() if b.failed]
            states = ", ".join(f"{name} {s}" for name, s in self.model_states().items())
            message = "; ".join(failed) if failed else f"not ready: {states}"
        raise ServiceError("not_ready", message, headers={"Retry-After": str(self.settings.retry_after_s)})

    @contextlib.contextmanager
    def admit(self, model: str) -> Iterator[None]:
        """Count a classify request in flight, or raise queue_full past ``max_inflight``."""
        if self.inflight >= self.settings.max_inflight:
            raise ServiceError(
                "queue_full",
                f"{self.inflight} requests in flight (limit {self.settings.max_inflight}); retry later",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        self.inflight += 1
        gauge = self.metrics.inflight.labels(model)
        gauge.inc()
        try:
            yield
        finally:
            self.inflight -= 1
            gauge.dec()
