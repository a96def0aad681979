"""Tile maths for refining a large canvas: coverage, overlap, weights that add up to 1."""

from __future__ import annotations

import itertools

import pytest
import torch

from backend.engine.tiles import Tile, blend_weights, tile_grid, tile_starts


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(128, 128, 16), (200, 128, 16), (512, 128, 32), (129, 64, 8)]
)
def test_tiles_cover_each_side_with_at_least_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, length) == length
    for before, after in itertools.pairwise(starts):
        assert after > before and before + tile - after >= overlap  # neighbours share ``overlap``
    fewer = len(starts) - 1  # and no tile is wasted: one fewer could not cover with that overlap
    assert fewer == 0 or fewer * (tile - overlap) + overlap < length


def test_a_canvas_that_fits_is_one_tile_with_weight_one():
    tiles = tile_grid(96, 64, 128, 16)
    assert tiles == [Tile(0, 0, 96, 64)]
    (weight,) = blend_weights(tiles, 96, 64, 16)
    assert torch.equal(weight, torch.ones(64, 96, dtype=torch.float64))


@pytest.mark.parametrize(("width", "height"), [(512, 384), (300, 130), (1024, 128)])
def test_weights_add_up_to_one_everywhere_and_feather_inner_edges_only(width, height):
    tiles = tile_grid(width, height, 128, 32)
    weights = blend_weights(tiles, width, height, 32)
    total = torch.zeros(height, width, dtype=torch.float64)
    for tile, weight in zip(tiles, weights, strict=True):
        total[tile.region()] += weight
        assert bool((weight > 0).all())
    assert torch.allclose(total, torch.ones_like(total), atol=1e-12)
    first = weights[0]
    assert first[0, 0] == 1.0  # a canvas corner: no neighbour to share it with
    if len(tile_starts(width, 128, 32)) > 1:
        assert first[0, -1] < 1.0  # its right edge is shared: feathered


def test_a_tile_no_larger_than_its_overlap_is_refused():
    with pytest.raises(ValueError, match="larger than its overlap"):
        tile_starts(100, 16, 16)
