"""A random "plus" IP-Adapter in the layout h94 ships (``ip-adapter-plus_sdxl_vit-h``; ``_sd15`` too).

A plus adapter reads the image encoder's patch features (its penultimate hidden states, one row per
patch and one for the class token) through a Resampler: 16 learned queries attend to them, in four
layers of cross-attention and a feed-forward each, and come out as 16 tokens for the UNet's
cross-attention (a plain adapter projects the pooled embedding to 4). The keys below are the
original layout (``image_proj.latents``, ``layers.N.0.to_kv``...), which diffusers converts on load:
its converter builds four layers and reads the heads as ``to_q`` rows / 64, so the tiny one has
both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from .components import TINY, AdapterDims, random_ip_adapter_state, seeded_randn

PLUS_TOKENS = 16
RESAMPLER_DEPTH = 4
"""What diffusers' converter builds, whatever the file holds (the real adapters have 4 too)."""
RESAMPLER_HEAD_DIM = 64
"""diffusers reads the head count as ``to_q`` rows / 64 (the real adapters' head size)."""
TINY_RESAMPLER_WIDTH = 64
"""One 64-wide head (the real SDXL Resampler: 1280 wide, 20 heads)."""
SDXL_RESAMPLER_WIDTH = 1280
"""ip-adapter-plus_sdxl_vit-h's Resampler: 20 heads of 64."""
FEED_FORWARD_RATIO = 4


class PlusDims(AdapterDims, Protocol):
    """A family's shape as a plus adapter sees it: its image encoder's hidden width too."""

    @property
    def image_hidden(self) -> int: ...


Noise = Callable[[tuple[int, ...], float], torch.Tensor]
"""Makes a tensor of normal noise of a shape and a standard deviation."""


def resampler_state(
    noise: Noise, image_hidden: int, cross: int, tokens: int = PLUS_TOKENS, width: int = TINY_RESAMPLER_WIDTH
) -> dict[str, torch.Tensor]:
    """A Resampler's weights in the original layout: ``image_hidden``-d patch features in, ``tokens``
    tokens of ``cross`` dims out, ``width`` wide in heads of 64."""
    if width % RESAMPLER_HEAD_DIM:
        raise ValueError(f"the Resampler's width must be a multiple of {RESAMPLER_HEAD_DIM}, got {width}")

    def layer_norm(prefix: str, size: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1.0 + noise((size,), 0.05), f"{prefix}.bias": noise((size,), 0.05)}

    state: dict[str, torch.Tensor] = {
        "latents": noise((1, tokens, width), width**-0.5),
        "proj_in.weight": noise((width, image_hidden), image_hidden**-0.5),
        "proj_in.bias": noise((width,), 0.02),
        "proj_out.weight": noise((cross, width), width**-0.5),
        "proj_out.bias": noise((cross,), 0.02),
        **layer_norm("norm_out", cross),
    }
    hidden = width * FEED_FORWARD_RATIO
    for layer in range(RESAMPLER_DEPTH):
        attention, feed_forward = f"layers.{layer}.0", f"layers.{layer}.1"
        state.update(
            {
                **layer_norm(f"{attention}.norm1", width),
                **layer_norm(f"{attention}.norm2", width),
                f"{attention}.to_q.weight": noise((width, width), width**-0.5),
                f"{attention}.to_kv.weight": noise((2 * width, width), width**-0.5),
                f"{attention}.to_out.weight": noise((width, width), width**-0.5),
                **layer_norm(f"{feed_forward}.0", width),
                f"{feed_forward}.1.weight": noise((hidden, width), width**-0.5),
                f"{feed_forward}.3.weight": noise((width, hidden), hidden**-0.5),
            }
        )
    return state


def random_plus_adapter_state(
    unet: torch.nn.Module,
    generator: torch.Generator,
    shape: PlusDims = TINY,
    width: int = TINY_RESAMPLER_WIDTH,
) -> dict[str, dict[str, torch.Tensor]]:
    """A plus adapter for ``unet`` reading ``shape``'s image encoder's hidden states, its Resampler
    ``width`` wide."""

    def noise(size: tuple[int, ...], std: float) -> torch.Tensor:
        return seeded_randn(size, generator) * std

    image_proj = resampler_state(noise, shape.image_hidden, shape.cross_attention_dim, width=width)
    # The UNet side is a plain adapter's: to_k_ip/to_v_ip for each cross-attention (16 tokens in).
    ip_adapter = random_ip_adapter_state(unet, generator, shape)["ip_adapter"]
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}
