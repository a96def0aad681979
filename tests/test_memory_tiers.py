"""Memory tiers: peaks computed from the placement, the choice from free GPU memory (mocked), and every
tier's job on the tiny model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.engine.engine import InstantStyleEngine
from backend.engine.image_encoders import ImageEncoderKind
from backend.engine.memory import GIB, MemoryTier, models, place
from backend.engine.memory_budget import (
    AT_REST_ON_GPU,
    FAMILY_MODELS,
    JobShape,
    at_rest,
    at_rest_names,
    family_sizes,
    peak,
    phases,
    pick_tier,
    sd15_sizes,
    sdxl_sizes,
)
from backend.engine.request import GenerationRequest, StyleReference
from protocol import Mode
from protocol.enums import ModelFamily

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


# SD1.5 (issue 23): its own shapes, a 512² native job, and its own UNet working-memory estimate.


def test_sd15_sizes_are_its_real_shapes_with_vit_h_and_one_text_encoder():
    """fp16 GiB from SD1.5's shapes (tests/test_real_shapes.py checks the counts against the published
    ones): ViT-H and its text tower by default (h94's SD1.5 adapters), no second text encoder."""
    sizes = family_sizes(ModelFamily.SD15, FP16, ImageEncoderKind.VIT_H)
    assert sizes == sd15_sizes(FP16) == family_sizes("sd15", BF16, ImageEncoderKind.VIT_H)
    expected = {
        "unet": 1.60,
        "text_encoder": 0.23,
        "text_encoder_2": 0.0,
        "image_encoder": 1.18,
        "content_tower": 0.66,
        "ip_adapter": 0.09,  # the plus adapter's (49.1 M), the larger of ip-adapter(-plus)_sd15
        "vae": 0.16,
        "controlnet": 0.67,
        "preview_vae": 0.0,
        "largest_layer": 0.07,  # CLIP-L's token embedding, 49408 x 768
    }
    assert {name: round(getattr(sizes, name), 2) for name in expected} == expected
    assert family_sizes(ModelFamily.SDXL, FP16, ImageEncoderKind.VIT_BIGG) == sdxl_sizes(FP16)
    # ip-adapter_sd15_vit-G (ViT-bigG) exists: an encoder not on disk yet counts the larger of each part.
    bigg, unknown = sd15_sizes(FP16, ImageEncoderKind.VIT_BIGG), sd15_sizes(FP16, ImageEncoderKind.UNKNOWN)
    assert round(bigg.image_encoder, 2) == 3.44 and unknown.image_encoder == bigg.image_encoder
    assert unknown.content_tower == sizes.content_tower  # ViT-H's text tower in every case
    with pytest.raises(ValueError, match="unknown model family 'sd21'"):
        family_sizes("sd21", FP16, ImageEncoderKind.VIT_H)


def test_sd15s_unet_estimate_is_its_own_attention_at_one_eighth():
    """Not SDXL's figure scaled: 4096 tokens at 1/8, 8 heads, batch 2 (guidance), fp16, scores and their
    softmax held at once (math attention) is SD15_ATTENTION_GIB_512; it grows with the pixels squared."""
    from backend.engine.memory_budget import (
        SD15_ACTIVATIONS_GIB_512,
        SD15_ATTENTION_GIB_512,
        UNET_WORKING_GIB_1024,
        unet_working,
    )
    from backend.tiny.sd15_real_shapes import build_sd15_unet

    with torch.device("meta"):
        unet = build_sd15_unet()
    attention = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    tokens = (unet.config.sample_size) ** 2  # the 1/8 level of a 512² picture
    assert (tokens, attention.heads) == (4096, 8)
    assert 2 * (2 * attention.heads * tokens**2 * 2) / GIB == SD15_ATTENTION_GIB_512
    native = JobShape(family=ModelFamily.SD15)
    assert native.side == 512 and JobShape().side == 1024
    assert unet_working(native) == pytest.approx(SD15_ATTENTION_GIB_512 + SD15_ACTIVATIONS_GIB_512)
    assert unet_working(native) > 3 * UNET_WORKING_GIB_1024 * native.scale  # SDXL's scaled: 0.375
    twice = JobShape(family="sd15", side=1024)
    assert unet_working(twice) == pytest.approx(16 * SD15_ATTENTION_GIB_512 + 4 * SD15_ACTIVATIONS_GIB_512)
    assert unet_working(JobShape(family="sd15", dtype=torch.float32)) == pytest.approx(
        2 * unet_working(native)
    )


@pytest.mark.parametrize(
    ("controlnet", "peaks"),
    [  # fp16 (bf16 the same: SD1.5 never upcasts its VAE), 512², previews on
        (False, {"full": (5.2, "denoise"), "encoders-off": (4.0, "denoise"),
                 "model-offload": (3.0, "denoise"), "group-offload": (1.6, "denoise")}),
        (True, {"full": (6.0, "denoise"), "encoders-off": (4.8, "denoise"),
                "model-offload": (3.8, "denoise"), "group-offload": (1.7, "denoise")}),
    ],
)  # fmt: skip
def test_sd15s_peaks_are_computed_from_its_placement(controlnet, peaks):
    """Denoising is SD1.5's peak in every tier (a 512² decode in fp16: 0.475 GiB); every peak is well
    below SDXL's (SDXL: 14.5 / 10.7 / 7.5 / 2.5, with a ControlNet 16.8 / 12.2 / 10.5 / 3.1)."""
    job = JobShape(family=ModelFamily.SD15, controlnet=controlnet, dtype=FP16)
    computed = {tier.value: (round(peak(tier, job).gib, 1), peak(tier, job).name) for tier in MemoryTier}
    assert computed == peaks
    assert {t: peak(t, replace(job, dtype=BF16)).gib for t in MemoryTier} == {
        t: pytest.approx(peak(t, job).gib) for t in MemoryTier
    }
    sdxl = JobShape(controlnet=controlnet, dtype=FP16)
    for tier in MemoryTier:
        assert peak(tier, job).gib < peak(tier, sdxl).gib - 0.8, tier
    decode = next(p for p in phases(MemoryTier.FULL, job) if p.name == "decode")
    assert decode.working == pytest.approx(3.8 / 2 / 4)  # no fp32 upcast, a quarter of 1024²'s pixels
    upcast = JobShape(family="sd15", upcast_vae=True)
    assert next(p for p in phases(MemoryTier.FULL, upcast) if p.name == "decode").working == pytest.approx(
        0.95
    )


def test_sd15s_model_offload_encodes_the_prompt_with_its_one_text_encoder():
    job = JobShape(family=ModelFamily.SD15, preview_vae=False)
    sizes = sd15_sizes(FP16)
    offload = {phase.name: phase for phase in phases(MemoryTier.MODEL_OFFLOAD, job)}
    assert offload["encode prompt"].weights == pytest.approx(sizes.text_encoder)
    assert offload["encode content"].weights == pytest.approx(sizes.content_tower)
    assert offload["denoise"].weights == pytest.approx(sizes.unet + sizes.ip_adapter)
    sdxl = {phase.name: phase for phase in phases(MemoryTier.MODEL_OFFLOAD, JobShape(preview_vae=False))}
    assert sdxl["encode prompt"].weights == pytest.approx(sdxl_sizes(FP16).text_encoder_2)


@pytest.mark.parametrize(
    ("card_gb", "tiers"),
    [  # fp16 SD1.5 at 512², previews on: (ViT-H, ViT-H + ControlNet, encoder unknown, unknown + ControlNet)
        # 4 GB (3.5 GiB free): model-offload needs 3.0 + 0.5 headroom, a margin of 3 MiB: the UNet
        # estimate (1.15 GiB, not measured) decides it. A ControlNet (0.67 GiB) leaves only group-offload.
        (4, ("model-offload", "group-offload", "group-offload", "group-offload")),
        # 6 GB: all but the image encoder (1.18 GiB) stays; unknown (ViT-bigG's 3.44): model-offload.
        (6, ("encoders-off", "encoders-off", "model-offload", "model-offload")),
        # 8 GB: everything on the GPU (6.0 GiB with a ControlNet, headroom included 6.5 of 7.5).
        (8, ("full", "full", "encoders-off", "encoders-off")),
    ],
)
def test_sd15s_tier_follows_the_cards_free_memory(monkeypatch, card_gb, tiers):
    free = card_free_bytes(card_gb)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, card_gb * 10**9))
    kinds = (None, ImageEncoderKind.UNKNOWN)  # None: the family's default, ViT-H
    chosen = tuple(
        pick_tier(CUDA, "auto", cn, True, FP16, kind, family=ModelFamily.SD15).value
        for kind in kinds
        for cn in (False, True)
    )
    assert chosen == tiers
    # SDXL on the same card, through the same call without a family: never a faster tier.
    sdxl = pick_tier(CUDA, "auto", False, True, FP16, ImageEncoderKind.VIT_BIGG)
    order = list(MemoryTier)
    assert order.index(sdxl) >= order.index(MemoryTier(tiers[0]))


@pytest.mark.parametrize(
    ("tier", "gib"),
    # full: UNet 1.60 + IP 0.09 + CLIP-L 0.23 + ViT-H 1.18 + its text tower 0.66 + VAE 0.16 + ControlNet
    # 0.67; encoders-off: less ViT-H and the ControlNet; group-offload: the VAE whole.
    [(MemoryTier.FULL, 4.59), (MemoryTier.ENCODERS_OFF, 2.74),
     (MemoryTier.MODEL_OFFLOAD, 0.0), (MemoryTier.GROUP_OFFLOAD, 0.16)],
)  # fmt: skip
def test_sd15s_at_rest_models_are_sdxls_without_text_encoder_2(tier, gib):
    assert at_rest_names(tier, ModelFamily.SD15) == AT_REST_ON_GPU[tier] - {"text_encoder_2"}
    assert at_rest_names(tier, "sdxl") == AT_REST_ON_GPU[tier]
    job = JobShape(family="sd15", preview_vae=False, controlnet=True)
    assert round(at_rest(tier, job, sd15_sizes(FP16)), 2) == gib


@pytest.mark.parametrize("tier", [MemoryTier.FULL, MemoryTier.ENCODERS_OFF])
def test_the_sd15_budget_counts_what_place_leaves_on_the_gpu(tmp_path, tier):
    """The SDXL parity test (tests/test_memory_placement.py) on a tiny SD1.5 pipeline: ``place`` puts
    exactly ``at_rest_names(tier, sd15)`` on the GPU (the meta device stands for it)."""
    pipeline, controlnet = tiny_sd15_pipeline(tmp_path)
    place(pipeline, controlnet, tier, torch.device("meta"))
    placed = {**models(pipeline), "controlnet": controlnet}
    assert set(placed) == FAMILY_MODELS[ModelFamily.SD15]
    on_gpu = {name for name, module in placed.items() if next(module.parameters()).device.type == "meta"}
    assert on_gpu == at_rest_names(tier, ModelFamily.SD15)


def tiny_sd15_pipeline(scratch) -> tuple[object, torch.nn.Module]:
    """A toy StableDiffusionPipeline (SD1.5's component set: one text encoder, no safety checker) with
    a ViT image encoder and a ControlNet: only the components matter here."""
    from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from backend.tiny.components import TINY, build_image_encoder, tiny_scheduler, tiny_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=2,
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    text = CLIPTextModel(
        CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    )
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8)  # fmt: skip
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tiny_tokenizer(scratch / "tokenizer"),
        unet=unet,
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=build_image_encoder(TINY),
        requires_safety_checker=False,
    )
    return pipeline, ControlNetModel.from_unet(unet)
