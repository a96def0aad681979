"""Overlapping tiles over a latent canvas, and the weights that blend them without seams.

A canvas larger than the model's native size is refined tile by tile at every denoising step; each
tile's prediction is feathered towards its inner edges and the predictions are averaged with those
weights (MultiDiffusion, Bar-Tal et al. 2023, with linear ramps in the overlaps as in Mixture of
Diffusers). Where tiles overlap the weights add up to 1 exactly, so a flat area stays flat across a
border and a canvas that fits one tile is refined exactly as a single job would be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tile:
    """A rectangle of the canvas, in latent pixels (an eighth of the image's)."""

    x: int
    y: int
    width: int
    height: int

    def region(self, scale: int = 1) -> tuple[slice, slice]:
        """The tile's rows and columns, to index an (..., height, width) tensor (``scale``: of one
        ``scale`` times the latents' size, such as the image's pixels)."""
        return (
            slice(self.y * scale, (self.y + self.height) * scale),
            slice(self.x * scale, (self.x + self.width) * scale),
        )


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles start along one side: as few as cover it with at least ``overlap`` in common,
    spread evenly (the first at 0, the last flush with the end)."""
    if tile <= overlap:
        raise ValueError(f"a tile ({tile}) must be larger than its overlap ({overlap})")
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles covering a ``width`` × ``height`` canvas, row by row."""
    return [
        Tile(x, y, min(tile, width), min(tile, height))
        for y in tile_starts(height, tile, overlap)
        for x in tile_starts(width, tile, overlap)
    ]


def ramp(length: int, overlap: int, rises: bool, falls: bool) -> torch.Tensor:
    """1 in the middle, falling linearly to ``1 / (overlap + 1)`` over ``overlap`` pixels at an inner
    edge (``rises`` at the start, ``falls`` at the end); canvas borders keep 1."""
    position = torch.arange(length, dtype=torch.float64)
    weight = torch.ones(length, dtype=torch.float64)
    if overlap > 0 and rises:
        weight = torch.minimum(weight, (position + 1) / (overlap + 1))
    if overlap > 0 and falls:
        weight = torch.minimum(weight, (length - position) / (overlap + 1))
    return weight


def blend_weights(tiles: list[Tile], width: int, height: int, overlap: int) -> list[torch.Tensor]:
    """Each tile's (height, width) weights, normalised so that they add up to 1 at every pixel."""
    raw = []
    total = torch.zeros(height, width, dtype=torch.float64)
    for tile in tiles:
        rows = ramp(tile.height, overlap, tile.y > 0, tile.y + tile.height < height)
        columns = ramp(tile.width, overlap, tile.x > 0, tile.x + tile.width < width)
        weight = rows[:, None] * columns[None, :]
        total[tile.region()] += weight
        raw.append(weight)
    if bool((total <= 0).any()):
        raise ValueError("the tiles leave part of the canvas uncovered")
    return [weight / total[tile.region()] for tile, weight in zip(tiles, raw, strict=True)]


def axis_weights(starts: list[int], size: int, length: int, overlap: int) -> list[torch.Tensor]:
    """Along one side of ``length``: the weights of tiles of ``size`` at ``starts``, adding up to 1 at
    every position. A grid's weights are the products of its two sides' (``blend_weights`` equals
    them), so a canvas of any size is blended with two short vectors per tile, not canvas-sized maps."""
    ramps = [ramp(size, overlap, start > 0, start + size < length) for start in starts]
    total = torch.zeros(length, dtype=torch.float64)
    for start, weight in zip(starts, ramps, strict=True):
        total[start : start + size] += weight
    if bool((total <= 0).any()):
        raise ValueError("the tiles leave part of the side uncovered")
    return [weight / total[start : start + size] for start, weight in zip(starts, ramps, strict=True)]
