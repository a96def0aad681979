"""SDXL's real component shapes with random weights, materialised in bf16 without a download.

The tiny model runs every code path, but only at toy sizes: key mappings that depend on SDXL's real
numbering (Kohya LoRA block names, 70 IP-Adapter layers, ViT-H's 1024-d embeddings), wrappers that
see real widths, and what a half-precision job does to each component's dtype stay untested there.
These builders give SDXL base 1.0, its ViT-bigG and ViT-H image encoders, their IP-Adapters, a canny
ControlNet, TAESD-XL and a Kohya-layout LoRA at their published sizes.

Each model is built on the meta device (no memory, no init cost), then every parameter is created
directly in the target dtype and filled from seeded normal noise (``NoisePool``): never an fp32 copy
of the whole model (SDXL with both encoders and a ControlNet is ~15 GB in bf16). Values keep
activations finite: weights with std min(0.02, 1/sqrt(fan_in)) (wide layers do not grow their inputs;
TAESD-XL uncapped), norms at 1, biases at 0. The pictures are noise: BENCHMARK/TEST models only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .components import (
    SDXL,
    TINY,
    ModelShape,
    build_image_encoder,
    build_text_encoders,
    build_unet,
    build_vae,
    tiny_scheduler,
    tiny_tokenizer,
)
from .loras import sgm_name
from .plus_adapter import SDXL_RESAMPLER_WIDTH, resampler_state

WEIGHT_STD = 0.02
VIT_BIGG = SDXL
"""ip-adapter_sdxl's image encoder (OpenCLIP ViT-bigG/14): 1664 wide, 48 layers, 1280-d embeddings."""
VIT_H = replace(
    SDXL, image_hidden=1280, image_layers=32, image_heads=16, image_intermediate=5120, projection_dim=1024
)
"""ip-adapter_sdxl_vit-h's image encoder (OpenCLIP ViT-H/14): 1024-d embeddings, another space than
SDXL's text_encoder_2 (only its image fields and ``projection_dim`` are read)."""
IMAGE_ENCODERS: dict[str, ModelShape] = {"vit-bigg": VIT_BIGG, "vit-h": VIT_H, "tiny": TINY}
"""``tiny``: the tiny test model's encoder, for smoke runs of the same code (``shape=TINY`` below)."""

LORA_UNET_MODULES = (
    "down_blocks.1.attentions.0.proj_in",
    "down_blocks.2.attentions.1.transformer_blocks.3.attn2.to_v",
    "mid_block.attentions.0.transformer_blocks.5.attn1.to_out.0",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q",
    "up_blocks.0.attentions.1.transformer_blocks.9.attn2.to_k",
    "up_blocks.0.attentions.1.transformer_blocks.4.ff.net.0.proj",
    "up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_out.0",
)
"""Real UNet modules the Kohya LoRA changes: the style block and the layout block among them, the
first and last transformer layers of a 10-layer block, a GEGLU projection and a linear proj_in."""
LORA_TEXT_MODULES = {
    "te1": ("text_encoder", "text_model.encoder.layers.0"),
    "te2": ("text_encoder_2", "text_model.encoder.layers.31"),
}
"""Kohya prefix -> (pipeline component, layer as LoRA files name it: transformers 4's layout), whose
attention and first MLP projections the LoRA changes (diffusers infers a text encoder LoRA's layout
from its ``out_proj`` keys: Kohya's trainer writes every projection)."""
LORA_TEXT_PROJECTIONS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "mlp.fc1",
)


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Build with parameters on the meta device but real buffers (CLIP's position ids must survive)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


class NoisePool:
    """Seeded normal noise for billions of weights at memory speed: ``normal_`` draws ~0.2 G values/s
    on two cores (~40 s for SDXL with its encoders), a copy of a window of one pool at a random offset
    ~2 G/s. A tensor longer than the pool repeats it, each row shifted (the pool's length is odd)."""

    SIZE = 4_194_301

    def __init__(self, seed: int, dtype: torch.dtype, device: str) -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)
        noise = torch.randn(2 * self.SIZE, generator=self.generator, device=device)
        self.values = noise.to(dtype)

    def fill(self, tensor: torch.Tensor, std: float) -> torch.Tensor:
        flat, size = tensor.view(-1), self.SIZE
        offset = int(torch.randint(size, (1,), generator=self.generator, device=self.generator.device))
        window = self.values[offset : offset + size]
        whole = flat.numel() // size
        if whole:
            flat[: whole * size].view(whole, size).copy_(window.expand(whole, size))
        flat[whole * size :].copy_(window[: flat.numel() - whole * size])
        return tensor.mul_(std)


def materialise(
    module: torch.nn.Module,
    seed: int,
    dtype: torch.dtype = torch.bfloat16,
    device: str = "cpu",
    std_cap: float | None = WEIGHT_STD,
) -> torch.nn.Module:
    """Replace every (meta) parameter by a seeded one made directly in ``dtype`` on ``device``: weights
    with std 1/sqrt(fan_in), at most ``std_cap``."""
    pool = NoisePool(seed, dtype, device)
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    with torch.no_grad():
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is None:
                    continue
                value = torch.empty(param.shape, dtype=dtype, device=device)
                if isinstance(sub, norms):
                    value.fill_(1.0 if name == "weight" else 0.0)
                elif name.endswith("bias"):
                    value.zero_()
                else:
                    fan_in = param[0].numel() if param.ndim > 1 else 1
                    pool.fill(value, min(std_cap or 1.0, fan_in**-0.5))
                sub._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
            for name, buffer in list(sub._buffers.items()):
                if buffer is not None:
                    cast = dtype if buffer.is_floating_point() else buffer.dtype
                    sub._buffers[name] = buffer.to(device=device, dtype=cast)
    return module.eval()


@dataclass(frozen=True)
class Materialiser:
    """Where and in which dtype the builders below put their weights."""

    dtype: torch.dtype = torch.bfloat16
    device: str = "cpu"

    def __call__(
        self, module: torch.nn.Module, seed: int, std_cap: float | None = WEIGHT_STD
    ) -> torch.nn.Module:
        return materialise(module, seed, self.dtype, self.device, std_cap)


def build_sdxl_pipeline(
    scratch: Path, make: Materialiser = Materialiser(), seed: int = 0, shape: ModelShape = SDXL
) -> object:
    """Plain SDXL base 1.0 (UNet, VAE, both text encoders; byte-level tokenizers), no IP-Adapter."""
    from diffusers import StableDiffusionXLPipeline

    with meta_parameters():
        unet, vae = build_unet(shape), build_vae(shape)
        text_encoder, text_encoder_2 = build_text_encoders(shape)
    with torch.device("cpu"):  # a scheduler's tables live on the CPU
        scheduler = tiny_scheduler()
    return StableDiffusionXLPipeline(
        vae=make(vae, seed + 1),
        text_encoder=make(text_encoder, seed + 2),
        text_encoder_2=make(text_encoder_2, seed + 3),
        tokenizer=tiny_tokenizer(scratch / "tokenizer"),
        tokenizer_2=tiny_tokenizer(scratch / "tokenizer_2"),
        unet=make(unet, seed),
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def build_real_image_encoder(
    which: str, make: Materialiser = Materialiser(), seed: int = 10
) -> torch.nn.Module:
    """``vit-bigg`` (ip-adapter_sdxl) or ``vit-h`` (ip-adapter_sdxl_vit-h), 224 px, patch 14."""
    with meta_parameters():
        encoder = build_image_encoder(IMAGE_ENCODERS[which])
    return make(encoder, seed)


def vit_h_text_config() -> object:
    """OpenCLIP ViT-H-14's text tower as ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` holds it: 24 layers,
    1024 wide, 16 heads, projected to the image tower's 1024-d space (content subtraction, ViT-H)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        max_position_embeddings=77,
        projection_dim=1024,
        hidden_act="gelu",
    )


def build_vit_h_text_tower(make: Materialiser = Materialiser(), seed: int = 60) -> torch.nn.Module:
    """That tower with random weights (``vit_h_text_config``)."""
    from transformers import CLIPTextModelWithProjection

    with meta_parameters():
        tower = CLIPTextModelWithProjection(vit_h_text_config())
    return make(tower, seed)


def ip_adapter_state(
    unet: torch.nn.Module, projection_dim: int, make: Materialiser = Materialiser(), seed: int = 20
) -> dict[str, dict[str, torch.Tensor]]:
    """A plain ip-adapter_sdxl(-vit-h) state dict: 4 image tokens, one to_k_ip/to_v_ip pair per
    cross-attention layer, numbered 1, 3, 5... as the published files (70 layers at SDXL's size)."""
    pool = NoisePool(seed, make.dtype, make.device)
    cross, tokens = unet.config.cross_attention_dim, 4  # type: ignore[attr-defined]

    def randn(*size: int) -> torch.Tensor:
        value = torch.empty(size, dtype=make.dtype, device=make.device)
        return pool.fill(value, min(WEIGHT_STD, size[-1] ** -0.5))

    def full(size: int, fill: float) -> torch.Tensor:
        return torch.full((size,), fill, dtype=make.dtype, device=make.device)

    image_proj = {
        "proj.weight": randn(cross * tokens, projection_dim),
        "proj.bias": full(cross * tokens, 0.0),
        "norm.weight": full(cross, 1.0),
        "norm.bias": full(cross, 0.0),
    }
    widths = unet.config.block_out_channels  # type: ignore[attr-defined]
    layers: dict[str, torch.Tensor] = {}
    names = [name for name in unet.attn_processors if name.endswith("attn2.processor")]  # type: ignore[attr-defined]
    for index, name in enumerate(names):
        block = int(name.split(".")[1]) if not name.startswith("mid_block") else len(widths) - 1
        hidden = widths[::-1][block] if name.startswith("up_blocks") else widths[block]
        layers[f"{2 * index + 1}.to_k_ip.weight"] = randn(hidden, cross)
        layers[f"{2 * index + 1}.to_v_ip.weight"] = randn(hidden, cross)
    return {"image_proj": image_proj, "ip_adapter": layers}


def attach_ip_adapter(
    pipeline: object, which: str, make: Materialiser = Materialiser(), seed: int = 10
) -> None:
    """Register a real-shape image encoder and load its IP-Adapter, as the backend's loader ends up."""
    encoder = build_real_image_encoder(which, make, seed)
    state = ip_adapter_state(pipeline.unet, encoder.config.projection_dim, make, seed + 10)  # type: ignore[attr-defined]
    pipeline.register_modules(image_encoder=encoder)  # type: ignore[attr-defined]
    pipeline.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)  # type: ignore[attr-defined]


def attach_plus_adapter(pipeline: object, make: Materialiser = Materialiser(), seed: int = 70) -> None:
    """ip-adapter-plus_sdxl_vit-h's shape with ViT-H: a Resampler (4 layers, 1280 wide, 20 heads of 64,
    16 queries) from ViT-H's 1280-d patch features to SDXL's 2048-d cross-attention, to_k_ip/to_v_ip in
    every cross-attention layer: ~424 M parameters (the Resampler 83 M of them)."""
    encoder = build_real_image_encoder("vit-h", make, seed)
    pool = NoisePool(seed + 1, make.dtype, make.device)

    def noise(size: tuple[int, ...], std: float) -> torch.Tensor:
        return pool.fill(torch.empty(size, dtype=make.dtype, device=make.device), std)

    unet = pipeline.unet  # type: ignore[attr-defined]
    cross = unet.config.cross_attention_dim
    state = {
        "image_proj": resampler_state(noise, encoder.config.hidden_size, cross, width=SDXL_RESAMPLER_WIDTH),
        "ip_adapter": ip_adapter_state(unet, encoder.config.projection_dim, make, seed + 2)["ip_adapter"],
    }
    pipeline.register_modules(image_encoder=encoder)  # type: ignore[attr-defined]
    pipeline.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)  # type: ignore[attr-defined]


def build_real_controlnet(
    unet: torch.nn.Module, make: Materialiser = Materialiser(), seed: int = 30
) -> torch.nn.Module:
    """diffusers/controlnet-canny-sdxl-1.0's shape: ``from_unet`` of a plain SDXL UNet (build it before
    ``attach_ip_adapter``: a UNet holding an IP-Adapter has a config a ControlNet refuses), random
    zero convolutions."""
    from diffusers import ControlNetModel

    with meta_parameters():
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    return make(controlnet, seed)


def build_taesdxl(make: Materialiser = Materialiser(), seed: int = 40) -> torch.nn.Module:
    """madebyollin/taesdxl's config: 64 channels, (1, 3, 3, 3) encoder and (3, 3, 3, 1) decoder blocks.
    Weights at std 1/sqrt(fan_in), uncapped: through its ~30 narrow ReLU convolutions without norms a
    0.02 cap fades every preview to one flat colour."""
    from diffusers import AutoencoderTiny

    with meta_parameters():
        vae = AutoencoderTiny(
            encoder_block_out_channels=(64, 64, 64, 64),
            decoder_block_out_channels=(64, 64, 64, 64),
            num_encoder_blocks=(1, 3, 3, 3),
            num_decoder_blocks=(3, 3, 3, 1),
            latent_channels=4,
            latent_magnitude=3,
            latent_shift=0.5,
            scaling_factor=1.0,
        )
    return make(vae, seed, std_cap=None)


def _linear(root: torch.nn.Module, path: str) -> torch.nn.Linear:
    """A module by its LoRA-file name; transformers 5's CLIPTextModel dropped the ``text_model.`` level."""
    names = dict(root.named_modules())
    module = names.get(path) or names.get(path.removeprefix("text_model."))
    if not isinstance(module, torch.nn.Linear):
        raise ValueError(f"{path} is not a linear layer of {type(root).__name__}")
    return module


def write_kohya_lora(path: Path, pipeline: object, rank: int = 4, seed: int = 50) -> dict[str, set[str]]:
    """A Kohya-layout SDXL LoRA (``lora_unet_<SGM block names>``, ``lora_te1_``, ``lora_te2_``; fp16,
    alpha = rank / 2) for ``LORA_UNET_MODULES`` and ``LORA_TEXT_MODULES``. Returns the modules it
    must wrap per pipeline component (module names as the loaded model has them)."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    unet = pipeline.unet  # type: ignore[attr-defined]
    targets = [
        ("unet", f"lora_unet_{sgm_name(m, unet.config.layers_per_block)}", unet, m) for m in LORA_UNET_MODULES
    ]
    for prefix, (component, layer) in LORA_TEXT_MODULES.items():
        for projection in LORA_TEXT_PROJECTIONS:
            module = f"{layer}.{projection}"
            targets.append((component, f"lora_{prefix}_{module}", getattr(pipeline, component), module))
    tensors: dict[str, torch.Tensor] = {}
    expected: dict[str, set[str]] = {}
    for component, key, root, module in targets:
        layer = _linear(root, module)
        down = torch.randn(rank, layer.in_features, generator=generator) * layer.in_features**-0.5
        up = torch.randn(layer.out_features, rank, generator=generator) * 0.5
        key = key.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = down.half().contiguous()
        tensors[f"{key}.lora_up.weight"] = up.half().contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(rank / 2, dtype=torch.float16)
        name = next(n for n, m in root.named_modules() if m is layer)
        expected.setdefault(component, set()).add(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return expected
