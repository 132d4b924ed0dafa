"""Dynamic batching: one worker thread per model runs batches keyed by level, off the event loop.

Requests wait in a bounded per-model queue (one FIFO per level and priority). The worker takes the level
whose oldest request has waited longest and runs it as soon as ``max_batch_size`` requests of that level are waiting,
the oldest has waited ``max_batch_delay``, or no other request of that level is on its way (admitted and
still being read or decoded): waiting cannot grow the batch then, so a lone request does not pay the
delay. Requests past their deadline, or abandoned by their handler, are dropped before execution; a
request taken into a batch before its deadline runs to completion and is answered (and counted), even if
the batch ends after the deadline. Within a level, a batch takes the requests of the best priority first (1
before 2, Triton's ``priority``), each priority in arrival order; a request's own ``timeout`` (Triton's,
counted from when it is queued) shortens its deadline. The batcher only queues and forms batches: warming
the model, running a batch at its level and accounting its FLOPs are the served model's
(``ServedModel.start`` and ``run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

import haste

from .errors import ServiceError
from .metrics import Metrics
from .served import ServedModel
from .settings import Settings

log = logging.getLogger("service")


@dataclass
class Result:
    """What the worker hands back for one image."""

    probs: torch.Tensor  # (num_labels,) softmax scores
    flops_dense: float
    flops_executed: float  # merged convs + dense layers + HASTE overhead
    queue_s: float
    inference_s: float
    batch_size: int
    plan: str  # the plan entry that ran (ServedModel.plan)


@dataclass
class Job:
    """One image waiting for a batch."""

    inputs: torch.Tensor  # (C, H, W) preprocessed
    level: str
    deadline: float  # time.monotonic() seconds
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    priority: int = 1  # 1 runs first; see Settings.priority_levels
    enqueued: float = field(default_factory=time.monotonic)
    abandoned: bool = False  # set by the handler when it stops waiting (Batcher.abandon)
    started: bool = False  # set by the worker when it takes the job into a batch: it runs to completion

    def resolve(self, result: Result | None = None, error: BaseException | None = None) -> None:
        """Complete the future from any thread (no-op if the handler gave up)."""

        def _set() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(_set)
        except RuntimeError:  # loop closed at shutdown
            pass


class Batcher:
    """Queue + worker thread of one model. ``submit`` is called on the event loop; the worker warms the
    model at every level first (one model at a time, under ``warm_lock``), then serves."""

    def __init__(
        self, served: ServedModel, settings: Settings, metrics: Metrics, warm_lock: threading.Lock | None = None
    ) -> None:
        self.served = served
        self.settings = settings
        self.metrics = metrics
        #: Held while this model warms up and times its levels: shared by the batchers of one app, so that
        #: models warm one at a time and one model's latency table is not measured beside another's warm-up.
        self._warm_lock = warm_lock if warm_lock is not None else threading.Lock()
        self._cond = threading.Condition()
        #: level -> priority -> FIFO; priorities 1 (first) to settings.priority_levels.
        self._queues: dict[str, dict[int, deque[Job]]] = {
            level: {p: deque() for p in range(1, settings.priority_levels + 1)} for level in haste.LEVELS
        }
        self._incoming: dict[str, int] = dict.fromkeys(haste.LEVELS, 0)
        self._size = 0
        self._stopping = False
        self.warm = threading.Event()
        self.failed: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"haste-batcher-{served.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking batches; fail what is still queued with 503; join the worker."""
        with self._cond:
            self._stopping = True
            leftovers = [job for level in self._queues.values() for q in level.values() for job in q]
            for level in self._queues.values():
                for q in level.values():
                    q.clear()
            self._size = 0
            self._cond.notify_all()
        for job in leftovers:
            job.resolve(error=ServiceError("not_ready", "the server is shutting down"))
        self._thread.join(timeout)

    @contextlib.contextmanager
    def arriving(self, level: str) -> Iterator[None]:
        """Announce a request of ``level`` that will be submitted (or fail) inside the block."""
        with self._cond:
            self._incoming[level] += 1
        try:
            yield
        finally:
            with self._cond:
                self._incoming[level] -= 1
                self._cond.notify()

    def abandon(self, job: Job) -> bool:
        """Give up ``job`` if it has not been taken into a batch yet (it is then never executed, and neither
        counted as an image nor in the FLOPs); False if it is already running: its handler then waits for
        its result and answers it, since the deadline is checked before execution, not during it."""
        with self._cond:
            if job.started:
                return False
            job.abandoned = True
            return True

    def submit(self, job: Job) -> None:
        """Queue ``job`` or raise ServiceError(queue_full) with Retry-After."""
        with self._cond:
            if self._stopping:
                raise ServiceError(
                    "not_ready",
                    "the server is shutting down",
                    headers={"Retry-After": str(self.settings.retry_after_s)},
                )
            if self._size >= self.settings.queue_size:
                raise ServiceError(
                    "queue_full",
                    f"{self.served.name} has {self._size} requests waiting (queue size {self.settings.queue_size}); "
                    "retry later",
                    headers={"Retry-After": str(self.settings.retry_after_s)},
                )
            if job.priority not in self._queues[job.level]:
                raise ValueError(f"priority must be 1 to {self.settings.priority_levels}; got {job.priority}")
            self._queues[job.level][job.priority].append(job)
            self._size += 1
            self.metrics.queue_depth.labels(self.served.name).set(self._size)
            self._cond.notify()

    # -- worker thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_num_threads(self.settings.torch_threads)
        try:
            with self._warm_lock:
                started = self.served.start(self.settings, stop=lambda: self._stopping)
            self.metrics.engine_info.labels(self.served.name, self.served.engine).set(1)
        except Exception as exc:  # a model that cannot run is reported by /readyz, not served
            log.exception("warm-up of %s failed", self.served.name)
            self.failed = f"warm-up of {self.served.name} failed: {type(exc).__name__}: {exc}"
            return
        if not started or self._stopping:
            return
        self.warm.set()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            level, jobs = batch
            try:
                self._execute(level, jobs)
            except Exception as exc:
                log.exception("batch of %d at level %s on %s failed", len(jobs), level, self.served.name)
                for job in jobs:
                    job.resolve(error=exc)

    def _next_batch(self) -> tuple[str, list[Job]] | None:
        """Block until a batch is due; return (level, live jobs), or None when stopping."""
        max_batch, delay = self.settings.max_batch_size, self.settings.max_batch_delay_s
        with self._cond:
            while True:
                if self._stopping:
                    return None
                heads = [(q[0].enqueued, level) for level, qs in self._queues.items() for q in qs.values() if q]
                if not heads:
                    self._cond.wait()
                    continue
                oldest, level = min(heads)
                queues = self._queues[level]  # by priority, best first
                waiting = sum(len(q) for q in queues.values())
                wait = oldest + delay - time.monotonic()
                if waiting < max_batch and wait > 0 and self._incoming[level] > 0:
                    self._cond.wait(wait)
                    continue
                now = time.monotonic()
                jobs, expired = [], []
                for queue in queues.values():
                    while queue and len(jobs) < max_batch:
                        job = queue.popleft()
                        self._size -= 1
                        if job.abandoned:
                            continue
                        if now >= job.deadline:
                            expired.append(job)
                        else:
                            job.started = True  # from here on it runs and its handler answers it (abandon)
                            jobs.append(job)
                self.metrics.queue_depth.labels(self.served.name).set(self._size)
                for job in expired:
                    job.resolve(error=ServiceError("timeout", "request deadline or timeout passed before it could run"))
                if jobs:
                    return level, jobs

    def _execute(self, level: str, jobs: list[Job]) -> None:
        """Run ``jobs`` as one batch at ``level`` on the served model; resolve every job with its Result."""
        start = time.monotonic()
        name = self.served.name
        run = self.served.run(level, torch.stack([job.inputs for job in jobs]))
        self.metrics.observe_batch(name, level, len(jobs), run.seconds, run.plan)
        for job, p, (dense, executed) in zip(jobs, run.probs, run.flops):
            self.metrics.observe_image(name, level, dense, executed)
            self.metrics.queue_duration.labels(name, level).observe(start - job.enqueued)
            job.resolve(Result(p, dense, executed, start - job.enqueued, run.seconds, len(jobs), run.plan))
