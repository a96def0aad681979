"""A canvas decoded tile by tile into host memory (``backend/engine/host_decode.py``): the device
never holds the whole decoded canvas, and the blend adds no seam."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from backend.engine.engine import InstantStyleEngine
from backend.engine.host_decode import decode_to_host, encode_from_host, host_tile
from backend.engine.memory import MemoryTier
from backend.engine.request import GenerationRequest, StyleReference
from backend.engine.tiles import axis_weights, blend_weights, tile_grid, tile_starts
from protocol import Mode
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
    """A VAE with no spatial context beyond its own 8-px blocks (1×1 mixes, ×8 nearest up, 8×8 mean
    down): tiling must change nothing."""

    config = SimpleNamespace(block_out_channels=[4, 4, 4, 4], scaling_factor=0.13025)

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Conv2d(4, 3, 1)
        self.moments = torch.nn.Conv2d(3, 8, 1)
        self.seen: list[tuple[int, ...]] = []

    def decode(self, latents, return_dict=True):
        self.seen.append(tuple(latents.shape))
        return (torch.nn.functional.interpolate(self.mix(latents), scale_factor=8, mode="nearest"),)

    def encode(self, pixels):
        self.seen.append(tuple(pixels.shape))
        moments = self.moments(torch.nn.functional.avg_pool2d(pixels, 8))
        return SimpleNamespace(latent_dist=SimpleNamespace(parameters=moments))


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


def test_a_canvas_encoded_tile_by_tile_from_the_host_is_the_whole_encode():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    torch.manual_seed(0)
    vae, picture = PointwiseVae(), noise_image(6, size=224).resize((224, 160))
    pixels = torch.from_numpy(np.array(picture)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        whole = DiagonalGaussianDistribution(vae.encode(pixels).latent_dist.parameters)
        expected = whole.sample(torch.Generator().manual_seed(4)) * vae.config.scaling_factor
        vae.seen.clear()
        tiled = encode_from_host(vae, picture, 8, 3, torch.Generator().manual_seed(4), torch.device("cpu"))
    assert tiled.shape == (1, 4, 20, 28) and torch.allclose(tiled, expected, atol=1e-5)
    assert len(vae.seen) == 20 and all(shape[-2:] == (64, 64) for shape in vae.seen)  # pixels a tile


def test_the_engine_decodes_a_tiled_job_without_diffusers_whole_canvas_join(tiny_paths):
    engine = InstantStyleEngine.load(
        tiny_paths.spec("diffusers"), device="cpu", memory_tier=MemoryTier.ENCODERS_OFF.value
    )
    vae = engine.pipeline.vae
    seen, joined, encoded = [], [], []
    decode, tiled_decode, tiled_encode, encode = vae.decode, vae.tiled_decode, vae.tiled_encode, vae.encode
    vae.decode = lambda z, **kw: (seen.append(tuple(z.shape)), decode(z, **kw))[1]
    vae.tiled_decode = lambda z, **kw: (joined.append(tuple(z.shape)), tiled_decode(z, **kw))[1]
    vae.tiled_encode = lambda x, **kw: (joined.append(tuple(x.shape)), tiled_encode(x, **kw))[1]
    vae.encode = lambda x, **kw: (encoded.append(tuple(x.shape)), encode(x, **kw))[1]
    request = GenerationRequest(
        prompt="a harbour",
        style_images=[StyleReference(noise_image(4))],
        mode=Mode.IMG2IMG,
        init_image=noise_image(5, size=128).resize((128, 96)),
        width=128,
        height=96,
        steps=4,
    )
    (image,) = engine.generate(request).images
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8
    # The tiers that always tile decode in 64-px tiles (the tiny VAE's sample size), each on its own.
    assert host_tile(vae, 16) == (8, 2) and host_tile(vae, 8) is None
    assert joined == [] and len(seen) == 6 and all(shape[-2:] == (8, 8) for shape in seen)
    assert len(encoded) == 6 and all(shape[-2:] == (64, 64) for shape in encoded)  # the picture too
    again = engine.generate(request).images[0]
    assert np.array_equal(again, image)
