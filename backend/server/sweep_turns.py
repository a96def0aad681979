"""A sweep takes its turns in the queue cell by cell, so a long grid cannot starve other clients.

Without this a maximal sweep (16 cells of 150 steps at 2048², hours on a CPU) held a worker for all
its cells while another artist's one-step job waited. The queue now runs one cell per turn: the
executor sees each cell as the single job it is (``GenerationRequest.for_cell``, the same pixels as
before), and this module makes the cells look like one job to the client: one ``started``, steps
counted across the cells, one ``result`` with every cell, a cancel that stops between cells.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from backend.engine.request import GenerationResult, SweepCell
from backend.engine.sweep import join_cells

from .jobs import Job, JobCancelledEvent, JobEvent, JobFinished, JobStarted, JobStep


@dataclass(eq=False)
class SweepTurns:
    """A queued sweep's progress between its turns; ``cell_job`` is what runs in the next one."""

    job: Job
    cells: list[SweepCell] = field(init=False)
    done: list[GenerationResult] = field(default_factory=list)
    ended: bool = False
    """A terminal event reached the client (the last cell's result, a failure or a cancel)."""
    _run_seconds: float = 0.0
    """Time spent running cells (not waiting in the queue), for the remaining time's estimate."""
    _cell_started: float = 0.0

    def __post_init__(self) -> None:
        self.cells = self.job.request.cells()

    @staticmethod
    def applies_to(job: Job) -> bool:
        return bool(job.request.sweep) and len(job.request.cells()) > 1

    @property
    def started(self) -> bool:
        """A cell has finished: the client was told the sweep started and must not hear ``queued``."""
        return bool(self.done)

    @property
    def per_cell(self) -> int:
        return self.job.request.effective_steps

    @property
    def more(self) -> bool:
        """The sweep goes back in the queue for its next cell."""
        return not self.ended and len(self.done) < len(self.cells)

    def cell_job(self) -> Job:
        """The next cell as a job of its own, whose events this object turns into the sweep's."""
        self._cell_started = time.perf_counter()
        cell = self.cells[len(self.done)]
        job = self.job
        return Job(job.job_id, job.request.for_cell(cell), self._emit, job.client, job.cancel_event)

    def _emit(self, event: JobEvent) -> None:
        if self.ended:  # one terminal event per job, whatever an executor does after it
            return
        job, offset = self.job, len(self.done) * self.per_cell
        total = self.per_cell * len(self.cells)
        if isinstance(event, JobStarted):
            if not self.done:
                job.emit(JobStarted(job.request.seed, total))
            return
        if isinstance(event, JobStep):
            step = offset + event.preview.step
            job.last_step = step
            per_step = (self._run_seconds + time.perf_counter() - self._cell_started) / step
            preview = dataclasses.replace(event.preview, step=step, total=total)
            job.emit(JobStep(preview, per_step * (total - step)))
            return
        if isinstance(event, JobFinished):
            self._run_seconds += time.perf_counter() - self._cell_started
            self.done.append(event.result)
            if len(self.done) < len(self.cells):
                return  # the next cell waits for its turn
            event = JobFinished(join_cells(self.cells, self.done))
        elif isinstance(event, JobCancelledEvent):
            event = JobCancelledEvent(offset + event.last_step if event.last_step else job.last_step)
        self.ended = True
        job.emit(event)

    def cancelled_between_cells(self) -> None:
        """Cancelled (or the server stopping) after a cell ended and before the next began."""
        if not self.ended:
            self.ended = True
            self.job.emit(JobCancelledEvent(self.job.last_step))
