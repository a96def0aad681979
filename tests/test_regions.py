"""Regional styles at the attention level: each region's image tokens act only inside its mask, resized
to each block's resolution; one region over everything is the plain job."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.image_processor import IPAdapterMaskProcessor
from PIL import Image

from backend.engine.regions import StyleRegion, plan_regions
from backend.engine.request import GenerationRequest, RequestError, StyleReference
from protocol import BlockPreset
from tests.conftest import noise_image
from tests.test_precise import first_calls

SKY, GROUND = noise_image(41), noise_image(42)
SIZE = 64


def half_mask(top: bool) -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE, SIZE // 2) if top else (0, SIZE // 2, SIZE, SIZE))
    return mask


def job(styles, regions=(), **overrides) -> GenerationRequest:
    fields = {"width": SIZE, "height": SIZE, "steps": 2, "seed": 6, "regions": list(regions)}
    fields.update(overrides)
    return GenerationRequest(prompt="a valley", style_images=list(styles), **fields)


def test_one_region_over_everything_is_the_plain_job(engine):
    plain = engine.generate(job([StyleReference(SKY)])).images[0]
    everywhere = StyleRegion(Image.new("L", (SIZE, SIZE), 255), [StyleReference(SKY)])
    assert np.array_equal(engine.generate(job([], [everywhere])).images[0], plain)


def attend(inputs: tuple, scale: float | None, with_masks: bool) -> torch.Tensor:
    """One cross-attention again, through its diffusers processor, at ``scale`` (None: its own)."""
    processor, attention, hidden, tokens, masks = inputs
    saved = processor.scale
    processor.scale = saved if scale is None else [scale]
    try:
        with torch.inference_mode():
            return processor(attention, hidden, tokens, ip_adapter_masks=masks if with_masks else None)
    finally:
        processor.scale = saved


def test_a_regions_image_tokens_act_only_inside_its_mask_at_every_resolution(engine):
    """At every cross-attention (preset all: every block, every resolution), recomputed from the inputs
    it saw with diffusers' own processor: the region's contribution is the unmasked contribution times
    the mask resized to that attention's tokens: exactly 0 outside, unchanged inside."""
    region = StyleRegion(half_mask(top=True), [StyleReference(SKY)])
    calls = first_calls(engine, job([], [region], preset=BlockPreset.ALL))
    mask = IPAdapterMaskProcessor().preprocess([half_mask(top=True)], height=SIZE, width=SIZE)[:, 0]
    resolutions = set()
    for name, (args, kwargs, out, processor) in calls.items():
        attention = engine.pipeline.unet.get_submodule(name)
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        inputs = (processor, attention, hidden, kwargs["encoder_hidden_states"], kwargs["ip_adapter_masks"])
        assert torch.equal(attend(inputs, None, True), out), name  # the recomputation is the job's
        base = attend(inputs, 0.0, True)
        contribution, full = out - base, attend(inputs, None, False) - base
        resized = IPAdapterMaskProcessor.downsample(mask, out.shape[0], out.shape[1], out.shape[2])
        outside, inside = resized == 0, resized == 1
        assert outside.any() and inside.any() and full.abs().max() > 0, name
        assert torch.equal(contribution * outside, torch.zeros_like(contribution)), name
        torch.testing.assert_close(contribution * inside, full * inside, rtol=1e-5, atol=1e-6)
        resolutions.add(out.shape[1])
    assert len(resolutions) >= 2  # the tiny UNet's attention runs at two token counts


def test_two_regions_and_a_default_style(engine):
    sky = StyleRegion(half_mask(top=True), [StyleReference(SKY)], name="sky")
    plan = plan_regions([sky], [StyleReference(GROUND)], "", (SIZE, SIZE))
    assert len(plan.styles) == 2  # the sky, then the default style for the rest
    rest = np.asarray(plan.masks[1]) > 0
    assert rest[SIZE // 2 :].all() and not rest[: SIZE // 2].any()
    two = engine.generate(job([StyleReference(GROUND)], [sky])).images[0]
    only_sky = engine.generate(job([], [sky])).images[0]
    assert not np.array_equal(two, only_sky)  # the default style acts on the ground
    # Regions covering everything leave no room for the default style: it is not used.
    ground = StyleRegion(half_mask(top=False), [StyleReference(GROUND)], name="ground")
    assert len(plan_regions([sky, ground], [StyleReference(SKY)], "", (SIZE, SIZE)).styles) == 2


def test_regions_work_with_precise_and_content_subtraction(engine):
    sky = StyleRegion(half_mask(top=True), [StyleReference(SKY)], content_text="clouds")
    result = engine.generate(
        job([StyleReference(GROUND)], [sky], preset=BlockPreset.PRECISE, content_text="rocks")
    )
    assert result.images[0].shape == (SIZE, SIZE, 3)


def test_bad_regions_are_clear_errors(engine):
    empty = StyleRegion(Image.new("L", (SIZE, SIZE), 0), [StyleReference(SKY)], name="sky")
    with pytest.raises(RequestError, match=r"region 1 \(sky\)'s mask is empty"):
        engine.generate(job([], [empty]))
    no_refs = StyleRegion(half_mask(top=True), [], name="sky")
    with pytest.raises(RequestError, match="needs a style reference"):
        engine.generate(job([], [no_refs]))
    many = [StyleRegion(half_mask(top=True), [StyleReference(SKY)])] * 9
    with pytest.raises(RequestError, match="at most 8 regions"):
        engine.generate(job([], many))


def test_regions_through_the_server_and_their_bad_input(engine):
    from backend.client import InstantStyleClient, frame_image
    from protocol import ErrorCode, Region, StyleImage
    from tests.server_helpers import generate_message, run, running_server

    sky_mask, ground_mask = half_mask(top=True), half_mask(top=False)

    async def scenario():
        async with running_server(engine) as server, InstantStyleClient.connect(server.url) as client:
            outcomes = []
            regions = [Region(1, [StyleImage(2)], name="sky"), Region(3, [StyleImage(0, 0.5)], name="ground")]
            for job_id, message, inputs in [
                (1, generate_message(1, regions=[Region(1, [StyleImage(0)])] * 5), {0: SKY, 1: sky_mask}),
                (
                    2,
                    generate_message(2, regions=[Region(1, [StyleImage(0)])]),
                    {0: SKY, 1: sky_mask.resize((40, 30))},
                ),
                (3, generate_message(3, regions=[Region(1, [])]), {0: SKY, 1: sky_mask}),
                (
                    4,
                    generate_message(4, style_images=[], regions=regions, prompt="a valley", seed=6, steps=2),
                    {0: GROUND, 1: sky_mask, 2: SKY, 3: ground_mask},
                ),
            ]:
                await client.submit(message, inputs)
                outcomes.append(await client.follow(job_id))
            return outcomes

    too_many, wrong_size, no_refs, done = run(scenario())
    assert (
        too_many.error.code is ErrorCode.OUT_OF_RANGE
        and "over this server's limit of 4" in too_many.error.message
    )
    assert (
        wrong_size.error.code is ErrorCode.BAD_FRAME
        and "mask is 40x30, expected 64x64" in wrong_size.error.message
    )
    assert (
        no_refs.error.code is ErrorCode.MISSING_FIELD and "regions[0].style_images" in no_refs.error.message
    )
    expected = engine.generate(
        job(
            [],
            [
                StyleRegion(sky_mask, [StyleReference(SKY)], name="sky"),
                StyleRegion(ground_mask, [StyleReference(GROUND, 0.5)], name="ground"),
            ],
        )
    ).images[0]
    assert np.array_equal(np.asarray(frame_image(done.images[0]))[..., :3], expected)


def test_a_region_picture_too_thin_for_the_smallest_attention_level_is_refused_up_front(engine):
    """8x512 with a region was accepted and then failed in the engine (an empty mask at 1/32 scale);
    32 px a side is the least that works, at any aspect ratio."""
    from backend.client import InstantStyleClient
    from protocol import ErrorCode, Region, StyleImage
    from tests.server_helpers import generate_message, run, running_server

    async def scenario():
        async with running_server(engine) as server, InstantStyleClient.connect(server.url) as client:
            outcomes = []
            for job_id, (width, height) in enumerate([(8, 512), (32, 512)], start=1):
                mask = Image.new("L", (width, height), 0)
                mask.paste(255, (0, 0, width, height // 2))
                message = generate_message(
                    job_id, width=width, height=height, steps=1, regions=[Region(1, [StyleImage(0)])]
                )
                await client.submit(message, {0: SKY, 1: mask})
                outcomes.append(await client.follow(job_id))
            return outcomes

    thin, narrow = run(scenario())
    assert thin.error.code is ErrorCode.BAD_FIELD and thin.error.job_id == 1
    assert "regions need a picture at least 32 px a side" in thin.error.message
    assert narrow.error is None and (narrow.images[0].width, narrow.images[0].height) == (32, 512)
