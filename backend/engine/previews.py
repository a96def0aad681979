"""Cheap RGB previews of latents (SDXL's or SD1.5's), for streaming every denoising step.

A full VAE decode costs more than a UNet step, so previews come from one of two
renderers of the scheduler's x0 estimate:

- ``rgb_tensor``: the published linear approximation from the family's four latent
  channels to RGB, one tiny matrix product per pixel at latent resolution;
- ``TinyVaeRenderer``: the tiny autoencoder (TAESD-XL or TAESD, ``preview_vae.py``), at the
  size the client asks for, up to the image's.

On a GPU, fetching a preview must not stall the denoising loop: ``PreviewStream``
renders it on its own CUDA stream, copies it asynchronously into pinned host memory
and hands it over one step late, when the copy is done without the CPU ever waiting
for the UNet. Which steps get a preview at all is the job's ``PreviewBudget``'s call.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from protocol.enums import ModelFamily

from .family import SDXL, traits
from .preview_budget import Picture, PreviewBudget
from .request import GenerationRequest
from .scheduler_step import Step, wrapped_step

# Rows = latent channels, columns = R, G, B; applies to diffusers' scaled latents (each family's own).
SDXL_LATENT_RGB_FACTORS = torch.tensor(SDXL.latent_rgb_factors)
SDXL_LATENT_RGB_BIAS = torch.tensor(SDXL.latent_rgb_bias)


@dataclass(frozen=True)
class StepPreview:
    """What a step callback receives: where the job is and what it looks like."""

    step: int
    """1-based index of the finished denoising step."""
    total: int
    rgb: np.ndarray | None
    """uint8 array of shape (height, width, 3) for the first image: latent resolution for the linear
    previews, the preview size for the tiny autoencoder's and the last step's (the result itself).
    None: the preview budget skipped this step, which reports its progress only."""
    latents: torch.Tensor | None
    """The raw latents x_t after this step, for callers that want them (None where a preview crossed
    processes: a Ray worker sends only the picture)."""
    tile: int = 0
    tiles: int = 0
    """A step that runs in tiles (a canvas refined at its own size) also reports each tile: ``tile``
    of ``tiles`` done in the step after ``step``, with no picture. 0: a step's own report."""

    @property
    def done(self) -> float:
        """Steps done, counting a tiled step's finished tiles as a fraction of it (for the ETA)."""
        return self.step + (self.tile / self.tiles if self.tiles else 0.0)

    @property
    def width(self) -> int:
        return 0 if self.rgb is None else int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return 0 if self.rgb is None else int(self.rgb.shape[0])


def rgb_tensor(latents: torch.Tensor, family: ModelFamily = ModelFamily.SDXL) -> torch.Tensor:
    """Scaled latents (B, 4, h, w) of a ``family`` model as a uint8 (h, w, 3) image of the first
    sample, computed where the latents are."""
    if latents.ndim != 4 or latents.shape[1] != SDXL_LATENT_RGB_FACTORS.shape[0]:
        raise ValueError(f"expected latents of shape (B, 4, h, w), got {tuple(latents.shape)}")
    first = latents[0].detach().to(dtype=torch.float32)
    factors, bias = _linear_rgb(first.device, family)
    # (4, h, w) -> (h, w, 4) @ (4, 3) -> (h, w, 3)
    rgb = torch.matmul(first.permute(1, 2, 0), factors) + bias
    rgb = ((rgb.clamp_(-1.0, 1.0) + 1.0) * 127.5).round_()
    return rgb.to(torch.uint8)


@functools.cache
def _linear_rgb(device: torch.device, family: ModelFamily) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear previews' factors and bias on ``device``, copied there once: a copy from CPU memory
    on every step waits for the GPU's queued work (a stall that the one-step-late hand-over avoids)."""
    known = traits(family)
    return torch.tensor(known.latent_rgb_factors, device=device), torch.tensor(
        known.latent_rgb_bias, device=device
    )


def latents_to_rgb(latents: torch.Tensor, family: ModelFamily = ModelFamily.SDXL) -> np.ndarray:
    """Map scaled latents (B, 4, h, w) to a uint8 (h, w, 3) image of the first sample."""
    return rgb_tensor(latents, family).cpu().numpy()


Renderer = Callable[[torch.Tensor], torch.Tensor]
"""Scaled latents (B, 4, h, w) to a uint8 (H, W, 3) image of the first sample, where they are."""


def preview_size(width: int, height: int, preview_side: int) -> tuple[int, int]:
    """The preview's (width, height): the image's, scaled down so its longest side is ``preview_side``."""
    longest = max(width, height)
    if longest <= preview_side:
        return width, height
    scale = preview_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def result_preview(rgb: np.ndarray, preview_side: int) -> np.ndarray:
    """The finished picture (uint8 HWC) as the last step's preview: at most ``preview_side`` on its
    longest side (antialiased)."""
    from PIL import Image

    height, width = rgb.shape[:2]
    size = preview_size(width, height, preview_side)
    if size == (width, height):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


class LinearRenderer:
    """Linear previews of ``size`` (width, height) from larger latents: a canvas refined at its own
    resolution has more latent pixels than the preview asked for."""

    def __init__(self, size: tuple[int, int], family: ModelFamily = ModelFamily.SDXL) -> None:
        self.size = size
        self.family = family

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        width, height = self.size
        first = latents[:1].detach().float()
        if first.shape[-2:] != (height, width):
            first = F.interpolate(
                first, size=(height, width), mode="bilinear", antialias=True, align_corners=False
            )
        return rgb_tensor(first, self.family)


class TinyVaeRenderer:
    """Previews through a tiny autoencoder (diffusers' ``AutoencoderTiny``), resized to ``size``."""

    def __init__(self, vae: torch.nn.Module, size: tuple[int, int]) -> None:
        self.vae = vae
        self.size = size
        """(width, height) of the frames."""

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return tiny_vae_rgb(self.vae, latents, self.size)


def tiny_vae_rgb(vae: torch.nn.Module, latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The first sample of scaled latents decoded by ``vae`` as a uint8 (H, W, 3) image of ``size``.

    A preview smaller than the image decodes fewer pixels: the latents are first scaled to the
    preview's size / 8 (a 512 preview of a 1024² job costs about a sixth of a full decode on the tiny
    model, ``bench/bench_engine.py``), then the picture is resized to the exact size."""
    config = vae.config  # type: ignore[attr-defined]
    dtype = next(vae.parameters()).dtype  # diffusers' ``vae.dtype`` walks every module: ~0.2 ms a call
    first = latents[:1].detach().to(dtype=dtype)
    width, height = size
    grid = (math.ceil(height / 8), math.ceil(width / 8))
    if grid[0] < first.shape[-2] and grid[1] < first.shape[-1]:
        first = F.interpolate(first.float(), size=grid, mode="bilinear", antialias=True, align_corners=False)
        first = first.to(dtype=dtype)
    # Scaled latents as the pipelines hand them to their VAE (TAESD-XL's factors are 1 and 0).
    first = first / config.scaling_factor + getattr(config, "shift_factor", 0.0)
    image = vae.decode(first).sample.float()  # type: ignore[attr-defined]
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
    cost: Callable[[], float]
    """Seconds the render took (once ``ready``): on a GPU, its own stream's time."""
    picture: Picture


class PreviewStream:
    """Hands step previews to ``emit``; with ``deferred``, each one a step late and without a stall.

    Deferred (the default on CUDA): the preview of step k is rendered on a side CUDA stream, which
    waits only for step k's kernels, and copied into one of two pinned host buffers with
    ``non_blocking=True``; step k+1's UNet runs meanwhile on the main stream. It is handed over at step
    k+1's callback, by when the CPU has queued step k+1 and waiting for the copy costs the GPU nothing.
    ``flush`` hands over the last one (after the loop, or on cancellation). Immediate: each preview is
    rendered, copied to the CPU and handed over in its own step's callback (what a CPU run needs).

    With a ``budget``, a step it skips is handed over as progress only (``rgb`` None), in order.
    """

    def __init__(
        self,
        emit: Callable[[StepPreview], None],
        device: torch.device,
        deferred: bool | None = None,
        render: Renderer = rgb_tensor,
        budget: PreviewBudget | None = None,
        half_render: Renderer | None = None,
        last_side: int = 1024,
    ):
        self.emit = emit
        self.render = render
        self.half_render = half_render
        """Draws the pictures the budget affords at half the side only (step 1's, a blur yet, among
        them): a quarter of the cost or less. None: every picture is drawn by ``render``."""
        self.last_side = last_side
        """Longest side of the last step's picture (the result scaled down)."""
        self.budget = budget
        self.deferred = device.type == "cuda" if deferred is None else deferred
        self._pending: _InFlight | None = None
        self._buffers: dict[tuple[int, ...], list[torch.Tensor]] = {}
        """Two pinned host buffers per picture shape (full and half side), used in turn."""
        self._turn = 0
        self._side = torch.cuda.Stream(device) if self.deferred and device.type == "cuda" else None

    def push(self, step: int, total: int, shown: torch.Tensor, latents: torch.Tensor) -> None:
        picture = self.budget.step_ended(step) if self.budget is not None else Picture.FULL
        if picture is Picture.HALF and self.half_render is None:
            picture = Picture.FULL  # what is drawn is what is charged
        if not picture:
            self.flush()
            self.emit(StepPreview(step, total, None, latents))
        elif not self.deferred:
            started = time.perf_counter()
            rgb = self._renderer(picture)(shown).cpu().numpy()
            self._rendered(time.perf_counter() - started, picture)
            self.emit(StepPreview(step, total, rgb, latents))
        else:
            host, ready, cost = self._render_to_host(shown, picture)
            in_flight = _InFlight(step, total, host, latents, ready, cost, picture)
            previous, self._pending = self._pending, in_flight
            if previous is not None:
                self._hand_over(previous)
        if self.budget is not None:
            self.budget.resume()

    def last(self, step: int, total: int, rgb: np.ndarray | None, latents: torch.Tensor) -> None:
        """The last step's preview: the finished picture (uint8 HWC), at no rendering cost."""
        self.flush()
        self.emit(StepPreview(step, total, rgb, latents))

    def flush(self) -> None:
        previous, self._pending = self._pending, None
        if previous is not None:
            self._hand_over(previous)

    def _renderer(self, picture: Picture) -> Renderer:
        return self.half_render if picture is Picture.HALF and self.half_render is not None else self.render

    def _rendered(self, seconds: float, picture: Picture) -> None:
        if self.budget is not None:
            self.budget.rendered(seconds, picture)

    def _render_to_host(
        self, shown: torch.Tensor, picture: Picture
    ) -> tuple[torch.Tensor, Callable[[], None], Callable[[], float]]:
        if self._side is None or shown.device.type != "cuda":  # deferred on a CPU: same hand-over
            started = time.perf_counter()
            rgb = self._renderer(picture)(shown).clone()
            seconds = time.perf_counter() - started
            return rgb, lambda: None, lambda: seconds
        side = self._side
        side.wait_stream(torch.cuda.current_stream(shown.device))  # step k's x0 is computed first
        with torch.cuda.stream(side):
            began = torch.cuda.Event(enable_timing=True)
            began.record(side)
            rgb = self._renderer(picture)(shown)
            pair = self._buffers.get(tuple(rgb.shape))
            if pair is None:
                pair = [torch.empty(rgb.shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
                self._buffers[tuple(rgb.shape)] = pair
            self._turn ^= 1
            host = pair[self._turn]  # the other one may still be read by the previous hand-over
            host.copy_(rgb, non_blocking=True)
            copied = torch.cuda.Event(enable_timing=True)
            copied.record(side)
        shown.record_stream(side)  # its memory is not reused by the main stream before the side read it
        return host, copied.synchronize, lambda: began.elapsed_time(copied) / 1000.0

    def _hand_over(self, preview: _InFlight) -> None:
        preview.ready()
        self._rendered(preview.cost(), preview.picture)
        rgb = preview.host.numpy().copy()  # the pinned buffer is reused two steps later
        self.emit(StepPreview(preview.step, preview.total, rgb, preview.latents))


def job_previews(
    request: GenerationRequest,
    on_step: Callable[[StepPreview], None] | None,
    device: torch.device,
    tiny_vae: torch.nn.Module | None,
    family: ModelFamily = ModelFamily.SDXL,
) -> PreviewStream | None:
    """The job's previews, within its budget: drawn by the tiny autoencoder at the asked size, else
    linear (with ``family``'s factors). None without a step callback."""
    if on_step is None:
        return None
    if not request.step_pictures:
        budget: PreviewBudget | None = PreviewBudget(pictures=False)
    elif request.preview_share is None:
        budget = None  # every step drawn
    else:
        budget = PreviewBudget(request.preview_share)
    if tiny_vae is None:  # the last picture as small as the linear ones: latent resolution, at most
        latent_side = max(request.width, request.height) // 8  # the asked size (a refined canvas)
        if latent_side <= request.preview_side:
            own = functools.partial(rgb_tensor, family=family)
            return PreviewStream(on_step, device, render=own, budget=budget, last_side=latent_side)
        linear = LinearRenderer(preview_size(request.width, request.height, request.preview_side), family)
        return PreviewStream(on_step, device, render=linear, budget=budget, last_side=request.preview_side)
    width, height = preview_size(request.width, request.height, request.preview_side)
    render = TinyVaeRenderer(tiny_vae, (width, height))
    # Within a budget step 1, a blur yet, and the pictures a full one does not fit are drawn at half
    # the side: a quarter of the cost, which leaves the budget room for pictures during the job.
    half = TinyVaeRenderer(tiny_vae, (max(8, width // 2), max(8, height // 2))) if budget else None
    return PreviewStream(
        on_step, device, render=render, budget=budget, half_render=half, last_side=request.preview_side
    )


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
