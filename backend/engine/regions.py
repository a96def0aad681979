"""Regional styles: each part of the picture takes the look of its own references.

Each region is a mask with its own style references (blended, content-subtracted as usual); outside
every region an optional default style applies (the job's own references). They become one
IP-Adapter with several images, each limited to its mask by diffusers' IP-Adapter attention masks
(``IPAdapterMaskProcessor``, ``ip_adapter_masks``): at every block the mask is resized to the block's
resolution and multiplies that image's attention output token by token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from protocol.limits import MAX_REGIONS

from .request import GenerationRequest, RequestError, StyleReference
from .style_embedding import StyleEncoder


@dataclass
class StyleRegion:
    """A part of the picture (white in ``mask``) with its own references."""

    mask: Image.Image
    style_images: list[StyleReference]
    content_text: str | None = None
    """What the region's references show, to subtract; None: the job's own content text."""
    name: str = ""


@dataclass
class RegionPlan:
    """The IP-Adapter images of a regional job, in order, with the mask of each."""

    styles: list[list[StyleReference]] = field(default_factory=list)
    content_texts: list[str] = field(default_factory=list)
    masks: list[Image.Image] = field(default_factory=list)


def binary(mask: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """A region mask at the job's size as 0/1 (white, above half, is inside)."""
    resized = mask.convert("L").resize(size, Image.Resampling.NEAREST)
    return (np.asarray(resized) > 127).astype(np.uint8)


def plan_regions(
    regions: list[StyleRegion], default_styles: list[StyleReference], content_text: str, size: tuple[int, int]
) -> RegionPlan:
    """One IP-Adapter image per region, plus the default style outside every region (if any)."""
    if len(regions) > MAX_REGIONS:
        raise RequestError(f"at most {MAX_REGIONS} regions, got {len(regions)}")
    plan = RegionPlan()
    covered = np.zeros((size[1], size[0]), dtype=bool)
    for index, region in enumerate(regions):
        if not region.style_images:
            raise RequestError(f"region {index + 1} ({region.name or 'unnamed'}) needs a style reference")
        inside = binary(region.mask, size)
        if not inside.any():
            raise RequestError(f"region {index + 1} ({region.name or 'unnamed'})'s mask is empty")
        covered |= inside.astype(bool)
        plan.styles.append(region.style_images)
        plan.content_texts.append(content_text if region.content_text is None else region.content_text)
        plan.masks.append(Image.fromarray(inside * 255))
    if default_styles and not covered.all():
        plan.styles.append(default_styles)
        plan.content_texts.append(content_text)
        plan.masks.append(Image.fromarray((~covered).astype(np.uint8) * 255))
    return plan


MASK_FULL_SIZE_UP_TO = 2048
"""Longest side up to which region masks are made at the picture's pixels; a larger picture (a
canvas refined at its own size) gets them at latent resolution, which no attention grid is finer
than: a canvas-sized float mask per region would sit on the device (256 MiB each at 8192²)."""


def mask_tensor(masks: list[Image.Image], width: int, height: int) -> list[torch.Tensor]:
    """diffusers' ``ip_adapter_masks`` for one IP-Adapter: shape (1, images, height, width), 0/1."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    processed = IPAdapterMaskProcessor().preprocess(masks, height=height, width=width)
    return [processed.reshape(1, processed.shape[0], processed.shape[-2], processed.shape[-1])]


def style_and_masks(
    encoder: StyleEncoder, request: GenerationRequest
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """The (N, D) style embeddings of a job's IP-Adapter images ((N, T, H) patch features with a plus
    adapter), and their masks (regions only)."""
    if not request.regions:
        style = encoder.style_embedding(
            [ref.image for ref in request.style_images],
            [ref.weight for ref in request.style_images],
            request.content_text,
            request.content_scale,
        )
        return style, None
    plan = plan_regions(
        request.regions, request.style_images, request.content_text, (request.width, request.height)
    )
    embeds = [
        encoder.style_embedding(
            [ref.image for ref in refs], [ref.weight for ref in refs], content, request.content_scale
        )
        for refs, content in zip(plan.styles, plan.content_texts, strict=True)
    ]
    width, height = request.width, request.height
    if max(width, height) > MASK_FULL_SIZE_UP_TO:
        width, height = width // 8, height // 8
    return torch.cat(embeds), mask_tensor(plan.masks, width, height)
