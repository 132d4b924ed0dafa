"""The path every inference request takes, whatever its API (``/v1/classify`` or the Open Inference
Protocol's ``/v2/models/{name}/infer``): decode the images off the event loop, queue them as jobs of the
model's batcher at their level and priority, and wait for their results within the deadline; with the
decode, queue and inference spans of tracing.

The deadline is counted from admission (``HASTE_REQUEST_DEADLINE_MS``). A request's own ``timeout``
(Triton's semantics: the longest it may wait in the queue, counted from when it is queued) shortens it,
never lengthens it; past either, a request not yet taken into a batch is dropped (504, never executed nor
counted as an image). ``priority`` orders the requests of one level's queue: 1 first, then 2, ...; 0 or none
is the configured default level.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import torch
from opentelemetry import trace

from .batching import Job, Result
from .decode import small, to_input
from .errors import ServiceError
from .served import ServedModel
from .state import ServiceState
from .tracing import record, span


@dataclass(frozen=True)
class Scheduling:
    """How one request is queued: its priority (1 runs first) and its queue timeout in seconds (None: the
    request deadline alone)."""

    priority: int
    timeout_s: float | None = None


def priority_of(value: object, levels: int, default: int) -> int:
    """A request's priority from an int (or its text): 0 or None is ``default``; 1 to ``levels`` as given;
    anything else is invalid_priority (400)."""
    accepted = f"an integer from 0 (the default, {default}) to {levels}; 1 runs first"
    number = _integer(value)
    if value is None:
        return default
    if number is None or not 0 <= number <= levels:
        raise ServiceError("invalid_priority", f"priority must be {accepted}; got {value!r}")
    return number or default


def timeout_of(value: object, unit_s: float, name: str) -> float | None:
    """A request's queue timeout in seconds from a non-negative number of units (``unit_s`` seconds each:
    1e-6 for Triton's microseconds, 1e-3 for milliseconds); 0 or None means none; else invalid_timeout."""
    if value is None:
        return None
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number) or number < 0:
        raise ServiceError("invalid_timeout", f"{name} must be a non-negative number (0: none); got {value!r}")
    return number * unit_s if number else None


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


async def decode(
    state: ServiceState, served: ServedModel, images: list[bytes], deadline: float, tracer: trace.Tracer
) -> tuple[list[torch.Tensor], float]:
    """Decode and preprocess ``images`` on the decode pool, or on the event loop those of at most
    ``HASTE_INLINE_DECODE_PIXELS`` pixels (the hop to a thread and back costs more than their decode: measured at
    concurrency 1 with a 28x28 PNG, decoding took 1.0 ms on the pool and 0.7 ms inline): (model inputs, seconds);
    timeout (504) if the deadline passed meanwhile."""
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    inline = state.settings.inline_decode_pixels
    with span(tracer, "decode", model=served.name, images=len(images)):
        inputs = [
            to_input(data, served.spec, state.limits)
            if small(data, inline)
            else await loop.run_in_executor(state.decoder, to_input, data, served.spec, state.limits)
            for data in images
        ]
    if time.monotonic() >= deadline:
        raise ServiceError("timeout", "request deadline passed while the image was read and decoded")
    return inputs, time.perf_counter() - t0


def submit(
    state: ServiceState, name: str, inputs: list[torch.Tensor], level: str, scheduling: Scheduling, deadline: float
) -> list[Job]:
    """Queue one job per input on the model's batcher (call inside ``batcher.arriving(level)``)."""
    loop = asyncio.get_running_loop()
    now = time.monotonic()
    if scheduling.timeout_s is not None:
        deadline = min(deadline, now + scheduling.timeout_s)
    jobs = []
    batcher = state.batchers[name]
    for x in inputs:
        job = Job(
            inputs=x,
            level=level,
            deadline=deadline,
            future=loop.create_future(),
            loop=loop,
            priority=scheduling.priority,
        )
        job.future.add_done_callback(_retrieved)
        try:
            batcher.submit(job)
        except BaseException:
            for queued in jobs:
                batcher.abandon(queued)
            raise
        jobs.append(job)
    return jobs


async def wait(
    state: ServiceState, name: str, jobs: list[Job], scheduling: Scheduling, tracer: trace.Tracer
) -> list[Result]:
    """The results of ``jobs``, each awaited until its deadline; a job still queued then is dropped and the
    request answered 504. A job whose batch was running at its deadline is answered (and counted)."""
    batcher = state.batchers[name]
    results = []
    try:
        for job in jobs:
            try:
                # shield: a timeout must not cancel the future, which a batch already running will still resolve
                result = await asyncio.wait_for(
                    asyncio.shield(job.future), timeout=max(job.deadline - time.monotonic(), 0.0)
                )
            except TimeoutError:
                if batcher.abandon(job):  # still queued: dropped before execution, never counted as an image
                    raise ServiceError("timeout", _timeout_message(state, scheduling)) from None
                result = await job.future  # its batch was running at the deadline: answer it (it is counted)
            results.append(result)
    except BaseException:
        for job in jobs:
            batcher.abandon(job)
        raise
    for job, result in zip(jobs, results):
        started = job.enqueued + result.queue_s
        attributes = {"model": name, "level": job.level, "priority": job.priority}
        record(tracer, "queue", job.enqueued, started, **attributes)
        record(
            tracer,
            "inference",
            started,
            started + result.inference_s,
            **attributes,
            batch_size=result.batch_size,
            flops_dense=result.flops_dense,
            flops_executed=result.flops_executed,
            flops_saved=result.flops_dense - result.flops_executed,
        )
    return results


def _retrieved(future: asyncio.Future) -> None:
    """Mark a job's error as seen: a job whose handler gave up at its deadline may still be failed by the
    worker (expired when popped), and asyncio would log the unread exception as an error."""
    if not future.cancelled():
        future.exception()


def _timeout_message(state: ServiceState, scheduling: Scheduling) -> str:
    deadline_ms = state.settings.request_deadline_ms
    if scheduling.timeout_s is not None and scheduling.timeout_s * 1000 < deadline_ms:
        return f"timeout of {scheduling.timeout_s * 1000:g} ms passed before the request could run"
    return f"request deadline of {deadline_ms:g} ms passed"
