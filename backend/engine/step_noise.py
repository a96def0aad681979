"""A stochastic sampler's per-step noise, drawn on the GPU instead of copied there at every step.

A job's initial noise comes from CPU generators, so the same seed starts from the same noise on every
device. Samplers that add noise at every step (Euler a, DPM++ SDE, LCM, TCD) drew that noise from the
same CPU generators and copied it to the GPU: a copy from pageable memory, which waits for every queued
GPU kernel first, once a step (the stall that the previews' one-step-late hand-over avoids). On CUDA
the step noise now comes from generators on the GPU, seeded from the job's seed: the same seed gives
the same pictures on the same device; between CPU and GPU, stochastic samplers' pictures differ (as
their last bits already did).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from .scheduler_step import Step, wrapped_step

STEP_NOISE_SEED_OFFSET = 0x5EED
"""Added to the job's seed: the step noise is not a copy of the initial noise's stream."""

GeneratorFactory = Callable[[torch.device, int], torch.Generator]


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@contextlib.contextmanager
def step_noise_on_device(
    scheduler: object,
    device: torch.device,
    seed: int,
    batch: int,
    make: GeneratorFactory = device_generator,
) -> Iterator[None]:
    """While the block runs, ``scheduler.step`` draws its noise from generators on ``device`` (CUDA
    only; elsewhere nothing changes)."""
    if device.type != "cuda":
        yield
        return
    generators = [make(device, seed + i + STEP_NOISE_SEED_OFFSET) for i in range(batch)]

    def wrap(original: Step) -> Step:
        def step(*args: object, **kwargs: object) -> object:
            if kwargs.get("generator") is not None:
                kwargs["generator"] = generators if batch > 1 else generators[0]
            return original(*args, **kwargs)

        return step

    with wrapped_step(scheduler, wrap):
        yield
