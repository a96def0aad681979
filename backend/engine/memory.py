"""GPU memory tiers: how much of the model lives on the GPU, and where each model waits.

fp16 SDXL needs about 10.6 GiB of weights (UNet 4.78, text encoders 1.52,
ViT-bigG image encoder 3.44, IP-Adapter 0.65, VAE 0.16; a ControlNet adds 2.33).
Each tier trades speed for memory with what diffusers already offers:

- ``full``: everything on the GPU;
- ``encoders-off``: the image encoder (it runs once per new style image and to
  score results) and the ControlNet wait in CPU memory and visit the GPU only to
  run; the VAE decodes in tiles;
- ``model-offload``: diffusers' model CPU offload, one model on the GPU at a
  time; tiled VAE;
- ``group-offload``: diffusers' group offload, layer by layer (slow).

Which tier fits a card is computed from this placement in ``memory_budget.py``
(for fp16 SDXL: 16 GB cards run ``full``, 12 GB ``encoders-off``, 8 and 6 GB
``group-offload``; a ControlNet moves each a tier down).
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
        resting = "image_encoder" if tier is MemoryTier.ENCODERS_OFF else None
        for name, module in models(pipeline).items():
            module.to("cpu" if name == resting else device)
    if controlnet is not None:
        place_controlnet(controlnet, tier, device)


def place_controlnet(controlnet: torch.nn.Module, tier: MemoryTier, device: torch.device) -> None:
    """Put a ControlNet where ``tier`` keeps it at rest (each loaded one alike: canny and tile)."""
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
