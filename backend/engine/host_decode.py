"""A large picture encoded and decoded tile by tile from and into host memory: the device holds one
tile's pixels at a time.

diffusers' tiled decode bounds the VAE's working memory by its tile, but keeps every decoded tile on
the device and joins them there: a whole 8192² canvas in fp32 (0.8 GiB) and its joined copy beside
the model; its tiled encode takes the whole picture onto the device first. Here each tile goes to
the device on its own, and the tiles are blended on the host with linear ramps that add up to 1
(``tiles.axis_weights``), so an 8K canvas needs the device memory of one tile, as a 1024² job's
does. The encode blends the tiles' Gaussian moments, then samples once with the job's generator, as
diffusers' tiled encode does.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from .tiles import Tile, axis_weights, tile_starts


def vae_scale(vae: torch.nn.Module) -> int:
    """Image pixels per latent pixel (8 for SDXL's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)  # type: ignore[attr-defined]


def host_tiles(
    height: int, width: int, tile: int, overlap: int, weight_scale: int
) -> Iterator[tuple[Tile, torch.Tensor]]:
    """The tiles of a ``height`` × ``width`` latent canvas, row by row, each with its float32 blend
    weights at ``weight_scale`` times the latents' resolution (the decode blends pixels, the encode
    the latents' moments)."""
    rows, columns = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    tall, wide = min(tile, height), min(tile, width)
    scaled = overlap * weight_scale
    row_weights = axis_weights(
        [r * weight_scale for r in rows], tall * weight_scale, height * weight_scale, scaled
    )
    column_weights = axis_weights(
        [c * weight_scale for c in columns], wide * weight_scale, width * weight_scale, scaled
    )
    for top, row_weight in zip(rows, row_weights, strict=True):
        for left, column_weight in zip(columns, column_weights, strict=True):
            yield (
                Tile(left, top, wide, tall),
                (row_weight[:, None] * column_weight[None, :]).to(torch.float32),
            )


def decode_to_host(vae: torch.nn.Module, latents: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """``vae.decode`` of unscaled ``latents`` (B, C, h, w) as (B, 3, H, W) float32 on the CPU, decoded
    in ``tile``-sided tiles (latent pixels) sharing ``overlap``."""
    batch, _, height, width = latents.shape
    scale = vae_scale(vae)
    image = torch.zeros(batch, 3, height * scale, width * scale, dtype=torch.float32)
    for part, weight in host_tiles(height, width, tile, overlap, scale):
        rows, columns = part.region()
        decoded = vae.decode(latents[..., rows, columns], return_dict=False)[0].float().cpu()  # type: ignore[operator]
        rows, columns = part.region(scale)
        image[..., rows, columns] += decoded * weight
    return image


def encode_from_host(
    vae: torch.nn.Module,
    picture: Image.Image,
    tile: int,
    overlap: int,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """``picture`` as scaled latents (1, C, h, w) on ``device``, as an SDXL pipeline's own encode
    makes them, encoded in ``tile``-sided tiles (latent pixels) sharing ``overlap``."""
    scale = vae_scale(vae)
    pixels = torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1)[None]
    pixels = pixels.to(torch.float32) / 127.5 - 1.0  # the pipelines' normalisation, on the host
    height, width = pixels.shape[-2] // scale, pixels.shape[-1] // scale
    dtype = next(vae.parameters()).dtype
    moments: torch.Tensor | None = None
    for part, weight in host_tiles(height, width, tile, overlap, 1):
        rows, columns = part.region(scale)
        encoded = vae.encode(pixels[..., rows, columns].to(device, dtype)).latent_dist.parameters  # type: ignore[operator]
        encoded = encoded.float().cpu()
        if moments is None:
            moments = torch.zeros(1, encoded.shape[1], height, width, dtype=torch.float32)
        rows, columns = part.region()
        moments[..., rows, columns] += encoded * weight
    assert moments is not None
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    latents = DiagonalGaussianDistribution(moments).sample(generator)
    return scale_latents(vae, latents).to(device)


def scale_latents(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """The VAE's latent scaling (and normalisation, where its config has one), as the pipelines apply
    it after their encode (``decode.unscale`` undoes it)."""
    config = vae.config  # type: ignore[attr-defined]
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents.dtype)
        std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents.dtype)
        return (latents - mean_t) * config.scaling_factor / std_t
    return latents * config.scaling_factor


def host_tile(vae: torch.nn.Module, longest_side: int) -> tuple[int, int] | None:
    """The (tile, overlap) in latent pixels for latents whose longest side is ``longest_side``, where
    the job's VAE tiling is on (``decode.set_decode_tiles``) and they are larger than one tile; else
    None (encoded or decoded whole)."""
    tile = int(getattr(vae, "tile_latent_min_size", 0))
    if not getattr(vae, "use_tiling", False) or longest_side <= tile:
        return None
    return tile, int(tile * getattr(vae, "tile_overlap_factor", 0.25))
