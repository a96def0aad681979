"""LoRAs: both key layouts load through diffusers, jobs switch them by weight without reloading, and a
bad file is one clear line while everything else keeps working."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import LoraSource
from backend.engine.request import GenerationRequest, RequestError, StyleReference
from backend.tiny.layouts import TINY_LORA_REPO_ID, TinyModelPaths
from tests.conftest import noise_image

STYLE = noise_image(4)


def job(loras=(), prompt: str = "a lighthouse", **overrides) -> GenerationRequest:
    fields = {"width": 64, "height": 64, "steps": 3, "seed": 8, "loras": tuple(loras)}
    fields.update(overrides)
    return GenerationRequest(prompt=prompt, style_images=[StyleReference(STYLE)], **fields)


@pytest.fixture(scope="module")
def broken_lora(tmp_path_factory) -> str:
    """A LoRA made for another model: its matrices do not fit the tiny UNet's layers."""
    path = tmp_path_factory.mktemp("loras") / "wrong-shape.safetensors"
    name = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file(
        {f"{name}.lora_A.weight": torch.ones(4, 999), f"{name}.lora_B.weight": torch.ones(999, 4)}, str(path)
    )
    return str(path)


@pytest.fixture(scope="module")
def lora_engine(tiny_paths: TinyModelPaths, broken_lora: str) -> InstantStyleEngine:
    sources = (
        LoraSource("peft", str(tiny_paths.lora("style-peft"))),
        LoraSource("kohya", str(tiny_paths.lora("style-kohya"))),
        LoraSource("other", str(tiny_paths.lora("other-peft"))),
        LoraSource("hub", f"{TINY_LORA_REPO_ID}/style-peft.safetensors"),
        LoraSource("missing", "/nonexistent/gone.safetensors"),
        LoraSource("broken", broken_lora),
    )
    spec = dataclasses.replace(
        tiny_paths.spec("diffusers"),
        loras=sources,
        cache_dir=str(tiny_paths.hub_cache),
        local_files_only=True,
    )
    return InstantStyleEngine.load(spec, device="cpu")


def pixels(engine: InstantStyleEngine, request: GenerationRequest) -> np.ndarray:
    return engine.generate(request).images[0]


def test_both_layouts_and_the_hub_load_the_same_lora(lora_engine):
    assert sorted(lora_engine.loras.loaded) == ["hub", "kohya", "other", "peft"]
    # The style LoRA changes the UNet and the first text encoder, in both layouts.
    assert lora_engine.loras.loaded["kohya"].components == ("unet", "text_encoder")
    plain = pixels(lora_engine, job())
    peft = pixels(lora_engine, job([("peft", 1.0)]))
    assert np.abs(peft.astype(int) - plain).max() > 20
    assert np.array_equal(pixels(lora_engine, job([("kohya", 1.0)])), peft)
    assert np.array_equal(pixels(lora_engine, job([("hub", 1.0)])), peft)


def test_weight_zero_and_no_lora_give_the_pixels_of_a_model_without_loras(lora_engine, engine):
    without = pixels(engine, job())
    assert np.array_equal(pixels(lora_engine, job([("peft", 0.0)])), without)
    pixels(lora_engine, job([("other", 0.8)]))
    assert np.array_equal(pixels(lora_engine, job()), without)  # switched off again after a LoRA


def test_switching_is_exact_and_reloads_nothing(lora_engine):
    unet = lora_engine.pipeline.unet
    first = pixels(lora_engine, job([("peft", 0.7)]))
    other = pixels(lora_engine, job([("other", 1.0)]))
    both = pixels(lora_engine, job([("peft", 0.7), ("other", 1.0)]))
    assert len({first.tobytes(), other.tobytes(), both.tobytes()}) == 3
    started = time.perf_counter()
    lora_engine.loras.activate((("peft", 0.7),))
    switch = time.perf_counter() - started
    assert np.array_equal(pixels(lora_engine, job([("peft", 0.7)])), first)
    assert lora_engine.pipeline.unet is unet
    assert switch < 5.0, f"a LoRA switch took {switch:.1f} s: it must not reload anything"


def test_a_missing_or_wrong_shaped_file_is_one_line_naming_it_and_nothing_else_breaks(
    lora_engine, engine, broken_lora
):
    missing, broken = lora_engine.loras.failed["missing"], lora_engine.loras.failed["broken"]
    assert "/nonexistent/gone.safetensors" in missing and "file not found" in missing
    assert broken_lora in broken and "\n" not in broken
    with pytest.raises(RequestError, match=r"gone\.safetensors"):
        lora_engine.generate(job([("missing", 1.0)]))
    available = r"not loaded on this server \(available: hub, kohya, other, peft\)"
    with pytest.raises(RequestError, match=available):
        lora_engine.generate(job([("nobody", 1.0)]))
    # Nothing of the broken file stayed behind in the UNet.
    assert "broken" not in str(lora_engine.pipeline.get_list_adapters())
    assert np.array_equal(pixels(lora_engine, job()), pixels(engine, job()))
    assert lora_engine.features.problems == [missing, broken]
    assert lora_engine.features.loras == ["hub", "kohya", "other", "peft"]


def test_content_subtraction_uses_clip_without_the_text_encoder_lora(lora_engine):
    """InstantStyle subtracts in CLIP's own image-text space: a LoRA on the text encoders must not move
    the content embedding (it is cached by text alone)."""
    encoder = lora_engine.encoder
    # text_encoder_2 carries no LoRA in the tiny files: give it one to see that it is bypassed.
    pipeline = lora_engine.pipeline
    encoder.text_cache.clear()
    plain = encoder.encode_text("a cat").clone()
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    inject_adapter_in_model(config, pipeline.text_encoder_2, adapter_name="probe")
    try:
        encoder.text_cache.clear()
        with torch.inference_mode():
            tokens = encoder.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt")
            moved = pipeline.text_encoder_2(tokens.input_ids).text_embeds
        assert not torch.allclose(moved, plain)  # the probe LoRA does change the encoder...
        assert torch.equal(encoder.encode_text("a cat"), plain)  # ...but not the content embedding
    finally:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in pipeline.text_encoder_2.modules():
            if isinstance(module, BaseTunerLayer):
                module.delete_adapter("probe")
        encoder.text_cache.clear()


def test_the_prompt_cache_skips_the_text_encoders_and_knows_text_loras(lora_engine):
    calls = []
    hooks = [
        module.register_forward_hook(lambda *_: calls.append(1))
        for module in (lora_engine.pipeline.text_encoder, lora_engine.pipeline.text_encoder_2)
    ]
    try:
        lora_engine.prompts.clear()
        first = pixels(lora_engine, job(prompt="a quiet harbour"))
        encoded = len(calls)
        again = pixels(lora_engine, job(prompt="a quiet harbour", seed=9))
        assert encoded > 0 and len(calls) == encoded, "the same prompt ran the text encoders again"
        assert not np.array_equal(first, again)  # another seed, same prompt: a real second job
        # The style LoRA changes the first text encoder: its prompt encodings are not the cached ones.
        pixels(lora_engine, job([("peft", 1.0)], prompt="a quiet harbour"))
        assert len(calls) > encoded
        # "other" is UNet-only: the prompt encodings without LoRA serve it.
        counted = len(calls)
        pixels(lora_engine, job([("other", 1.0)], prompt="a quiet harbour"))
        assert len(calls) == counted
    finally:
        for hook in hooks:
            hook.remove()


def test_the_prompt_cache_gives_the_pixels_of_encoding_each_time_and_stays_bounded(lora_engine):
    lora_engine.prompts.clear()
    cold = pixels(lora_engine, job(prompt="a red barn"))
    warm = pixels(lora_engine, job(prompt="a red barn"))
    assert np.array_equal(cold, warm) and lora_engine.prompts.hits >= 1
    capacity = lora_engine.prompts.capacity
    for index in range(capacity + 3):
        lora_engine.prompts.encodings(lora_engine.pipeline, dataclasses.replace(_key(), prompt=f"p{index}"))
    assert len(lora_engine.prompts) == capacity


def _key():
    from backend.engine.prompt_cache import PromptKey

    return PromptKey("x", "", True)


def test_loras_reach_the_engine_through_the_server_which_lists_them_and_refuses_unknown_ones(lora_engine):
    from backend.client import InstantStyleClient, frame_image
    from protocol import ErrorCode, LoraWeight
    from tests.server_helpers import generate_message, run, running_server

    async def scenario():
        async with running_server(lora_engine) as server, InstantStyleClient.connect(server.url) as client:
            unknown = generate_message(1, seed=8, loras=[LoraWeight("nobody", 1.0)])
            await client.submit(unknown, {0: STYLE})
            refused = await client.follow(1)
            await client.submit(generate_message(2, seed=8, loras=[LoraWeight("kohya", 0.6)]), {0: STYLE})
            return client.hello.status.features, refused, await client.follow(2)

    features, refused, done = run(scenario())
    assert features.loras == ["hub", "kohya", "other", "peft"] and len(features.problems) == 2
    assert "up_blocks.0.attentions.1" in features.attention_blocks
    assert refused.error.code is ErrorCode.BAD_FIELD and "'nobody' is not loaded" in refused.error.message
    expected = pixels(lora_engine, job([("kohya", 0.6)], seed=8))
    assert np.array_equal(np.asarray(frame_image(done.images[0]))[..., :3], expected)


def test_a_second_lora_of_the_same_name_is_left_out_and_the_first_still_serves(tiny_paths):
    from backend.engine.loras import LoraSet

    engine = InstantStyleEngine.load(tiny_paths.spec("diffusers"), device="cpu")
    loras = LoraSet(engine.pipeline)
    loras.load(
        [
            LoraSource("ink", str(tiny_paths.lora("style-peft"))),
            LoraSource("ink", str(tiny_paths.lora("other-peft"))),
        ],
        None,
        True,
    )
    assert list(loras.loaded) == ["ink"] and loras.failed == {}
    assert len(loras.duplicates) == 1 and "other-peft.safetensors was left out" in loras.duplicates[0]
    loras.activate((("ink", 1.0),))  # the first one still serves
