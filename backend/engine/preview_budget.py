"""Which steps get a preview, and how big: previews may cost at most a share of the denoising time.

Measured on the tiny model at 256² (CPU), a tiny-autoencoder preview on every step made a job 30 to
43 % slower; the step itself is what the artist waits for. The budget times the denoising and the
previews of each job as it runs and previews a step only while the previews so far, plus the next
one's expected cost, stay within ``share`` of the denoising time so far: at full size when that fits,
else at half the side (a quarter of the cost) once no picture has come for ``stale_after`` seconds,
so that a slow job on a CPU still shows its progress about every second. The first step always gets
one, at half the side (a blur yet); the last step's preview is the finished picture itself, made from
the result at no cost (``engine``), so its step here never draws. Never more than one preview every
``min_interval`` seconds (a client shows no more than that anyway), and none while the previous one's
cost is not known yet (on a GPU a preview is measured a step late). Every step still reports its
progress. Denoising is counted from the end of the first step: what comes before it (prompt encoding,
a model moving to the GPU) is not denoising.

The default share is 2 %: with the engine's own work (scores, bookkeeping: ~0.5 % of a tiny job) the
whole job stays within 3 % of the bare diffusers pipeline (``bench/bench_engine.py``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_PREVIEW_SHARE = 0.02
MIN_PREVIEW_INTERVAL = 0.1
STALE_AFTER = 0.8
"""Seconds without a picture after which a half-side one is drawn if a full one does not fit: a slow
job still shows a picture about every second, and a job whose full pictures come more often than
that never alternates sharp and blurred ones."""
HALF_SIDE_COST = 0.25
"""What a half-side preview is taken to cost against a full one: its share of the pixels. Measured
on a CPU the real share is 0.23 at 256² and 0.10 to 0.17 at 1024² (the decoder's cost falls faster
than its pixels on big pictures), so a big job's next full preview may be estimated at half its cost
once; the budget then goes by what it really cost."""


class Picture(enum.IntEnum):
    """What a step gets drawn as (falsy: nothing, its progress only)."""

    NONE = 0
    HALF = 1
    """At half the preview's side."""
    FULL = 2


@dataclass
class PreviewBudget:
    share: float = DEFAULT_PREVIEW_SHARE
    """Of the denoising time, what previews may cost (0: the first step's and the result's only)."""
    min_interval: float = MIN_PREVIEW_INTERVAL
    stale_after: float = STALE_AFTER
    pictures: bool = True
    """False: no step gets a picture (``GenerationRequest.step_pictures``)."""
    clock: Callable[[], float] = time.perf_counter
    denoising: float = 0.0
    """Seconds spent denoising so far (the callbacks' own time left out)."""
    spent: float = 0.0
    """Seconds spent rendering previews so far."""
    estimate: float = 0.0
    """What the next full-size preview should cost, from the last one's time."""
    _mark: float | None = field(default=None, repr=False)
    _last_shown: float | None = field(default=None, repr=False)
    _in_flight: bool = field(default=False, repr=False)
    """A picture is drawn but its cost not known yet (on a GPU it is told a step later)."""

    def resume(self) -> None:
        """Denoising (re)starts now: the time until the next ``step_ended`` counts as denoising."""
        self._mark = self.clock()

    def step_ended(self, step: int) -> Picture:
        """A step ended: what it is drawn as (then ``rendered`` says what that cost)."""
        now = self.clock()
        if self._mark is not None:
            self.denoising += now - self._mark
            self._mark = None
        picture = self._picture(step, now)
        if picture:
            self._in_flight, self._last_shown = True, now
        return picture

    def _picture(self, step: int, now: float) -> Picture:
        if not self.pictures:
            return Picture.NONE
        if step == 1:
            return Picture.HALF
        since = now - self._last_shown if self._last_shown is not None else float("inf")
        if self._in_flight or since < self.min_interval:
            return Picture.NONE
        allowed = self.share * self.denoising
        if self.spent + self.estimate <= allowed:
            return Picture.FULL
        if since >= self.stale_after and self.spent + self.estimate * HALF_SIDE_COST <= allowed:
            return Picture.HALF
        return Picture.NONE

    def rendered(self, seconds: float, picture: Picture = Picture.FULL) -> None:
        """A preview was drawn in ``seconds`` (on a GPU: its own stream's time, known a step late)."""
        self.spent += seconds
        self.estimate = seconds / (HALF_SIDE_COST if picture is Picture.HALF else 1.0)
        self._in_flight = False
