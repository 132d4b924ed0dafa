"""Response bodies of the API (pydantic models; they also give /docs its schemas and examples)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import haste

#: A level name: off, low, medium or high (haste.LEVELS); an enum in the OpenAPI schema.
Level = Literal[tuple(haste.LEVELS)]


class Prediction(BaseModel):
    index: int = Field(description="Class index in the model's label list.")
    label: str
    score: float = Field(description="Softmax probability.")


class Compute(BaseModel):
    """Per-image multiply-adds (torchvision's GFLOPS convention)."""

    flops_dense: float = Field(description="Multiply-adds of the original (dense) model.")
    flops_executed: float = Field(
        description="Multiply-adds run: merged convs, dense layers and HASTE's hashing/merging overhead."
    )
    flops_saved: float = Field(description="flops_dense - flops_executed (negative if overhead outweighs merging).")
    saved_ratio: float = Field(description="flops_saved / flops_dense.")


class Timing(BaseModel):
    """Milliseconds."""

    queue: float = Field(description="Waiting for the batch to start.")
    decode: float = Field(description="Image decoding and preprocessing.")
    inference: float = Field(description="Forward pass of the whole batch this image ran in.")
    total: float = Field(description="From the request's arrival to the reply.")


#: The example reply of /docs: a real reply of the shipped default model (fmnist-resnet34, default
#: settings, CPU) to tests/fixtures/fmnist-0000-ankle-boot.png at level high with top_k=3 (a lone request: a
#: batch of 1, whose plan on the CPU engine, high@1, runs layer2 at 16 hyperplanes and layer4 at 8). The scores and
#: FLOPs are checked against the model by tests/service/test_service_docs.py; re-record it when the model
#: or its levels change.
CLASSIFY_EXAMPLE = {
    "request_id": "4f1c2a9e0b6d4c0f8e7a1b2c3d4e5f60",
    "model": "fmnist-resnet34",
    "model_version": "1",
    "level": "high",
    "plan": "high@1",
    "predictions": [
        {"index": 9, "label": "Ankle boot", "score": 0.97232},
        {"index": 7, "label": "Sneaker", "score": 0.01471},
        {"index": 5, "label": "Sandal", "score": 0.00542},
    ],
    "compute": {
        "flops_dense": 289704448.0,
        "flops_executed": 253884239.0,
        "flops_saved": 35820209.0,
        "saved_ratio": 0.12364397318469891,
    },
    "timing_ms": {"queue": 0.183, "decode": 1.409, "inference": 13.844, "total": 17.997},
}


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"examples": [CLASSIFY_EXAMPLE]})

    request_id: str
    model: str
    model_version: str
    level: Level = Field(description="The level applied.")
    plan: str = Field(
        description="What the level ran for this request's batch: a plan entry (high@4: level high's plan for batches "
        "from 4, measured for the engine; haste.plans) or the level's name (its table at every batch size)."
    )
    predictions: list[Prediction] = Field(description="top_k classes, best first.")
    compute: Compute
    timing_ms: Timing


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "level must be one of off, low, medium, high; got 'max'",
                    "code": "invalid_level",
                    "request_id": "4f1c2a9e0b6d4c0f8e7a1b2c3d4e5f60",
                }
            ]
        }
    )

    error: str = Field(description="What was wrong and what is accepted.")
    code: str = Field(description="Machine-readable code, e.g. invalid_image, unknown_model, queue_full.")
    request_id: str


class LevelRow(BaseModel):
    level: Level
    hyperplanes: int | dict[str, int] = Field(description="LSH hyperplanes L (min/max for a per-layer schedule).")
    test_accuracy: float | None = Field(None, description="Top-1 on the test split at this level (haste calibrate).")
    accuracy_drop_points: float | None = Field(None, description="Top-1 drop vs dense, percentage points (calibrated).")
    flops_saving: float | None = Field(
        None, description="Fraction of multiply-adds saved, overhead included (calibrated)."
    )
    latency_ms: float | None = Field(
        None,
        description="Batch-1 forward latency, ms: the median of 5 forwards per level timed after the model's "
        "warm-up, levels interleaved (while no other model warms up).",
    )
    served_images: int = Field(0, description="Images classified at this level since start-up.")
    served_saving: float | None = Field(None, description="Mean fraction saved over those images.")


class ModelSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arch: str | None = None
    version: str
    device: str
    input: dict
    num_labels: int
    engine: Literal["cpu", "triton", "reference", "dense"] | None = Field(
        None,
        description="Engine of the HASTE convs once warm: cpu (fused C++ kernel), triton (CUDA), reference (the "
        "slower PyTorch fallback), dense (no converted layer); null while warming up.",
    )
    engine_unavailable: str | None = Field(
        None, description="Why the fast engine is not used, when engine is reference (haste.engine.unavailable)."
    )


class ModelList(BaseModel):
    default_model: str
    default_level: Level
    levels: list[Level]
    models: list[ModelSummary]


class ModelDetail(ModelSummary):
    architecture: str | None = None
    preprocessing: str
    labels: list[str]
    conversion: dict
    levels: list[LevelRow]
    calibration: dict | None = None


class Status(BaseModel):
    status: str
    models: dict[str, str] | None = Field(None, description="Model name -> loading, warming, ready or failed.")
