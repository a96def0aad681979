"""A tiny OpenCLIP-ViT-H-like CLIP model: the space of the ViT-H IP-Adapters, with its own text tower.

``h94/IP-Adapter``'s ``models/image_encoder`` is the image half of OpenCLIP ViT-H-14, whose text half
lives in ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (a whole ``CLIPModel``, both towers, the projection
size at the top of its config): the ViT-H adapters subtract content through it. The tiny one is one
random ``CLIPModel`` saved both ways, so its image encoder and text tower share one (random) space,
with a projection size (24) unlike the tiny SDXL's ``text_encoder_2`` (32), as ViT-H's 1024 is unlike
ViT-bigG's 1280.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .components import BOS_ID, EOS_ID, TINY, VOCAB_SIZE, tiny_tokenizer

VIT_H_PROJECTION = 24
TEXT_HIDDEN = 40


def build_clip_vit_h() -> torch.nn.Module:
    """The whole tiny CLIP model (the caller seeds torch's generator)."""
    from transformers import CLIPConfig, CLIPModel

    text = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 2 * TEXT_HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID,
    }
    vision = {
        "hidden_size": TINY.image_hidden,  # what the tiny plus adapter's Resampler reads
        "intermediate_size": TINY.image_intermediate,
        "num_hidden_layers": TINY.image_layers,
        "num_attention_heads": TINY.image_heads,
        "image_size": 224,
        "patch_size": TINY.image_patch,
        "hidden_act": "gelu",
    }
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=VIT_H_PROJECTION))


def write_clip_vit_h(clip_folder: Path, image_encoder_folder: Path) -> None:
    """The whole model and its tokenizer as laion's repo has them, and its image half as h94's
    ``models/image_encoder`` (a ``CLIPVisionModelWithProjection``)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model = build_clip_vit_h()
    model.save_pretrained(clip_folder)
    tiny_tokenizer(clip_folder / ".scratch").save_pretrained(clip_folder)  # type: ignore[attr-defined]
    for leftover in (clip_folder / ".scratch").iterdir():
        leftover.unlink()
    (clip_folder / ".scratch").rmdir()
    vision_config = CLIPVisionConfig(**model.config.vision_config.to_dict())
    vision_config.projection_dim = VIT_H_PROJECTION
    vision = CLIPVisionModelWithProjection(vision_config)
    state = model.state_dict()
    vision.load_state_dict({key: state[key] for key in vision.state_dict()})
    vision.save_pretrained(image_encoder_folder)
