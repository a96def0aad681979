"""A tiny SDXL-shaped model with random weights, built offline.

Same block topology as SDXL (three UNet levels, cross-attention in
``down_blocks.1/2`` and ``up_blocks.0/1``, ``text_time`` added conditioning, a
VAE with scale factor 8, two CLIP text towers, a ViT image encoder whose
projection matches ``text_encoder_2``), so the real InstantStyle code paths run,
just at toy sizes. Its pictures are noise: it is a TEST/DEMO model only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

TINY_LABEL = "tiny random-weight SDXL (TEST/DEMO model, not for real images)"

HIDDEN = 32  # text_encoder's width (CLIP ViT-L's 768 in SDXL)
HIDDEN_2 = 48  # text_encoder_2's width (OpenCLIP bigG's 1280); must differ from HIDDEN, as in SDXL,
# or diffusers' single-file loader cannot tell the two towers apart
PROJECTION_DIM = 32  # text_encoder_2 projection == image encoder projection
CROSS_ATTENTION_DIM = HIDDEN + HIDDEN_2  # SDXL concatenates both text towers' hidden states
TIME_EMBED_DIM = 8
IMAGE_SIZE = 224
VOCAB_SIZE = 256 * 2 + 2  # byte-level symbols, their word-final forms, <|startoftext|>, <|endoftext|>
BOS_ID, EOS_ID = VOCAB_SIZE - 2, VOCAB_SIZE - 1


@dataclass
class TinyModels:
    """Every component of the tiny model, in memory."""

    pipeline: object
    """A ``StableDiffusionXLPipeline`` without IP-Adapter."""
    image_encoder: torch.nn.Module
    ip_adapter_state: dict[str, dict[str, torch.Tensor]]


def tiny_unet() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(16, 32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 8),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=TIME_EMBED_DIM * 6 + PROJECTION_DIM,
    )


def tiny_vae() -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025,
        force_upcast=False,
    )


def _text_config(with_projection: bool) -> object:
    from transformers import CLIPTextConfig

    hidden = HIDDEN_2 if with_projection else HIDDEN
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=PROJECTION_DIM if with_projection else hidden,
        hidden_act="gelu",
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )


def tiny_text_encoders() -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return CLIPTextModel(_text_config(False)), CLIPTextModelWithProjection(_text_config(True))


def tiny_image_encoder() -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=32,
        projection_dim=PROJECTION_DIM,
        hidden_act="gelu",
    )
    return CLIPVisionModelWithProjection(config)


def tiny_scheduler() -> object:
    """SDXL base's own scheduler configuration."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )


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


def random_ip_adapter_state(
    unet: torch.nn.Module, generator: torch.Generator
) -> dict[str, dict[str, torch.Tensor]]:
    """An ip-adapter_sdxl-shaped state dict, numbered the way diffusers reads it."""
    tokens = 4

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    image_proj = {
        "proj.weight": randn(CROSS_ATTENTION_DIM * tokens, PROJECTION_DIM, std=0.2),
        "proj.bias": randn(CROSS_ATTENTION_DIM * tokens, std=0.02),
        "norm.weight": torch.ones(CROSS_ATTENTION_DIM),
        "norm.bias": torch.zeros(CROSS_ATTENTION_DIM),
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
        ip_adapter[f"{key_id}.to_k_ip.weight"] = randn(hidden, CROSS_ATTENTION_DIM, std=0.3)
        ip_adapter[f"{key_id}.to_v_ip.weight"] = randn(hidden, CROSS_ATTENTION_DIM, std=0.3)
        key_id += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def build_tiny_models(scratch: Path, seed: int = 0) -> TinyModels:
    """Build every component with weights drawn from ``seed``: same seed, same model."""
    from diffusers import StableDiffusionXLPipeline

    torch.manual_seed(seed)
    text_encoder, text_encoder_2 = tiny_text_encoders()
    unet = tiny_unet()
    pipeline = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tiny_tokenizer(scratch / "tokenizer"),
        tokenizer_2=tiny_tokenizer(scratch / "tokenizer_2"),
        unet=unet,
        scheduler=tiny_scheduler(),
        force_zeros_for_empty_prompt=True,
    )
    image_encoder = tiny_image_encoder()
    state = random_ip_adapter_state(unet, torch.Generator().manual_seed(seed + 1))
    return TinyModels(pipeline=pipeline, image_encoder=image_encoder, ip_adapter_state=state)
