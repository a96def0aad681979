"""Few-step presets: data that names a LoRA, sampler, steps and guidance; offered once their LoRA loads."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import LoraSource
from backend.engine.request import GenerationRequest, StyleReference
from backend.engine.speed_presets import SPEED_PRESETS, lora_sources
from protocol import Sampler
from tests.conftest import REPO, noise_image

STYLE = noise_image(6)


def test_the_presets_are_the_published_recipes():
    hyper, lightning, lcm = SPEED_PRESETS["hyper-8-cfg"], SPEED_PRESETS["lightning-4"], SPEED_PRESETS["lcm-4"]
    assert (hyper.steps, hyper.sampler, hyper.guidance_scale) == (8, Sampler.DDIM_TRAILING, 5.0)
    assert hyper.lora.location == "ByteDance/Hyper-SD/Hyper-SDXL-8steps-CFG-lora.safetensors"
    assert (lightning.steps, lightning.sampler) == (
        4,
        Sampler.EULER_TRAILING,
    ) and lightning.guidance_scale <= 1
    assert (lcm.steps, lcm.sampler) == (4, Sampler.LCM) and lcm.guidance_scale <= 1
    # An artist's local copy under the preset LoRA's name replaces the hub download.
    local = LoraSource("sdxl-lightning-4step", "/models/lightning.safetensors")
    assert lora_sources(["lightning-4", "lcm-4"], [local]) == [local, lcm.lora]


@pytest.fixture(scope="module")
def preset_engine(tiny_paths) -> InstantStyleEngine:
    spec = dataclasses.replace(
        tiny_paths.spec("diffusers"),
        loras=(
            LoraSource("sdxl-lightning-4step", str(tiny_paths.lora("other-peft"))),
            LoraSource("hyper-sdxl-8steps-cfg", str(tiny_paths.lora("style-peft"))),
        ),
        # lcm-4's LoRA is on the hub, which this test cannot reach: it must be left out, with a reason.
        speed_presets=("hyper-8-cfg", "lightning-4", "lcm-4"),
    )
    return InstantStyleEngine.load(spec, device="cpu")


def test_only_presets_whose_lora_loaded_are_offered(preset_engine):
    features = preset_engine.features
    assert [p.name for p in features.speed_presets] == ["hyper-8-cfg", "lightning-4"]
    hyper = features.speed_presets[0]
    assert (hyper.lora, hyper.steps, hyper.sampler, hyper.guidance_scale) == (
        "hyper-sdxl-8steps-cfg",
        8,
        Sampler.DDIM_TRAILING,
        5.0,
    )
    assert len(features.problems) == 1 and "lcm-lora-sdxl" in features.problems[0]


def preset_job(name: str, **overrides) -> GenerationRequest:
    preset = SPEED_PRESETS[name]
    fields = {
        "steps": preset.steps,
        "guidance_scale": preset.guidance_scale,
        "sampler": preset.sampler,
        "loras": ((preset.lora.name, preset.lora_weight),),
        "width": 64,
        "height": 64,
        "seed": 3,
    }
    fields.update(overrides)
    return GenerationRequest(prompt="a harbour", style_images=[StyleReference(STYLE)], **fields)


def test_lightning_runs_without_cfg_and_hyper_keeps_the_negative_branch(preset_engine):
    _pipe, lightning = preset_engine.prepare(preset_job("lightning-4"))
    assert lightning["ip_adapter_image_embeds"][0].shape[0] == 1  # no negative style embedding
    assert lightning["negative_prompt_embeds"] is None
    _pipe, hyper = preset_engine.prepare(preset_job("hyper-8-cfg"))
    assert hyper["ip_adapter_image_embeds"][0].shape[0] == 2 and hyper["negative_prompt_embeds"] is not None
    scheduler = preset_engine.pipeline.scheduler
    assert type(scheduler).__name__ == "DDIMScheduler" and scheduler.config.timestep_spacing == "trailing"
    result = preset_engine.generate(preset_job("lightning-4"))
    assert result.images[0].shape == (64, 64, 3)
    # The artist may override each setting: here the steps.
    assert preset_engine.generate(preset_job("lightning-4", steps=2)).images[0].shape == (64, 64, 3)


def test_generate_applies_the_first_speed_preset_and_the_artists_overrides(
    tiny_paths, tmp_path, preset_engine
):
    style = tmp_path / "style.png"
    STYLE.save(style)
    command = [
        sys.executable, "-m", "backend", "generate", "--model", "tiny", "--device", "cpu",
        "--style", str(style), "--prompt", "a harbour", "--width", "64", "--height", "64", "--seed", "3",
        "--speed", "lightning-4", "--lora", f"sdxl-lightning-4step={tiny_paths.lora('other-peft')}",
        "--out", str(tmp_path / "out.png"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = preset_engine.generate(preset_job("lightning-4")).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png").convert("RGB")), expected)
    bad = subprocess.run(
        [*command[:-2], "--speed", "turbo-1"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --speed turbo-1")
