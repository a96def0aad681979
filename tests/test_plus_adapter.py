""" "Plus" IP-Adapters (the reference's patch features through a Resampler, 16 tokens) on the tiny SDXL:
recognised and announced, equal to diffusers' own plus-adapter path, every preset, mode and precision,
every on-disk layout; content subtraction refused in one line (patch features have no text side)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine.adapters import AdapterInfo
from backend.engine.blocks import build_scale_map
from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import LoraSource, ModelLoadError
from backend.engine.regions import StyleRegion
from backend.engine.request import GenerationRequest, StyleReference
from backend.engine.style_embedding import EmbeddingSpaceMismatch
from backend.tiny.layouts import PLUS_ADAPTER_NAME, TinyAdapter
from protocol import (
    BlockPreset,
    ImageAdapter,
    ModelFeatures,
    ModelPhase,
    ModelStatus,
    decode_server_message,
    encode_message,
)
from tests.conftest import noise_image
from tests.test_half_precision import DTYPES, MATRIX, placement, run_and_check

STYLE, OTHER = noise_image(51), noise_image(52)
PLUS = ImageAdapter.PLUS
TINY_PLUS = TinyAdapter.PLUS_SDXL_VIT_H


def job(**fields) -> GenerationRequest:
    base = {
        "prompt": "a lighthouse at dusk",
        "style_images": [StyleReference(STYLE)],
        "width": 64,
        "height": 64,
        "steps": 3,
        "seed": 5,
    }
    return GenerationRequest(**{**base, **fields})


def test_a_plus_adapter_is_recognised_and_announced(plus_engine, engine):
    assert plus_engine.adapter == AdapterInfo(PLUS, 16)
    assert engine.adapter == AdapterInfo(ImageAdapter.PLAIN, 4)
    features = plus_engine.features
    assert features.image_adapter is PLUS and not features.content_subtraction
    assert engine.features.image_adapter is ImageAdapter.PLAIN and engine.features.content_subtraction
    # On the wire, as the plugin reads it.
    status = ModelStatus(ModelPhase.READY, features=features)
    decoded = decode_server_message(encode_message(status))
    assert decoded.features.image_adapter is PLUS and decoded.features.content_subtraction is False
    assert ModelFeatures().image_adapter is ImageAdapter.PLAIN  # an older server: plain, as it was


@pytest.mark.parametrize("preset", [BlockPreset.STYLE, BlockPreset.STYLE_LAYOUT, BlockPreset.ALL])
def test_the_engine_equals_diffusers_own_plus_adapter_path(plus_engine, tiny_paths, preset):
    """diffusers encodes the reference itself (``ip_adapter_image``: penultimate hidden states, an
    all-zero input's for CFG's negative) and loads the adapter from the file: the engine's pixels."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_paths.diffusers_folder))
    pipe.set_progress_bar_config(disable=True)
    pipe.register_modules(
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(plus_engine.spec.image_encoder),
        feature_extractor=CLIPImageProcessorPil(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
        ),
    )
    pipe.load_ip_adapter(
        str(tiny_paths.ip_adapter_folder), subfolder="", weight_name=f"{PLUS_ADAPTER_NAME}.safetensors"
    )
    pipe.set_ip_adapter_scale(build_scale_map(plus_engine.layout, preset, 0.9))
    request = job(preset=preset, style_scale=0.9)
    expected = pipe(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        ip_adapter_image=STYLE,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(request.seed)],
        width=64,
        height=64,
        output_type="np",
    ).images[0]
    got = plus_engine.generate(request).images[0]
    assert np.array_equal(got, (np.clip(expected, 0, 1) * 255).round().astype(np.uint8))
    assert not np.array_equal(got, plus_engine.generate(job(preset=preset, style_scale=0.0)).images[0])


def test_content_text_with_a_plus_adapter_is_refused_in_one_line(plus_engine):
    with pytest.raises(EmbeddingSpaceMismatch) as raised:
        plus_engine.generate(job(content_text="a cat", content_scale=0.5))
    message = str(raised.value)
    assert "'plus' IP-Adapter" in message and "leave 'subtract content' empty" in message
    assert "\n" not in message
    region = StyleRegion(noise_image(53).convert("L"), [StyleReference(OTHER)], content_text="a dog")
    with pytest.raises(EmbeddingSpaceMismatch, match="'plus' IP-Adapter"):
        plus_engine.generate(job(regions=[region]))
    # A content text at scale 0 subtracts nothing: the job runs (and keeps serving after the refusal).
    assert plus_engine.generate(job(content_text="a cat", content_scale=0.0)).images[0].shape == (64, 64, 3)


def test_references_blend_as_patch_features_and_regions_keep_to_their_masks(plus_engine):
    before = plus_engine.encoder.counts.images
    plus_engine.generate(job(style_images=[StyleReference(noise_image(54))]))
    # One pass of the image encoder for a new reference: its patch features, and its embedding for
    # the style score from the same pass.
    assert plus_engine.encoder.counts.images - before == 1
    one = plus_engine.generate(job()).images[0]  # STYLE, the reference of the jobs below
    blended = plus_engine.generate(
        job(style_images=[StyleReference(STYLE, 0.6), StyleReference(OTHER, 0.4)])
    ).images[0]
    assert not np.array_equal(one, blended)
    everywhere = StyleRegion(Image.new("L", (64, 64), 255), [StyleReference(STYLE)])
    assert np.array_equal(plus_engine.generate(job(style_images=[], regions=[everywhere])).images[0], one)


@pytest.mark.parametrize("layout", ["single-file", "hub", "bin"])
def test_every_on_disk_layout_loads_the_same_plus_adapter(tiny_paths, plus_engine, layout):
    spec = tiny_paths.spec("diffusers" if layout == "bin" else layout, TINY_PLUS)
    if layout == "bin":
        spec = dataclasses.replace(spec, ip_adapter=spec.ip_adapter.replace(".safetensors", ".bin"))
    assert PLUS_ADAPTER_NAME in spec.ip_adapter
    loaded = InstantStyleEngine.load(spec, device="cpu")
    assert loaded.adapter == AdapterInfo(PLUS, 16)
    # The same bits in every weight of the UNet, its Resampler and its image-token projections...
    mine, theirs = plus_engine.pipeline.unet.state_dict(), loaded.pipeline.unet.state_dict()
    assert mine.keys() == theirs.keys() and any("to_k_ip" in key for key in mine)
    assert all(torch.equal(mine[key], theirs[key]) for key in mine)
    # ...and pictures equal to float round-off (test_loading.py says why a single file's differ by a level).
    difference = loaded.generate(job()).images[0].astype(int) - plus_engine.generate(job()).images[0]
    assert np.abs(difference).max() <= (1 if layout == "single-file" else 0)


def test_a_plus_adapter_with_an_encoder_of_another_width_is_refused_at_load(tiny_paths, tmp_path):
    from backend.tiny.components import TINY, build_image_encoder

    build_image_encoder(dataclasses.replace(TINY, image_hidden=48)).save_pretrained(tmp_path / "encoder")
    spec = dataclasses.replace(
        tiny_paths.spec("diffusers", TINY_PLUS), image_encoder=str(tmp_path / "encoder")
    )
    with pytest.raises(ModelLoadError, match="32-d hidden states") as raised:
        InstantStyleEngine.load(spec, device="cpu")
    assert "48-d" in str(raised.value) and PLUS_ADAPTER_NAME in str(raised.value)


@pytest.mark.parametrize("dtype", ["fp32", *DTYPES])
def test_every_preset_and_mode_runs_with_a_plus_adapter_in_every_precision(tiny_paths, dtype):
    spec = dataclasses.replace(
        tiny_paths.spec("diffusers", TINY_PLUS),
        loras=(LoraSource("ink", str(tiny_paths.lora("style-kohya"))),),
    )
    engine = InstantStyleEngine.load(spec, device="cpu", dtype=dtype)
    loaded = placement(engine)
    for name, request in MATRIX.items():
        run_and_check(engine, dataclasses.replace(request, content_text=""), loaded, name)


def test_through_the_server_a_content_text_is_one_error_and_the_plugin_leaves_it_out(plus_engine):
    """A client that sends a content text gets one line and the server serves on; the plugin knows from
    the model's features, says so in its status line and sends the artist's job without the text."""
    from backend.client import InstantStyleClient
    from krita_plugin.instantstyle.job_message import SubmitError
    from krita_plugin.instantstyle.jobs import JobInputs, JobState, Target
    from tests.server_helpers import ServerThread, generate_message, run, running_server
    from tests.test_plugin_client import as_image, connect, pump, settings

    async def scenario():
        async with running_server(plus_engine) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(generate_message(1, content_text="a cat"), {0: STYLE})
            refused = await client.follow(1)
            await client.submit(generate_message(2), {0: STYLE})
            return refused, await client.follow(2)

    refused, served = run(scenario())
    assert refused.error is not None and "'plus' IP-Adapter" in refused.error.message
    assert "\n" not in refused.error.message
    assert served.error is None and len(served.images) == 1

    with ServerThread(plus_engine) as server:
        session = connect(server.url)
        try:
            assert "plus IP-Adapter (no content subtraction)" in session.status
            sent = session.submit(
                settings(content_text="a dog", content_scale=0.5),
                JobInputs([(as_image(STYLE), 1.0)]),
                Target(0, 0, 64, 64),
            )
            pump(session, lambda _u: sent.state.finished)
            # A sweep over the content scale would make the same picture in every cell: said, not sent.
            sweep = settings(sweep_first="content_scale", sweep_first_values="0.2, 0.8", sweep_second="")
            with pytest.raises(SubmitError, match="sweep another setting than the content scale"):
                session.submit(sweep, JobInputs([(as_image(STYLE), 1.0)]), Target(0, 0, 64, 64), sweep=True)
        finally:
            session.connection.stop()
    assert sent.state is JobState.DONE, session.status
    expected = plus_engine.generate(job(prompt="a fox", steps=4, seed=11)).images[0]
    (image,) = sent.images
    assert np.array_equal(np.frombuffer(image.data, np.uint8).reshape(64, 64, 4)[..., :3], expected)
