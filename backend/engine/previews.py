"""Cheap RGB previews of SDXL latents, for streaming every denoising step.

A full VAE decode costs more than a UNet step, so previews use the published
linear approximation from SDXL's four latent channels to RGB: one tiny matrix
product per pixel at latent resolution (1/8 of the image side).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Rows = latent channels, columns = R, G, B; applies to diffusers' scaled latents.
SDXL_LATENT_RGB_FACTORS = torch.tensor(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
)
SDXL_LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


@dataclass(frozen=True)
class StepPreview:
    """What a step callback receives: where the job is and what it looks like."""

    step: int
    """1-based index of the finished denoising step."""
    total: int
    rgb: np.ndarray
    """uint8 array of shape (latent_height, latent_width, 3) for the first image."""
    latents: torch.Tensor
    """The raw latents x_t after this step, for callers that want them."""

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def latents_to_rgb(latents: torch.Tensor) -> np.ndarray:
    """Map scaled SDXL latents (B, 4, h, w) to a uint8 (h, w, 3) image of the first sample."""
    if latents.ndim != 4 or latents.shape[1] != SDXL_LATENT_RGB_FACTORS.shape[0]:
        raise ValueError(f"expected latents of shape (B, 4, h, w), got {tuple(latents.shape)}")
    first = latents[0].detach().to(device="cpu", dtype=torch.float32)
    # (4, h, w) -> (h, w, 4) @ (4, 3) -> (h, w, 3)
    rgb = torch.matmul(first.permute(1, 2, 0), SDXL_LATENT_RGB_FACTORS) + SDXL_LATENT_RGB_BIAS
    rgb = ((rgb.clamp_(-1.0, 1.0) + 1.0) * 127.5).round_()
    return rgb.to(torch.uint8).numpy()
