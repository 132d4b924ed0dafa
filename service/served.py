"""The served model: one loaded, converted model on its device, and everything it does once loaded. It
warms up at every level and reports its engine (``start``), runs one batch at a level and accounts its
multiply-adds (``run``), and describes itself for ``/v1/models``.

Per-image FLOPs are the dense count, measured once at start (one profiled forward at level off), minus what
the HASTE layers saved (``haste.profile(dense_layers=False)``); level off runs unprofiled. Both ``start`` and
``run`` are called from the model's worker thread (service.batching), never on the event loop.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import haste
import haste.engine
import haste.plans
from haste.preprocess import InputSpec

from .settings import Settings

log = logging.getLogger("service")

#: Timed batch-1 forwards per level after warm-up; the table reports their median.
LATENCY_RUNS = 5
#: engine_unavailable in the API is cut to this many characters (a failed build's reason quotes the whole
#: compiler command); the log has it in full.
REASON_CHARS = 300


@dataclass
class BatchRun:
    """What one forward pass of a batch gave."""

    probs: torch.Tensor  # (N, num_labels) softmax scores, on the CPU
    flops: list[tuple[float, float]]  # per image: (dense, executed incl. HASTE overhead) multiply-adds
    seconds: float  # forward + softmax + copy to the CPU
    plan: str  # what ran: a plan entry ("high@4", haste.plans.plan_name), or the level's table ("high", "off")


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
    #: The memory layout the model is held in: channels_last (HASTE_CHANNELS_LAST, the default) or nchw.
    layout: str = "nchw"
    #: BatchNorms fused into their convs when loading (``HASTE_FUSE_BATCHNORM``; ``haste.fuse_batchnorm``).
    fused_batchnorms: int = 0
    #: Dense multiply-adds per image (level off), measured by ``start``; None before.
    flops_dense: float | None = None
    #: Whether the levels run as torch.jit traces (``HASTE_GRAPH_MODE`` on CPU with the fused kernel; set by
    #: ``warm_up``), and the traces by what they run (``plan``: "off", "high", "high@4"); None where tracing failed
    #: (that plan runs eagerly).
    graph_mode: bool = False
    graphs: dict[str, haste.Traced | None] = field(default_factory=dict, repr=False)

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
            "layout": self.layout,
            "dataset": self.card.get("dataset"),
            "input": {**self.spec.as_dict(), "channels": self.spec.channels, "size": list(self.spec.size)},
            "num_labels": len(self.labels),
            "test_accuracy": self.card.get("test_accuracy"),
            "flops_dense": self.card.get("flops_dense"),
            "engine": self.engine,
            "engine_unavailable": self.engine_unavailable,
            "graph_mode": self.graph_mode,
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
                "fused_batchnorms": self.fused_batchnorms,
            },
            "levels": self.levels_table(),
            "calibration": self.card.get("haste"),
        }

    # -- worker thread -----------------------------------------------------------------------------------

    def start(self, settings: Settings, stop: Callable[[], bool] = lambda: False) -> bool:
        """Get ready to serve: build the CPU kernel if needed, warm up every level (``warm_up``), record and
        log the engine, and measure the dense FLOPs per image. False if ``stop()`` turned true meanwhile."""
        self.prepare_engine()
        self.warm_up(settings, stop=stop)
        self.report_engine()  # after warm-up: a fast engine that failed there has fallen back
        if stop():
            return False
        self.flops_dense = self._measure_dense_flops()
        return True

    def prepare_engine(self) -> None:
        """Build the fused CPU kernel now (on CPU, if not built yet), saying so: the first build takes about
        a minute (torch's cpp_extension compiles haste_cpu.cpp for this processor), later starts load it from
        TORCH_EXTENSIONS_DIR. Runs before warm-up; /livez answers meanwhile."""
        if self.device.type != "cpu" or haste.engine.cpu_kernel_state() != "not built":
            return
        if haste.engine.env_setting() == "reference":  # nothing to build
            return
        log.info("compiling the fused CPU kernel (first start: about a minute)")
        start = time.perf_counter()
        if haste.engine.cpu_kernel_available():
            log.info("fused CPU kernel ready in %.1f s", time.perf_counter() - start)

    def engine_of(self) -> tuple[str, str | None]:
        """(engine, reason): what ``haste.engine.explain`` says of the model's HASTE convs when serving (an
        input on the model's device, inference mode): ``cpu``, ``triton`` or ``reference`` and, for
        ``reference``, why. Called after warm-up, whose forwards have tried the fast engine (a Triton that
        fails there falls back for good). A model without HASTE convs runs ``dense``."""
        layer = next((m for m in self.model.modules() if isinstance(m, haste.HasteConv2d)), None)
        if layer is None:
            return "dense", None
        weight = layer.conv.weight
        with torch.inference_mode():
            x = torch.zeros((1, layer.conv.in_channels, 8, 8), dtype=weight.dtype, device=weight.device)
            return haste.engine.explain(x, weight)

    def report_engine(self) -> None:
        """Record ``engine_of`` and log it: an ERROR when the fused kernel could not be used (the reference
        engine is several times slower), unless HASTE_ENGINE=reference asked for it."""
        self.engine, reason = self.engine_of()
        if reason is not None and len(reason) > REASON_CHARS:
            self.engine_unavailable = reason[: REASON_CHARS - 3] + "..."
        else:
            self.engine_unavailable = reason
        if self.engine != "reference":
            log.info("%s runs on the %s engine", self.name, self.engine)
        elif (reason or "").startswith("disabled by"):
            log.warning("%s runs on the reference engine: %s", self.name, reason)
        else:
            log.error(
                "%s runs on the (several times slower) reference engine: the fused %s kernel is unavailable: %s",
                self.name,
                "Triton" if self.device.type == "cuda" else "CPU",
                reason,
            )

    def warm_up(self, settings: Settings, stop: Callable[[], bool] = lambda: False) -> None:
        """Run every level as ``run`` does at batch sizes 1, max_batch_size and the first batch size of every plan
        entry below it (``warmup_rounds`` times each, and for at least ``warmup_min_s`` seconds per level) on a fixed
        random input, which in graph mode traces each level's plans (``HASTE_GRAPH_MODE``), then time LATENCY_RUNS
        batch-1 forwards per level, levels interleaved (off, low, medium, high, off, ...), and keep each level's
        median (``latency_ms``). Returns early if ``stop()`` turns true."""
        self.graph_mode = settings.graph_mode and self.device.type == "cpu" and haste.engine.cpu_kernel_available()
        gen = torch.Generator().manual_seed(0)
        sizes = sorted({1, settings.max_batch_size, *self._entry_batches(settings.max_batch_size)})
        inputs = {n: torch.randn((n, *self.input_shape), generator=gen).to(self.device) for n in sizes}
        times: dict[str, list[float]] = {level: [] for level in haste.LEVELS}
        for level in haste.LEVELS:
            start, rounds = time.perf_counter(), 0
            while rounds < settings.warmup_rounds or time.perf_counter() - start < settings.warmup_min_s:
                for n in sizes:
                    if stop():
                        return
                    self._forward(level, inputs[n])
                rounds += 1
        for _ in range(LATENCY_RUNS):
            for level in haste.LEVELS:
                if stop():
                    return
                start = time.perf_counter()
                self._forward(level, inputs[1])
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                times[level].append(time.perf_counter() - start)
        for level, seconds in times.items():
            self.latency_ms[level] = round(statistics.median(seconds) * 1000, 3)
            log.info(
                "warmed %s at level %s: %.1f ms per image (batch 1, median of %d)",
                self.name,
                level,
                self.latency_ms[level],
                LATENCY_RUNS,
            )

    def _measure_dense_flops(self) -> float:
        """Dense multiply-adds per image (level off), from one profiled forward."""
        x = torch.zeros((1, *self.input_shape), device=self.device)
        with torch.inference_mode(), haste.compression("off"), haste.profile(self.model) as report:
            self.model(x)
        return report.per_image[0][0]

    def run(self, level: str, x: torch.Tensor) -> BatchRun:
        """One forward pass of the batch ``x`` (N, C, H, W) at ``level``: its probabilities, each image's
        (dense, executed) multiply-adds, and the seconds it took; the saving is recorded for the table."""
        if self.flops_dense is None:
            raise RuntimeError(f"{self.name} has not been started (ServedModel.start)")
        dense = self.flops_dense
        x = x.to(self.device)
        t0 = time.perf_counter()
        logits, saved = self._forward(level, x)
        flops = [(dense, dense)] * len(x) if saved is None else [(dense, dense - s) for s in saved]
        probs = logits.float().softmax(dim=1).cpu()
        seconds = time.perf_counter() - t0
        if len(flops) != len(x):  # should not happen: one forward of the whole model per batch
            raise RuntimeError(f"profile recorded {len(flops)} images for a batch of {len(x)}")
        self.record_saving(level, [(d - e) / d if d else 0.0 for d, e in flops])
        return BatchRun(probs, flops, seconds, self.plan(level, len(x)))

    def _forward(self, level: str, x: torch.Tensor) -> tuple[torch.Tensor, list[float] | None]:
        """The model's output on ``x`` at ``level`` and, where HASTE layers ran, the multiply-adds they saved per
        image net of their overhead (None: every layer ran dense). A batch whose plan is all dense runs as level off
        (the same convs, without looking the plan up per layer); in graph mode each plan runs its trace
        (``graph``)."""
        record = haste.conversion(self.model)
        dense_plan = haste.plans.runs_dense(record.plans if record else {}, self.engine_name(), level, len(x))
        run = "off" if level == "off" or dense_plan else level
        traced = self.graph(run, x) if self.graph_mode and tuple(x.shape[2:]) == tuple(self.spec.size) else None
        if traced is not None:
            logits, saved = traced(x)
            return logits, None if run == "off" else saved.tolist()
        with torch.inference_mode(), haste.compression(run):
            if run == "off":  # every layer dense: nothing to profile, the dense FLOPs ran
                return self.model(x), None
            with haste.profile(self.model, dense_layers=False) as report:  # HASTE layers only (cheap)
                logits = self.model(x)
        return logits, [d - e - o for d, e, o in report.per_image]

    def graph(self, run: str, x: torch.Tensor) -> haste.Traced | None:
        """The trace that runs ``x`` at level ``run`` (its plan for this batch size), made on first use from ``x``
        (``haste.trace``); None, and a warning logged once, where the model cannot be traced at that plan."""
        key = "off" if run == "off" else self.plan(run, len(x))
        if key in self.graphs:
            return self.graphs[key]
        start = time.perf_counter()
        try:
            traced = haste.trace(self.model, x, run)
        except Exception as exc:  # an untraceable model: that plan runs eagerly
            log.warning("%s: %s runs eagerly: torch.jit.trace failed: %s", self.name, key, exc)
            traced = None
        else:
            log.info("%s: traced %s in %.2f s (graph mode)", self.name, key, time.perf_counter() - start)
        self.graphs[key] = traced
        return traced

    def engine_name(self) -> str:
        """The engine whose plans apply: the one reported after warm-up, during warm-up the CPU kernel's when it is
        built (``haste.engine.choose`` for a served CPU batch), else none (the level tables)."""
        if self.engine is not None:
            return self.engine
        return "cpu" if self.device.type == "cpu" and haste.engine.cpu_kernel_state() == "built" else ""

    def _entry_batches(self, largest: int) -> set[int]:
        """The first batch size of every plan entry, up to ``largest``, on this model's engine."""
        record = haste.conversion(self.model)
        plans = (record.plans if record else {}).get(self.engine_name(), {})
        return {e["batch"] for entries in plans.values() for e in entries if e["batch"] <= largest}

    def plan(self, level: str, batch: int) -> str:
        """What a batch of ``batch`` images at ``level`` runs on this model's engine: the plan entry's name
        (``high@4``: level high, the entry for batches from 4; ``haste.plans``), else the level's name (its table
        at every batch size; ``off``: the dense model)."""
        record = haste.conversion(self.model)
        plans = record.plans if record is not None else {}
        return haste.plans.describe(plans, self.engine_name(), level, batch) or level


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
