"""A large picture decoded tile by tile into host memory: the device holds one tile's decode.

diffusers' tiled decode bounds the VAE's working memory by its tile, but keeps every decoded tile on
the device and joins them there: a whole 8192² canvas in fp32 (0.8 GiB) and its joined copy beside
the model. Here each tile of the latents is decoded, copied to the host and blended there with
linear ramps that add up to 1 (``tiles.axis_weights`` at the image's pixels), so the decode of an
8K canvas needs the device memory of one tile, as a 1024² job's does.
"""

from __future__ import annotations

import torch

from .tiles import axis_weights, tile_starts


def vae_scale(vae: torch.nn.Module) -> int:
    """Image pixels per latent pixel (8 for SDXL's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)  # type: ignore[attr-defined]


def decode_to_host(vae: torch.nn.Module, latents: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """``vae.decode`` of unscaled ``latents`` (B, C, h, w) as (B, 3, H, W) float32 on the CPU, decoded
    in ``tile``-sided tiles (latent pixels) sharing ``overlap``."""
    batch, _, height, width = latents.shape
    scale = vae_scale(vae)
    rows = [start * scale for start in tile_starts(height, tile, overlap)]
    columns = [start * scale for start in tile_starts(width, tile, overlap)]
    tall, wide = min(tile, height) * scale, min(tile, width) * scale
    row_weights = axis_weights(rows, tall, height * scale, overlap * scale)
    column_weights = axis_weights(columns, wide, width * scale, overlap * scale)
    image = torch.zeros(batch, 3, height * scale, width * scale, dtype=torch.float32)
    for top, row_weight in zip(rows, row_weights, strict=True):
        for left, column_weight in zip(columns, column_weights, strict=True):
            part = latents[..., top // scale : (top + tall) // scale, left // scale : (left + wide) // scale]
            decoded = vae.decode(part, return_dict=False)[0].float().cpu()  # type: ignore[operator]
            weight = (row_weight[:, None] * column_weight[None, :]).to(torch.float32)
            image[..., top : top + tall, left : left + wide] += decoded * weight
    return image


def host_tile(vae: torch.nn.Module, latents: torch.Tensor) -> tuple[int, int] | None:
    """The (tile, overlap) in latent pixels to decode ``latents`` with, where the job's VAE tiling is
    on (``decode.set_decode_tiles``) and they are larger than one tile; else None (decoded whole)."""
    tile = int(getattr(vae, "tile_latent_min_size", 0))
    if not getattr(vae, "use_tiling", False) or max(latents.shape[-2:]) <= tile:
        return None
    return tile, int(tile * getattr(vae, "tile_overlap_factor", 0.25))
