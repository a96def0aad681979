"""The job queue and the one thread that runs jobs on the GPU.

The asyncio loop never waits on the GPU: it submits jobs here and receives
events back through ``Job.emit``, which the connection makes thread-safe
(``loop.call_soon_threadsafe``). Every job ends in exactly one terminal event:
``JobFinished``, ``JobCancelled`` or ``JobFailed``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from backend.engine.blocks import BlockMapError
from backend.engine.decode import NonFiniteOutput
from backend.engine.previews import StepPreview
from backend.engine.request import GenerationRequest, GenerationResult, JobCancelled, RequestError
from protocol import ErrorCode

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What the server needs of an engine."""

    def generate(
        self,
        request: GenerationRequest,
        on_step: Callable[[StepPreview], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult: ...

    def release_memory(self) -> None:
        """Free what a failed job left cached on the accelerator."""


@dataclass(frozen=True)
class JobMoved:
    """The job moved up the queue: ``position`` jobs now run before it."""

    position: int


@dataclass(frozen=True)
class JobStarted:
    seed: int
    total_steps: int


@dataclass(frozen=True)
class JobStep:
    preview: StepPreview
    eta_seconds: float


@dataclass(frozen=True)
class JobFinished:
    result: GenerationResult


@dataclass(frozen=True)
class JobCancelledEvent:
    last_step: int


@dataclass(frozen=True)
class JobFailed:
    code: ErrorCode
    message: str


JobEvent = JobMoved | JobStarted | JobStep | JobFinished | JobCancelledEvent | JobFailed


@dataclass(eq=False)
class Job:
    job_id: int
    request: GenerationRequest
    emit: Callable[[JobEvent], None]
    """Called from the worker thread; must be thread-safe."""
    cancel_event: threading.Event = field(default_factory=threading.Event)
    last_step: int = 0
    position: int = 0
    """Jobs ahead of this one, as last told to its client."""


def classify_failure(error: BaseException) -> tuple[ErrorCode, str]:
    """An engine exception as an error code and a message fit for an artist."""
    if isinstance(error, RequestError | BlockMapError | ValueError):
        return ErrorCode.BAD_REQUEST, str(error)
    if isinstance(error, NonFiniteOutput):
        return ErrorCode.ENGINE_ERROR, str(error)
    text = str(error)
    if type(error).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return ErrorCode.OUT_OF_MEMORY, "the GPU ran out of memory: try a smaller size or batch"
    return ErrorCode.ENGINE_ERROR, f"the job failed: {type(error).__name__}: {text}"[:500]


class GpuWorker:
    """Runs queued jobs one at a time, first in first out, on its own thread.

    It may start before its engine exists (the model still loading): jobs then wait in the queue
    until ``attach`` hands it the engine, or ``fail_waiting`` ends them when loading failed.
    """

    def __init__(self, engine: Engine | None, max_queued: int = 32) -> None:
        self.engine = engine
        self.max_queued = max_queued
        self._queue: collections.deque[Job] = collections.deque()
        self._condition = threading.Condition()
        self._running: Job | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gpu-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel everything and wait for the running job to stop at its next step."""
        with self._condition:
            self._stopping = True
            for job in self._queue:
                job.cancel_event.set()
            if self._running is not None:
                self._running.cancel_event.set()
            self._condition.notify_all()
        self._thread.join(timeout)

    def attach(self, engine: Engine) -> None:
        """The model is loaded: run the waiting jobs on it."""
        with self._condition:
            self.engine = engine
            self._condition.notify_all()

    def fail_waiting(self, code: ErrorCode, message: str) -> None:
        """End every queued job with an error (the model they waited for could not be loaded)."""
        with self._condition:
            waiting = list(self._queue)
            self._queue.clear()
        for job in waiting:
            job.emit(JobFailed(code, message))

    def submit(self, job: Job) -> int | None:
        """Queue a job; returns how many jobs run before it, or None when the queue is full."""
        with self._condition:
            if self._stopping or len(self._queue) >= self.max_queued:
                return None
            position = len(self._queue) + (1 if self._running is not None else 0)
            job.position = position
            self._queue.append(job)
            self._condition.notify()
            return position

    def cancel(self, job: Job) -> bool:
        """Cancel a job. True if it was still queued (removed at once), False if it is running."""
        job.cancel_event.set()
        with self._condition:
            if job in self._queue:
                index = self._queue.index(job)
                self._queue.remove(job)
                self._announce_positions(start=index)
                return True
        return False

    def _announce_positions(self, start: int = 0) -> None:
        """Tell the queued jobs from ``start`` on where they now stand (call with the lock held)."""
        ahead = 1 if self._running is not None else 0
        for index in range(start, len(self._queue)):
            job = self._queue[index]
            if job.position != index + ahead:  # only real moves are news
                job.position = index + ahead
                job.emit(JobMoved(job.position))

    def _next(self) -> Job | None:
        with self._condition:
            while (not self._queue or self.engine is None) and not self._stopping:
                self._condition.wait()
            if self._stopping:
                return None
            self._running = self._queue.popleft()
            self._announce_positions()
            return self._running

    def _run(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._execute(job)
            finally:
                with self._condition:
                    self._running = None

    def _execute(self, job: Job) -> None:
        request = job.request
        if job.cancel_event.is_set():
            job.emit(JobCancelledEvent(0))
            return
        job.emit(JobStarted(request.seed, request.effective_steps))
        started = time.perf_counter()

        def on_step(preview: StepPreview) -> None:
            job.last_step = preview.step
            per_step = (time.perf_counter() - started) / preview.step
            job.emit(JobStep(preview, per_step * (preview.total - preview.step)))

        failed = False
        try:
            assert self.engine is not None, "jobs run only once the engine is attached"
            result = self.engine.generate(request, on_step=on_step, cancel=job.cancel_event)
        except JobCancelled:
            job.emit(JobCancelledEvent(job.last_step))
        except Exception as error:  # one failed job must never stop the worker
            code, message = classify_failure(error)
            # The traceback as text: a live one in a log record (kept by some handlers) would keep
            # every tensor of the failed call alive.
            trace = "" if code is ErrorCode.BAD_REQUEST else "\n" + "".join(traceback.format_exception(error))
            log.error("job %s failed: %s%s", job.job_id, message, trace)
            job.emit(JobFailed(code, message))
            failed = True
        else:
            job.emit(JobFinished(result))
        if failed:  # only here is the exception, with the job's tensors in its traceback, gone
            try:
                self.engine.release_memory()
            except Exception:  # best effort only
                log.debug("could not release accelerator memory", exc_info=True)
