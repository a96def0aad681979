"""Jobs at a canvas's own resolution: made at the model's native area, then upscaled and refined in
tiles with the same InstantStyle conditioning (style blocks, content subtraction, precise preset).

SDXL asked for 4096² directly repeats its subject all over the picture: it was trained around one
megapixel. So the first stage runs at about the native area with the canvas's proportions; the
second upscales that picture to the canvas (Lanczos) and runs img2img at a low strength with the
UNet split into overlapping tiles (``tiled_unet``), which adds detail at full size without seams.
Memory follows the tile, not the canvas: the VAE encodes and decodes in tiles too (``decode``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import replace

import torch
from PIL import Image

from protocol.enums import ControlKind, Mode

from .previews import StepPreview
from .request import GenerationRequest, GenerationResult, Refine
from .sweep import OneJob, StepCallback, shifted
from .tiled_unet import LATENT_SCALE, TileCallback, tiled_unet


def first_stage_size(width: int, height: int, native: int) -> tuple[int, int]:
    """About ``native``² pixels with the proportions of ``width`` × ``height``, in the size steps the
    model was trained on (64 px for SDXL's 1024, 8 for smaller models); a canvas within that area as
    it is."""
    if width * height <= native * native:
        return width, height  # fits: one job at the canvas's own size
    step = max(8, native // 16)
    scale = math.sqrt(native * native / (width * height))
    return (
        max(step, round(width * scale / step) * step),
        max(step, round(height * scale / step) * step),
    )


SMALLEST_DEFAULT_TILE = 512
"""A model trained below this side (the tiny test model's 64 px) still refines in tiles this large."""


def tile_and_overlap(refine: Refine, native: int) -> tuple[int, int]:
    """The refine's tile and overlap in latent pixels (defaults from the model's native side)."""
    tile = refine.tile or max(native, SMALLEST_DEFAULT_TILE)
    overlap = refine.overlap if refine.overlap or refine.tile else tile // 8
    return tile // LATENT_SCALE, overlap // LATENT_SCALE


def run_refined(
    request: GenerationRequest,
    generate_one: OneJob,
    unet: torch.nn.Module,
    native: int,
    on_step: StepCallback | None,
    cancel: threading.Event | None,
    flush: Callable[[], None] = lambda: None,
) -> GenerationResult:
    """Both stages through ``generate_one`` (the engine's lock held); progress counts the steps of
    both. A batch is made small together, then each picture refined on its own (its seed, its
    scores). A canvas within the native area runs as one job."""
    refine = request.refine
    assert refine is not None
    request.validate()
    base_width, base_height = first_stage_size(request.width, request.height, native)
    if (base_width, base_height) == (request.width, request.height):
        return generate_one(replace(request, refine=None), on_step, cancel)
    first = replace(request, refine=None, width=base_width, height=base_height)
    inpaint = request.mode is Mode.INPAINT  # a selection: refined inside it, the canvas kept outside
    second = replace(
        request,
        refine=None,
        mode=Mode.INPAINT if inpaint else Mode.IMG2IMG,
        control=ControlKind.EDGES,  # the default: a control job's refining stage is img2img, no ControlNet
        mask=request.mask if inpaint else None,
        strength=refine.strength,
        steps=refine.stage_steps(request.steps),
    )
    total = first.effective_steps + request.batch * second.effective_steps
    made = generate_one(first, shifted(on_step, 0, total), cancel)
    tile, overlap = tile_and_overlap(refine, native)
    parts = []
    for index, (picture, seed) in enumerate(zip(made.images, made.seeds, strict=True)):
        upscaled = Image.fromarray(picture).resize((request.width, request.height), Image.Resampling.LANCZOS)
        if inpaint:
            upscaled = within_selection(upscaled, request.init_image, request.mask)
        refining = shifted(on_step, first.effective_steps + index * second.effective_steps, total)
        with tiled_unet(unet, tile, overlap, cancel, tile_reporter(refining, second.effective_steps, flush)):
            parts.append(
                generate_one(replace(second, init_image=upscaled, seed=seed, batch=1), refining, cancel)
            )
    return replace(
        made,
        images=[image for part in parts for image in part.images],
        scores=[score for part in parts for score in part.scores],
        seconds=made.seconds + sum(part.seconds for part in parts),
    )


def within_selection(made: Image.Image, canvas: Image.Image | None, mask: Image.Image | None) -> Image.Image:
    """The first stage's picture inside the selection and the artist's canvas outside it, at the
    canvas's size: the refining stage starts from the artist's own pixels around the selection
    (masks resized as the engine resizes them, nearest)."""
    assert canvas is not None and mask is not None
    size = made.size
    outside = canvas.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    return Image.composite(made, outside, mask.convert("L").resize(size, Image.Resampling.NEAREST))


def tile_reporter(
    on_step: StepCallback | None, steps: int, flush: Callable[[], None] = lambda: None
) -> TileCallback | None:
    """Each finished tile of the refining stage as progress: "tile 7 of 24" in step ``call``, after
    the report of the step before it (``flush``: the engine's held preview, on a GPU)."""
    if on_step is None:
        return None
    report = on_step

    def on_tile(call: int, done: int, count: int) -> None:
        if done == 1:
            flush()
        report(StepPreview(call - 1, steps, None, None, done, count))

    return on_tile
