"""The Ray actor that holds one loaded engine (one per GPU) and streams a job's events back.

It runs in a Ray worker process. ``generate`` is a generator method, so Ray streams each yielded
event to the server while the job runs (Ray's streaming generators): previews arrive step by step,
not after the job. The actor is threaded (``max_concurrency`` 2): ``cancel`` runs while a job does
and sets the event the engine checks at every step. Every job's inference runs on one and the same
thread, so that a CPU engine keeps one OpenMP pool (two threads taking turns cost 2.4× on the CPU).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from backend.engine.previews import StepPreview
from backend.engine.request import GenerationRequest
from backend.server.logs import configure_logging
from backend.threads import pin_threads, requested_threads
from protocol import Mode, ModelFeatures, WorkerInfo

from .executor import run_on_engine
from .jobs import JobCancelledEvent, JobFailed, JobFinished

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
    torch_threads: int | None = field(default_factory=requested_threads)
    """CPU threads for PyTorch in the actor: by default the driver's ``$INSTANTSTYLE_TORCH_THREADS``
    (``backend/threads.py``), else Ray's one per requested CPU."""
    warm_up: bool = False
    """Run the engine's small warm-up job after loading."""


@dataclass(frozen=True)
class ActorDescription:
    """What an actor tells the server once its model is loaded."""

    host: str
    device: str
    features: ModelFeatures
    modes: list[Mode]
    info: object
    """The engine's ``EngineInfo``."""

    def worker(self, index: int) -> WorkerInfo:
        """The actor as clients see it, in slot ``index``."""
        return WorkerInfo(f"worker {index + 1} on {self.host}", self.device)


ActorEvent = StepPreview | JobFinished | JobCancelledEvent | JobFailed
"""What ``generate`` yields: each step's preview (without its latents), then one of the job's terminal
events, as the local worker emits them."""


class EngineActor:
    """One engine in one Ray worker; ``ray_pool`` wraps it with ``ray.remote`` when Ray is in use."""

    def __init__(self, plan: ActorPlan) -> None:
        from backend.engine.engine import InstantStyleEngine
        from backend.engine.load_plan import LoadPlan

        configure_logging(logging.INFO)  # the driver's rules: escaped lines, tracebacks indented below
        pin_threads(plan.torch_threads)
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        load = LoadPlan.make(plan.spec, plan.device, plan.dtype, plan.memory_tier, plan.compile)  # type: ignore[arg-type]
        self.engine = self._inference.submit(InstantStyleEngine.load_planned, load).result()
        if plan.warm_up:
            self._inference.submit(self.engine.warm_up).result()
        self._cancels: dict[int, threading.Event] = {}
        self._cancelled_early: set[int] = set()
        self._lock = threading.Lock()

    def describe(self) -> ActorDescription:
        """Where this worker runs, and what its model offers."""
        import torch

        device = self.engine.device
        name = str(device)
        if device.type == "cuda":
            name = f"{device} ({torch.cuda.get_device_name(device)})"
        engine = self.engine
        return ActorDescription(socket.gethostname(), name, engine.features, engine.modes, engine.info)

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
            events.put(replace(preview, latents=None))  # x_t stays here

        def work() -> None:
            events.put(run_on_engine(self.engine, job_id, request, on_step, cancel, lambda: last_step))

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
