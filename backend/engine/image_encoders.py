"""Which CLIP image encoder a spec names, known before any weight is read: what memory tiers count.

The plain and plus adapters for SDXL come with one of two encoders: OpenCLIP ViT-bigG/14
(``ip-adapter_sdxl``: 3.44 GiB in fp16) or ViT-H/14 (the ``_vit-h`` adapters: 1.18 GiB, plus ViT-H's
text tower for content subtraction, 0.66 GiB). The encoder's ``config.json`` says which, where it is
on disk (a folder, or the hub cache); an encoder not on disk yet counts as ViT-bigG, the larger.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

from .loading import ModelSpec, is_local

VIT_H_PROJECTION = 1024
"""ViT-H-14's embedding size (ViT-bigG's is 1280)."""


class ImageEncoderKind(str, Enum):
    VIT_BIGG = "vit-bigg"
    VIT_H = "vit-h"


def encoder_config(spec: ModelSpec) -> dict | None:
    """The image encoder's config where it is already on disk, else None."""
    if is_local(spec.image_encoder):
        path = Path(spec.image_encoder).expanduser() / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        parts = spec.image_encoder.strip("/").split("/")
        inside = "/".join([*parts[2:], "config.json"])
        cached = try_to_load_from_cache("/".join(parts[:2]), inside, cache_dir=spec.cache_dir)
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def image_encoder_kind(spec: ModelSpec) -> ImageEncoderKind:
    """ViT-H when the encoder's config says 1024-d embeddings, else ViT-bigG (also when unknown)."""
    config = encoder_config(spec) or {}
    projection = config.get("projection_dim", config.get("vision_config", {}).get("projection_dim"))
    return ImageEncoderKind.VIT_H if projection == VIT_H_PROJECTION else ImageEncoderKind.VIT_BIGG
