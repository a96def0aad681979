"""Stable Diffusion 1.5's real component shapes, for counting its weights without a download.

The builders return modules in whatever device context the caller opens: ``torch.device("meta")``
to count parameters (no memory, no init cost; ``memory_sizes`` does), or ``real_shapes.meta_parameters``
and ``materialise`` for random weights. Sizes are SD1.5's published configs
(``stable-diffusion-v1-5/stable-diffusion-v1-5``: unet, text_encoder, vae), h94's
``models/image_encoder`` (OpenCLIP ViT-H/14, shared with the SDXL ViT-H adapters: ``real_shapes.VIT_H``)
and h94's ``ip-adapter_sd15`` / ``ip-adapter-plus_sd15`` files; ``tests/test_real_shapes.py`` checks
them against the published parameter counts.
"""

from __future__ import annotations

import torch

from .plus_adapter import resampler_state

SD15_CROSS_ATTENTION_DIM = 768
"""CLIP ViT-L/14's text width: SD1.5's UNet attends to its last hidden states."""
SD15_SAMPLE_SIZE = 64
"""Latent side of SD1.5's native 512² (x8)."""
SD15_VAE_SCALING = 0.18215
SD15_ADAPTER_TOKENS = 4
"""ip-adapter_sd15 projects the image embedding to 4 tokens of 768."""
SD15_RESAMPLER_WIDTH = 768
"""ip-adapter-plus_sd15's Resampler: 12 heads of 64, 16 queries, depth 4, out 768."""


def build_sd15_unet() -> torch.nn.Module:
    """SD1.5's UNet: 4 levels (attention at 1/8, 1/16, 1/32 and the 1/64 mid block), 8 heads, conv
    proj_in/proj_out (``use_linear_projection=False``), no added conditioning."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SD15_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=8,
        cross_attention_dim=SD15_CROSS_ATTENTION_DIM,
        norm_num_groups=32,
        use_linear_projection=False,
    )


def sd15_text_config() -> object:
    """CLIP ViT-L/14's text tower (``openai/clip-vit-large-patch14``), as SD1.5's text_encoder holds it."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        projection_dim=768,
        hidden_act="quick_gelu",
    )


def build_sd15_text_encoder() -> torch.nn.Module:
    """SD1.5's one text encoder: a ``CLIPTextModel`` (no projection: SD1.5 has no pooled embedding)."""
    from transformers import CLIPTextModel

    return CLIPTextModel(sd15_text_config())


def build_sd15_vae() -> torch.nn.Module:
    """SD1.5's VAE: the same architecture as SDXL's (128-512 wide, 2 layers a block), scaled 0.18215."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=SD15_SAMPLE_SIZE * 8,
        scaling_factor=SD15_VAE_SCALING,
    )


def cross_attention_widths(unet: torch.nn.Module) -> list[int]:
    """The query width of every cross-attention layer (``attn2``): an IP-Adapter's to_k_ip/to_v_ip
    map the image tokens to it (16 layers on SD1.5, 70 on SDXL)."""
    return [m.to_k.out_features for name, m in unet.named_modules() if name.endswith("attn2")]


def ip_adapter_counts(unet: torch.nn.Module, image_embedding: int, image_hidden: int) -> dict[str, int]:
    """Parameters of the plain and the plus IP-Adapter for ``unet``.

    plain (ip-adapter_sd15): ``image_embedding`` -> 4 tokens of the cross dim, a LayerNorm, and a key
    and a value projection of the image tokens per cross-attention layer. plus (ip-adapter-plus_sd15):
    the same projections behind a Resampler reading ``image_hidden``-d patch features, counted from
    ``plus_adapter.resampler_state``'s own shapes."""
    cross = unet.config.cross_attention_dim  # type: ignore[attr-defined]
    layers = sum(2 * cross * width for width in cross_attention_widths(unet))
    projection = image_embedding * SD15_ADAPTER_TOKENS * cross + SD15_ADAPTER_TOKENS * cross + 2 * cross
    shapes = resampler_state(
        lambda size, _std: torch.empty(size, device="meta"), image_hidden, cross, width=SD15_RESAMPLER_WIDTH
    )
    return {"plain": layers + projection, "plus": layers + sum(t.numel() for t in shapes.values())}
