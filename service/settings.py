"""Service configuration: one pydantic-settings class, read from ``HASTE_*`` environment variables.

    HASTE_MODELS=fmnist-resnet34,fmnist-resnet18 HASTE_MAX_BATCH_SIZE=16 haste serve --port 8000

Lists (``HASTE_MODELS``) are comma-separated (a JSON list also works). Times are in milliseconds where
the name says ``_ms`` and seconds where it says ``_s``; sizes in bytes and pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import haste

#: uvicorn's log levels.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _default_threads() -> int:
    """Intra-op threads for inference when not configured: the cores, 1 to 4."""
    # Measured on the 2-core machine (fmnist-resnet34, hey, one round of 12 s per level): 2 threads against 1
    # served level off 63 vs 45 req/s at concurrency 1, 83 vs 67 at 4 and 90 vs 95 at 8; the decoders and the event
    # loop take little beside them (service.threads keeps them on one torch thread each).
    return max(1, min(4, os.cpu_count() or 2))


class Settings(BaseSettings):
    """Everything the service can be told. Each field is the env variable ``HASTE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="HASTE_", extra="ignore")

    models: Annotated[list[str], NoDecode] = Field(
        default=["fmnist-resnet34"],
        description="Models to load at start-up: reference names (haste.zoo.names()) or torchvision names "
        "such as resnet50:IMAGENET1K_V2 (weights must be in the local torch cache). Comma-separated.",
    )
    default_model: str | None = Field(
        default=None, description="Model used when a request names none (empty or unset: the first of models)."
    )
    default_level: str = Field(default=haste.DEFAULT_LEVEL, description="Level used when a request names none.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto = CUDA when available, else CPU.")
    weights_dir: Path | None = Field(
        default=None, description="Directory of reference weights and cards (default: the package's haste/zoo/weights)."
    )
    channels_last: bool = Field(
        default=True,
        description="Hold the models in channels-last memory format (NHWC), the layout the fused CPU kernel "
        "writes: the dense convs, BatchNorm and additions then run in one layout throughout (on CPU the dense model "
        "is faster so too: results/bench-fmnist-resnet34-layout.json). false: PyTorch's default NCHW.",
    )
    fuse_batchnorm: bool = Field(
        default=True,
        description="Fuse each BatchNorm into the conv before it when loading a model (haste.fuse_batchnorm; the "
        "same answers up to float rounding): level off then runs the dense model a deployment would run, one op "
        "per conv instead of two (fmnist-resnet34, batch 1: results/bench-fmnist-resnet34-plans.json; its card's "
        "plans were searched so). false: the model as trained; off is then bit-exact.",
    )
    graph_mode: bool = Field(
        default=True,
        description="On CPU, run each level as a torch.jit trace of the model at that level (haste.trace: its HASTE "
        "layers as the fused kernel's operator, no Python between the ops), one per level and plan entry, made at "
        "warm-up (and for a plan entry first met later, on its first batch); same answers and FLOPs as the eager "
        "model. fmnist-resnet34, batch 1: 0.82 (off) to 0.87 (high) of the eager forward's time "
        "(results/graph-mode-fmnist-resnet34.json). A model that cannot be traced runs eagerly (logged). false: "
        "eager, through the converted model's Python.",
    )
    max_batch_size: int = Field(default=8, ge=1, le=1024, description="Largest batch one forward pass runs.")
    max_batch_delay_ms: float = Field(
        default=5.0, ge=0, le=10_000, description="Longest a request waits for companions before its batch runs."
    )
    queue_size: int = Field(
        default=64,
        ge=1,
        description="Requests waiting per model (all levels); beyond it requests get 503 + Retry-After.",
    )
    max_inflight: int = Field(
        default=128, ge=1, description="Classify requests handled at once (reading, decoding, queued, running)."
    )
    request_deadline_ms: float = Field(
        default=10_000,
        gt=0,
        description="Per-request deadline, counted from admission: it bounds receiving the body (a stalled or "
        "trickling upload is answered 504 at the deadline and its connection closed), decoding, and waiting in "
        "the queue (requests past it are dropped before execution, 504).",
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After header value (seconds) on 503 answers.")
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="Largest accepted image body, in bytes.")
    max_pixels: int = Field(
        default=25_000_000,
        ge=1,
        description="Largest accepted image, in pixels (width x height), checked from the header before decoding "
        "(413). Pillow refuses more than 178,956,970 pixels whatever this says.",
    )
    min_side: int = Field(default=8, ge=1, description="Smallest accepted image side, in pixels.")
    max_aspect_ratio: float = Field(default=32.0, ge=1, description="Largest accepted long side / short side ratio.")
    decode_threads: int = Field(default=2, ge=1, description="Threads decoding and preprocessing images.")
    inline_decode_pixels: int = Field(
        default=4096,
        ge=0,
        description="Images of at most this many pixels (read from their header) are decoded on the event loop, "
        "not on a decode thread: for them the hop to the thread and back costs more than the decode (0: never).",
    )
    torch_threads: int = Field(
        default_factory=_default_threads,
        ge=1,
        description="torch intra-op threads of each model's worker thread (the only threads that run inference; "
        "the plans in the model cards were measured at 2).",
    )
    warmup_rounds: int = Field(
        default=1,
        ge=1,
        description="Forward passes per level and batch size (1, max_batch_size and the first batch size of every "
        "plan entry below it) at warm-up.",
    )
    warmup_min_s: float = Field(
        default=0.0, ge=0, description="Keep warming each level for at least this many seconds (e.g. to settle clocks)."
    )
    host: str = Field(default="127.0.0.1", description="Address `haste serve` binds (0.0.0.0 in containers).")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `haste serve` listens on.")
    keep_alive_s: int = Field(
        default=75,
        ge=1,
        description="Seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive). Longer than "
        "the idle timeout of the load balancer in front (commonly 60 s), so that the server never closes a "
        "connection the balancer is about to reuse (a 502 for that request).",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a request's complete headers, from the connection opening or "
        "the request's first byte; past it the connection is closed (slowloris: clients that trickle headers or "
        "send nothing would otherwise hold a connection and a file descriptor for ever).",
    )
    priority_levels: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Priority levels of a request within its level's queue (Triton's priority_levels): a request's "
        "priority is 1 (runs first) to this number; 0 or none means default_priority_level.",
    )
    default_priority_level: int | None = Field(
        default=None,
        ge=1,
        description="Priority of a request that names none or 0 (unset: priority_levels, the lowest).",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token required on the inference and model routes (/v1/classify, /classify, /v1/models*, "
        "/v2/models/{name}[/config|/infer]); health, readiness, /v2 and /metrics stay open. Unset or empty: no "
        "authentication. At least 16 characters, no whitespace; set it from a secret, never in a ConfigMap.",
    )
    api_token_file: Path | None = Field(
        default=None,
        description="A file holding the API token (a mounted secret: compose's /run/secrets/..., a Kubernetes "
        "secret volume), read at start; one trailing newline is dropped. Not together with api_token.",
    )
    tracing: Literal["off", "console", "otlp"] = Field(
        default="off",
        description="OpenTelemetry tracing: off; console (spans printed to stdout); otlp (OTLP/HTTP export, "
        "configured by the standard OTEL_EXPORTER_OTLP_* and OTEL_SERVICE_NAME variables).",
    )
    log_level: str = Field(
        default="info",
        description="Log level of uvicorn and the service: critical, error, warning, info, debug, trace.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("default_model", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # compose passes ${HASTE_DEFAULT_MODEL:-} and a ConfigMap may carry an empty value: the first model
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("api_token_file", mode="before")
    @classmethod
    def _empty_file_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_token", mode="before")
    @classmethod
    def _check_token(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            if not value.strip():
                return None  # compose passes ${HASTE_API_TOKEN:-}: no authentication
            if any(c.isspace() for c in value):
                raise ValueError("the API token must not contain whitespace; got a value with some (a stray newline?)")
            if len(value) < 16:
                raise ValueError(f"the API token must be at least 16 characters; got {len(value)}")
        return value

    @field_validator("default_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value not in haste.LEVELS:
            raise ValueError(f"level must be one of {', '.join(haste.LEVELS)}; got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}; got {value!r}")
        return value.lower()

    @model_validator(mode="after")
    def _check_models(self) -> Settings:
        if not self.models:
            raise ValueError("HASTE_MODELS must name at least one model")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"HASTE_MODELS must not repeat a name; got {self.models}")
        if self.default_model is None:
            self.default_model = self.models[0]
        elif self.default_model not in self.models:
            raise ValueError(
                f"HASTE_DEFAULT_MODEL {self.default_model!r} is not one of models {self.models} (HASTE_MODELS)"
            )
        if self.api_token_file is not None:
            if self.api_token is not None:
                raise ValueError("set HASTE_API_TOKEN or HASTE_API_TOKEN_FILE, not both")
            try:
                text = self.api_token_file.read_text()
            except OSError as exc:
                raise ValueError(
                    f"HASTE_API_TOKEN_FILE {str(self.api_token_file)!r} cannot be read: {exc.strerror}"
                ) from None
            text = text.removesuffix("\n").removesuffix("\r")
            if not text:
                raise ValueError(f"HASTE_API_TOKEN_FILE {str(self.api_token_file)!r} is empty")
            try:
                self.api_token = SecretStr(self._check_token(text))
            except ValueError as exc:
                raise ValueError(f"HASTE_API_TOKEN_FILE {str(self.api_token_file)!r}: {exc}") from None
        if self.default_priority_level is None:
            self.default_priority_level = self.priority_levels
        elif self.default_priority_level > self.priority_levels:
            raise ValueError(
                f"HASTE_DEFAULT_PRIORITY_LEVEL {self.default_priority_level} is above HASTE_PRIORITY_LEVELS "
                f"{self.priority_levels}; give 1 to {self.priority_levels}"
            )
        return self

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0

    @property
    def request_deadline_s(self) -> float:
        return self.request_deadline_ms / 1000.0
