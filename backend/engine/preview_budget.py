"""Which steps get a preview: previews may cost at most a share of the denoising time.

Measured on the tiny model at 256² (CPU), a tiny-autoencoder preview on every step made a job 30 to
43 % slower; the step itself is what the artist waits for. The budget times the denoising and the
previews of each job as it runs and previews a step only while the previews so far, plus the next
one's expected cost, stay within ``share`` of the denoising time so far. The first step always gets
one (the artist sees the job has begun); the last step's preview is the finished picture itself,
made from the result at no cost (``engine``), so its step here never draws. Between, never more than
one preview every ``min_interval`` seconds (a client shows no more than that anyway), and none while
the previous one's cost is not known yet (on a GPU a preview is measured a step late). Every step
still reports its progress. Denoising is counted from the end of the first step: what comes before
it (prompt encoding, a model moving to the GPU) is not denoising.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_PREVIEW_SHARE = 0.03
MIN_PREVIEW_INTERVAL = 0.1


@dataclass
class PreviewBudget:
    share: float = DEFAULT_PREVIEW_SHARE
    """Of the denoising time, what previews may cost (0: the first step's and the result's only)."""
    min_interval: float = MIN_PREVIEW_INTERVAL
    pictures: bool = True
    """False: no step gets a picture (``GenerationRequest.step_pictures``)."""
    clock: Callable[[], float] = time.perf_counter
    denoising: float = 0.0
    """Seconds spent denoising so far (the callbacks' own time left out)."""
    spent: float = 0.0
    """Seconds spent rendering previews so far."""
    estimate: float = 0.0
    """What the next preview should cost: the last one's time."""
    _mark: float | None = field(default=None, repr=False)
    _last_shown: float | None = field(default=None, repr=False)
    _in_flight: bool = field(default=False, repr=False)
    """A picture is drawn but its cost not known yet (on a GPU it is told a step later)."""

    def resume(self) -> None:
        """Denoising (re)starts now: the time until the next ``step_ended`` counts as denoising."""
        self._mark = self.clock()

    def step_ended(self, step: int) -> bool:
        """A step ended: whether it gets a preview (then ``rendered`` says what it cost)."""
        now = self.clock()
        if self._mark is not None:
            self.denoising += now - self._mark
            self._mark = None
        if not self.pictures:
            return False
        wanted = step == 1 or (
            not self._in_flight
            and (self._last_shown is None or now - self._last_shown >= self.min_interval)
            and self.spent + self.estimate <= self.share * self.denoising
        )
        if wanted:
            self._in_flight, self._last_shown = True, now
        return wanted

    def rendered(self, seconds: float, cost_share: float = 1.0) -> None:
        """A preview was drawn in ``seconds`` (on a GPU: its own stream's time, known a step late);
        ``cost_share``: what it cost against a full preview (the first step's is drawn smaller), so
        that the next full one's cost is not underestimated."""
        self.spent += seconds
        self.estimate = seconds / cost_share
        self._in_flight = False
