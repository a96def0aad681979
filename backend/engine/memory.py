"""GPU memory tiers: how much of the model lives on the GPU, chosen from the free memory at start.

fp16 SDXL needs about 10.6 GiB of weights (UNet 4.78, text encoders 1.52,
ViT-bigG image encoder 3.44, IP-Adapter 0.65, VAE 0.16; a ControlNet adds 2.33)
plus ~1.5 GiB of activations at 1024² and ~3.8 GiB for an fp32 VAE decode per
image. Each tier trades speed for memory with what diffusers already offers:

- ``full``: everything on the GPU (16 GB cards and up);
- ``encoders-off``: the image encoder (it runs once per new style image) and the
  ControlNet wait in CPU memory and visit the GPU only to run; VAE decodes in
  tiles (12 GB cards);
- ``model-offload``: diffusers' model CPU offload, one component on the GPU at a
  time; tiled VAE (8 GB cards);
- ``group-offload``: diffusers' group offload, layer by layer (6 GB cards; slow).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from enum import Enum

import torch

log = logging.getLogger(__name__)

GIB = 2**30


class MemoryTier(str, Enum):
    FULL = "full"
    ENCODERS_OFF = "encoders-off"
    MODEL_OFFLOAD = "model-offload"
    GROUP_OFFLOAD = "group-offload"

    @property
    def tiles_vae(self) -> bool:
        """Whether every decode runs in tiles (an fp32 1024² decode alone takes ~3.8 GiB)."""
        return self is not MemoryTier.FULL


# Free GiB each tier needs at start, without / with a ControlNet (weights + activations + decode).
FREE_GIB_NEEDED = {
    MemoryTier.FULL: (15.5, 17.9),
    MemoryTier.ENCODERS_OFF: (9.5, 9.5),
    MemoryTier.MODEL_OFFLOAD: (6.5, 6.5),
}
"""``group-offload`` is what remains below the model-offload threshold."""

PREVIEW_VAE_GIB = 0.6
"""A 1024² preview decode by the tiny autoencoder in fp16 (weights ~10 MB; its last stage holds a few
64-channel full-size activations; estimated, not measured on a GPU). It runs beside the UNet's
activations, not beside the full VAE decode: in the full tier the decode's 3.8 GiB stays the peak, in
the tiled tiers it adds to it."""


def choose_tier(free_bytes: int, controlnet: bool = False, preview_vae: bool = False) -> MemoryTier:
    """The fastest tier that fits ``free_bytes`` of accelerator memory (with a tiny autoencoder for
    previews when ``preview_vae``)."""
    free = free_bytes / GIB
    for tier, (plain, with_controlnet) in FREE_GIB_NEEDED.items():
        needed = (with_controlnet if controlnet else plain) + (
            PREVIEW_VAE_GIB if preview_vae and tier.tiles_vae else 0.0
        )
        if free >= needed:
            return tier
    return MemoryTier.GROUP_OFFLOAD


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (None elsewhere: CPU and MPS share the system's memory)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free


def pick_tier(
    device: torch.device, preference: str | None, controlnet: bool, preview_vae: bool = False
) -> MemoryTier:
    """An explicit tier wins; ``auto`` measures CUDA's free memory (anything else runs in full)."""
    if preference and preference != "auto":
        try:
            return MemoryTier(preference)
        except ValueError:
            names = ", ".join(["auto", *(t.value for t in MemoryTier)])
            raise ValueError(f"unknown memory tier {preference!r}: expected one of {names}") from None
    free = free_memory(device)
    return MemoryTier.FULL if free is None else choose_tier(free, controlnet, preview_vae)


def place(
    pipeline: object, controlnet: torch.nn.Module | None, tier: MemoryTier, device: torch.device
) -> None:
    """Put the pipeline's modules where ``tier`` keeps them at rest."""
    if tier is MemoryTier.MODEL_OFFLOAD:
        pipeline.enable_model_cpu_offload(device=device)  # type: ignore[attr-defined]
    elif tier is MemoryTier.GROUP_OFFLOAD:
        pipeline.enable_group_offload(  # type: ignore[attr-defined]
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=device.type == "cuda",
        )
    else:
        pipeline.to(device)  # type: ignore[attr-defined]
        if tier is MemoryTier.ENCODERS_OFF:
            pipeline.image_encoder.to("cpu")  # type: ignore[attr-defined]
    if controlnet is not None:
        controlnet.to("cpu" if tier is not MemoryTier.FULL else device)


@contextlib.contextmanager
def visiting(module: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Run ``module`` on ``device`` for the block, then send it back where it rested (if it moved)."""
    resting = next(module.parameters()).device
    hooked = (
        getattr(module, "_hf_hook", None) is not None or getattr(module, "_diffusers_hook", None) is not None
    )
    if resting == device or hooked:
        yield  # already there, or an offload hook moves it by itself
        return
    module.to(device)
    try:
        yield
    finally:
        module.to(resting)
