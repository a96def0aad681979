"""A canvas decoded tile by tile into host memory (``backend/engine/host_decode.py``): the device
never holds the whole decoded canvas, and the blend adds no seam."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from backend.engine.engine import InstantStyleEngine
from backend.engine.host_decode import decode_to_host, host_tile
from backend.engine.memory import MemoryTier
from backend.engine.request import GenerationRequest, StyleReference
from backend.engine.tiles import axis_weights, blend_weights, tile_grid, tile_starts
from tests.conftest import noise_image


def test_a_grids_weights_are_the_products_of_its_two_sides():
    width, height, tile, overlap = 28, 20, 8, 3
    tiles = tile_grid(width, height, tile, overlap)
    rows = axis_weights(tile_starts(height, tile, overlap), tile, height, overlap)
    columns = axis_weights(tile_starts(width, tile, overlap), tile, width, overlap)
    products = [r[:, None] * c[None, :] for r in rows for c in columns]  # row by row, as the grid
    assert len(products) == len(tiles)
    for product, weight in zip(products, blend_weights(tiles, width, height, overlap), strict=True):
        assert torch.allclose(product, weight, atol=1e-12)
    total = torch.zeros(height)
    for start, weight in zip(tile_starts(height, tile, overlap), rows, strict=True):
        total[start : start + tile] += weight
    assert torch.allclose(total, torch.ones(height))


class PointwiseVae(torch.nn.Module):
    """A decoder with no spatial context (1×1 mix, then ×8 nearest): tiling must change nothing."""

    config = SimpleNamespace(block_out_channels=[4, 4, 4, 4])

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Conv2d(4, 3, 1)
        self.seen: list[tuple[int, ...]] = []

    def decode(self, latents, return_dict=True):
        self.seen.append(tuple(latents.shape))
        return (torch.nn.functional.interpolate(self.mix(latents), scale_factor=8, mode="nearest"),)


def test_a_canvas_decoded_tile_by_tile_on_the_host_is_the_whole_decode():
    torch.manual_seed(0)
    vae, latents = PointwiseVae(), torch.randn(2, 4, 20, 28)
    with torch.no_grad():
        (whole,) = vae.decode(latents)
        vae.seen.clear()
        tiled = decode_to_host(vae, latents, tile=8, overlap=3)
    assert tiled.device.type == "cpu" and tiled.dtype == torch.float32 and tiled.shape == whole.shape
    assert torch.allclose(tiled, whole, atol=1e-5)
    assert len(vae.seen) == 20 and all(shape[-2:] == (8, 8) for shape in vae.seen)  # 4 rows × 5


def test_the_engine_decodes_a_tiled_job_without_diffusers_whole_canvas_join(tiny_paths):
    engine = InstantStyleEngine.load(
        tiny_paths.spec("diffusers"), device="cpu", memory_tier=MemoryTier.ENCODERS_OFF.value
    )
    vae = engine.pipeline.vae
    seen, joined = [], []
    decode, tiled_decode = vae.decode, vae.tiled_decode
    vae.decode = lambda z, **kw: (seen.append(tuple(z.shape)), decode(z, **kw))[1]
    vae.tiled_decode = lambda z, **kw: (joined.append(tuple(z.shape)), tiled_decode(z, **kw))[1]
    request = GenerationRequest(
        prompt="a harbour", style_images=[StyleReference(noise_image(4))], width=128, height=96, steps=2
    )
    (image,) = engine.generate(request).images
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8
    # The tiers that always tile decode in 64-px tiles (the tiny VAE's sample size), each on its own.
    assert host_tile(vae, torch.zeros(1, 4, 12, 16)) == (8, 2)
    assert joined == [] and len(seen) == 6 and all(shape[-2:] == (8, 8) for shape in seen)
    again = engine.generate(request).images[0]
    assert np.array_equal(again, image)
