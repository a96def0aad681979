"""The job queue and the one thread that runs jobs on the GPU.

The asyncio loop never waits on the GPU: it submits jobs here and receives
events back through ``Job.emit``, which the connection makes thread-safe
(``loop.call_soon_threadsafe``). Every job ends in exactly one terminal event:
``JobFinished``, ``JobCancelled`` or ``JobFailed``.
"""

from __future__ import annotations

import collections
import itertools
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
    client: object = None
    """Whose job it is: clients take turns (round-robin), each within its share of the queue."""
    cancel_event: threading.Event = field(default_factory=threading.Event)
    last_step: int = 0
    position: int = -1
    """Jobs ahead of this one, as last told to its client (-1: not queued yet)."""


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


class QueueFull(Exception):
    """A job does not fit in the queue; the message says whose share is used up."""


@dataclass
class _Line:
    """One client's queued jobs, and the turn (round) in which its next job runs."""

    jobs: collections.deque[Job]
    turn: int
    arrived: int
    """Ties between lines of one turn go to the earlier one."""

    @property
    def rank(self) -> tuple[int, int]:
        return (self.turn, self.arrived)


class GpuWorker:
    """Runs queued jobs one at a time on its own thread, the clients taking turns.

    Each client has its own first-in-first-out line and may hold at most ``max_per_client`` queued
    jobs. Clients take turns: each line knows the round of its next job, a client that joins does so
    in the current round (ahead of those already served in it), so one client's batch of thirty holds
    back another client's single job by at most one job per other client.

    It may start before its engine exists (the model still loading): jobs then wait in the queue
    until ``attach`` hands it the engine, or ``fail_waiting`` ends them when loading failed.
    """

    def __init__(
        self, engine: Engine | None, max_queued: int = 32, max_per_client: int | None = None
    ) -> None:
        self.engine = engine
        self.max_queued = max_queued
        self.max_per_client = max_per_client or max(1, max_queued // 4)
        self._lines: dict[object, _Line] = {}
        self._round = 0
        """The turn of the job started last."""
        self._served: dict[object, int] = {}
        """The next turn of clients whose line ran empty, so that coming back does not jump the queue
        (entries at or below the current round say nothing and are pruned)."""
        self._arrivals = itertools.count()
        self._condition = threading.Condition()
        self._running: Job | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gpu-worker", daemon=True)

    @property
    def busy(self) -> bool:
        """A job is running (its step may still be computing after ``stop`` gave up waiting)."""
        return self._thread.is_alive() and self._running is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel everything and wait for the running job to stop at its next step."""
        with self._condition:
            self._stopping = True
            for job in self._order():
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
            waiting = self._order()
            self._lines.clear()
        for job in waiting:
            job.emit(JobFailed(code, message))

    @property
    def queued(self) -> int:
        with self._condition:
            return sum(len(line.jobs) for line in self._lines.values())

    def refusal(self, client: object) -> str | None:
        """Why a job of ``client`` would not fit now (checked before its images are decoded), or None."""
        with self._condition:
            if self._stopping:
                return "the server is shutting down"
            line = self._lines.get(client)
            if line is not None and len(line.jobs) >= self.max_per_client:
                return (
                    f"you already have {len(line.jobs)} jobs queued, this server's share per client; "
                    "try again when one has finished"
                )
            if self.queued >= self.max_queued:
                return "the job queue is full; try again later"
            return None

    def submit(self, job: Job) -> int:
        """Queue a job; returns how many jobs run before it. Raises ``QueueFull`` when it does not fit."""
        reason = self.refusal(job.client)
        if reason is not None:
            raise QueueFull(reason)
        with self._condition:
            line = self._lines.get(job.client)
            if line is None:
                turn = max(self._round, self._served.pop(job.client, 0))
                line = self._lines[job.client] = _Line(collections.deque(), turn, next(self._arrivals))
            line.jobs.append(job)
            self._announce_positions()  # the new job may go ahead of later turns of other clients
            self._condition.notify()
            return job.position

    def cancel(self, job: Job) -> bool:
        """Cancel a job. True if it was still queued (removed at once), False if it is running."""
        job.cancel_event.set()
        with self._condition:
            line = self._lines.get(job.client)
            if line is not None and job in line.jobs:
                line.jobs.remove(job)
                if not line.jobs:
                    del self._lines[job.client]
                self._announce_positions()
                return True
        return False

    def _order(self) -> list[Job]:
        """The queued jobs in the order they will run (call with the lock held)."""
        ranks = {client: line.rank for client, line in self._lines.items()}
        jobs = {client: list(line.jobs) for client, line in self._lines.items()}
        order: list[Job] = []
        while ranks:
            client = min(ranks, key=ranks.__getitem__)
            order.append(jobs[client].pop(0))
            turn, arrived = ranks[client]
            if jobs[client]:
                ranks[client] = (turn + 1, arrived)
            else:
                del ranks[client]
        return order

    def _announce_positions(self) -> None:
        """Tell queued jobs where they now stand (call with the lock held); a new job learns its
        position from ``submit``'s answer, the others hear only real moves."""
        ahead = 1 if self._running is not None else 0
        for index, job in enumerate(self._order()):
            if job.position != index + ahead:
                moved = job.position != -1
                job.position = index + ahead
                if moved:
                    job.emit(JobMoved(job.position))

    def _next(self) -> Job | None:
        with self._condition:
            while (not self._lines or self.engine is None) and not self._stopping:
                self._condition.wait()
            if self._stopping:
                return None
            client = self._order()[0].client  # the one rule of who goes next
            line = self._lines[client]
            self._running = line.jobs.popleft()
            self._round = line.turn
            line.turn += 1
            if not line.jobs:
                del self._lines[client]
                self._served[client] = line.turn
            self._served = {c: turn for c, turn in self._served.items() if turn > self._round}
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
        job.emit(JobStarted(request.seed, request.total_steps))
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
