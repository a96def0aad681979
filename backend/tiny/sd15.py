"""SD1.5-shaped models with random weights, built offline: a tiny one for tests (issue 23).

SD1.5's real topology (four UNet levels with cross-attention at the first three and in the middle,
conv ``proj_in``, no added conditioning, one CLIP text tower whose hidden states are the cross
attention's context, a VAE scaled by 0.18215, PNDM as its own scheduler) at toy widths, so the SD1.5
code paths run on a CPU in seconds. Its IP-Adapters read the ViT-H-like image encoder of
``vit_h.py``, as ``h94/IP-Adapter``'s ``models/ip-adapter_sd15`` and ``ip-adapter-plus_sd15`` read
ViT-H. Its pictures are noise: a TEST model only. ``SD15`` holds the real sizes (for counting
parameters and memory on the meta device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .components import (
    BOS_ID,
    EOS_ID,
    TINY,
    VOCAB_SIZE,
    build_controlnet,
    build_tile_controlnet,
    random_ip_adapter_state,
)
from .plus_adapter import random_plus_adapter_state
from .vit_h import VIT_H_PROJECTION

TINY_SD15_LABEL = "tiny random SD1.5 TEST model"


@dataclass(frozen=True)
class Sd15Shape:
    """Every size that differs between the tiny SD1.5 and the real one; the topology is shared."""

    unet_channels: tuple[int, int, int, int]
    unet_heads: int
    """diffusers' ``attention_head_dim`` (which, for this UNet, is the head *count*: SD1.5 has 8)."""
    norm_groups: int
    sample_size: int
    """Latent side of the native resolution (x8 for pixels: 64 -> 512 for SD1.5)."""
    vae_channels: tuple[int, int, int, int]
    vae_layers: int
    vae_force_upcast: bool
    text_hidden: int
    """CLIP-L's width, which is also the UNet's cross-attention dim (SD1.5: 768)."""
    text_layers: int
    text_heads: int
    text_intermediate: int
    projection_dim: int
    """The ViT-H image encoder's projection, what ip-adapter_sd15's image projection reads."""
    image_hidden: int
    """The ViT-H image encoder's width, what ip-adapter-plus_sd15's Resampler reads."""
    resampler_width: int
    vocab_size: int = VOCAB_SIZE

    @property
    def cross_attention_dim(self) -> int:
        return self.text_hidden  # SD1.5's context is its one text tower's last hidden states


TINY_SD15 = Sd15Shape(
    unet_channels=(16, 32, 64, 64),
    unet_heads=2,
    norm_groups=8,
    sample_size=8,
    vae_channels=(8, 16, 16, 16),
    vae_layers=1,
    vae_force_upcast=True,
    text_hidden=32,
    text_layers=2,
    text_heads=4,
    text_intermediate=64,
    projection_dim=VIT_H_PROJECTION,
    image_hidden=TINY.image_hidden,
    resampler_width=64,
)
"""``vae_force_upcast``: SD1.5's own ``vae/config.json`` predates the key, so diffusers reads its
default, True (the tiny SDXL has False)."""
SD15 = Sd15Shape(
    unet_channels=(320, 640, 1280, 1280),
    unet_heads=8,
    norm_groups=32,
    sample_size=64,
    vae_channels=(128, 256, 512, 512),
    vae_layers=2,
    vae_force_upcast=True,
    text_hidden=768,
    text_layers=12,
    text_heads=12,
    text_intermediate=3072,
    projection_dim=1024,
    image_hidden=1280,
    resampler_width=768,
    vocab_size=49408,
)
"""``stable-diffusion-v1-5``, with ``h94/IP-Adapter``'s ViT-H encoder sizes (for the adapters)."""

SD15_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
"""``stable-diffusion-v1-5``'s ``scheduler/scheduler_config.json`` (a ``PNDMScheduler``), with the two
keys it leaves at PNDM's defaults written out: the other samplers are built from this config."""


@dataclass
class TinySd15Models:
    """Every component of a generated SD1.5 model but the image encoder (``vit_h.py`` writes it)."""

    pipeline: object
    """A ``StableDiffusionPipeline`` without safety checker or IP-Adapter."""
    ip_adapter_state: dict[str, dict[str, torch.Tensor]]
    plus_adapter_state: dict[str, dict[str, torch.Tensor]]
    controlnet: torch.nn.Module
    tile_controlnet: torch.nn.Module


def build_sd15_unet(shape: Sd15Shape = TINY_SD15) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=shape.sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=shape.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=shape.unet_heads,
        cross_attention_dim=shape.cross_attention_dim,
        norm_num_groups=shape.norm_groups,
        use_linear_projection=False,
    )


def build_sd15_vae(shape: Sd15Shape = TINY_SD15) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=shape.vae_channels,
        layers_per_block=shape.vae_layers,
        latent_channels=4,
        norm_num_groups=shape.norm_groups,
        sample_size=shape.sample_size * 8,
        scaling_factor=0.18215,
        force_upcast=shape.vae_force_upcast,
    )


def build_sd15_text_encoder(shape: Sd15Shape = TINY_SD15) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.text_hidden,
        intermediate_size=shape.text_intermediate,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        max_position_embeddings=77,
        projection_dim=shape.text_hidden,
        hidden_act="quick_gelu",
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    return CLIPTextModel(config)


def sd15_scheduler() -> object:
    """SD1.5's own PNDM scheduler (its tables on the CPU, whatever device the models use)."""
    from diffusers import PNDMScheduler

    with torch.device("cpu"):
        return PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)


def build_sd15_pipeline(scratch: Path, shape: Sd15Shape = TINY_SD15) -> object:
    """A ``StableDiffusionPipeline`` of ``shape`` (the caller seeds torch's generator)."""
    from diffusers import StableDiffusionPipeline

    from .components import tiny_tokenizer

    text_encoder = build_sd15_text_encoder(shape)
    unet = build_sd15_unet(shape)
    return StableDiffusionPipeline(
        vae=build_sd15_vae(shape),
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(scratch / "tokenizer"),
        unet=unet,
        scheduler=sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sd15_models(scratch: Path, shape: Sd15Shape = TINY_SD15, seed: int = 0) -> TinySd15Models:
    """Every component with weights drawn from ``seed``: same seed, same model."""
    torch.manual_seed(seed)
    pipeline = build_sd15_pipeline(scratch, shape)
    unet = pipeline.unet  # type: ignore[attr-defined]
    plain = random_ip_adapter_state(unet, torch.Generator().manual_seed(seed + 1), shape)
    controlnet = build_controlnet(unet, torch.Generator().manual_seed(seed + 2))
    plus = random_plus_adapter_state(
        unet, torch.Generator().manual_seed(seed + 3), shape, width=shape.resampler_width
    )
    return TinySd15Models(
        pipeline=pipeline,
        ip_adapter_state=plain,
        plus_adapter_state=plus,
        controlnet=controlnet,
        tile_controlnet=build_tile_controlnet(unet),
    )
