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
    """Put the pipeline's modules where ``tier`` keeps them at rest.

    Each model moves on its own, so the image encoder (3.44 GiB) never visits the GPU on the way to
    CPU memory in ``encoders-off`` (``pipeline.to`` moved all of them first). Group offload leaves the
    VAE out (it stays on the GPU, 0.16 GiB): with CUDA streams it restores its offloaded fp16 copy at
    every onload, which undid the decode's fp32 upcast mid-decode (a dtype error in every job).
    """
    if tier is MemoryTier.MODEL_OFFLOAD:
        pipeline.enable_model_cpu_offload(device=device)  # type: ignore[attr-defined]
    elif tier is MemoryTier.GROUP_OFFLOAD:
        pipeline.enable_group_offload(  # type: ignore[attr-defined]
            exclude_modules=["vae"], **_group_offload_options(device)
        )
    else:
        for name, module in models(pipeline).items():
            resting = "image_encoder" if tier is MemoryTier.ENCODERS_OFF else None
            module.to("cpu" if name == resting else device)
    if controlnet is None:
        return
    if tier is MemoryTier.GROUP_OFFLOAD:  # a whole ControlNet (2.33 GiB) does not fit beside a 6 GB job
        controlnet.enable_group_offload(**_group_offload_options(device))  # type: ignore[operator]
    else:
        controlnet.to("cpu" if tier is not MemoryTier.FULL else device)


def _group_offload_options(device: torch.device) -> dict[str, object]:
    return {
        "onload_device": device,
        "offload_device": torch.device("cpu"),
        "offload_type": "leaf_level",
        "use_stream": device.type == "cuda",
    }


def models(pipeline: object) -> dict[str, torch.nn.Module]:
    """The pipeline's models by component name (tokenizers, scheduler and the like left out)."""
    components = pipeline.components.items()  # type: ignore[attr-defined]
    return {name: module for name, module in components if isinstance(module, torch.nn.Module)}


@contextlib.contextmanager
def unet_alone(pipeline: object) -> Iterator[None]:
    """With model CPU offload, every other model of the chain leaves the GPU as the UNet starts.

    accelerate's hooks only offload a model's predecessor in the chain when the next one runs. With the
    prompt or style embeddings cached, ``text_encoder_2`` or the image encoder stayed on the GPU through
    the whole denoising loop; in img2img and inpaint the VAE (which encoded the picture) did too.
    """
    hooks = getattr(pipeline, "_all_hooks", None)
    if not hooks:
        yield
        return
    unet = pipeline.unet  # type: ignore[attr-defined]

    def offload_the_others(_module: torch.nn.Module, _args: object) -> None:
        handle.remove()  # once a job: nothing else runs until the decode, whose hook offloads the UNet
        for hook in hooks:
            if hook.model is not unet:
                hook.offload()

    handle = unet.register_forward_pre_hook(offload_the_others)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def visiting(module: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Run ``module`` on ``device`` for the block, then send it back where it rested (if it moved)."""
    resting = next(module.parameters()).device
    if resting == device or moved_by_hooks(module):
        yield  # already there, or an offload hook moves it by itself
        return
    module.to(device)
    try:
        yield
    finally:
        module.to(resting)


def moved_by_hooks(module: torch.nn.Module) -> bool:
    """Whether offload hooks bring ``module`` to the GPU by themselves: accelerate's model offload (a
    hook on the model) or diffusers' group offload (hooks on its layers, none on the model itself: a
    check of the model alone moved a whole group-offloaded image encoder, 3.44 GiB, onto a 6 GB card)."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return getattr(module, "_hf_hook", None) is not None or _is_group_offload_enabled(module)
