"""The Ray actor that holds one loaded engine (one per GPU) and streams a job's events back.

It runs in a Ray worker process. ``generate`` is a generator method, so Ray streams each yielded
event to the server while the job runs (Ray's streaming generators): previews arrive step by step,
not after the job. The actor is threaded (``max_concurrency`` 2): ``cancel`` runs while a job does
and sets the event the engine checks at every step. Every job's inference runs on one and the same
thread, so that a CPU engine keeps one OpenMP pool (two threads taking turns cost 2.4× on the CPU).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from backend.engine.previews import StepPreview
from backend.engine.request import GenerationRequest, JobCancelled

from .jobs import JobCancelledEvent, JobFailed, JobFinished, classify_failure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActorPlan:
    """How an actor loads its engine: plain data, sent to the actor's process."""

    spec: object
    """The engine's ``ModelSpec``."""
    device: str | None = None
    dtype: str | None = None
    memory_tier: str | None = "auto"
    compile: bool = False
    torch_threads: int | None = None
    """CPU threads for PyTorch in the actor (Ray sets one per requested CPU otherwise)."""
    warm_up: bool = False
    """Run the engine's small warm-up job after loading."""


ActorEvent = StepPreview | JobFinished | JobCancelledEvent | JobFailed
"""What ``generate`` yields: each step's preview (without its latents), then one of the job's terminal
events, as the local worker emits them."""


class EngineActor:
    """One engine in one Ray worker; ``ray_pool`` wraps it with ``ray.remote`` when Ray is in use."""

    def __init__(self, plan: ActorPlan) -> None:
        import torch

        from backend.engine.engine import InstantStyleEngine
        from backend.engine.load_plan import LoadPlan

        if plan.torch_threads:
            torch.set_num_threads(plan.torch_threads)
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        load = LoadPlan.make(plan.spec, plan.device, plan.dtype, plan.memory_tier, plan.compile)  # type: ignore[arg-type]
        self.engine = self._inference.submit(InstantStyleEngine.load_planned, load).result()
        if plan.warm_up:
            self._inference.submit(self.engine.warm_up).result()
        self._cancels: dict[int, threading.Event] = {}
        self._cancelled_early: set[int] = set()
        self._lock = threading.Lock()

    def describe(self) -> dict[str, object]:
        """Where this worker runs, and what its model offers."""
        import torch

        device = self.engine.device
        name = str(device)
        if device.type == "cuda":
            name = f"{device} ({torch.cuda.get_device_name(device)})"
        return {
            "device": name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "features": self.engine.features,
            "modes": self.engine.modes,
            "info": self.engine.info,
        }

    def generate(self, job_id: int, request: GenerationRequest) -> Iterator[ActorEvent]:
        """The job's events as they happen; the last one is its terminal event."""
        cancel = threading.Event()
        with self._lock:
            self._cancels[job_id] = cancel
            if job_id in self._cancelled_early:
                self._cancelled_early.discard(job_id)
                cancel.set()
        events: queue.SimpleQueue[ActorEvent] = queue.SimpleQueue()
        last_step = 0

        def on_step(preview) -> None:
            nonlocal last_step
            last_step = preview.step
            events.put(StepPreview(preview.step, preview.total, preview.rgb, None))  # x_t stays here

        def work() -> None:
            failed = False
            try:
                events.put(JobFinished(self.engine.generate(request, on_step=on_step, cancel=cancel)))
            except JobCancelled:
                events.put(JobCancelledEvent(last_step))
            except Exception as error:  # the actor goes on serving after any failed job
                code, message = classify_failure(error)
                log.error(
                    "job %s failed: %s\n%s", job_id, message, "".join(traceback.format_exception(error))
                )
                events.put(JobFailed(code, message))
                failed = True
            if failed:
                self.engine.release_memory()

        self._inference.submit(work)
        try:
            while True:
                event = events.get()
                yield event
                if not isinstance(event, StepPreview):
                    return
        finally:
            cancel.set()  # the server stopped listening: stop the job too
            with self._lock:
                self._cancels.pop(job_id, None)

    def cancel(self, job_id: int) -> None:
        """Stop a job at its next step (also one that has not reached this actor yet)."""
        with self._lock:
            event = self._cancels.get(job_id)
            if event is not None:
                event.set()
            else:
                self._cancelled_early.add(job_id)
                if len(self._cancelled_early) > 10_000:  # bounded: ids of jobs that never came
                    self._cancelled_early.clear()

    def ping(self) -> bool:
        return True
