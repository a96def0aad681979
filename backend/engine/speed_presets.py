"""Few-step presets as data: a distillation LoRA with the sampler, steps and guidance it was made for.

A preset only fills in a job's settings; the artist can still change each of them. Its LoRA is
loaded at start like any other (``serve --speed hyper-8-cfg``), from the hub by default or from a
local file given with ``--lora <lora name>=<file>``.

- Hyper-SD's CFG-preserving 8-step LoRA keeps classifier-free guidance (about 5), so InstantStyle's
  negative branch, and with it the negative prompt, still works;
- SDXL-Lightning and LCM run with guidance 1 or less: CFG is off, the pipeline makes one UNet pass per
  step, and the style embedding is passed without its negative (``ip_adapter_embeds``).

Each model family has its own LoRAs: SD1.5 has Hyper-SD's and LCM's, and no Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.enums import ModelFamily, Sampler

from .loading import LoraSource


@dataclass(frozen=True)
class SpeedPreset:
    name: str
    label: str
    lora: LoraSource
    """The distillation LoRA (its ``name`` is how jobs select it)."""
    lora_weight: float
    sampler: Sampler
    steps: int
    guidance_scale: float


SPEED_PRESETS: dict[str, SpeedPreset] = {
    preset.name: preset
    for preset in (
        SpeedPreset(
            "hyper-8-cfg",
            "Hyper 8 steps (CFG)",
            LoraSource("hyper-sdxl-8steps-cfg", "ByteDance/Hyper-SD/Hyper-SDXL-8steps-CFG-lora.safetensors"),
            1.0,
            Sampler.DDIM_TRAILING,
            8,
            5.0,
        ),
        SpeedPreset(
            "lightning-4",
            "Lightning 4 steps",
            LoraSource(
                "sdxl-lightning-4step", "ByteDance/SDXL-Lightning/sdxl_lightning_4step_lora.safetensors"
            ),
            1.0,
            Sampler.EULER_TRAILING,
            4,
            1.0,
        ),
        SpeedPreset(
            "lcm-4",
            "LCM 4 steps",
            LoraSource("lcm-lora-sdxl", "latent-consistency/lcm-lora-sdxl/pytorch_lora_weights.safetensors"),
            1.0,
            Sampler.LCM,
            4,
            1.0,
        ),
    )
}


SD15_SPEED_PRESETS: dict[str, SpeedPreset] = {
    preset.name: preset
    for preset in (
        SpeedPreset(
            "hyper-8-cfg",
            "Hyper 8 steps (CFG)",
            LoraSource("hyper-sd15-8steps-cfg", "ByteDance/Hyper-SD/Hyper-SD15-8steps-CFG-lora.safetensors"),
            1.0,
            Sampler.DDIM_TRAILING,
            8,
            5.0,
        ),
        SpeedPreset(
            "lcm-4",
            "LCM 4 steps",
            LoraSource(
                "lcm-lora-sdv1-5", "latent-consistency/lcm-lora-sdv1-5/pytorch_lora_weights.safetensors"
            ),
            1.0,
            Sampler.LCM,
            4,
            1.0,
        ),
    )
}

FAMILY_SPEED_PRESETS: dict[ModelFamily, dict[str, SpeedPreset]] = {
    ModelFamily.SDXL: SPEED_PRESETS,
    ModelFamily.SD15: SD15_SPEED_PRESETS,
}
ALL_PRESET_NAMES = tuple(dict.fromkeys(name for presets in FAMILY_SPEED_PRESETS.values() for name in presets))


def speed_preset(name: str, family: ModelFamily = ModelFamily.SDXL) -> SpeedPreset:
    presets = FAMILY_SPEED_PRESETS[family]
    if name in presets:
        return presets[name]
    if name in ALL_PRESET_NAMES:
        raise ValueError(
            f"speed preset {name!r} has no LoRA for {family.label} models: "
            f"expected one of {', '.join(presets)}"
        )
    raise ValueError(f"unknown speed preset {name!r}: expected one of {', '.join(ALL_PRESET_NAMES)}")


def lora_sources(
    presets: list[str], loras: list[LoraSource], family: ModelFamily = ModelFamily.SDXL
) -> list[LoraSource]:
    """The LoRAs to load: the artist's own, then each preset's unless one of that name is given
    (a local copy of a preset's LoRA replaces its hub download)."""
    named = {source.name for source in loras}
    wanted = list(loras)
    for name in presets:
        source = speed_preset(name, family).lora
        if source.name not in named:
            wanted.append(source)
            named.add(source.name)
    return wanted
