"""The half-precision lane: what a GPU runs (fp16, bf16), run on the CPU with the tiny model.

Every job of the engine's matrix — each mode, each blocks preset (precise too), regions, a sweep, a
LoRA, a speed preset's sampler, tiny-autoencoder and linear previews — runs in fp16 and in bf16, and in
every memory tier's placement. After each job every component still has the dtype and the device it
was loaded with (diffusers' ``from_pipe`` once cast them all to fp32 after the first img2img job: on a
GPU that doubles the model's memory), and the pictures, previews and scores are finite.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import LoraSource
from backend.engine.memory import MemoryTier
from backend.engine.memory import models as pipeline_models
from backend.engine.regions import StyleRegion
from backend.engine.request import GenerationRequest, StyleReference
from protocol import Auto, BlockPreset, ControlKind, Mode, Sampler, SweepAxis
from tests.conftest import noise_image

SIDE = 64
STYLE, OTHER, INIT = noise_image(31), noise_image(32), noise_image(33)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def placement(engine: InstantStyleEngine) -> dict[str, tuple[torch.dtype, str]]:
    """Every model's dtype and device, where its weights are at rest."""
    models = dict(pipeline_models(engine.pipeline))
    if engine.controlnet is not None:
        models["controlnet"] = engine.controlnet
    if ControlKind.TILE in engine.controlnets.loaded:
        models["tile_controlnet"] = engine.controlnets.loaded[ControlKind.TILE]
    if engine.preview_vae.vae is not None:
        models["preview_vae"] = engine.preview_vae.vae
    where = {}
    for name, module in models.items():
        kinds = {(p.dtype, p.device.type) for p in module.parameters()}
        assert len(kinds) == 1, f"{name} has mixed dtypes or devices: {kinds}"
        where[name] = kinds.pop()
    return where


def request(**fields) -> GenerationRequest:
    base = {
        "prompt": "a harbour",
        "style_images": [StyleReference(STYLE)],
        "content_text": "stripes",
        "width": SIDE,
        "height": SIDE,
        "steps": 2,
        "seed": 7,
    }
    return GenerationRequest(**{**base, **fields})


def half_mask(top: bool) -> Image.Image:
    mask = Image.new("L", (SIDE, SIDE), 0)
    mask.paste(255, (0, 0, SIDE, SIDE // 2) if top else (0, SIDE // 2, SIDE, SIDE))
    return mask


MATRIX = {
    "txt2img": request(),
    "img2img": request(mode=Mode.IMG2IMG, init_image=INIT, strength=0.7),
    "inpaint": request(mode=Mode.INPAINT, init_image=INIT, mask=half_mask(True)),
    "control": request(mode=Mode.CONTROL, init_image=INIT),
    "precise": request(preset=BlockPreset.PRECISE, layout_push=2.0),
    "style+layout": request(preset=BlockPreset.STYLE_LAYOUT, style_scale=0.8),
    "all": request(preset=BlockPreset.ALL),
    "two references": request(style_images=[StyleReference(STYLE, 0.7), StyleReference(OTHER, 0.3)]),
    "regions": request(regions=[StyleRegion(half_mask(False), [StyleReference(OTHER)])]),
    "sweep": request(sweep=[(SweepAxis.STYLE_SCALE, (0.5, 1.0))]),
    "lora": request(loras=(("ink", 0.8),)),
    "trailing DDIM without CFG": request(sampler=Sampler.DDIM_TRAILING, guidance_scale=1.0),
    "ancestral sampler": request(sampler=Sampler.EULER_A),
    "batch": request(batch=2),
    "control tile": request(mode=Mode.CONTROL, init_image=INIT, control=ControlKind.TILE),
    "auto with presets": request(auto=Auto(presets=True)),
    "auto img2img batch": request(mode=Mode.IMG2IMG, init_image=INIT, strength=0.7, auto=Auto(), batch=2),
}


def load(tiny_paths, dtype: str, tier: MemoryTier = MemoryTier.FULL, preview: str = "auto"):
    spec = dataclasses.replace(
        tiny_paths.spec("diffusers"),
        loras=(LoraSource("ink", str(tiny_paths.lora("style-kohya"))),),
        preview_vae=preview,
    )
    return InstantStyleEngine.load(spec, device="cpu", dtype=dtype, memory_tier=tier.value)


def run_and_check(
    engine: InstantStyleEngine, job: GenerationRequest, loaded: dict, name: str, side: int = SIDE
) -> None:
    previews = []
    result = engine.generate(job, on_step=previews.append)
    assert placement(engine) == loaded, f"{name}: a component changed its dtype or device"
    cells = max(1, len(job.cells())) if job.sweep else 1
    assert len(result.images) == job.batch * cells, name
    for image in result.images:
        assert image.shape == (side, side, 3) and image.dtype == np.uint8, name
    pictures = [p.rgb for p in previews if p.rgb is not None]  # the preview budget may skip some
    assert pictures and all(np.isfinite(rgb).all() for rgb in pictures), name
    for scores in result.scores:
        assert all(math.isfinite(v) for v in (scores.style, scores.content, scores.prompt) if v is not None)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_job_keeps_every_components_dtype_and_device(tiny_paths, dtype):
    engine = load(tiny_paths, dtype)
    loaded = placement(engine)
    assert {kind for kind, _device in loaded.values()} == {DTYPES[dtype]}
    assert engine.features.preview == "tiny-vae"
    for name, job in MATRIX.items():
        run_and_check(engine, job, loaded, name)
    # The linear previews of the same engine (a client that asks for rough previews is the same path).
    engine.preview_vae = dataclasses.replace(engine.preview_vae, vae=None)
    linear = {name: where for name, where in loaded.items() if name != "preview_vae"}
    run_and_check(engine, MATRIX["img2img"], linear, "linear previews")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("tier", [t for t in MemoryTier if t is not MemoryTier.FULL])
def test_every_tiers_placement_survives_its_jobs_in_half_precision(tiny_paths, dtype, tier):
    engine = load(tiny_paths, dtype, tier)
    loaded = placement(engine)
    for name in ("txt2img", "img2img", "inpaint", "control", "precise", "batch"):
        run_and_check(engine, MATRIX[name], loaded, f"{tier.value} {name}")
    tiled = request(width=2 * SIDE, height=2 * SIDE, batch=2)  # the tiny VAE's tiles are 64 px
    run_and_check(engine, tiled, loaded, f"{tier.value} tiled decode", side=2 * SIDE)
