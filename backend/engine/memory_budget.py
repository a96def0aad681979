"""Each memory tier's peak GPU memory, computed from where ``memory.place`` and the hooks put each model.

The weights' sizes come from each family's real component shapes, built on the meta device (no
memory, no download; ``memory_sizes``): the same builders the tests check against the published
parameter counts. For each tier a job is a sequence of phases (encode the style, denoise, decode,
score); in each phase the GPU holds what the tier keeps resident plus what that phase brings (a
visiting model, its working memory). The peak is the largest phase, and a tier is chosen when the free
memory holds its peak and a headroom.

Working memory is not weights: SDXL's figures below are estimates for a 1024² job (the decode's 3.8 GiB
was measured on a GPU; the others were not), scaled with the pixels a phase works on. SD1.5's UNet
has its own estimate at its native 512² (it attends at 1/8 of the pixels, SDXL does not: scaling
SDXL's figure down would miss that); its VAE and TAESD are SDXL's architectures, so theirs scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from protocol.enums import ModelFamily

from .decode import TILE_SIDE
from .image_encoders import ImageEncoderKind
from .memory import GIB, MemoryTier
from .memory_sizes import (
    NATIVE_SIDE,
    WeightSizes,
    as_family,
    family_sizes,
    sd15_sizes,
    sdxl_sizes,
)

__all__ = [
    "AT_REST_ON_GPU",
    "FAMILY_MODELS",
    "JobShape",
    "Phase",
    "WeightSizes",
    "as_family",
    "at_rest",
    "at_rest_names",
    "choose_tier",
    "controlnet_working",
    "default_encoder",
    "family_sizes",
    "free_needed",
    "peak",
    "phases",
    "pick_tier",
    "sd15_sizes",
    "sdxl_sizes",
    "unet_working",
]

DECODE_FP32_GIB_1024 = 3.8
"""Working memory of one 1024² SDXL VAE decode in fp32 (measured); half of it in fp16 or bf16. SD1.5's
VAE is the same architecture (other weights), so its decode scales with the pixels too."""
UNET_WORKING_GIB_1024 = 1.5
"""SDXL's UNet activations for a 1024² step with classifier-free guidance in fp16 or bf16 (estimate;
the working figures below are for half precision too, and double in fp32)."""
CONTROLNET_WORKING_GIB_1024 = 0.6
"""A ControlNet's activations beside the UNet's: its half of the UNet, at 1024² (estimate)."""
PREVIEW_WORKING_GIB_1024 = 0.6
"""A 1024² preview by the tiny autoencoder: a few 64-channel full-size activations (estimate; TAESD
and TAESD-XL are one architecture, so SD1.5's scales with the pixels)."""
ENCODER_WORKING_GIB = 0.1
"""A CLIP encoder's activations at 224² or 77 tokens (estimate)."""
HEADROOM_GIB = 0.5
"""Free memory a tier leaves unplanned: the allocator's fragmentation, cuBLAS/cuDNN workspaces."""

SD15_ATTENTION_GIB_512 = 1.0
"""SD1.5's 1/8-level self-attention at 512² with classifier-free guidance, half precision (estimate,
not measured). 64x64 latent pixels are 4096 tokens; with batch 2 and 8 heads one layer's score matrix
is 2 x 8 x 4096² x 2 bytes = 0.5 GiB, and PyTorch's math attention holds it and its softmax at once:
1.0 GiB. The flash and memory-efficient kernels (chosen on most CUDA cards) hold no score matrix, so
this is an upper bound there. It grows with the square of the pixels (the tokens, squared)."""
SD15_ACTIVATIONS_GIB_512 = 0.15
"""The rest of SD1.5's UNet working set at 512², batch 2, half precision (estimate, not measured): the
skip connections the up path reads (~6.6 M values a sample at 320-1280 channels: 27 MB), the 1/8
level's widest transient (GEGLU: 4096 tokens x 2560 x 2 samples: 42 MB) and the convolutions'
workspaces. It grows with the pixels."""
SD15_CONTROLNET_WORKING_GIB_512 = 0.1
"""A ControlNet's working set beside SD1.5's UNet at 512² (estimate, not measured): the 12 residuals
and the mid-block output it hands the UNet (the UNet's own skip sizes: ~27 MB at batch 2) and its
condition embedding's full-size activations (16-32 channels at 512²: ~30 MB). Its own attention runs
before the UNet's and is freed by then, so it is not counted twice."""


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
    """What a budget is computed for: one image of the family's native side² pixels by default."""

    side: int = 0
    """Pixels a side; 0: the family's native side (SDXL 1024, SD1.5 512)."""
    controlnet: int = 0
    """How many ControlNets are loaded (canny and tile: 2; True counts one). All of them rest where
    the tier keeps ControlNets; a job runs one, so one visits and one adds its working memory."""
    preview_vae: bool = True
    dtype: torch.dtype = torch.float16
    upcast_vae: bool | None = None
    """Whether an fp16 VAE decodes in fp32; None: the family's way. SDXL's does (its config's
    ``force_upcast``: it overflows in fp16); SD1.5's pipelines decode in the VAE's dtype (its config has
    no ``force_upcast`` key, whose diffusers default is True), and the engine follows them
    (``decode.upcast``'s ``family_upcasts``)."""
    family: ModelFamily = ModelFamily.SDXL
    """Which family's weights and working memory (its value, ``"sd15"``, is read as the member)."""
    csd: bool = False
    """Whether a CSD style metric is loaded: on the GPU in the full tier only (``style_metric.py``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "family", as_family(self.family))
        if self.upcast_vae is None:
            object.__setattr__(self, "upcast_vae", self.family is ModelFamily.SDXL)
        if not self.side:
            object.__setattr__(self, "side", NATIVE_SIDE[self.family])

    @property
    def bytes_factor(self) -> float:
        """Bytes per value relative to half precision (the working figures are for fp16 and bf16)."""
        return torch.finfo(self.dtype).bits / 16

    @property
    def scale(self) -> float:
        """Working memory relative to a half-precision 1024² job: pixels, and bytes per value."""
        return self.pixels * self.bytes_factor

    @property
    def pixels(self) -> float:
        """Pixels relative to a 1024² job."""
        return (self.side / 1024) ** 2


def unet_working(job: JobShape) -> float:
    """GiB of the UNet's activations in one guided step (without previews or a ControlNet)."""
    if job.family is ModelFamily.SD15:
        pixels = (job.side / 512) ** 2
        return (SD15_ATTENTION_GIB_512 * pixels**2 + SD15_ACTIVATIONS_GIB_512 * pixels) * job.bytes_factor
    return UNET_WORKING_GIB_1024 * job.scale


def controlnet_working(job: JobShape) -> float:
    """GiB a ControlNet's activations add to the UNet's (0 without one)."""
    if not job.controlnet:
        return 0.0
    if job.family is ModelFamily.SD15:
        return SD15_CONTROLNET_WORKING_GIB_512 * (job.side / 512) ** 2 * job.bytes_factor
    return CONTROLNET_WORKING_GIB_1024 * job.scale


def decode_phase(sizes: WeightSizes, job: JobShape, tiled: bool) -> tuple[float, float]:
    """(extra weights, working memory) of the decode: the fp32 upcast doubles the VAE's weights; a
    decode in fp32 (upcast, or an fp32 model) needs the measured fp32 working set, half of it else."""
    upcast = bool(job.upcast_vae) and job.dtype == torch.float16
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
FAMILY_MODELS: dict[ModelFamily, frozenset[str]] = {
    ModelFamily.SDXL: frozenset(
        {"unet", "text_encoder", "text_encoder_2", "image_encoder", "vae", "controlnet"}
    ),
    ModelFamily.SD15: frozenset({"unet", "text_encoder", "image_encoder", "vae", "controlnet"}),
}
"""Each family's models as ``memory.place`` sees them (the pipeline's components and a ControlNet)."""


CSD_GIB_FP16 = 0.568
"""CSD's ViT-L/14 with its style head in half precision: 304.75 M values (counted on the meta device)."""


def at_rest_names(tier: MemoryTier, family: ModelFamily | str = ModelFamily.SDXL) -> frozenset[str]:
    """The models of ``family`` that ``tier`` leaves on the GPU between jobs."""
    return AT_REST_ON_GPU[tier] & FAMILY_MODELS[as_family(family)]


def at_rest(tier: MemoryTier, job: JobShape, sizes: WeightSizes) -> float:
    """GiB of weights on the GPU between jobs in ``tier`` (the UNet with its IP-Adapter layers; a
    content text tower, once loaded, where the text encoders rest)."""
    names = at_rest_names(tier, job.family)
    weights = sum(getattr(sizes, name) for name in names - {"controlnet"})
    controlnets = sizes.controlnet * int(job.controlnet) if "controlnet" in names else 0.0
    return (
        weights
        + controlnets
        + (sizes.ip_adapter if "unet" in names else 0.0)
        + (sizes.content_tower if "text_encoder" in names else 0.0)
        + (sizes.preview_vae if job.preview_vae else 0.0)
        + (CSD_GIB_FP16 * job.bytes_factor if job.csd and tier is MemoryTier.FULL else 0.0)
    )


def phases(tier: MemoryTier, job: JobShape, sizes: WeightSizes | None = None) -> list[Phase]:
    """The GPU's contents during each part of a job in ``tier`` (``memory.place``'s placement)."""
    sizes = sizes or family_sizes(job.family, job.dtype, default_encoder(job.family))
    denoise_working = (
        unet_working(job)
        + (PREVIEW_WORKING_GIB_1024 * job.scale if job.preview_vae else 0.0)
        + controlnet_working(job)
    )
    controlnet = sizes.controlnet if job.controlnet else 0.0
    unet = sizes.unet + sizes.ip_adapter
    upcast, decoding = decode_phase(sizes, job, tiled=tier.tiles_vae)
    resident = at_rest(tier, job, sizes)
    if tier is MemoryTier.FULL:
        return [
            Phase("denoise", resident, denoise_working),
            Phase("decode", resident + upcast, decoding),
        ]
    if tier is MemoryTier.ENCODERS_OFF:  # the image encoder and the ControlNet visit
        return [
            Phase("encode style / score", resident + sizes.image_encoder, ENCODER_WORKING_GIB),
            Phase("denoise", resident + controlnet, denoise_working),
            Phase("decode", resident + upcast, decoding),
        ]
    if tier is MemoryTier.MODEL_OFFLOAD:  # one model of the chain at a time; the ControlNet visits
        prompt = max(sizes.text_encoder, sizes.text_encoder_2)  # the hooks swap SDXL's two towers
        return [
            Phase("encode prompt", resident + prompt, ENCODER_WORKING_GIB),
            Phase("encode content", resident + sizes.content_tower, ENCODER_WORKING_GIB),
            Phase("encode style / score", resident + sizes.image_encoder, ENCODER_WORKING_GIB),
            Phase("denoise", resident + unet + controlnet, denoise_working),
            Phase("decode", resident + sizes.vae + upcast, decoding),
        ]
    # group offload: two layers in flight (one computing, the next arriving on its stream).
    streamed = resident + 2 * sizes.largest_layer
    return [
        Phase("encode content", streamed + sizes.content_tower, ENCODER_WORKING_GIB),  # it visits whole
        Phase("denoise", streamed, denoise_working),
        Phase("decode", streamed + upcast, decoding),
    ]


def default_encoder(family: ModelFamily | str) -> ImageEncoderKind:
    """The image encoder of a family's default adapter: SDXL's ip-adapter_sdxl ViT-bigG, SD1.5's ViT-H."""
    return ImageEncoderKind.VIT_H if as_family(family) is ModelFamily.SD15 else ImageEncoderKind.VIT_BIGG


def peak(tier: MemoryTier, job: JobShape, sizes: WeightSizes | None = None) -> Phase:
    """The phase of a job in ``tier`` that holds the most GPU memory."""
    return max(phases(tier, job, sizes), key=lambda phase: phase.gib)


def free_needed(tier: MemoryTier, job: JobShape, sizes: WeightSizes | None = None) -> float:
    """GiB of free GPU memory at start for ``tier`` to run ``job``: its peak and the headroom."""
    return peak(tier, job, sizes).gib + HEADROOM_GIB


def choose_tier(free_bytes: int, job: JobShape, sizes: WeightSizes | None = None) -> MemoryTier:
    """The fastest tier whose native-side job fits ``free_bytes`` (group offload when none does)."""
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
    controlnet: int,
    preview_vae: bool = False,
    dtype: torch.dtype = torch.float16,
    encoder: ImageEncoderKind | None = None,
    family: ModelFamily | str = ModelFamily.SDXL,
    upcast_vae: bool | None = None,
    csd: bool = False,
) -> MemoryTier:
    """An explicit tier wins; ``auto`` measures CUDA's free memory (anything else runs in full) and
    picks for a native-side job of ``family`` (a ``ModelFamily`` or its value) with ``controlnet``
    ControlNets loaded (a bool: one or none), ``encoder``'s adapters (None: the family's default
    adapter's encoder) and its VAE upcast (None: the family's way)."""
    if preference and preference != "auto":
        try:
            return MemoryTier(preference)
        except ValueError:
            names = ", ".join(["auto", *(t.value for t in MemoryTier)])
            raise ValueError(f"unknown memory tier {preference!r}: expected one of {names}") from None
    free = free_memory(device)
    if free is None:
        return MemoryTier.FULL
    job = JobShape(
        controlnet=controlnet,
        preview_vae=preview_vae,
        dtype=dtype,
        upcast_vae=upcast_vae,
        family=family,
        csd=csd,
    )
    kind = encoder or default_encoder(job.family)
    return choose_tier(free, job, family_sizes(job.family, dtype, kind))
