"""Memory tiers: peaks computed from the placement, the choice from free GPU memory (mocked), and every
tier's job on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine.engine import InstantStyleEngine
from backend.engine.memory import GIB, MemoryTier
from backend.engine.memory_budget import (
    JobShape,
    peak,
    phases,
    pick_tier,
    sdxl_sizes,
)
from backend.engine.request import GenerationRequest, StyleReference
from protocol import Mode

CUDA = torch.device("cuda")


FP16, BF16 = torch.float16, torch.bfloat16


def card_free_bytes(card_gb: int) -> int:
    """A card's free memory at start: an "N GB" card has N GiB (nvidia-smi: 12288 MiB on a 12 GB one),
    less ~0.5 GiB of CUDA context."""
    return int((card_gb - 0.5) * GIB)


def test_the_weights_are_sdxls_real_sizes_from_the_meta_device():
    """The sizes the tiers are computed from: SDXL's shapes, counted, equal the measured fp16 sizes."""
    sizes = sdxl_sizes(FP16)
    measured = {"unet": 4.78, "text_encoders": 1.52, "image_encoder": 3.44, "ip_adapter": 0.65, "vae": 0.16}
    assert {name: round(getattr(sizes, name), 2) for name in measured} == measured
    assert round(sizes.controlnet, 2) == 2.33
    assert sdxl_sizes(BF16) == sizes  # two bytes a weight either way
    assert round(sdxl_sizes(torch.float32).unet, 2) == 9.56


@pytest.mark.parametrize(
    ("dtype", "controlnet", "peaks"),
    [
        # full: the fp32-upcast decode is fp16's peak; bf16 decodes in bf16 (half) and denoising peaks.
        (FP16, False, {"full": (14.5, "decode"), "encoders-off": (10.7, "encode style / score"),
                       "model-offload": (7.5, "denoise"), "group-offload": (2.5, "denoise")}),
        (FP16, True, {"full": (16.8, "decode"), "encoders-off": (12.2, "denoise"),
                      "model-offload": (10.5, "denoise"), "group-offload": (3.1, "denoise")}),
        (BF16, False, {"full": (12.7, "denoise"), "encoders-off": (10.7, "encode style / score"),
                       "model-offload": (7.5, "denoise"), "group-offload": (2.5, "denoise")}),
        (BF16, True, {"full": (15.6, "denoise"), "encoders-off": (12.2, "denoise"),
                      "model-offload": (10.5, "denoise"), "group-offload": (3.1, "denoise")}),
        # --dtype fp32 (the advice for NaN output): twice the weights and the working memory.
        (torch.float32, False, {"full": (25.3, "denoise"), "encoders-off": (21.2, "encode style / score"),
                                "model-offload": (15.1, "denoise"), "group-offload": (5.0, "denoise")}),
    ],
)  # fmt: skip
def test_each_tiers_peak_is_computed_from_its_placement(dtype, controlnet, peaks):
    job = JobShape(controlnet=controlnet, dtype=dtype)
    computed = {tier.value: (round(peak(tier, job).gib, 1), peak(tier, job).name) for tier in MemoryTier}
    assert computed == peaks
    # encoders-off: the image encoder visits beside what stays resident (it did not count before).
    visit = next(p for p in phases(MemoryTier.ENCODERS_OFF, job) if p.name == "encode style / score")
    assert visit.weights >= sdxl_sizes(dtype).image_encoder + sdxl_sizes(dtype).unet
    # model-offload: the UNet runs alone (with the ControlNet it drives), text_encoder_2 is gone.
    denoise = next(p for p in phases(MemoryTier.MODEL_OFFLOAD, job) if p.name == "denoise")
    sizes = sdxl_sizes(dtype)
    alone = sizes.unet + sizes.ip_adapter + sizes.preview_vae + (sizes.controlnet if controlnet else 0)
    assert denoise.weights == pytest.approx(alone)


@pytest.mark.parametrize(
    ("card_gb", "tiers"),
    [  # (fp16, fp16 + ControlNet, bf16, bf16 + ControlNet)
        (6, ("group-offload", "group-offload", "group-offload", "group-offload")),
        (8, ("group-offload", "group-offload", "group-offload", "group-offload")),
        (12, ("encoders-off", "model-offload", "encoders-off", "model-offload")),
        (16, ("full", "encoders-off", "full", "encoders-off")),
        (24, ("full", "full", "full", "full")),
    ],
)
def test_the_tier_follows_the_cards_free_memory(monkeypatch, card_gb, tiers):
    free = card_free_bytes(card_gb)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, card_gb * 10**9))
    cases = [(FP16, False), (FP16, True), (BF16, False), (BF16, True)]
    chosen = tuple(pick_tier(CUDA, "auto", cn, preview_vae=True, dtype=dtype).value for dtype, cn in cases)
    assert chosen == tiers
    assert pick_tier(CUDA, "model-offload", True) is MemoryTier.MODEL_OFFLOAD  # a flag wins


def test_the_preview_autoencoder_is_counted_where_it_runs(monkeypatch):
    """It draws beside the next step's UNet (its own CUDA stream): part of the denoising phase."""
    without, with_previews = JobShape(preview_vae=False), JobShape(preview_vae=True)
    for tier in MemoryTier:
        before = next(p for p in phases(tier, without) if p.name == "denoise").gib
        after = next(p for p in phases(tier, with_previews) if p.name == "denoise").gib
        assert after - before == pytest.approx(0.6 + sdxl_sizes(FP16).preview_vae, abs=1e-6)


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


def test_the_vit_h_adapters_are_counted_with_their_encoder_and_text_tower():
    """ViT-H (1.18 GiB) and its text tower (0.66, resting with the text encoders) for the ViT-H adapters,
    the plus one's Resampler counted in (+0.14 on the UNet): the README's ViT-H peaks, fp16."""
    from backend.engine.image_encoders import ImageEncoderKind

    bigg, vit_h = sdxl_sizes(FP16), sdxl_sizes(FP16, ImageEncoderKind.VIT_H)
    assert (round(vit_h.image_encoder, 2), round(vit_h.content_tower, 2)) == (1.18, 0.66)
    assert round(vit_h.ip_adapter, 2) == 0.79 and bigg.content_tower == 0.0
    assert vit_h.unet == bigg.unet and vit_h.text_encoders == bigg.text_encoders
    job = JobShape(dtype=FP16)
    expected = {  # tier: (without, with a ControlNet)
        MemoryTier.FULL: (13.0, 15.4),
        MemoryTier.ENCODERS_OFF: (10.0, 12.9),
        MemoryTier.MODEL_OFFLOAD: (7.7, 10.6),
        MemoryTier.GROUP_OFFLOAD: (2.5, 3.1),
    }
    for tier, peaks in expected.items():
        got = tuple(
            round(peak(tier, JobShape(dtype=FP16, controlnet=c), vit_h).gib, 1) for c in (False, True)
        )
        assert got == peaks, tier
    offload = {phase.name: phase for phase in phases(MemoryTier.MODEL_OFFLOAD, job, vit_h)}
    assert offload["encode content"].weights == pytest.approx(vit_h.content_tower + vit_h.preview_vae)
    full = phases(MemoryTier.FULL, job, vit_h)[0]
    assert full.weights == pytest.approx(
        phases(MemoryTier.FULL, job, bigg)[0].weights - 3.44 + 1.18 + 0.66 + 0.14, abs=0.02
    )


def test_the_encoder_kind_is_read_from_its_config_where_it_is_on_disk(tiny_paths, tmp_path):
    import dataclasses
    import json

    from backend.engine.image_encoders import ImageEncoderKind, image_encoder_kind
    from backend.tiny.layouts import write_hub_snapshot

    vit_h = tmp_path / "repo" / "models" / "image_encoder"
    vit_h.mkdir(parents=True)
    (vit_h / "config.json").write_text(json.dumps({"projection_dim": 1024, "hidden_size": 1280}))
    spec = tiny_paths.spec()
    assert image_encoder_kind(dataclasses.replace(spec, image_encoder=str(vit_h))) is ImageEncoderKind.VIT_H
    assert image_encoder_kind(spec) is ImageEncoderKind.VIT_BIGG  # the tiny one: 32-d
    write_hub_snapshot(tmp_path / "cache", "h94/IP-Adapter", tmp_path / "repo")
    hub = dataclasses.replace(
        spec, image_encoder="h94/IP-Adapter/models/image_encoder", cache_dir=str(tmp_path / "cache")
    )
    assert image_encoder_kind(hub) is ImageEncoderKind.VIT_H
    # Not downloaded yet: unknown, counted as the larger of the two in each part.
    assert (
        image_encoder_kind(dataclasses.replace(hub, cache_dir=str(tmp_path / "empty")))
        is ImageEncoderKind.UNKNOWN
    )
    assert (
        image_encoder_kind(dataclasses.replace(spec, image_encoder="not a hub id"))
        is ImageEncoderKind.UNKNOWN
    )
    kinds = (ImageEncoderKind.UNKNOWN, ImageEncoderKind.VIT_BIGG, ImageEncoderKind.VIT_H)
    unknown, bigg, vit_h = (sdxl_sizes(FP16, kind) for kind in kinds)
    for name in ("image_encoder", "ip_adapter", "content_tower", "unet"):
        assert getattr(unknown, name) == max(getattr(bigg, name), getattr(vit_h, name)), name
