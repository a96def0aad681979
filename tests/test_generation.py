"""End-to-end generation on the tiny model: injection, subtraction, determinism, previews, cancel."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from backend.engine.decode import decode
from backend.engine.previews import StepPreview
from backend.engine.request import GenerationRequest, JobCancelled, RequestError, StyleReference
from protocol.enums import BlockPreset, Mode
from tests.conftest import noise_image


def request(style_image, **overrides) -> GenerationRequest:
    fields = {
        "prompt": "a lighthouse at dusk",
        "style_images": [StyleReference(style_image)],
        "width": 64,
        "height": 64,
        "steps": 4,
        "seed": 7,
    }
    fields.update(overrides)
    return GenerationRequest(**fields)


def generate(engine, style_image, **overrides) -> np.ndarray:
    return engine.generate(request(style_image, **overrides)).images[0]


def test_scale_zero_equals_sdxl_without_ip_adapter(engine, tiny_paths, style_image):
    from diffusers import StableDiffusionXLPipeline

    plain = StableDiffusionXLPipeline.from_pretrained(str(tiny_paths.diffusers_folder))
    plain.set_progress_bar_config(disable=True)
    req = request(style_image, style_scale=0.0)
    expected = plain(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        num_inference_steps=req.steps,
        guidance_scale=req.guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(req.seed)],
        width=64,
        height=64,
        output_type="np",
    ).images[0]
    pipe, kwargs = engine.prepare(req)
    got = decode(pipe, pipe(**kwargs).images)[0]  # the engine's own decode equals the pipeline's
    assert np.abs(got - expected).max() <= 1e-6
    assert np.array_equal(
        engine.generate(req).images[0], (np.clip(expected, 0, 1) * 255).round().astype(np.uint8)
    )


def test_style_scale_changes_the_output(engine, style_image):
    assert not np.array_equal(generate(engine, style_image, style_scale=0.0), generate(engine, style_image))


def _perturb_ip_weights(engine, block: str):
    """Add noise to one block's IP-Adapter key/value weights; returns a restore function."""
    saved = []
    for name, processor in engine.pipeline.unet.attn_processors.items():
        if name.startswith(block + ".") and hasattr(processor, "to_k_ip"):
            for layer in (*processor.to_k_ip, *processor.to_v_ip):
                saved.append((layer.weight, layer.weight.detach().clone()))
                with torch.no_grad():
                    layer.weight.add_(torch.randn_like(layer.weight))
    assert saved, f"no IP-Adapter processors in {block}"

    def restore() -> None:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)

    return restore


@pytest.mark.parametrize("preset", [BlockPreset.STYLE, BlockPreset.STYLE_LAYOUT])
def test_blocks_outside_the_preset_do_not_matter(engine, style_image, preset):
    baseline = generate(engine, style_image, preset=preset)
    restore = _perturb_ip_weights(engine, "down_blocks.1.attentions.0")
    try:
        assert np.array_equal(generate(engine, style_image, preset=preset), baseline)
    finally:
        restore()
    restore = _perturb_ip_weights(engine, "up_blocks.0.attentions.1")
    try:
        assert not np.array_equal(generate(engine, style_image, preset=preset), baseline)
    finally:
        restore()


def test_content_subtraction_feeds_image_minus_scaled_text(engine, style_image):
    pipe = engine.pipeline
    captured: list[torch.Tensor] = []
    hook = pipe.unet.encoder_hid_proj.register_forward_hook(lambda _m, args, _o: captured.append(args[0][0]))
    try:
        generate(engine, style_image, content_text="a cat", content_scale=0.7, steps=1)
    finally:
        hook.remove()

    # Computed independently of the engine: raw CLIP calls.
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    with torch.no_grad():
        image_embeds = pipe.image_encoder(
            processor(images=style_image, return_tensors="pt").pixel_values
        ).image_embeds
        ids = pipe.tokenizer_2(
            "a cat", padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        )
        text_embeds = pipe.text_encoder_2(ids.input_ids).text_embeds
    expected_style = image_embeds - 0.7 * text_embeds
    fed = captured[0]  # [2 (uncond, cond), num_images * batch, D] as the UNet receives it
    assert fed.shape[-1] == expected_style.shape[-1]
    torch.testing.assert_close(fed[-1].reshape(-1), expected_style.reshape(-1), rtol=0, atol=1e-6)
    assert torch.count_nonzero(fed[0]) == 0  # the unconditional image embedding is zeros


def test_content_scale_zero_is_plain_ip_adapter(engine, style_image):
    plain = generate(engine, style_image)
    assert np.array_equal(generate(engine, style_image, content_text="a cat", content_scale=0.0), plain)
    assert not np.array_equal(generate(engine, style_image, content_text="a cat", content_scale=0.8), plain)


def test_same_seed_same_pixels_and_batch_is_seed_sequence(engine, style_image):
    first = engine.generate(request(style_image, batch=2))
    again = engine.generate(request(style_image, batch=2))
    assert all(np.array_equal(a, b) for a, b in zip(first.images, again.images, strict=True))
    assert first.seeds == [7, 8]
    assert not np.array_equal(first.images[0], first.images[1])
    # Image i of a batch is reproducible alone with seed + i (same noise; batched kernels may
    # sum floats in another order, so allow a rounding step).
    alone = generate(engine, style_image, seed=8).astype(int)
    assert np.abs(alone - first.images[1].astype(int)).max() <= 2


def test_previews_fire_every_step_at_the_image_size(engine, style_image):
    previews: list[StepPreview] = []
    job = request(style_image, steps=5, width=96, height=64, preview_share=None)  # every step, drawn
    engine.generate(job, on_step=previews.append)
    assert [p.step for p in previews] == [1, 2, 3, 4, 5]
    assert all(p.total == 5 for p in previews)
    # The tiny model's tiny autoencoder draws them at the image's size (linear ones: test_tiny_vae_previews).
    assert all(p.rgb.shape == (64, 96, 3) and p.rgb.dtype == np.uint8 for p in previews)
    assert all(tuple(p.latents.shape) == (1, 4, 8, 12) for p in previews)


def test_cancel_stops_within_one_step(engine, style_image):
    cancel = threading.Event()
    seen: list[int] = []

    def on_step(preview: StepPreview) -> None:
        seen.append(preview.step)
        if preview.step == 2:
            cancel.set()

    with pytest.raises(JobCancelled):
        engine.generate(request(style_image, steps=20), on_step=on_step, cancel=cancel)
    assert seen == [1, 2]
    # The engine is usable right after a cancel.
    assert engine.generate(request(style_image, steps=1)).images[0].shape == (64, 64, 3)


def test_cancel_before_start_runs_nothing(engine, style_image):
    cancel = threading.Event()
    cancel.set()
    seen: list[int] = []
    with pytest.raises(JobCancelled):
        engine.generate(request(style_image), on_step=lambda p: seen.append(p.step), cancel=cancel)
    assert seen == []


@pytest.mark.parametrize("mode", [Mode.IMG2IMG, Mode.INPAINT])
def test_image_to_image_modes(engine, style_image, mode):
    init = noise_image(5)
    mask = noise_image(6).convert("L")
    steps: list[int] = []
    result = engine.generate(
        request(style_image, mode=mode, init_image=init, mask=mask, strength=0.5, steps=6),
        on_step=lambda p: steps.append(p.total),
    )
    assert result.images[0].shape == (64, 64, 3)
    assert steps == [3, 3, 3]  # strength 0.5 of 6 steps
    again = engine.generate(
        request(style_image, mode=mode, init_image=init, mask=mask, strength=0.5, steps=6)
    )
    assert np.array_equal(result.images[0], again.images[0])


def test_several_style_references_blend(engine):
    a, b = noise_image(11), noise_image(12)
    only_a = generate(engine, a)
    blended = engine.generate(
        request(a, style_images=[StyleReference(a, 1.0), StyleReference(b, 1.0)])
    ).images[0]
    weight_a = engine.generate(
        request(a, style_images=[StyleReference(a, 1.0), StyleReference(b, 0.0)])
    ).images[0]
    assert not np.array_equal(blended, only_a)
    assert np.array_equal(weight_a, only_a)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 65}, "multiple of 8"),
        ({"height": 0}, "multiple of 8"),
        ({"steps": 0}, "steps"),
        ({"style_images": []}, "style reference"),
        ({"mode": Mode.IMG2IMG}, "init image"),
        ({"preset": BlockPreset.CUSTOM}, "block_scales"),
        ({"mode": Mode.IMG2IMG, "init_image": noise_image(2), "steps": 1, "strength": 0.5}, "runs no step"),
    ],
)
def test_bad_requests_are_rejected_clearly(engine, style_image, overrides, message):
    with pytest.raises(RequestError, match=message):
        engine.generate(request(style_image, **overrides))


def test_embedding_cache_encodes_each_input_once(engine):
    counts = engine.encoder.counts
    image = noise_image(99)
    before = (counts.images, counts.texts)
    for _ in range(2):
        generate(engine, image, content_text="a tiny unique teapot", steps=1)
    assert (counts.images, counts.texts) == (before[0] + 1, before[1] + 1)
    generate(engine, noise_image(100), content_text="a tiny unique teapot", steps=1)
    assert (counts.images, counts.texts) == (before[0] + 2, before[1] + 1)


def test_large_canvases_decode_in_tiles(engine, style_image):
    engine.prepare(request(style_image, width=2048, height=1024))
    assert engine.pipeline.vae.use_tiling
    engine.prepare(request(style_image, width=1024, height=1024))
    assert not engine.pipeline.vae.use_tiling


def test_warming_up_changes_nothing_an_artist_can_see(engine, style_image):
    before = generate(engine, style_image)
    assert engine.warm_up(size=64) > 0
    assert len(engine.encoder.image_cache) == len(engine.encoder.text_cache) == 0
    assert np.array_equal(generate(engine, style_image), before)
