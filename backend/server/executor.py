"""Where jobs run: the one interface between the server's queue and the engines that do the work.

The queue (``worker.GpuWorker``) owns fairness and decides which job goes next; an executor has
``slots`` places that each run one job at a time, and the queue gives every slot its own thread.
Two implementations: ``LocalExecutor``, one engine in this process (the default: one slot, Ray never
imported), and ``ray_pool.RayWorkerPool``, one Ray actor per GPU.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable

from backend.engine.auto_search import with_plan
from backend.engine.previews import StepPreview
from backend.engine.request import GenerationRequest, JobCancelled
from protocol import ErrorCode, WorkerInfo

from .jobs import (
    Engine,
    Job,
    JobCancelledEvent,
    JobFailed,
    JobFinished,
    JobStarted,
    JobStep,
    classify_failure,
)

log = logging.getLogger(__name__)


class Executor:
    """Runs jobs in ``slots`` places, one job at a time each."""

    @property
    def slots(self) -> int:
        raise NotImplementedError

    def run(self, slot: int, job: Job) -> None:
        """Run ``job`` in ``slot`` (on that slot's thread): emit its events and end it with exactly one
        terminal event. Never raises."""
        raise NotImplementedError

    def interrupt(self, slot: int, job: Job) -> None:
        """``job`` (running in ``slot``) was cancelled: make it stop at its next step. Its
        ``cancel_event`` is already set."""

    def prefers(self, slot: int, job: Job) -> bool:
        """Whether ``slot`` runs ``job`` faster than another idle slot would (cached encodings)."""
        return False

    def usable(self, slot: int) -> bool:
        """Whether ``slot`` can take a job now (a lost worker's slot waits for its replacement)."""
        return True

    def restore(self, slot: int) -> None:
        """Make an unusable slot usable again if possible (on its own thread, outside the queue's lock;
        may block while a replacement worker loads)."""

    def workers(self) -> list[WorkerInfo]:
        return []

    def close(self) -> None:
        """Stop every worker (the server is shutting down); running jobs were interrupted already."""


def step_reporter(job: Job, started: float):
    """The ``on_step`` of a job: record its step and emit it with the remaining time's estimate."""

    def on_step(preview: StepPreview) -> None:
        job.last_step = preview.step
        per_step = (time.perf_counter() - started) / max(preview.done, 1e-3)
        job.emit(JobStep(preview, per_step * (preview.total - preview.done)))

    return on_step


class LocalExecutor(Executor):
    """One engine, in this process, on the queue's one worker thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def slots(self) -> int:
        return 1

    def workers(self) -> list[WorkerInfo]:
        device = getattr(self.engine, "device", None)
        return [WorkerInfo("local", str(device))] if device is not None else []

    def run(self, slot: int, job: Job) -> None:
        # A job sent before the model was ready is planned now that it is (an auto search's steps).
        request = job.request = with_plan(job.request, getattr(self.engine, "features", None))
        if job.cancel_event.is_set():
            job.emit(JobCancelledEvent(0))
            return
        job.emit(JobStarted(request.seed, request.total_steps))
        on_step = step_reporter(job, time.perf_counter())
        job.emit(
            run_on_engine(self.engine, job.job_id, request, on_step, job.cancel_event, lambda: job.last_step)
        )


def run_on_engine(
    engine: Engine,
    job_id: int,
    request: GenerationRequest,
    on_step: Callable[[StepPreview], None],
    cancel: threading.Event,
    last_step: Callable[[], int],
) -> JobFinished | JobCancelledEvent | JobFailed:
    """Run one job on ``engine`` and say how it ended (the local worker and a Ray actor alike): a failed
    job is logged, and the accelerator's cache released, and the engine goes on serving."""
    try:
        return JobFinished(engine.generate(request, on_step=on_step, cancel=cancel))
    except JobCancelled:
        return JobCancelledEvent(last_step())
    except Exception as error:  # one failed job must never stop the worker
        code, message = classify_failure(error)
        # The traceback as text: a live one in a log record (kept by some handlers) would keep every
        # tensor of the failed call alive.
        trace = "" if code is ErrorCode.BAD_REQUEST else "".join(traceback.format_exception(error))
        log.error("job %s failed: %s", job_id, message, extra={"trace": trace})
        failed = JobFailed(code, message)
    # Only here is the exception, with the job's tensors in its traceback, gone.
    try:
        engine.release_memory()
    except Exception:  # best effort only
        log.debug("could not release accelerator memory", exc_info=True)
    return failed
