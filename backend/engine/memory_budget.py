"""Each memory tier's peak GPU memory, computed from where ``memory.place`` and the hooks put each model.

The weights' sizes come from SDXL's real component shapes, built on the meta device (no memory, no
download): the same builders the tests check against SDXL's published parameter counts. For each tier
a job is a sequence of phases (encode the style, denoise, decode, score); in each phase the GPU holds
what the tier keeps resident plus what that phase brings (a visiting model, its working memory). The
peak is the largest phase, and a tier is chosen when the free memory holds its peak and a headroom.

Working memory is not weights: the figures below are estimates for a 1024² job (the decode's 3.8 GiB
was measured on a GPU; the others were not), scaled with the pixels a phase works on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .decode import TILE_SIDE
from .image_encoders import ImageEncoderKind
from .memory import GIB, MemoryTier

DECODE_FP32_GIB_1024 = 3.8
"""Working memory of one 1024² SDXL VAE decode in fp32 (measured); half of it in fp16 or bf16."""
UNET_WORKING_GIB_1024 = 1.5
"""The UNet's activations for a 1024² step with classifier-free guidance in fp16 or bf16 (estimate;
the working figures below are for half precision too, and double in fp32)."""
CONTROLNET_WORKING_GIB_1024 = 0.6
"""A ControlNet's activations beside the UNet's: its half of the UNet, at 1024² (estimate)."""
PREVIEW_WORKING_GIB_1024 = 0.6
"""A 1024² preview by the tiny autoencoder: a few 64-channel full-size activations (estimate)."""
ENCODER_WORKING_GIB = 0.1
"""A CLIP encoder's activations at 224² or 77 tokens (estimate)."""
HEADROOM_GIB = 0.5
"""Free memory a tier leaves unplanned: the allocator's fragmentation, cuBLAS/cuDNN workspaces."""


@dataclass(frozen=True)
class WeightSizes:
    """GiB of each model's weights in the serving dtype."""

    unet: float
    ip_adapter: float
    text_encoder: float
    text_encoder_2: float
    image_encoder: float
    vae: float
    controlnet: float
    preview_vae: float
    largest_layer: float
    """The largest single layer (text_encoder_2's token embedding): what group offload streams at once."""
    content_tower: float = 0.0
    """A ViT-H adapter's CLIP text tower (content subtraction): it rests where the text encoders rest."""

    @property
    def text_encoders(self) -> float:
        return self.text_encoder + self.text_encoder_2


@functools.cache
def sdxl_parameter_counts() -> dict[str, int]:
    """Parameters of each SDXL component, counted on the meta device (~3 s on two cores, once)."""
    from diffusers import AutoencoderTiny, ControlNetModel

    from backend.tiny.components import (
        SDXL,
        build_image_encoder,
        build_text_encoders,
        build_unet,
        build_vae,
    )

    with torch.device("meta"):
        unet = build_unet(SDXL)
        text_encoder, text_encoder_2 = build_text_encoders(SDXL)
        models = {
            "unet": unet,
            "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2,
            "image_encoder": build_image_encoder(SDXL),
            "vae": build_vae(SDXL),
            "controlnet": ControlNetModel.from_unet(unet, load_weights_from_unet=False),
            "preview_vae": AutoencoderTiny(),  # TAESD-XL's shape: diffusers' defaults
        }
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    # ip-adapter_sdxl: a key and a value projection of the 4 image tokens in every cross-attention
    # layer, and the image projection (1280 -> 4 x 2048, with its LayerNorm).
    cross = SDXL.cross_attention_dim
    layers = [m for name, m in unet.named_modules() if name.endswith("attn2")]
    counts["ip_adapter"] = sum(2 * cross * layer.to_k.out_features for layer in layers) + (
        SDXL.projection_dim * 4 * cross + 4 * cross + 2 * cross
    )
    counts["largest_layer"] = max(
        p.numel() for model in models.values() for p in model.parameters() if p.ndim >= 1
    )
    return counts


@functools.cache
def vit_h_parameter_counts() -> dict[str, int]:
    """What the ViT-H adapters change: their image encoder, the larger of their adapters (the plus one's
    Resampler besides the image-token projections), and ViT-H's text tower, counted on the meta device."""
    from transformers import CLIPTextModelWithProjection

    from backend.tiny.components import SDXL, build_image_encoder
    from backend.tiny.plus_adapter import SDXL_RESAMPLER_WIDTH, resampler_state
    from backend.tiny.real_shapes import VIT_H, vit_h_text_config

    with torch.device("meta"):
        encoder = build_image_encoder(VIT_H)
        tower = CLIPTextModelWithProjection(vit_h_text_config())
    cross = SDXL.cross_attention_dim
    layers = sdxl_parameter_counts()["ip_adapter"] - (SDXL.projection_dim * 4 * cross + 4 * cross + 2 * cross)
    shapes = resampler_state(  # the plus adapter file's own tensors, as shapes only
        lambda size, _std: torch.empty(size, device="meta"),
        VIT_H.image_hidden,
        cross,
        width=SDXL_RESAMPLER_WIDTH,
    )
    resampler = sum(tensor.numel() for tensor in shapes.values())
    return {
        "image_encoder": sum(p.numel() for p in encoder.parameters()),
        "ip_adapter": layers + resampler,
        "content_tower": sum(p.numel() for p in tower.parameters()),
    }


def sdxl_sizes(dtype: torch.dtype, encoder: ImageEncoderKind = ImageEncoderKind.VIT_BIGG) -> WeightSizes:
    """SDXL's weights in ``dtype``, with the image encoder (and text tower) of ``encoder``'s adapters
    (unknown: the larger of each)."""
    size = torch.finfo(dtype).bits // 8
    counts = dict(sdxl_parameter_counts())
    vit_h = vit_h_parameter_counts()
    if encoder is ImageEncoderKind.VIT_H:
        counts.update(vit_h)
    elif encoder is ImageEncoderKind.UNKNOWN:  # the worst of both, part by part
        counts.update({name: max(count, counts.get(name, 0)) for name, count in vit_h.items()})
    return WeightSizes(**{name: count * size / GIB for name, count in counts.items()})


@dataclass(frozen=True)
class Phase:
    """What the GPU holds while one part of a job runs."""

    name: str
    weights: float
    working: float

    @property
    def gib(self) -> float:
        return self.weights + self.working


@dataclass(frozen=True)
class JobShape:
    """What a budget is computed for: one image of ``side``² pixels by default."""

    side: int = 1024
    controlnet: bool = False
    preview_vae: bool = True
    dtype: torch.dtype = torch.float16
    upcast_vae: bool = True
    """SDXL's VAE decodes in fp32 when the model is fp16 (its config's ``force_upcast``)."""

    @property
    def scale(self) -> float:
        """Working memory relative to a half-precision 1024² job: pixels, and bytes per value."""
        return (self.side / 1024) ** 2 * torch.finfo(self.dtype).bits / 16

    @property
    def pixels(self) -> float:
        """Pixels relative to a 1024² job."""
        return (self.side / 1024) ** 2


def decode_phase(sizes: WeightSizes, job: JobShape, tiled: bool) -> tuple[float, float]:
    """(extra weights, working memory) of the decode: the fp32 upcast doubles the VAE's weights; a
    decode in fp32 (upcast, or an fp32 model) needs the measured fp32 working set, half of it else."""
    upcast = job.upcast_vae and job.dtype == torch.float16
    in_fp32 = upcast or job.dtype == torch.float32
    per_image = DECODE_FP32_GIB_1024 * (1.0 if in_fp32 else 0.5)
    area = (min(job.side, TILE_SIDE) / 1024) ** 2 if tiled else job.pixels
    return (sizes.vae if upcast else 0.0), per_image * area


AT_REST_ON_GPU: dict[MemoryTier, frozenset[str]] = {
    MemoryTier.FULL: frozenset(
        {"unet", "text_encoder", "text_encoder_2", "image_encoder", "vae", "controlnet"}
    ),
    MemoryTier.ENCODERS_OFF: frozenset({"unet", "text_encoder", "text_encoder_2", "vae"}),
    MemoryTier.MODEL_OFFLOAD: frozenset(),
    MemoryTier.GROUP_OFFLOAD: frozenset({"vae"}),
}
"""The models ``memory.place`` leaves on the GPU between jobs (checked against it by a test; the
engine keeps the preview autoencoder, ~5 MB, there in every tier)."""


def at_rest(tier: MemoryTier, job: JobShape, sizes: WeightSizes) -> float:
    """GiB of weights on the GPU between jobs in ``tier`` (the UNet with its IP-Adapter layers; a
    content text tower, once loaded, where the text encoders rest)."""
    names = AT_REST_ON_GPU[tier] - (set() if job.controlnet else {"controlnet"})
    weights = sum(getattr(sizes, name) for name in names)
    return (
        weights
        + (sizes.ip_adapter if "unet" in names else 0.0)
        + (sizes.content_tower if "text_encoder_2" in names else 0.0)
        + (sizes.preview_vae if job.preview_vae else 0.0)
    )


def phases(tier: MemoryTier, job: JobShape, sizes: WeightSizes | None = None) -> list[Phase]:
    """The GPU's contents during each part of a job in ``tier`` (``memory.place``'s placement)."""
    sizes = sizes or sdxl_sizes(job.dtype)
    denoise_working = UNET_WORKING_GIB_1024 * job.scale + (
        PREVIEW_WORKING_GIB_1024 * job.scale if job.preview_vae else 0.0
    )
    controlnet, controlnet_working = (
        (sizes.controlnet, CONTROLNET_WORKING_GIB_1024 * job.scale) if job.controlnet else (0.0, 0.0)
    )
    unet = sizes.unet + sizes.ip_adapter
    upcast, decoding = decode_phase(sizes, job, tiled=tier.tiles_vae)
    resident = at_rest(tier, job, sizes)
    if tier is MemoryTier.FULL:
        return [
            Phase("denoise", resident, denoise_working + controlnet_working),
            Phase("decode", resident + upcast, decoding),
        ]
    if tier is MemoryTier.ENCODERS_OFF:  # the image encoder and the ControlNet visit
        return [
            Phase("encode style / score", resident + sizes.image_encoder, ENCODER_WORKING_GIB),
            Phase("denoise", resident + controlnet, denoise_working + controlnet_working),
            Phase("decode", resident + upcast, decoding),
        ]
    if tier is MemoryTier.MODEL_OFFLOAD:  # one model of the chain at a time; the ControlNet visits
        return [
            Phase("encode prompt", resident + sizes.text_encoder_2, ENCODER_WORKING_GIB),
            Phase("encode content", resident + sizes.content_tower, ENCODER_WORKING_GIB),
            Phase("encode style / score", resident + sizes.image_encoder, ENCODER_WORKING_GIB),
            Phase("denoise", resident + unet + controlnet, denoise_working + controlnet_working),
            Phase("decode", resident + sizes.vae + upcast, decoding),
        ]
    # group offload: two layers in flight (one computing, the next arriving on its stream).
    streamed = resident + 2 * sizes.largest_layer
    return [
        Phase("encode content", streamed + sizes.content_tower, ENCODER_WORKING_GIB),  # it visits whole
        Phase("denoise", streamed, denoise_working + controlnet_working),
        Phase("decode", streamed + upcast, decoding),
    ]


def peak(tier: MemoryTier, job: JobShape, sizes: WeightSizes | None = None) -> Phase:
    """The phase of a job in ``tier`` that holds the most GPU memory."""
    return max(phases(tier, job, sizes), key=lambda phase: phase.gib)


def free_needed(tier: MemoryTier, job: JobShape, sizes: WeightSizes | None = None) -> float:
    """GiB of free GPU memory at start for ``tier`` to run ``job``: its peak and the headroom."""
    return peak(tier, job, sizes).gib + HEADROOM_GIB


def choose_tier(free_bytes: int, job: JobShape, sizes: WeightSizes | None = None) -> MemoryTier:
    """The fastest tier whose 1024² job fits ``free_bytes`` (group offload when none does)."""
    for tier in (MemoryTier.FULL, MemoryTier.ENCODERS_OFF, MemoryTier.MODEL_OFFLOAD):
        if free_bytes / GIB >= free_needed(tier, job, sizes):
            return tier
    return MemoryTier.GROUP_OFFLOAD


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (None elsewhere: CPU and MPS share the system's memory)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free


def pick_tier(
    device: torch.device,
    preference: str | None,
    controlnet: bool,
    preview_vae: bool = False,
    dtype: torch.dtype = torch.float16,
    encoder: ImageEncoderKind = ImageEncoderKind.VIT_BIGG,
) -> MemoryTier:
    """An explicit tier wins; ``auto`` measures CUDA's free memory (anything else runs in full)."""
    if preference and preference != "auto":
        try:
            return MemoryTier(preference)
        except ValueError:
            names = ", ".join(["auto", *(t.value for t in MemoryTier)])
            raise ValueError(f"unknown memory tier {preference!r}: expected one of {names}") from None
    free = free_memory(device)
    if free is None:
        return MemoryTier.FULL
    job = JobShape(controlnet=controlnet, preview_vae=preview_vae, dtype=dtype)
    return choose_tier(free, job, sdxl_sizes(dtype, encoder))
