"""Samplers as artists name them, as diffusers schedulers with the right configuration (plain data).

Each job may pick one; the model's own scheduler config is the base, so its training settings (beta
schedule, prediction type, timestep count) carry over and only what defines the sampler is changed.
Few-step samplers (LCM, TCD and the "trailing" Euler and DDIM) space their timesteps from the end,
as the distilled models and LoRAs they are made for (Lightning, Hyper-SD) expect.
"""

from __future__ import annotations

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
