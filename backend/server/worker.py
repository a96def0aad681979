"""The job queue, and one thread per executor slot that runs its jobs.

The asyncio loop never waits on the GPU: it submits jobs here and receives
events back through ``Job.emit``, which the connection makes thread-safe
(``loop.call_soon_threadsafe``). Every job ends in exactly one terminal event:
``JobFinished``, ``JobCancelled`` or ``JobFailed``. Where jobs run is the
executor's business (``executor.py``): one local engine, or a pool of Ray actors.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from dataclasses import dataclass

from protocol import ErrorCode, WorkerInfo

from .executor import Executor, LocalExecutor
from .jobs import (
    Engine,
    Job,
    JobCancelledEvent,
    JobEvent,
    JobFailed,
    JobFinished,
    JobMoved,
    JobStarted,
    JobStep,
    classify_failure,
)
from .sweep_turns import SweepTurns

__all__ = [
    "Engine",
    "GpuWorker",
    "Job",
    "JobCancelledEvent",
    "JobEvent",
    "JobFailed",
    "JobFinished",
    "JobMoved",
    "JobStarted",
    "JobStep",
    "QueueFull",
    "classify_failure",
]

log = logging.getLogger(__name__)


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
    """Runs queued jobs on an executor's slots, one thread each, the clients taking turns.

    Each client has its own first-in-first-out line and may hold at most ``max_per_client`` queued
    jobs. Clients take turns: each line knows the round of its next job, a client that joins does so
    in the current round (ahead of those already served in it), so one client's batch of thirty holds
    back another client's single job by at most one job per other client. A sweep takes one turn per
    cell (``sweep_turns``): between its cells, it goes back to the front of its client's line. With
    several slots, the next job goes to an idle slot, preferably one the executor says runs it faster
    (cached encodings).

    It may start before its engine exists (the model still loading): jobs then wait in the queue
    until ``attach`` hands it the engine (or an ``Executor``), or ``fail_waiting`` ends them when
    loading failed.
    """

    def __init__(
        self, engine: Engine | Executor | None, max_queued: int = 32, max_per_client: int | None = None
    ) -> None:
        self.executor: Executor | None = None
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
        self._running: dict[int, Job] = {}
        """Slot -> its running job."""
        self._sweeps: dict[Job, SweepTurns] = {}
        """Sweeps in progress: each cell takes a turn of its own, then the sweep queues again."""
        self._stopping = False
        self._started = False
        self._threads: list[threading.Thread] = []
        if engine is not None:
            self.attach(engine)

    @property
    def busy(self) -> bool:
        """A job is running (its step may still be computing after ``stop`` gave up waiting)."""
        return any(thread.is_alive() for thread in self._threads) and bool(self._running)

    def start(self) -> None:
        with self._condition:
            self._started = True
            self._start_threads()

    def _start_threads(self) -> None:
        """One thread per slot, once both started and attached (call with the lock held)."""
        if not self._started or self.executor is None or self._threads:
            return
        for slot in range(self.executor.slots):
            name = "gpu-worker" if self.executor.slots == 1 else f"gpu-worker-{slot}"
            thread = threading.Thread(target=self._run, args=(slot,), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel everything and wait for the running jobs to stop at their next step."""
        with self._condition:
            self._stopping = True
            for job in self._order():
                job.cancel_event.set()
            running = dict(self._running)
            for job in running.values():
                job.cancel_event.set()
            self._condition.notify_all()
        executor = self.executor
        if executor is not None:
            for slot, job in running.items():
                _quietly(executor.interrupt, slot, job)
        for thread in self._threads:
            thread.join(timeout)
        if executor is not None:
            _quietly(executor.close)

    def attach(self, engine: Engine | Executor) -> None:
        """The model is loaded: run the waiting jobs on it (an engine runs here, on one thread)."""
        with self._condition:
            self.executor = engine if isinstance(engine, Executor) else LocalExecutor(engine)
            self._start_threads()
            self._condition.notify_all()

    def fail_waiting(self, code: ErrorCode, message: str) -> None:
        """End every queued job with an error (the model they waited for could not be loaded)."""
        with self._condition:
            waiting = self._order()
            self._lines.clear()
        for job in waiting:
            job.emit(JobFailed(code, message))

    def workers(self) -> list[WorkerInfo]:
        """Where jobs run (nothing before the executor is attached)."""
        return self.executor.workers() if self.executor is not None else []

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
            self._line_of(job.client).jobs.append(job)
            self._announce_positions()  # the new job may go ahead of later turns of other clients
            self._condition.notify_all()
            return job.position

    def cancel(self, job: Job) -> bool:
        """Cancel a job. True if it was still queued (removed at once), False if it is running."""
        job.cancel_event.set()
        with self._condition:
            line = self._lines.get(job.client)
            if line is not None and job in line.jobs:
                line.jobs.remove(job)
                self._sweeps.pop(job, None)
                if not line.jobs:
                    del self._lines[job.client]
                self._announce_positions()
                return True
            slot = next((slot for slot, running in self._running.items() if running is job), None)
        if slot is not None and self.executor is not None:
            _quietly(self.executor.interrupt, slot, job)
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
        position from ``submit``'s answer, the others hear only real moves. With several slots, a
        job's position counts the running jobs that must end before a slot is free for it."""
        slots = self.executor.slots if self.executor is not None else 1
        ahead = max(0, len(self._running) - (slots - 1))
        for index, job in enumerate(self._order()):
            if job.position != index + ahead:
                moved = job.position != -1
                job.position = index + ahead
                sweep = self._sweeps.get(job)
                if moved and not (sweep is not None and sweep.started):  # a started job stays started
                    job.emit(JobMoved(job.position))

    def _takes_next(self, slot: int) -> bool:
        """Whether ``slot`` takes the next job now (call with the lock held): no other idle slot runs
        that job faster."""
        executor = self.executor
        if executor is None or not self._lines or not executor.usable(slot):
            return False
        head = self._order()[0]
        if executor.prefers(slot, head):
            return True
        idle = [other for other in range(executor.slots) if other != slot and other not in self._running]
        return not any(executor.usable(other) and executor.prefers(other, head) for other in idle)

    def _next(self, slot: int) -> Job | _Stop | None:
        """The slot's next job; None when the slot became unusable (it is restored, then asks again)."""
        with self._condition:
            while not self._stopping and not self._takes_next(slot):
                self._condition.wait(timeout=1.0)  # a preferred slot's turn: look again now and then
                if self.executor is not None and not self.executor.usable(slot):
                    return None  # restored outside the lock, then back here
            if self._stopping:
                return _STOP
            client = self._order()[0].client  # the one rule of who goes next
            line = self._lines[client]
            job = self._running[slot] = line.jobs.popleft()
            if job not in self._sweeps and SweepTurns.applies_to(job):
                self._sweeps[job] = SweepTurns(job)
            self._round = line.turn
            line.turn += 1
            if not line.jobs:
                del self._lines[client]
                self._served[client] = line.turn
            self._served = {c: turn for c, turn in self._served.items() if turn > self._round}
            self._announce_positions()
            return job

    def _run(self, slot: int) -> None:
        while True:
            executor = self.executor
            if executor is not None and not executor.usable(slot) and not self._stopping:
                _quietly(executor.restore, slot)  # outside the lock: the other slots go on
            job = self._next(slot)
            if job is _STOP:
                return
            if job is None:
                continue
            sweep = self._sweeps.get(job)
            runs = job
            try:
                assert self.executor is not None, "jobs run only once an executor is attached"
                runs = job if sweep is None else sweep.cell_job()
                self.executor.run(slot, runs)
            except Exception as error:  # an executor must not raise; should it, the job still ends
                log.exception("slot %s: job %s ended by an internal error", slot, job.job_id)
                runs.emit(JobFailed(ErrorCode.INTERNAL, f"internal error: {type(error).__name__}"))
                if sweep is not None:
                    sweep.ended = True  # told, through the cell or directly: it never queues again
            finally:
                with self._condition:
                    self._running.pop(slot, None)
                    if sweep is not None:
                        self._after_cell(sweep)
                    self._condition.notify_all()

    def _after_cell(self, sweep: SweepTurns) -> None:
        """A sweep's cell ended (call with the lock held): its next cell queues at the front of its
        client's line, to run in that client's next turn."""
        job = sweep.job
        if not sweep.more:
            del self._sweeps[job]
            return
        if job.cancel_event.is_set() or self._stopping:
            del self._sweeps[job]
            sweep.cancelled_between_cells()
            return
        self._line_of(job.client).jobs.appendleft(job)
        self._announce_positions()

    def _line_of(self, client: object) -> _Line:
        """The client's line, made in the current round if it has none (call with the lock held): a
        client coming back does not jump the queue (``_served`` remembers its next turn)."""
        line = self._lines.get(client)
        if line is None:
            turn = max(self._round, self._served.pop(client, 0))
            line = self._lines[client] = _Line(collections.deque(), turn, next(self._arrivals))
        return line


class _Stop:
    """What ``_next`` returns when the worker stops."""


_STOP = _Stop()


def _quietly(call, *args) -> None:
    """Best effort during cancellation and shutdown: a failure is logged, never raised."""
    try:
        call(*args)
    except Exception:
        log.warning("%s failed", getattr(call, "__name__", call), exc_info=True)
