"""A tiny random tiny autoencoder (TAESD-XL shaped) for the preview code's tests.

Written in the layouts users have: a diffusers folder (what ``madebyollin/taesdxl`` is on the hub),
the same as a hub repo, and a decoder-only file in TAESD's original key layout (ComfyUI's
``models/vae_approx/taesdxl_decoder.safetensors``), whose layer N is diffusers' ``decoder.layers.N-1``.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_TAESD_CHANNELS = (8, 8, 8, 8)
TINY_TAESD_BLOCKS = (1, 1, 1, 1)


def build_tiny_autoencoder(seed: int = 3, full_size: bool = False) -> torch.nn.Module:
    """An ``AutoencoderTiny`` with weights drawn from ``seed``; ``full_size``: TAESD-XL's real shapes
    (64 channels, 3 blocks a stage; for benchmarks), otherwise 8 channels and 1 block a stage."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    if full_size:
        return AutoencoderTiny().eval()
    return AutoencoderTiny(
        encoder_block_out_channels=TINY_TAESD_CHANNELS,
        decoder_block_out_channels=TINY_TAESD_CHANNELS,
        num_encoder_blocks=TINY_TAESD_BLOCKS,
        num_decoder_blocks=TINY_TAESD_BLOCKS,
    ).eval()


def original_decoder_state(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The decoder's weights as TAESD's own ``Decoder`` (``nn.Sequential`` after a clamp) names them."""
    state = {}
    for key, value in vae.decoder.state_dict().items():  # type: ignore[union-attr]
        _layers, index, rest = key.split(".", 2)
        state[f"{int(index) + 1}.{rest}"] = value.clone().contiguous()
    return state


def write_tiny_autoencoder(folder: Path, decoder_file: Path) -> None:
    from safetensors.torch import save_file

    vae = build_tiny_autoencoder()
    vae.save_pretrained(folder)  # type: ignore[attr-defined]
    decoder_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(original_decoder_state(vae), str(decoder_file))
