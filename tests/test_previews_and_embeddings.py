"""Unit checks of the preview mapping and the embedding arithmetic."""

from __future__ import annotations

import pytest
import torch

from backend.engine.previews import SDXL_LATENT_RGB_BIAS, latents_to_rgb
from backend.engine.style_embedding import (
    EmbeddingSpaceMismatch,
    LRUCache,
    blend,
    ip_adapter_embeds,
    subtract_content,
)


def test_zero_latents_show_the_bias():
    rgb = latents_to_rgb(torch.zeros(1, 4, 2, 3))
    expected = ((SDXL_LATENT_RGB_BIAS + 1) * 127.5).round().to(torch.uint8)
    assert rgb.shape == (2, 3, 3)
    assert (torch.from_numpy(rgb) == expected).all()


def test_first_channel_maps_to_its_published_factors_and_clamps():
    latents = torch.zeros(2, 4, 1, 1)
    latents[0, 0] = 1.0
    latents[1] = 100.0  # second sample is ignored
    rgb = latents_to_rgb(latents)[0, 0].tolist()
    expected = [
        round((f + b + 1) * 127.5)
        for f, b in zip([0.3651, 0.4232, 0.4341], SDXL_LATENT_RGB_BIAS.tolist(), strict=True)
    ]
    assert rgb == expected
    bright = torch.zeros(1, 4, 1, 1)
    bright[0, 0] = 50.0  # channel 0 has only positive factors: clamps to white
    assert latents_to_rgb(bright)[0, 0].tolist() == [255, 255, 255]
    assert latents_to_rgb(-bright)[0, 0].tolist() == [0, 0, 0]


def test_preview_rejects_non_sdxl_latents():
    with pytest.raises(ValueError, match="shape"):
        latents_to_rgb(torch.zeros(1, 16, 4, 4))


def test_subtraction_and_space_check():
    image, text = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 1.0]])
    assert torch.equal(subtract_content(image, text, 2.0), torch.tensor([[0.0, 0.0]]))
    with pytest.raises(EmbeddingSpaceMismatch):
        subtract_content(image, torch.zeros(1, 3), 1.0)


def test_blend_is_a_weighted_mean():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.allclose(blend([a, b], [3.0, 1.0]), torch.tensor([[0.75, 0.25]]))
    with pytest.raises(ValueError):
        blend([a, b], [0.0, 0.0])


def test_ip_adapter_layout_with_and_without_guidance():
    style = torch.ones(1, 8)
    (with_cfg,) = ip_adapter_embeds(style, True)
    (without,) = ip_adapter_embeds(style, False)
    assert (
        with_cfg.shape == (2, 1, 8)
        and torch.count_nonzero(with_cfg[0]) == 0
        and torch.equal(with_cfg[1], style)
    )
    assert without.shape == (1, 1, 8)


def test_lru_cache_evicts_the_oldest():
    cache = LRUCache(2)
    cache.put("a", torch.zeros(1))
    cache.put("b", torch.zeros(1))
    assert cache.get("a") is not None  # a is now the newest
    cache.put("c", torch.zeros(1))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
