"""Latents to pixels, in the engine rather than inside diffusers' pipeline call.

Two reasons. diffusers upcasts an fp16 SDXL VAE to fp32 for the decode and
casts it back only when the decode succeeds: one out-of-memory error there left
the VAE in fp32 and every later job failed with a dtype mismatch. Here the
VAE's dtype is restored in ``finally``. And NaN latents or pixels (fp16
overflow, known on GTX 16xx cards) would otherwise become a black picture
without a word: they are refused with what to do about them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from .family import family_of
from .host_decode import decode_to_host, encode_from_host, host_tile, vae_scale


class NonFiniteOutput(RuntimeError):
    """The model produced NaN or infinite values: the picture would be black."""


NON_FINITE_ADVICE = (
    "start the backend with --dtype fp32, or give it an fp16-safe VAE (--vae madebyollin/sdxl-vae-fp16-fix)"
)


def check_finite(values: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteOutput(
            f"the model produced NaN values in the {what} (a black image): {NON_FINITE_ADVICE}"
        )


def _execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` runs: its accelerate offload hook's device if it has one, else its weights'."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    return torch.device(device) if device is not None else next(module.parameters()).device


def unscale(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Undo the VAE's latent scaling (and normalisation, where its config has one), as diffusers does."""
    config = vae.config  # type: ignore[attr-defined]
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        std_t = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        return latents * std_t / config.scaling_factor + mean_t
    return latents / config.scaling_factor


TILE_SIDE = 512
"""Pixels a side of a decode tile in the memory tiers that always tile: a 1024² decode in fp32 needs
~3.8 GiB whole and about a quarter of it per tile (512 px and the overlap that is blended)."""
WHOLE_DECODE_UP_TO = 1536
"""Pixels a side up to which the full tier decodes whole; above, in the VAE's own tiles."""


def set_decode_tiles(vae: torch.nn.Module, always: bool, longest_side: int) -> int | None:
    """Tile the next decode and return the tile's side in pixels (None: decoded whole).

    diffusers tiles only above the VAE's ``sample_size``, 1024 for SDXL: ``enable_tiling`` alone
    never tiled a 1024² decode, so the tiers that always tile set ``TILE_SIDE`` themselves."""
    sample = vae.config.sample_size  # type: ignore[attr-defined]
    sample = int(sample[0] if isinstance(sample, (list, tuple)) else sample)
    if always:
        side: int | None = min(TILE_SIDE, sample)
    else:  # a canvas: tiles of the model's sample size (a model trained smaller: TILE_SIDE)
        side = max(sample, TILE_SIDE) if longest_side > WHOLE_DECODE_UP_TO else None
    if side is None:
        vae.disable_tiling()  # type: ignore[operator]
        return None
    vae.tile_sample_min_size = side
    vae.tile_latent_min_size = side // vae_scale(vae)
    vae.enable_tiling()  # type: ignore[operator]
    return side


@contextlib.contextmanager
def upcast(vae: torch.nn.Module, family_upcasts: bool = True) -> Iterator[bool]:
    """An fp16 SDXL VAE in fp32 while it works (it overflows in fp16: ``force_upcast``), and in its
    own dtype again afterwards, failed or not. Yields whether it was upcast. ``family_upcasts``
    False: the family's pipelines never upcast (SD1.5's decode in the VAE's dtype, whatever its
    config's ``force_upcast``, which AutoencoderKL defaults to True)."""
    dtype = next(vae.parameters()).dtype  # diffusers' ``vae.dtype`` walks every module
    upcasting = family_upcasts and dtype == torch.float16 and bool(vae.config.force_upcast)  # type: ignore[attr-defined]
    try:
        if upcasting:
            vae.to(dtype=torch.float32)
        yield upcasting
    finally:
        if upcasting:
            vae.to(dtype=dtype)


@torch.no_grad()
def encode_canvas(
    vae: torch.nn.Module, picture: Image.Image, generator: torch.Generator, family_upcasts: bool = True
) -> torch.Tensor | None:
    """A picture larger than one of the job's VAE tiles as the pipelines' scaled latents, encoded
    tile by tile from host memory; None: small enough for the pipeline's own encode."""
    tiles = host_tile(vae, max(picture.size) // vae_scale(vae))
    if tiles is None:
        return None
    with upcast(vae, family_upcasts):
        return encode_from_host(vae, picture, *tiles, generator, _execution_device(vae))


@torch.no_grad()
def decode(pipeline: object, latents: torch.Tensor) -> list[np.ndarray]:
    """Final latents to float [0, 1] HWC images, exactly as the family's pipelines' own decode."""
    check_finite(latents, "latents")
    vae = pipeline.vae  # type: ignore[attr-defined]
    with upcast(vae, family_of(pipeline).upcast_vae) as in_fp32:
        if in_fp32:
            latents = latents.to(torch.float32)
        latents = unscale(vae, latents).to(_execution_device(vae))
        tiles = host_tile(vae, max(latents.shape[-2:]))
        if tiles is None:
            image = vae.decode(latents, return_dict=False)[0]
        else:  # a canvas: tile by tile into host memory, never whole on the device
            image = decode_to_host(vae, latents, *tiles)
    check_finite(image, "decoded image")
    watermark = getattr(pipeline, "watermark", None)
    if watermark is not None:
        image = watermark.apply_watermark(image)
    return list(pipeline.image_processor.postprocess(image, output_type="np"))  # type: ignore[attr-defined]
