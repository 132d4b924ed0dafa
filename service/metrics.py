"""Prometheus metrics of the service (prefix ``haste_``, seconds as the base unit).

Each app owns its CollectorRegistry, so several apps (tests) can live in one process. The service runs
as one process per container (a single uvicorn worker; scale out with replicas), so the in-process
registry is exact and no multiprocess mode is needed.

Labels stay low-cardinality: ``model`` is a configured model name (or "none" when the request named an
unknown one), ``level`` one of off/low/medium/high (or "none" when invalid), ``code`` the HTTP status.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Request latency buckets (seconds): 1 ms to 60 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Buckets of the per-image FLOPs saved ratio: 0 on its own (level off saves exactly 0; a negative ratio,
#: overhead above the saving, lands there too: no negative bucket, since prometheus_client then drops the
#: _sum), 0.01 steps up to 0.5 (the range of the calibrated levels, so a median from histogram_quantile is
#: within 0.01), then 0.1 steps up to 1.
RATIO_BUCKETS = (
    (0.0,) + tuple(round(0.01 * i, 2) for i in range(1, 51)) + tuple(round(0.1 * i, 1) for i in range(6, 11))
)
NO_LABEL = "none"


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to and including ``max_batch_size``."""
    buckets, b = [], 1
    while b < max_batch_size:
        buckets.append(float(b))
        b *= 2
    buckets.append(float(max_batch_size))
    return tuple(buckets)


class Metrics:
    """All metrics of SERVICE.md, registered in a registry of their own.

    Per request: haste_request_duration_seconds and haste_requests_total {model, level, code} (classify
    requests only, every outcome), haste_queue_duration_seconds {model, level} (requests that ran).
    Per batch: haste_inference_duration_seconds, haste_batch_size, haste_batches_total {model, level}.
    Per image: haste_images_total, haste_flops_{dense,executed,saved}_total (multiply-adds; executed
    includes HASTE's hashing and merging overhead, so dense = executed + saved) and
    haste_flops_saved_ratio {model, level}.
    """

    def __init__(self, max_batch_size: int = 8, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, ml, mlc = self.registry, ("model", "level"), ("model", "level", "code")
        self.request_duration = Histogram(
            "haste_request_duration_seconds",
            "Classify request latency, end to end.",
            mlc,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "haste_queue_duration_seconds",
            "Time a request waited for its batch.",
            ml,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "haste_inference_duration_seconds",
            "Forward pass time of one batch.",
            ml,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "haste_batch_size", "Images per executed batch.", ml, buckets=batch_buckets(max_batch_size), registry=r
        )
        self.flops_saved_ratio = Histogram(
            "haste_flops_saved_ratio",
            "Fraction of dense multiply-adds saved, per image.",
            ml,
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.requests = Counter("haste_requests", "Classify requests answered, by status code.", mlc, registry=r)
        self.images = Counter("haste_images", "Images classified.", ml, registry=r)
        self.batches = Counter("haste_batches", "Batches executed.", ml, registry=r)
        self.plan_batches = Counter(
            "haste_plan_batches",
            "Batches executed, by the plan entry that ran (high@4: level high's entry for batches from 4; a level's "
            "name: its table at every batch size).",
            (*ml, "plan"),
            registry=r,
        )
        self.flops_dense = Counter("haste_flops_dense", "Dense multiply-adds of the classified images.", ml, registry=r)
        self.flops_executed = Counter(
            "haste_flops_executed", "Multiply-adds executed, HASTE overhead included.", ml, registry=r
        )
        self.flops_saved = Counter("haste_flops_saved", "Multiply-adds saved (dense - executed).", ml, registry=r)
        self.inflight = Gauge("haste_inflight_requests", "Classify requests being handled.", ("model",), registry=r)
        self.queue_depth = Gauge("haste_queue_depth", "Requests waiting for a batch.", ("model",), registry=r)
        self.ready = Gauge("haste_ready", "1 when every model is loaded and warmed at every level.", registry=r)
        self.model_info = Gauge(
            "haste_model_info", "Served models (value 1).", ("model", "version", "device"), registry=r
        )
        self.engine_info = Gauge(
            "haste_engine_info",
            "Engine of each model's HASTE convs, once warm (value 1): cpu (fused C++ kernel), triton (CUDA) or "
            "reference (the slower PyTorch fallback: GET /v1/models/{name} says why).",
            ("model", "engine"),
            registry=r,
        )

    def observe_batch(self, model: str, level: str, size: int, seconds: float, plan: str) -> None:
        self.batches.labels(model, level).inc()
        self.plan_batches.labels(model, level, plan).inc()
        self.batch_size.labels(model, level).observe(size)
        self.inference_duration.labels(model, level).observe(seconds)

    def observe_image(self, model: str, level: str, dense: float, executed: float) -> None:
        saved = dense - executed
        self.images.labels(model, level).inc()
        self.flops_dense.labels(model, level).inc(dense)
        self.flops_executed.labels(model, level).inc(executed)
        self.flops_saved.labels(model, level).inc(max(saved, 0.0))
        self.flops_saved_ratio.labels(model, level).observe(saved / dense if dense else 0.0)

    def observe_request(self, model: str, level: str, code: int, seconds: float) -> None:
        self.requests.labels(model, level, str(code)).inc()
        self.request_duration.labels(model, level, str(code)).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
