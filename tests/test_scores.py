"""Scores: style similarity, content leakage and prompt alignment equal an independent computation
from the raw CLIP models on disk, and reach clients with every result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from backend.engine.request import GenerationRequest, StyleReference
from tests.conftest import noise_image

STYLE_A, STYLE_B = noise_image(51), noise_image(52)


@pytest.fixture(scope="module")
def raw_clip(tiny_paths):
    """The image encoder and SDXL's second text tower, straight from the files (not the engine's)."""
    vision = CLIPVisionModelWithProjection.from_pretrained(tiny_paths.image_encoder).eval()
    text = CLIPTextModelWithProjection.from_pretrained(tiny_paths.diffusers_folder / "text_encoder_2").eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_paths.diffusers_folder / "tokenizer_2")
    size = vision.config.image_size
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return vision, text, tokenizer, processor


def unit(vector: torch.Tensor) -> np.ndarray:
    array = vector.detach().double().numpy().reshape(-1)
    return array / np.linalg.norm(array)


def test_scores_equal_a_computation_from_the_raw_clip_models(engine, raw_clip):
    vision, text, tokenizer, processor = raw_clip
    request = GenerationRequest(
        prompt="a lighthouse at dusk",
        style_images=[StyleReference(STYLE_A, 1.0), StyleReference(STYLE_B, 0.5)],
        content_text="stripes",
        width=64,
        height=64,
        steps=2,
        seed=3,
        batch=2,
    )
    result = engine.generate(request)
    assert len(result.scores) == 2

    @torch.no_grad()
    def image_embedding(image: Image.Image) -> torch.Tensor:
        pixels = processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
        return vision(pixels).image_embeds

    @torch.no_grad()
    def text_embedding(words: str) -> torch.Tensor:
        tokens = tokenizer(
            words,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return text(tokens.input_ids).text_embeds

    reference = image_embedding(STYLE_A) * (1 / 1.5) + image_embedding(STYLE_B) * (0.5 / 1.5)
    content, prompt = text_embedding("stripes"), text_embedding("a lighthouse at dusk")
    for pixels, scores in zip(result.images, result.scores, strict=True):
        made = unit(image_embedding(Image.fromarray(pixels)))
        assert scores.style == pytest.approx(float(made @ unit(reference)), abs=1e-5)
        assert scores.content == pytest.approx(float(made @ unit(content)), abs=1e-5)
        assert scores.prompt == pytest.approx(float(made @ unit(prompt)), abs=1e-5)
    assert result.scores[0] != result.scores[1]  # two different pictures


def test_no_content_description_means_no_leakage_score(engine):
    result = engine.generate(
        GenerationRequest(
            prompt="a fox", style_images=[StyleReference(STYLE_A)], width=64, height=64, steps=1
        )
    )
    assert result.scores[0].content is None and result.scores[0].prompt is not None
    assert -1.0 <= result.scores[0].style <= 1.0


def test_every_result_carries_its_scores_to_the_client(engine):
    from backend.client import InstantStyleClient
    from tests.server_helpers import generate_message, run, running_server

    async def scenario():
        async with running_server(engine) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(generate_message(1, content_text="stripes", batch=2), {0: STYLE_A})
            return await client.follow(1)

    done = run(scenario())
    assert len(done.result.scores) == 2
    expected = engine.generate(
        GenerationRequest(
            prompt="a lighthouse",
            style_images=[StyleReference(STYLE_A)],
            content_text="stripes",
            width=64,
            height=64,
            steps=3,
            seed=5,
            batch=2,
        )
    ).scores
    for sent, made in zip(done.result.scores, expected, strict=True):
        assert sent.style == pytest.approx(made.style, abs=1e-4) and sent.content == pytest.approx(
            made.content, abs=1e-4
        )
