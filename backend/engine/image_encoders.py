"""Which CLIP image encoder a spec names, known before any weight is read: what memory tiers count.

The plain and plus adapters for SDXL come with one of two encoders: OpenCLIP ViT-bigG/14
(``ip-adapter_sdxl``: 3.44 GiB in fp16) or ViT-H/14 (the ``_vit-h`` adapters: 1.18 GiB, plus ViT-H's
text tower for content subtraction, 0.66 GiB, and the plus adapter's Resampler). The encoder's
``config.json`` says which, where it is on disk (a folder, or the hub cache); an encoder not on disk
yet counts as the larger of the two in each part (neither is the larger in every tier).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

from .loading import HubFile, ModelLoadError, ModelSpec, is_local

VIT_H_PROJECTION = 1024
"""ViT-H-14's embedding size (ViT-bigG's is 1280)."""


class ImageEncoderKind(str, Enum):
    VIT_BIGG = "vit-bigg"
    VIT_H = "vit-h"
    UNKNOWN = "unknown"
    """Not on disk yet (its first start): counted as the larger of the two, part by part."""


def encoder_config(spec: ModelSpec) -> dict | None:
    """The image encoder's config where it is already on disk, else None."""
    if is_local(spec.image_encoder):
        path = Path(spec.image_encoder).expanduser() / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            hub = HubFile.parse(spec.image_encoder)
            inside = "/".join(part for part in (hub.subpath, "config.json") if part)
            cached = try_to_load_from_cache(hub.repo_id, inside, cache_dir=spec.cache_dir)
        except (ValueError, ModelLoadError):  # not a hub id: loading says so in one line
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def image_encoder_kind(spec: ModelSpec) -> ImageEncoderKind:
    """ViT-H when the encoder's config says 1024-d embeddings, ViT-bigG when it says another size,
    unknown when it is not on disk yet."""
    config = encoder_config(spec)
    if config is None:
        return ImageEncoderKind.UNKNOWN
    projection = config.get("projection_dim", config.get("vision_config", {}).get("projection_dim"))
    return ImageEncoderKind.VIT_H if projection == VIT_H_PROJECTION else ImageEncoderKind.VIT_BIGG
