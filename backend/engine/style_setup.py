"""The engine's style encoder, set up for its model family and adapter: which text tower content
subtraction goes through (SDXL's text_encoder_2 for ViT-bigG, the ViT-H text tower otherwise)."""

from __future__ import annotations

import torch

from protocol.enums import ImageAdapter

from .content_text import content_tower_for
from .family import FamilyTraits
from .loading import ModelSpec
from .style_embedding import StyleEncoder


def style_encoder_for(
    pipeline: object,
    spec: ModelSpec,
    family: FamilyTraits,
    adapter: ImageAdapter,
    device: torch.device,
    cache_size: int,
) -> StyleEncoder:
    """The encoder of style images (and content texts) for ``pipeline``'s image encoder; a plus adapter
    gets no text tower (its patch features have no text counterpart)."""
    from transformers import CLIPImageProcessorPil

    image_encoder = pipeline.image_encoder  # type: ignore[attr-defined]
    size = image_encoder.config.image_size
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    name = family.shared_text_tower
    shared = getattr(pipeline, name) if name else None
    tokenizer = getattr(pipeline, name.replace("text_encoder", "tokenizer")) if name else None
    tower = (
        None
        if adapter is ImageAdapter.PLUS
        else content_tower_for(spec, image_encoder, shared, pipeline.text_encoder)  # type: ignore[attr-defined]
    )
    return StyleEncoder(
        image_encoder,
        processor,
        shared,
        tokenizer,
        cache_size=cache_size,
        execution_device=device,
        features=adapter,
        content_tower=tower,
    )
