"""The UNet run tile by tile over a latent canvas larger than the model's native size.

While ``tiled_unet`` is active, every call of the UNet (inside diffusers' own denoising loop, with
its scheduler, guidance, callbacks and offload hooks untouched) is split into overlapping tiles; each
tile is conditioned as the crop of the canvas it is (SDXL's size and crop micro-conditioning) and the
predictions are blended with ``tiles.blend_weights``. A canvas that fits one tile is passed through
unchanged, so the same job tiled and untiled then give the same pixels.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch

from .request import JobCancelled
from .tiles import Tile, blend_weights, tile_grid

LATENT_SCALE = 8
"""Image pixels per latent pixel (SDXL's VAE)."""

TileCallback = Callable[[int, int, int], None]
"""``(call, done, count)``: tile ``done`` of ``count`` finished in the UNet's ``call``-th call (1-based)."""


def tile_time_ids(time_ids: torch.Tensor, tile: Tile, canvas: tuple[int, int]) -> torch.Tensor:
    """SDXL's micro-conditioning for a crop: the canvas as the original size, the tile's corner as the
    crop, the tile as the target (base model: six numbers; others are left as they are)."""
    if time_ids.shape[-1] != 6:
        return time_ids
    height, width = canvas
    values = [height, width, tile.y, tile.x, tile.height, tile.width]
    scaled = torch.tensor([v * LATENT_SCALE for v in values], dtype=time_ids.dtype, device=time_ids.device)
    return scaled.expand_as(time_ids).clone()


def tile_kwargs(kwargs: dict, tile: Tile, latent_height: int) -> dict:
    """The UNet's other arguments for one tile: regions' IP-Adapter masks (canvas-sized, each resized
    by diffusers to an attention block's grid from its own proportions) cropped to the tile."""
    attention = kwargs.get("cross_attention_kwargs") or {}
    masks = attention.get("ip_adapter_masks")
    if not masks:
        return kwargs
    cropped = []
    for mask in masks:  # (1, images, H, W) at the canvas's pixels
        scale = mask.shape[-2] // latent_height
        rows, columns = tile.region(scale)
        cropped.append(mask[..., rows, columns])
    return {**kwargs, "cross_attention_kwargs": {**attention, "ip_adapter_masks": cropped}}


@contextlib.contextmanager
def tiled_unet(
    unet: torch.nn.Module,
    tile: int,
    overlap: int,
    cancel: threading.Event | None = None,
    on_tile: TileCallback | None = None,
) -> Iterator[list[int]]:
    """Split the UNet's calls into ``tile``-sided tiles (latent pixels) that share ``overlap``;
    ``cancel`` stops the job before the next tile (a step of an 8K canvas is hundreds of tiles);
    ``on_tile(call, done, count)`` hears of each finished tile of a call (1-based) that has several.

    Yields a list that collects how many tiles each call used (for progress and tests)."""
    inner = unet.forward
    own = "forward" in unet.__dict__  # an offload hook's wrapper: put it back as it was
    calls: list[int] = []
    cache: dict[tuple[int, int], tuple[list[Tile], list[torch.Tensor]]] = {}

    def forward(sample: torch.Tensor, timestep, encoder_hidden_states, *args, **kwargs):
        height, width = sample.shape[-2:]
        if (height, width) not in cache:
            tiles = tile_grid(width, height, tile, overlap)
            cache[(height, width)] = (tiles, blend_weights(tiles, width, height, overlap))
        tiles, weights = cache[(height, width)]
        calls.append(len(tiles))
        if len(tiles) == 1:
            return inner(sample, timestep, encoder_hidden_states, *args, **kwargs)
        return_dict = kwargs.pop("return_dict", True)
        added = kwargs.pop("added_cond_kwargs", None) or {}
        blended: torch.Tensor | None = None
        for done, (part, weight) in enumerate(zip(tiles, weights, strict=True), start=1):
            if cancel is not None and cancel.is_set():
                raise JobCancelled
            rows, columns = part.region()
            conditioning = dict(added)
            if "time_ids" in conditioning:
                conditioning["time_ids"] = tile_time_ids(conditioning["time_ids"], part, (height, width))
            prediction = inner(
                sample[..., rows, columns],
                timestep,
                encoder_hidden_states,
                *args,
                added_cond_kwargs=conditioning,
                return_dict=False,
                **tile_kwargs(kwargs, part, height),
            )[0]
            if blended is None:
                shape = (*prediction.shape[:-2], height, width)
                blended = torch.zeros(shape, dtype=prediction.dtype, device=prediction.device)
            blended[..., rows, columns] += prediction * weight.to(prediction.device, prediction.dtype)
            if on_tile is not None:
                on_tile(len(calls), done, len(tiles))
        if not return_dict:
            return (blended,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=blended)

    unet.forward = forward  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        if own:
            unet.forward = inner  # type: ignore[method-assign]
        else:
            del unet.forward
