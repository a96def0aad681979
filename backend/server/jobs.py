"""A job as the server's queue and executors see it, the events it emits, and how failures read."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from backend.engine.blocks import BlockMapError
from backend.engine.decode import NonFiniteOutput
from backend.engine.previews import StepPreview
from backend.engine.request import GenerationRequest, GenerationResult, RequestError
from protocol import ErrorCode


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
