"""Samplers as artists name them, as diffusers schedulers with the right configuration (plain data).

Each job may pick one; the model's own scheduler config is the base, so its training settings (beta
schedule, prediction type, timestep count) carry over and only what defines the sampler is changed.
Few-step samplers (LCM, TCD and the "trailing" Euler and DDIM) space their timesteps from the end,
as the distilled models and LoRAs they are made for (Lightning, Hyper-SD) expect.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from protocol.enums import Sampler


@dataclass(frozen=True)
class SamplerRecipe:
    label: str
    scheduler: str
    """The diffusers class name."""
    config: dict[str, Any] = field(default_factory=dict)


SAMPLERS: dict[Sampler, SamplerRecipe] = {
    Sampler.EULER: SamplerRecipe("Euler", "EulerDiscreteScheduler"),
    Sampler.EULER_A: SamplerRecipe("Euler a", "EulerAncestralDiscreteScheduler"),
    Sampler.EULER_TRAILING: SamplerRecipe(
        "Euler (trailing)", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}
    ),
    Sampler.DPMPP_2M: SamplerRecipe(
        "DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}
    ),
    Sampler.DPMPP_2M_KARRAS: SamplerRecipe(
        "DPM++ 2M Karras",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    # diffusers' own SDE variant of DPM++ (its noise comes from the job's seeded generator, so it is
    # deterministic); the single-step DPMSolverSDEScheduler would need torchsde and its own seeding.
    Sampler.DPMPP_SDE_KARRAS: SamplerRecipe(
        "DPM++ SDE Karras",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    Sampler.DDIM: SamplerRecipe("DDIM", "DDIMScheduler"),
    Sampler.DDIM_TRAILING: SamplerRecipe(
        "DDIM (trailing)", "DDIMScheduler", {"timestep_spacing": "trailing"}
    ),
    Sampler.UNIPC: SamplerRecipe("UniPC", "UniPCMultistepScheduler"),
    Sampler.LCM: SamplerRecipe("LCM", "LCMScheduler", {"timestep_spacing": "trailing"}),
    Sampler.TCD: SamplerRecipe("TCD", "TCDScheduler", {"timestep_spacing": "trailing"}),
}


def make_scheduler(sampler: Sampler, base_config: object) -> object:
    """A fresh scheduler for one job: the model's config with the sampler's settings on top."""
    import diffusers

    recipe = SAMPLERS[sampler]
    scheduler_class = getattr(diffusers, recipe.scheduler)
    return scheduler_class.from_config(base_config, **recipe.config)


class JobSchedulers:
    """A scheduler of its own for each job (they keep per-run state, and the sampler is the job's choice),
    copied from one unused scheduler per sampler: building one from its config inspects signatures
    (~1 ms a job on a CPU), copying it takes ~0.1 ms."""

    def __init__(self, model_scheduler: object) -> None:
        self.model_scheduler = model_scheduler
        """The model's own scheduler: the default sampler and the base of the others' configs."""
        self._pristine: dict[Sampler | None, object] = {}

    def fresh(self, sampler: Sampler | None) -> object:
        """A new scheduler for ``sampler`` (None: the model's own kind)."""
        pristine = self._pristine.get(sampler)
        if pristine is None:
            config = self.model_scheduler.config  # type: ignore[attr-defined]
            if sampler is None:
                pristine = type(self.model_scheduler).from_config(config)  # type: ignore[attr-defined]
            else:
                pristine = make_scheduler(sampler, config)
            self._pristine[sampler] = pristine
        return copy.deepcopy(pristine)
