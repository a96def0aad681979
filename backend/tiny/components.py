"""SDXL-shaped models with random weights, built offline: a tiny one for tests, the full size for benchmarks.

Same block topology as SDXL (three UNet levels, cross-attention in
``down_blocks.1/2`` and ``up_blocks.0/1``, ``text_time`` added conditioning, a
VAE with scale factor 8, two CLIP text towers, a ViT image encoder whose
projection matches ``text_encoder_2``), so the real InstantStyle code paths run,
just at toy sizes. Its pictures are noise: it is a TEST/DEMO model only. The
same builders at SDXL's own sizes give the real compute and memory cost, for
GPU benchmarks (random weights cost the same as trained ones).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

TINY_LABEL = "tiny random-weight SDXL (TEST/DEMO model, not for real images)"
FULL_LABEL = "full-size SDXL architecture with random weights (BENCHMARK model, not for real images)"

VOCAB_SIZE = 256 * 2 + 2  # byte-level symbols, their word-final forms, <|startoftext|>, <|endoftext|>
BOS_ID, EOS_ID = VOCAB_SIZE - 2, VOCAB_SIZE - 1


@dataclass(frozen=True)
class ModelShape:
    """Every size that differs between the tiny test model and SDXL itself; the topology is shared."""

    unet_channels: tuple[int, int, int]
    unet_transformer_layers: tuple[int, int, int]
    unet_head_dim: tuple[int, int, int]
    norm_groups: int
    sample_size: int
    """Latent side of the default resolution (x8 for pixels)."""
    time_embed_dim: int
    vae_channels: tuple[int, int, int, int]
    vae_layers: int
    vae_force_upcast: bool
    text_hidden: int
    """text_encoder's width; must differ from text2_hidden, as in SDXL, or diffusers' single-file
    loader cannot tell the two towers apart."""
    text_layers: int
    text_heads: int
    text2_hidden: int
    text2_layers: int
    text2_heads: int
    projection_dim: int
    """text_encoder_2's projection == the image encoder's: content subtraction needs one space."""
    image_hidden: int
    image_layers: int
    image_heads: int
    image_intermediate: int
    image_patch: int
    text_mlp_ratio: int = 4
    vocab_size: int = VOCAB_SIZE

    @property
    def cross_attention_dim(self) -> int:
        return self.text_hidden + self.text2_hidden  # SDXL concatenates both towers' hidden states


TINY = ModelShape(
    unet_channels=(16, 32, 64),
    unet_transformer_layers=(1, 1, 2),
    unet_head_dim=(2, 4, 8),
    norm_groups=8,
    sample_size=8,
    time_embed_dim=8,
    vae_channels=(8, 16, 16, 16),
    vae_layers=1,
    vae_force_upcast=False,
    text_hidden=32,
    text_layers=2,
    text_heads=4,
    text2_hidden=48,
    text2_layers=2,
    text2_heads=4,
    projection_dim=32,
    image_hidden=32,
    image_layers=2,
    image_heads=4,
    image_intermediate=64,
    image_patch=32,
    text_mlp_ratio=2,
)
SDXL = ModelShape(
    unet_channels=(320, 640, 1280),
    unet_transformer_layers=(1, 2, 10),
    unet_head_dim=(5, 10, 20),
    norm_groups=32,
    sample_size=128,
    time_embed_dim=256,
    vae_channels=(128, 256, 512, 512),
    vae_layers=2,
    vae_force_upcast=True,
    text_hidden=768,
    text_layers=12,
    text_heads=12,
    text2_hidden=1280,
    text2_layers=32,
    text2_heads=20,
    projection_dim=1280,
    image_hidden=1664,
    image_layers=48,
    image_heads=16,
    image_intermediate=8192,
    image_patch=14,
    vocab_size=49408,
)
"""SDXL base 1.0 and the ViT-bigG image encoder of ip-adapter_sdxl, for benchmarks on a GPU."""


@dataclass
class TinyModels:
    """Every component of a generated model, in memory."""

    pipeline: object
    """A ``StableDiffusionXLPipeline`` without IP-Adapter."""
    image_encoder: torch.nn.Module
    ip_adapter_state: dict[str, dict[str, torch.Tensor]]
    controlnet: torch.nn.Module
    """A canny-style ControlNet for this UNet (random; its zero convolutions made non-zero)."""
    tile_controlnet: torch.nn.Module
    """A Tile ControlNet for this UNet: the same architecture, other random weights."""


def build_unet(shape: ModelShape = TINY) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=shape.sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=shape.unet_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=shape.unet_transformer_layers,
        attention_head_dim=shape.unet_head_dim,
        cross_attention_dim=shape.cross_attention_dim,
        norm_num_groups=shape.norm_groups,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=shape.time_embed_dim,
        projection_class_embeddings_input_dim=shape.time_embed_dim * 6 + shape.projection_dim,
    )


def build_vae(shape: ModelShape = TINY) -> torch.nn.Module:
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
        scaling_factor=0.13025,
        force_upcast=shape.vae_force_upcast,
    )


def _text_config(shape: ModelShape, second: bool) -> object:
    from transformers import CLIPTextConfig

    hidden = shape.text2_hidden if second else shape.text_hidden
    return CLIPTextConfig(
        vocab_size=shape.vocab_size,
        hidden_size=hidden,
        intermediate_size=shape.text_mlp_ratio * hidden,
        num_hidden_layers=shape.text2_layers if second else shape.text_layers,
        num_attention_heads=shape.text2_heads if second else shape.text_heads,
        max_position_embeddings=77,
        projection_dim=shape.projection_dim if second else hidden,
        hidden_act="gelu" if second else "quick_gelu",
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )


def build_text_encoders(shape: ModelShape = TINY) -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return CLIPTextModel(_text_config(shape, False)), CLIPTextModelWithProjection(_text_config(shape, True))


def build_image_encoder(shape: ModelShape = TINY) -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=shape.image_hidden,
        intermediate_size=shape.image_intermediate,
        num_hidden_layers=shape.image_layers,
        num_attention_heads=shape.image_heads,
        image_size=224,
        patch_size=shape.image_patch,
        projection_dim=shape.projection_dim,
        hidden_act="gelu",
    )
    return CLIPVisionModelWithProjection(config)


SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    # Read by the samplers built from this config (DDIM's defaults are True, not SDXL's):
    "clip_sample": False,
    "set_alpha_to_one": False,
    "sample_max_value": 1.0,
    "skip_prk_steps": True,
}
"""SDXL base 1.0's ``scheduler/scheduler_config.json`` (its keys that set numbers)."""


def tiny_scheduler() -> object:
    """SDXL base's own scheduler, with every key of its config: the other samplers are built from it."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE (GPT-2, CLIP) uses for bytes."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A byte-level CLIP BPE vocabulary with no merges: every byte is a token."""
    symbols = byte_symbols()
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab.update({f"{symbol}</w>": i + len(symbols) for i, symbol in enumerate(symbols)})
    vocab["<|startoftext|>"] = BOS_ID
    vocab["<|endoftext|>"] = EOS_ID
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n", encoding="utf-8")
    return vocab_file, merges_file


def tiny_tokenizer(scratch: Path) -> object:
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_tokenizer_files(scratch)
    return CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77)


def seeded_randn(size: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Normal noise from ``generator``, drawn on the generator's own device (a CPU generator cannot
    draw on CUDA) and then placed where models are being built (``torch.device(...)`` context)."""
    noise = torch.randn(*size, generator=generator, device=generator.device)
    return noise.to(torch.get_default_device())


class AdapterDims(Protocol):
    """What an IP-Adapter's shapes depend on: any family's shape (``ModelShape``, ``sd15.Sd15Shape``)."""

    @property
    def cross_attention_dim(self) -> int: ...

    @property
    def projection_dim(self) -> int: ...


def random_ip_adapter_state(
    unet: torch.nn.Module, generator: torch.Generator, shape: AdapterDims = TINY
) -> dict[str, dict[str, torch.Tensor]]:
    """An ip-adapter_sdxl-shaped (or ip-adapter_sd15-shaped) state dict, numbered the way diffusers
    reads it: the image projection maps ``shape.projection_dim`` to 4 tokens of its cross dim."""
    tokens = 4
    cross = shape.cross_attention_dim

    def randn(*size: int, std: float) -> torch.Tensor:
        return seeded_randn(size, generator) * std

    image_proj = {
        "proj.weight": randn(cross * tokens, shape.projection_dim, std=0.2),
        "proj.bias": randn(cross * tokens, std=0.02),
        "norm.weight": torch.ones(cross),
        "norm.bias": torch.zeros(cross),
    }
    ip_adapter: dict[str, torch.Tensor] = {}
    channels = unet.config.block_out_channels  # type: ignore[attr-defined]
    key_id = 1
    for name in unet.attn_processors:  # type: ignore[attr-defined]
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        ip_adapter[f"{key_id}.to_k_ip.weight"] = randn(hidden, cross, std=0.3)
        ip_adapter[f"{key_id}.to_v_ip.weight"] = randn(hidden, cross, std=0.3)
        key_id += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def build_models(scratch: Path, shape: ModelShape = TINY, seed: int = 0) -> TinyModels:
    """Build every component with weights drawn from ``seed``: same seed, same model."""
    from diffusers import StableDiffusionXLPipeline

    torch.manual_seed(seed)
    text_encoder, text_encoder_2 = build_text_encoders(shape)
    unet = build_unet(shape)
    with torch.device("cpu"):  # a scheduler's tables live on the CPU, whatever device the models use
        scheduler = tiny_scheduler()
    pipeline = StableDiffusionXLPipeline(
        vae=build_vae(shape),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tiny_tokenizer(scratch / "tokenizer"),
        tokenizer_2=tiny_tokenizer(scratch / "tokenizer_2"),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    image_encoder = build_image_encoder(shape)
    state = random_ip_adapter_state(unet, torch.Generator().manual_seed(seed + 1), shape)
    controlnet = build_controlnet(unet, torch.Generator().manual_seed(seed + 2))
    return TinyModels(
        pipeline=pipeline,
        image_encoder=image_encoder,
        ip_adapter_state=state,
        controlnet=controlnet,
        tile_controlnet=build_tile_controlnet(unet),
    )


TILE_CONTROLNET_SEED = 12
"""The tiny Tile ControlNets' own seed (the ViT-H pieces have 10 and 11)."""


def build_tile_controlnet(unet: torch.nn.Module, seed: int = TILE_CONTROLNET_SEED) -> torch.nn.Module:
    """A second ControlNet for ``unet`` (the tiny stand-in for a Tile ControlNet), drawn from its own
    seed with the global generator saved and restored around it: building it changes no other weight."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_controlnet(unet, torch.Generator().manual_seed(seed))


def build_controlnet(unet: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """diffusers' ``ControlNetModel.from_unet``. Its zero convolutions (the condition's embedding output
    and every residual output) start at zero, i.e. no effect at all; here they get small random
    weights so that tests can see the edges steer the picture."""
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet)
    with torch.no_grad():
        zero_convs = (
            *controlnet.controlnet_down_blocks,
            controlnet.controlnet_mid_block,
            controlnet.controlnet_cond_embedding.conv_out,
        )
        for block in zero_convs:
            block.weight.copy_(seeded_randn(block.weight.shape, generator) * 0.05)
    return controlnet
