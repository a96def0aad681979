"""Wrapping a scheduler's ``step`` for one job, the way diffusers still reads it.

diffusers decides which keyword arguments a scheduler's ``step`` gets (``generator``, ``eta``) by
inspecting its signature: a wrapper that hides it loses them (a stochastic sampler then ignored the
job's seed, and TCD its ``eta``). Wrappers nest: each restores what it found.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

Step = Callable[..., object]


@contextlib.contextmanager
def wrapped_step(scheduler: object, wrap: Callable[[Step], Step]) -> Iterator[None]:
    """While the block runs, ``scheduler.step`` is ``wrap(step)`` with the step's own signature."""
    found = scheduler.__dict__.get("step")  # an outer wrapper of this job, or None (the class's method)
    original = scheduler.step  # type: ignore[attr-defined]
    scheduler.step = functools.wraps(original)(wrap(original))  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if found is None:
            del scheduler.step  # type: ignore[attr-defined]  # back to the class's method
        else:
            scheduler.step = found  # type: ignore[attr-defined]
