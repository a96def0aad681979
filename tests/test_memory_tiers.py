"""Memory tiers: the choice from free GPU memory (mocked), and every tier's job on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine.engine import InstantStyleEngine
from backend.engine.memory import GIB, MemoryTier, pick_tier
from backend.engine.request import GenerationRequest, StyleReference
from protocol import Mode

CUDA = torch.device("cuda")


@pytest.mark.parametrize(
    ("free_gib", "controlnet", "tier"),
    [
        (22.0, True, MemoryTier.FULL),  # a 24 GB card
        (15.6, False, MemoryTier.FULL),  # 16 GB
        (15.6, True, MemoryTier.ENCODERS_OFF),  # 16 GB with a ControlNet (+2.33 GiB)
        (11.2, False, MemoryTier.ENCODERS_OFF),  # 12 GB
        (7.3, True, MemoryTier.MODEL_OFFLOAD),  # 8 GB
        (5.4, False, MemoryTier.GROUP_OFFLOAD),  # 6 GB
    ],
)
def test_the_tier_follows_the_free_memory(monkeypatch, free_gib, controlnet, tier):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * GIB), 24 * GIB))
    assert pick_tier(CUDA, "auto", controlnet) is tier
    assert pick_tier(CUDA, "model-offload", controlnet) is MemoryTier.MODEL_OFFLOAD  # a flag wins


@pytest.mark.parametrize(
    ("free_gib", "tier_without", "tier_with"),
    [
        (15.6, MemoryTier.FULL, MemoryTier.FULL),  # the full VAE decode stays the peak
        (9.7, MemoryTier.ENCODERS_OFF, MemoryTier.MODEL_OFFLOAD),
        (6.8, MemoryTier.MODEL_OFFLOAD, MemoryTier.GROUP_OFFLOAD),
        (7.3, MemoryTier.MODEL_OFFLOAD, MemoryTier.MODEL_OFFLOAD),  # an 8 GB card keeps its tier
    ],
)
def test_the_preview_autoencoder_is_counted_where_it_raises_the_peak(
    monkeypatch, free_gib, tier_without, tier_with
):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * GIB), 24 * GIB))
    assert pick_tier(CUDA, "auto", controlnet=False, preview_vae=False) is tier_without
    assert pick_tier(CUDA, "auto", controlnet=False, preview_vae=True) is tier_with


def test_cpu_runs_in_full_and_unknown_tiers_are_refused():
    assert pick_tier(torch.device("cpu"), "auto", controlnet=True) is MemoryTier.FULL
    with pytest.raises(ValueError, match="unknown memory tier 'small': expected one of auto, full"):
        pick_tier(CUDA, "small", controlnet=False)


def job(style_image, mode: Mode = Mode.TXT2IMG) -> GenerationRequest:
    extra = {"init_image": style_image} if mode is Mode.CONTROL else {}
    return GenerationRequest(
        prompt="a cat",
        style_images=[StyleReference(style_image)],
        content_text="stripes",
        mode=mode,
        width=64,
        height=64,
        steps=3,
        seed=11,
        **extra,
    )


@pytest.mark.parametrize("tier", [t for t in MemoryTier if t is not MemoryTier.FULL])
def test_every_tier_makes_the_full_tiers_pixels(engine, tiny_paths, style_image, tier):
    tiered = InstantStyleEngine.load(tiny_paths.spec("diffusers"), device="cpu", memory_tier=tier.value)
    assert tiered.info.memory_tier == tier.value
    for mode in (Mode.TXT2IMG, Mode.CONTROL):
        full = engine.generate(job(style_image, mode)).images[0].astype(int)
        # Equal up to float round-off (offloaded weights are copies at other memory alignments).
        assert np.abs(tiered.generate(job(style_image, mode)).images[0] - full).max() <= 1, mode
    assert tiered.pipeline.image_encoder.device.type == "cpu"  # at rest after encoding
