"""Cheap RGB previews of SDXL latents, for streaming every denoising step.

A full VAE decode costs more than a UNet step, so previews come from one of two
renderers of the scheduler's x0 estimate:

- ``rgb_tensor``: the published linear approximation from SDXL's four latent
  channels to RGB, one tiny matrix product per pixel at latent resolution;
- ``TinyVaeRenderer``: the tiny autoencoder (TAESD-XL, ``preview_vae.py``), at the
  size the client asks for, up to the image's.

On a GPU, fetching a preview must not stall the denoising loop: ``PreviewStream``
renders it on its own CUDA stream, copies it asynchronously into pinned host memory
and hands it over one step late, when the copy is done without the CPU ever waiting
for the UNet.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .scheduler_step import Step, wrapped_step

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
    """uint8 array of shape (height, width, 3) for the first image: latent resolution for the linear
    previews, the preview size for the tiny autoencoder's."""
    latents: torch.Tensor | None
    """The raw latents x_t after this step, for callers that want them (None where a preview crossed
    processes: a Ray worker sends only the picture)."""

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def rgb_tensor(latents: torch.Tensor) -> torch.Tensor:
    """Scaled SDXL latents (B, 4, h, w) as a uint8 (h, w, 3) image of the first sample, computed
    where the latents are."""
    if latents.ndim != 4 or latents.shape[1] != SDXL_LATENT_RGB_FACTORS.shape[0]:
        raise ValueError(f"expected latents of shape (B, 4, h, w), got {tuple(latents.shape)}")
    first = latents[0].detach().to(dtype=torch.float32)
    factors, bias = _linear_rgb(first.device)
    # (4, h, w) -> (h, w, 4) @ (4, 3) -> (h, w, 3)
    rgb = torch.matmul(first.permute(1, 2, 0), factors) + bias
    rgb = ((rgb.clamp_(-1.0, 1.0) + 1.0) * 127.5).round_()
    return rgb.to(torch.uint8)


@functools.cache
def _linear_rgb(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear previews' factors and bias on ``device``, copied there once: a copy from CPU memory
    on every step waits for the GPU's queued work (a stall that the one-step-late hand-over avoids)."""
    return SDXL_LATENT_RGB_FACTORS.to(device), SDXL_LATENT_RGB_BIAS.to(device)


def latents_to_rgb(latents: torch.Tensor) -> np.ndarray:
    """Map scaled SDXL latents (B, 4, h, w) to a uint8 (h, w, 3) image of the first sample."""
    return rgb_tensor(latents).cpu().numpy()


Renderer = Callable[[torch.Tensor], torch.Tensor]
"""Scaled latents (B, 4, h, w) to a uint8 (H, W, 3) image of the first sample, where they are."""


def preview_size(width: int, height: int, preview_side: int) -> tuple[int, int]:
    """The preview's (width, height): the image's, scaled down so its longest side is ``preview_side``."""
    longest = max(width, height)
    if longest <= preview_side:
        return width, height
    scale = preview_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


class TinyVaeRenderer:
    """Previews through a tiny autoencoder (diffusers' ``AutoencoderTiny``), resized to ``size``."""

    def __init__(self, vae: torch.nn.Module, size: tuple[int, int]) -> None:
        self.vae = vae
        self.size = size
        """(width, height) of the frames."""

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return tiny_vae_rgb(self.vae, latents, self.size)


def tiny_vae_rgb(vae: torch.nn.Module, latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The first sample of scaled latents decoded by ``vae`` as a uint8 (H, W, 3) image of ``size``
    (an antialiased bilinear resize when smaller than the decode)."""
    config = vae.config  # type: ignore[attr-defined]
    first = latents[:1].detach().to(dtype=vae.dtype)  # type: ignore[attr-defined]
    # Scaled latents as the pipelines hand them to their VAE (TAESD-XL's factors are 1 and 0).
    first = first / config.scaling_factor + getattr(config, "shift_factor", 0.0)
    image = vae.decode(first).sample.float()  # type: ignore[attr-defined]
    width, height = size
    if image.shape[-2:] != (height, width):
        image = F.interpolate(
            image, size=(height, width), mode="bilinear", antialias=True, align_corners=False
        )
    rgb = ((image[0].clamp_(-1.0, 1.0) + 1.0) * 127.5).round_()
    return rgb.permute(1, 2, 0).to(torch.uint8)


@dataclass
class _InFlight:
    step: int
    total: int
    host: torch.Tensor
    latents: torch.Tensor
    ready: Callable[[], None]
    """Waits until ``host`` holds the preview (the asynchronous copy is done)."""


class PreviewStream:
    """Hands step previews to ``emit``; with ``deferred``, each one a step late and without a stall.

    Deferred (the default on CUDA): the preview of step k is rendered on a side CUDA stream, which
    waits only for step k's kernels, and copied into one of two pinned host buffers with
    ``non_blocking=True``; step k+1's UNet runs meanwhile on the main stream. It is handed over at step
    k+1's callback, by when the CPU has queued step k+1 and waiting for the copy costs the GPU nothing.
    ``flush`` hands over the last one (after the loop, or on cancellation). Immediate: each preview is
    rendered, copied to the CPU and handed over in its own step's callback (what a CPU run needs).
    """

    def __init__(
        self,
        emit: Callable[[StepPreview], None],
        device: torch.device,
        deferred: bool | None = None,
        render: Renderer = rgb_tensor,
    ):
        self.emit = emit
        self.render = render
        self.deferred = device.type == "cuda" if deferred is None else deferred
        self._pending: _InFlight | None = None
        self._buffers: list[torch.Tensor] = []
        self._side = torch.cuda.Stream(device) if self.deferred and device.type == "cuda" else None

    def push(self, step: int, total: int, shown: torch.Tensor, latents: torch.Tensor) -> None:
        if not self.deferred:
            self.emit(StepPreview(step, total, self.render(shown).cpu().numpy(), latents))
            return
        host, ready = self._render_to_host(shown, step)
        previous, self._pending = self._pending, _InFlight(step, total, host, latents, ready)
        if previous is not None:
            self._hand_over(previous)

    def flush(self) -> None:
        previous, self._pending = self._pending, None
        if previous is not None:
            self._hand_over(previous)

    def _render_to_host(self, shown: torch.Tensor, step: int) -> tuple[torch.Tensor, Callable[[], None]]:
        if self._side is None or shown.device.type != "cuda":  # deferred on a CPU: same hand-over
            return self.render(shown).clone(), lambda: None
        side = self._side
        side.wait_stream(torch.cuda.current_stream(shown.device))  # step k's x0 is computed first
        with torch.cuda.stream(side):
            rgb = self.render(shown)
            if not self._buffers or self._buffers[0].shape != rgb.shape:
                self._buffers = [torch.empty(rgb.shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
            host = self._buffers[step % 2]  # the other one may still be read by the previous hand-over
            host.copy_(rgb, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(side)
        shown.record_stream(side)  # its memory is not reused by the main stream before the side read it
        return host, copied.synchronize

    def _hand_over(self, preview: _InFlight) -> None:
        preview.ready()
        rgb = preview.host.numpy().copy()  # the pinned buffer is reused two steps later
        self.emit(StepPreview(preview.step, preview.total, rgb, preview.latents))


class DenoisedCapture:
    """Remembers the scheduler's x0 estimate of the last step: a far better preview than x_t."""

    def __init__(self) -> None:
        self.latest: torch.Tensor | None = None

    @contextlib.contextmanager
    def attached(self, scheduler: object) -> Iterator[None]:
        def wrap(original: Step) -> Step:
            def step(*args: object, **kwargs: object) -> object:
                output = original(*args, **kwargs)
                if isinstance(output, tuple):
                    self.latest = output[1] if len(output) > 1 else None
                else:
                    self.latest = getattr(output, "pred_original_sample", None)
                return output

            return step

        try:
            with wrapped_step(scheduler, wrap):
                yield
        finally:
            self.latest = None
