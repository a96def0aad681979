"""Previews through the tiny autoencoder (TAESD-XL shaped, tiny random weights) on the tiny model.

Each step's preview must be exactly an independent ``AutoencoderTiny.decode`` of that step's x0
estimate, at the size the client asked for (a smaller preview decodes latents scaled to its size, and
stays close to a downscaled full decode); ``none`` keeps the linear previews; every layout a user has
loads; a broken file is an error at start, or with ``auto`` a logged fallback. The jobs here ask for
every step's preview (``preview_share=None``); ``test_preview_budget.py`` tests the budget.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import ModelLoadError
from backend.engine.preview_vae import load_tiny_autoencoder
from backend.engine.previews import latents_to_rgb, preview_size, tiny_vae_rgb
from backend.engine.request import GenerationRequest, StyleReference
from backend.tiny.preview_vae import build_tiny_autoencoder, original_decoder_state
from protocol import PreviewMethod
from tests.conftest import noise_image


def job(**overrides) -> GenerationRequest:
    fields = {
        "prompt": "a lighthouse",
        "style_images": [StyleReference(noise_image(5))],
        "content_text": "a tower",
        "width": 96,
        "height": 64,
        "steps": 4,
        "seed": 11,
        "preview_share": None,
    }
    return GenerationRequest(**{**fields, **overrides})


def x0_estimates(engine: InstantStyleEngine, request: GenerationRequest) -> list[torch.Tensor]:
    """Each step's x0 estimate, read from the scheduler's own output by a wrapper of this test."""
    pipe, kwargs = engine.prepare(request)
    scheduler = pipe.scheduler
    original = scheduler.step
    seen: list[torch.Tensor] = []

    def step(*args, return_dict=True, **kwargs):
        output = original(*args, return_dict=True, **kwargs)
        seen.append(output.pred_original_sample.clone())
        return output if return_dict else (output.prev_sample, output.pred_original_sample)

    scheduler.step = step
    with torch.inference_mode():
        pipe(**kwargs)
    return seen


def independent_preview(vae, x0: torch.Tensor, width: int, height: int) -> np.ndarray:
    """A smaller preview decodes the latents scaled to its size / 8 (rounded up), then fits exactly."""
    with torch.inference_mode():
        x0 = x0[:1]
        grid = (-(-height // 8), -(-width // 8))
        if grid[0] < x0.shape[-2] and grid[1] < x0.shape[-1]:
            x0 = F.interpolate(x0, size=grid, mode="bilinear", antialias=True)
        image = vae.decode(x0).sample
        if image.shape[-2:] != (height, width):
            image = F.interpolate(image, size=(height, width), mode="bilinear", antialias=True)
    rgb = ((image[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0)
    return rgb.to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def independent_vae(tiny_paths):
    from diffusers import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(str(tiny_paths.taesd)).eval()


@pytest.mark.parametrize(
    ("preview_side", "size"),
    [(1024, (96, 64)), (48, (48, 32)), (60, (60, 40))],
    ids=["image-size", "half", "odd-scale"],
)
def test_each_step_shows_the_tiny_autoencoders_decode_of_its_x0_at_the_asked_size(
    engine, independent_vae, preview_side, size
):
    assert engine.features.preview is PreviewMethod.TINY_VAE
    request = job(preview_side=preview_side)
    previews = []
    engine.generate(request, on_step=previews.append)
    estimates = x0_estimates(engine, request)
    assert [p.step for p in previews] == [1, 2, 3, 4] and len(estimates) == 4
    width, height = size
    for preview, x0 in zip(previews, estimates, strict=True):
        assert preview.rgb.shape == (height, width, 3) and preview.rgb.dtype == np.uint8
        assert np.array_equal(preview.rgb, independent_preview(independent_vae, x0, width, height))
    # Not a constant picture: the steps differ, and so do the pixels within one.
    assert not np.array_equal(previews[0].rgb, previews[-1].rgb)
    assert previews[-1].rgb.std() > 1.0


def test_a_smaller_preview_stays_close_to_the_downscaled_full_decode(engine):
    """A 256 or 128 preview of a 512² job decodes 1/4 or 1/16 of the pixels (``bench_engine`` times
    it); on the tiny model it stays within 30 dB PSNR of the full decode scaled down, and well above
    what a flat picture of the right mean would score."""
    latents = []
    request = job(width=512, height=512, steps=3, content_text="")
    engine.generate(request, on_step=lambda p: latents.append(p.latents))
    vae = engine.preview_vae.vae
    for x0 in (latents[0], latents[-1]):
        with torch.inference_mode():
            full = vae.decode(x0[:1]).sample.float()
        for side in (256, 128):
            shrunk = F.interpolate(full, size=(side, side), mode="bilinear", antialias=True)
            reference = ((shrunk[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
            with torch.inference_mode():
                preview = tiny_vae_rgb(vae, x0, (side, side)).numpy().astype(np.float64)
            flat = np.full_like(reference, reference.mean())
            assert psnr(preview, reference) > 30.0 and psnr(preview, reference) > psnr(flat, reference) + 5


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a - b) ** 2)))


def test_the_preview_size_keeps_the_aspect_and_never_grows_the_image():
    assert preview_size(1024, 1024, 1024) == (1024, 1024)
    assert preview_size(2048, 1536, 1024) == (1024, 768)
    assert preview_size(832, 1216, 512) == (350, 512)
    assert preview_size(512, 512, 1024) == (512, 512)


def test_none_keeps_the_linear_previews_unchanged(tiny_paths, engine):
    spec = dataclasses.replace(tiny_paths.spec("diffusers"), preview_vae="none")
    linear = InstantStyleEngine.load(spec, device="cpu")
    assert linear.features.preview is PreviewMethod.LINEAR and linear.preview_vae.vae is None
    request = job()
    previews = []
    result = linear.generate(request, on_step=previews.append)
    estimates = x0_estimates(linear, request)
    for preview, x0 in zip(previews, estimates, strict=True):
        assert preview.rgb.shape == (8, 12, 3)
        assert np.array_equal(preview.rgb, latents_to_rgb(x0))
    # Previews never change the picture.
    assert np.array_equal(result.images[0], engine.generate(request).images[0])


@pytest.mark.parametrize("layout", ["decoder-file", "hub", "pth"])
def test_every_layout_decodes_exactly_as_the_diffusers_folder(tiny_paths, tmp_path, layout):
    spec = tiny_paths.spec("hub" if layout == "hub" else "diffusers")
    if layout == "decoder-file":
        source = str(tiny_paths.taesd_decoder_file)
    elif layout == "pth":  # A1111's taesdxl_decoder.pth: a plain state dict
        torch.save(original_decoder_state(build_tiny_autoencoder()), tmp_path / "taesdxl_decoder.pth")
        source = str(tmp_path / "taesdxl_decoder.pth")
    else:
        source = spec.preview_vae_default  # the hub repo id, from the hub cache
    vae = load_tiny_autoencoder(source, spec, torch.float32)
    folder = load_tiny_autoencoder(str(tiny_paths.taesd), spec, torch.float32)
    latents = torch.randn(1, 4, 6, 9, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(vae.decode(latents).sample, folder.decode(latents).sample)


def test_an_explicit_broken_preview_vae_is_an_error_at_start(tiny_paths, tmp_path):
    broken = tmp_path / "taesdxl_decoder.safetensors"
    broken.write_bytes(tiny_paths.taesd_decoder_file.read_bytes()[:200])
    for source, cause in [(str(broken), "corrupt or truncated"), (str(tmp_path / "nope"), r"\(not found\)")]:
        spec = dataclasses.replace(tiny_paths.spec("diffusers"), preview_vae=source)
        with pytest.raises(ModelLoadError, match=cause) as caught:
            InstantStyleEngine.load(spec, device="cpu")
        assert str(caught.value).startswith(f"cannot load {source}: expected a tiny autoencoder")
        assert "\n" not in str(caught.value)


def test_auto_falls_back_to_linear_previews_with_one_logged_line_and_jobs_run(tiny_paths, tmp_path, caplog):
    spec = dataclasses.replace(tiny_paths.spec("diffusers"), preview_vae_default=str(tmp_path / "missing"))
    with caplog.at_level(logging.WARNING, logger="backend.engine.preview_vae"):
        fallback = InstantStyleEngine.load(spec, device="cpu")
    lines = [r.getMessage() for r in caplog.records if r.name == "backend.engine.preview_vae"]
    assert len(lines) == 1 and lines[0].startswith(
        "linear previews: the tiny autoencoder could not be loaded"
    )
    features = fallback.features
    assert features.preview is PreviewMethod.LINEAR and features.problems == lines
    previews = []
    result = fallback.generate(job(steps=2), on_step=previews.append)
    assert len(result.images) == 1 and [p.rgb.shape for p in previews] == [(8, 12, 3)] * 2


def test_a_sweep_previews_every_cell_at_the_asked_size(engine):
    from protocol import SweepAxis

    previews = []
    engine.generate(
        job(steps=2, preview_side=48, sweep=[(SweepAxis.STYLE_SCALE, (0.5, 1.0))]), on_step=previews.append
    )
    assert [p.step for p in previews] == [1, 2, 3, 4]
    assert all(p.rgb.shape == (32, 48, 3) for p in previews)


def test_the_server_says_its_preview_method_and_sends_frames_at_the_asked_size(engine):
    from dataclasses import replace as replaced

    from backend.client import InstantStyleClient
    from protocol import Limits
    from tests.server_helpers import generate_message, run, running_server

    style = noise_image(5)

    async def scenario():
        limits = replaced(Limits(), max_preview_side=40)
        async with (
            running_server(engine, limits=limits) as server,
            InstantStyleClient.connect(server.url) as client,
        ):
            hello = client.hello
            await client.submit(generate_message(1, width=96, height=64, preview_side=48), {0: style})
            asked = await client.follow(1)
            await client.submit(generate_message(2, width=96, height=64, preview_side=24), {0: style})
            small = await client.follow(2)
        return hello, asked, small

    hello, asked, small = run(scenario())
    assert hello.status.features.preview is PreviewMethod.TINY_VAE and hello.limits.max_preview_side == 40
    # 48 asked, the server's limit of 40 wins; 24 asked and given.
    # The server's preview budget shows the first step and the last (the result itself) at least.
    # (The first step at half the side: a blur yet, a quarter of the cost.)
    for outcome, size, first in ((asked, (40, 27), (20, 13)), (small, (24, 16), (12, 8))):
        sizes = {f.index: (f.width, f.height) for f in outcome.previews}
        assert sizes[1] == first and sizes[3] == size and set(sizes) <= {1, 2, 3}
        assert sizes.get(2, size) == size and [p.step for p in outcome.progress] == [1, 2, 3]
