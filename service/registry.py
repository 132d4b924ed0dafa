"""The served models: loaded once by name through ``haste.zoo``, converted with ``haste.convert``, moved
to the device, warmed at every level, and described for ``/v1/models``."""

from __future__ import annotations

import inspect
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import haste
import haste.engine
import haste.zoo
from haste.preprocess import InputSpec

from .settings import Settings

log = logging.getLogger("service")

SPEC_KEYS = ("mode", "resize", "crop", "pad", "mean", "std")


def resolve_device(setting: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a ValueError."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "HASTE_DEVICE=cuda but CUDA is not available here (torch.cuda.is_available() is false); "
            "accepted on this machine: auto or cpu"
        )
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def _zoo_load(name: str, settings: Settings) -> nn.Module:
    """``haste.zoo.load`` with the configured weights directory; never downloads."""
    kwargs: dict = {}
    params = inspect.signature(haste.zoo.load).parameters
    if settings.weights_dir is not None:
        kwargs["root"] = settings.weights_dir
    if "download" in params:
        kwargs["download"] = False
    return haste.zoo.load(name, **kwargs)


def check(name: str, settings: Settings) -> None:
    """Raise ValueError or FileNotFoundError, naming HASTE_MODELS and what is accepted, if ``name`` cannot
    be loaded: an unknown name, or a card or weights file that is missing (nothing is loaded)."""
    root = settings.weights_dir
    try:
        card = haste.zoo.card(name, root) if root is not None else haste.zoo.card(name)
    except (ValueError, FileNotFoundError) as exc:
        raise type(exc)(f"HASTE_MODELS: {exc}") from None
    weights = Path(card["cache_path"]) if card.get("cache_path") else haste.zoo.paths(name, root)[0]
    if not weights.is_file():
        raise FileNotFoundError(f"HASTE_MODELS: no weights for {name} at {weights} (nothing is downloaded)")


@dataclass
class ServedModel:
    """One loaded, converted model and what the API says about it."""

    name: str
    model: nn.Module
    card: dict
    spec: InputSpec
    labels: list[str]
    device: torch.device
    #: level -> hyperplanes (an int, or {"min", "max"} for a per-layer schedule).
    hyperplanes: dict[str, object] = field(default_factory=dict)
    #: level -> median batch-1 forward latency measured after warm-up (see warm_up), in ms.
    latency_ms: dict[str, float] = field(default_factory=dict)
    #: level -> mean fraction of dense multiply-adds saved over the images served so far.
    served: dict[str, list[float]] = field(default_factory=dict)
    #: The engine of the HASTE convs (cpu, triton or reference; None until warm-up ends) and, when it is
    #: the reference engine, why the fast one is not used (see engine_of).
    engine: str | None = None
    engine_unavailable: str | None = None

    @property
    def version(self) -> str:
        return str(self.card.get("version", "1"))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.spec.channels, *self.spec.size)

    def record_saving(self, level: str, ratios: list[float]) -> None:
        """Accumulate per-image saved ratios (called from the model's worker thread)."""
        images, total = self.served.get(level, [0.0, 0.0])
        self.served[level] = [images + len(ratios), total + sum(ratios)]

    def levels_table(self) -> list[dict]:
        """One row per level: hyperplanes, the test accuracy, its drop and the FLOPs saving measured by
        ``haste calibrate`` (when the card has them), warm-up latency, and the saving on served images."""
        calibrated = _calibration_rows(self.card)
        rows = []
        for level in haste.LEVELS:
            cal = calibrated.get(level, {})
            images, total = self.served.get(level, [0.0, 0.0])
            rows.append(
                {
                    "level": level,
                    "hyperplanes": self.hyperplanes.get(level, haste.LEVELS[level]),
                    "test_accuracy": cal.get("test_accuracy"),
                    "accuracy_drop_points": cal.get("test_drop"),
                    "flops_saving": cal.get("saving"),
                    "latency_ms": self.latency_ms.get(level),
                    "served_images": int(images),
                    "served_saving": total / images if images else None,
                }
            )
        return rows

    def summary(self) -> dict:
        return {
            "name": self.name,
            "arch": self.card.get("arch"),
            "version": self.version,
            "device": str(self.device),
            "dataset": self.card.get("dataset"),
            "input": {**self.spec.as_dict(), "channels": self.spec.channels, "size": list(self.spec.size)},
            "num_labels": len(self.labels),
            "test_accuracy": self.card.get("test_accuracy"),
            "flops_dense": self.card.get("flops_dense"),
            "engine": self.engine,
            "engine_unavailable": self.engine_unavailable,
        }

    def describe(self) -> dict:
        conversion = haste.conversion(self.model)
        return {
            **self.summary(),
            "architecture": self.card.get("architecture"),
            "preprocessing": _describe_spec(self.spec),
            "labels": self.labels,
            "conversion": {
                "options": conversion.options if conversion else {},
                "converted_layers": len(conversion.replaced) if conversion else 0,
                "dense_layers": conversion.skipped if conversion else {},
            },
            "levels": self.levels_table(),
            "calibration": self.card.get("haste"),
        }


def _calibration_rows(card: dict) -> dict[str, dict]:
    """level -> calibration row, from ``card["haste"]["table"]`` when rows name their level."""
    table = (card.get("haste") or {}).get("table") or []
    rows = {}
    if isinstance(table, list):
        for row in table:
            if isinstance(row, dict) and row.get("level") in haste.LEVELS:
                rows[row["level"]] = row
    elif isinstance(table, dict):
        rows = {k: v for k, v in table.items() if k in haste.LEVELS and isinstance(v, dict)}
    return rows


def _describe_spec(spec: InputSpec) -> str:
    steps = [f"decode (JPEG/PNG/WebP), apply EXIF orientation, convert to {spec.mode}"]
    if spec.resize:
        steps.append(f"resize the shorter side to {spec.resize} px (bilinear)")
    if spec.crop:
        steps.append(f"centre-crop {spec.crop}x{spec.crop}")
    steps.append(f"scale to [0, 1], normalise with mean {list(spec.mean)} and std {list(spec.std)}")
    if spec.pad:
        steps.append(f"zero-pad {spec.pad} px per side (black pixels)")
    return "; ".join(steps) + " (haste.preprocess, shared with evaluation)"


def _hyperplanes(model: nn.Module) -> dict[str, object]:
    layers = [m for m in model.modules() if isinstance(m, haste.HasteConv2d)]
    table: dict[str, object] = {}
    for level in haste.LEVELS:
        values = sorted({m.levels[level] for m in layers}) or [haste.LEVELS[level]]
        table[level] = values[0] if len(values) == 1 else {"min": values[0], "max": values[-1]}
    return table


def load(name: str, settings: Settings, device: torch.device) -> ServedModel:
    """Load ``name`` through haste.zoo, convert it (the card's calibrated levels when present), move it."""
    model = _zoo_load(name, settings)
    card = dict(getattr(model, "haste_card", None) or haste.zoo.card(name))
    haste.convert(model)
    model = model.to(device).eval()
    spec = InputSpec.from_dict({k: card["input"][k] for k in SPEC_KEYS})
    log.info("loaded %s (%s) on %s", name, card.get("arch"), device)
    return ServedModel(
        name=name,
        model=model,
        card=card,
        spec=spec,
        labels=list(card["labels"]),
        device=device,
        hyperplanes=_hyperplanes(model),
    )


def prepare_engine(served: ServedModel) -> None:
    """Build the fused CPU kernel now (on CPU, if not built yet), saying so: the first build takes about
    a minute (torch's cpp_extension compiles haste_cpu.cpp for this processor), later starts load it from
    TORCH_EXTENSIONS_DIR. Runs in the model's worker thread, before warm-up; /livez answers meanwhile."""
    if served.device.type != "cpu" or haste.engine._module is not None or haste.engine.unavailable is not None:
        return
    if haste.engine.env_setting() == "reference":  # nothing to build
        return
    log.info("compiling the fused CPU kernel (first start: about a minute)")
    start = time.perf_counter()
    if haste.engine.cpu_kernel_available():
        log.info("fused CPU kernel ready in %.1f s", time.perf_counter() - start)


def engine_of(served: ServedModel) -> tuple[str, str | None]:
    """(engine, reason): what ``haste.engine.explain`` says of the model's HASTE convs when serving (an input
    on the model's device, inference mode): ``cpu``, ``triton`` or ``reference`` and, for ``reference``, why.
    Called after warm-up, whose forwards have tried the fast engine (a Triton that fails there falls back for
    good). A model without HASTE convs runs ``dense``."""
    layer = next((m for m in served.model.modules() if isinstance(m, haste.HasteConv2d)), None)
    if layer is None:
        return "dense", None
    weight = layer.conv.weight
    with torch.inference_mode():
        x = torch.zeros((1, layer.conv.in_channels, 8, 8), dtype=weight.dtype, device=weight.device)
        return haste.engine.explain(x, weight)


#: engine_unavailable in the API is cut to this many characters (a failed build's reason quotes the whole
#: compiler command); the log has it in full.
REASON_CHARS = 300


def report_engine(served: ServedModel) -> None:
    """Record ``engine_of`` on ``served`` and log it: an ERROR when the fused kernel could not be used
    (the reference engine is several times slower), unless HASTE_ENGINE=reference asked for it."""
    served.engine, reason = engine_of(served)
    if reason is not None and len(reason) > REASON_CHARS:
        served.engine_unavailable = reason[: REASON_CHARS - 3] + "..."
    else:
        served.engine_unavailable = reason
    if served.engine != "reference":
        log.info("%s runs on the %s engine", served.name, served.engine)
    elif (reason or "").startswith("disabled by"):
        log.warning("%s runs on the reference engine: %s", served.name, reason)
    else:
        log.error(
            "%s runs on the (several times slower) reference engine: the fused %s kernel is unavailable: %s",
            served.name,
            "Triton" if served.device.type == "cuda" else "CPU",
            reason,
        )


#: Timed batch-1 forwards per level after warm-up; the table reports their median.
LATENCY_RUNS = 5


def warm_up(served: ServedModel, settings: Settings, stop: Callable[[], bool] = lambda: False) -> None:
    """Run every level at batch sizes 1 and max_batch_size (``warmup_rounds`` times each, and for at least
    ``warmup_min_s`` seconds per level) on a fixed random input, then time LATENCY_RUNS batch-1 forwards
    per level, levels interleaved (off, low, medium, high, off, ...), and keep each level's median
    (``served.latency_ms``). Returns early if ``stop()`` turns true."""
    gen = torch.Generator().manual_seed(0)
    sizes = sorted({1, settings.max_batch_size})
    inputs = {n: torch.randn((n, *served.input_shape), generator=gen).to(served.device) for n in sizes}
    times: dict[str, list[float]] = {level: [] for level in haste.LEVELS}
    with torch.inference_mode():
        for level in haste.LEVELS:
            start, rounds = time.perf_counter(), 0
            with haste.compression(level):
                while rounds < settings.warmup_rounds or time.perf_counter() - start < settings.warmup_min_s:
                    for n in sizes:
                        if stop():
                            return
                        served.model(inputs[n])
                    rounds += 1
        for _ in range(LATENCY_RUNS):
            for level in haste.LEVELS:
                if stop():
                    return
                with haste.compression(level):
                    start = time.perf_counter()
                    served.model(inputs[1])
                    if served.device.type == "cuda":
                        torch.cuda.synchronize(served.device)
                    times[level].append(time.perf_counter() - start)
    for level, seconds in times.items():
        served.latency_ms[level] = round(statistics.median(seconds) * 1000, 3)
        log.info(
            "warmed %s at level %s: %.1f ms per image (batch 1, median of %d)",
            served.name,
            level,
            served.latency_ms[level],
            LATENCY_RUNS,
        )
