"""Jobs at a canvas's own resolution: the first stage at the model's native area, then upscaled and
refined with the UNet in overlapping tiles (``backend/engine/refine.py``, ``tiled_unet.py``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine.previews import job_previews
from backend.engine.refine import first_stage_size, run_refined
from backend.engine.request import GenerationRequest, Refine, RequestError, StyleReference
from backend.engine.tiled_unet import tiled_unet
from backend.engine.tiles import tile_grid
from protocol import Mode
from tests.conftest import noise_image


class Pointwise(torch.nn.Module):
    """A model with no spatial context (a 1×1 convolution): whatever is tiled, nothing may change."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Conv2d(4, 4, 1)

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, return_dict=True):
        return (self.mix(sample) * (1 + added_cond_kwargs["time_ids"][:, :1, None, None] * 0),)


def test_the_first_stage_keeps_the_proportions_at_the_native_area():
    width, height = first_stage_size(4096, 3072, 1024)
    assert (width % 64, height % 64) == (0, 0)
    assert 0.85 * 1024**2 <= width * height <= 1.15 * 1024**2  # SDXL's buckets are around 1 MP
    assert abs(width / height / (4 / 3) - 1) < 0.08  # as near the canvas's proportions as 64 px allow
    assert first_stage_size(800, 600, 1024) == (800, 600)  # fits: one job at its own size
    assert first_stage_size(2480, 3508, 1024)[1] > first_stage_size(2480, 3508, 1024)[0]  # A4 portrait


def test_blending_tiles_adds_no_seam_to_a_model_without_spatial_context():
    torch.manual_seed(0)
    model = Pointwise()
    sample = torch.randn(2, 4, 20, 28)
    time_ids = torch.tensor([[160.0, 224, 0, 0, 160, 224]] * 2)
    whole = model(sample, 1, None, added_cond_kwargs={"time_ids": time_ids})[0]
    with tiled_unet(model, tile=8, overlap=3) as calls, torch.no_grad():
        tiled = model(sample, 1, None, added_cond_kwargs={"time_ids": time_ids}, return_dict=False)[0]
    assert calls == [20]  # 4 rows × 5 columns of 8² tiles sharing 3
    assert torch.allclose(tiled, whole.detach(), atol=1e-6)
    flat = torch.full((1, 4, 20, 28), 0.3)
    with tiled_unet(model, tile=8, overlap=3), torch.no_grad():
        out = model(flat, 1, None, added_cond_kwargs={"time_ids": time_ids[:1]}, return_dict=False)[0]
    spread = out.amax(dim=(-2, -1)) - out.amin(dim=(-2, -1))  # per channel, over the whole canvas
    assert float(spread.max()) < 1e-6  # a flat picture stays flat across every tile border
    assert "forward" not in model.__dict__  # the model is as it was afterwards


class MaskedPointwise(Pointwise):
    """``Pointwise`` times the regions' masks at the latents' grid: tiled, each tile must see its own
    part of every mask, or the result changes."""

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, **kwargs):
        (mask,) = kwargs["cross_attention_kwargs"]["ip_adapter_masks"]
        scale = mask.shape[-2] // sample.shape[-2]
        assert mask.shape[-1] // sample.shape[-1] == scale  # the tile's own proportions
        return (self.mix(sample) * (1 + mask[..., ::scale, ::scale].sum(dim=1, keepdim=True)),)


def test_each_tile_gets_its_own_part_of_every_regions_mask():
    torch.manual_seed(0)
    model, sample = MaskedPointwise(), torch.randn(2, 4, 20, 28)
    masks = [(torch.rand(1, 3, 160, 224) > 0.5).float()]  # three regions at the canvas's pixels
    conditioning = {"added_cond_kwargs": {"time_ids": torch.tensor([[160.0, 224, 0, 0, 160, 224]] * 2)}}
    attention = {"cross_attention_kwargs": {"ip_adapter_masks": masks, "other": 1}}
    with torch.no_grad():
        whole = model(sample, 1, None, **conditioning, **attention)[0]
        with tiled_unet(model, tile=8, overlap=3) as calls:
            tiled = model(sample, 1, None, **conditioning, **attention, return_dict=False)[0]
    assert calls == [20] and torch.allclose(tiled, whole, atol=1e-6)
    assert attention["cross_attention_kwargs"]["ip_adapter_masks"][0] is masks[0]  # the job's own, uncut


def test_masks_at_latent_resolution_are_cropped_per_tile_too():
    torch.manual_seed(1)
    model, sample = MaskedPointwise(), torch.randn(1, 4, 20, 28)
    masks = [(torch.rand(1, 2, 20, 28) > 0.5).float()]  # a canvas's masks, made at latent resolution
    conditioning = {"added_cond_kwargs": {"time_ids": torch.tensor([[160.0, 224, 0, 0, 160, 224]])}}
    attention = {"cross_attention_kwargs": {"ip_adapter_masks": masks}}
    with torch.no_grad():
        whole = model(sample, 1, None, **conditioning, **attention)[0]
        with tiled_unet(model, tile=8, overlap=3):
            tiled = model(sample, 1, None, **conditioning, **attention, return_dict=False)[0]
    assert torch.allclose(tiled, whole, atol=1e-6)


def test_with_deferred_previews_a_steps_report_comes_before_the_next_steps_tiles(engine, monkeypatch):
    """On a GPU each step's preview is handed over a step late; the tiles of the next step must
    still come after it, or the docker's bar steps back after every step."""
    from backend.engine import previews

    original = previews.PreviewStream.__init__

    def as_on_a_gpu(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "deferred": True})

    monkeypatch.setattr(previews.PreviewStream, "__init__", as_on_a_gpu)
    request = job(width=192, height=128, refine=Refine(strength=0.4, tile=64, overlap=16), preview_share=None)

    def order(reports):
        return [(p.step + 1 if p.tiles else p.step, not p.tiles) for p in reports]

    reports = []
    engine.generate(request, on_step=reports.append)
    assert order(reports) == sorted(order(reports)) and sum(1 for p in reports if p.tiles) == 2 * 12
    monkeypatch.setattr(engine, "flush_previews", lambda: None)  # without the hand-over: out of order
    unflushed = []
    engine.generate(request, on_step=unflushed.append)
    assert order(unflushed) != sorted(order(unflushed))


def test_regions_apply_at_canvas_resolution_tile_by_tile(engine):
    from backend.engine.regions import StyleRegion

    refine = Refine(strength=0.4, tile=64, overlap=16)
    top = Image.new("L", (192, 128), 0)
    top.paste(255, (0, 0, 192, 64))
    plain = engine.generate(job(width=192, height=128, refine=refine)).images[0]
    # One region over everything is the plain job (test_regions.py), tile by tile as well.
    everywhere = StyleRegion(Image.new("L", (192, 128), 255), job().style_images)
    one = engine.generate(job(width=192, height=128, refine=refine, style_images=[], regions=[everywhere]))
    assert np.array_equal(one.images[0], plain)
    # A region over the top half with other references: the picture changes.
    other = StyleRegion(top, [StyleReference(noise_image(9, size=64))])
    two = engine.generate(job(width=192, height=128, refine=refine, regions=[other])).images[0]
    assert two.shape == plain.shape and not np.array_equal(two, plain)


def test_cancel_stops_a_tiled_step_before_its_next_tile():
    import threading

    from backend.engine.request import JobCancelled

    model, cancel, seen = Pointwise(), threading.Event(), []
    inner = model.forward

    def counting(*args, **kwargs):
        seen.append(1)
        if len(seen) == 3:
            cancel.set()  # the artist pressed Cancel during the third tile
        return inner(*args, **kwargs)

    model.forward = counting
    time_ids = torch.tensor([[160.0, 224, 0, 0, 160, 224]])
    with tiled_unet(model, tile=8, overlap=3, cancel=cancel), pytest.raises(JobCancelled):
        model(torch.zeros(1, 4, 20, 28), 1, None, added_cond_kwargs={"time_ids": time_ids})
    assert len(seen) == 3  # of 20 tiles


def job(**fields) -> GenerationRequest:
    source = noise_image(3, size=64)
    values = {
        "prompt": "a lighthouse",
        "style_images": [StyleReference(noise_image(1, size=64))],
        "content_text": "stripes",
        "mode": Mode.IMG2IMG,
        "init_image": source,
        "strength": 0.6,
        "width": 64,
        "height": 64,
        "steps": 5,
        "seed": 7,
    }
    return GenerationRequest(**{**values, **fields})


def test_a_canvas_that_fits_one_tile_is_refined_exactly_as_without_tiles(engine):
    plain = engine.generate(job()).images[0]
    with tiled_unet(engine.pipeline.unet, tile=16, overlap=2) as calls:
        tiled = engine.generate(job()).images[0]
    assert set(calls) == {1} and np.array_equal(plain, tiled)


def test_a_short_job_still_refines_one_step(engine):
    steps = []
    request = job(width=128, height=96, steps=2, refine=Refine(strength=0.35, tile=64, overlap=16))
    assert request.total_steps == 1 + 1  # img2img: 2 at 0.6; refine: 3 at 0.35 (one would run none)
    image = engine.generate(request, on_step=steps.append).images[0]
    assert image.shape == (96, 128, 3) and [p.step for p in steps if not p.tiles] == [1, 2]


def test_a_larger_canvas_is_made_small_then_refined_in_tiles(engine):
    reports = []
    refine = Refine(strength=0.4, tile=64, overlap=16)
    result = engine.generate(job(width=192, height=128, refine=refine), on_step=reports.append)
    (image,) = result.images
    assert image.shape == (128, 192, 3) and image.dtype == np.uint8
    # One job's progress: 3 img2img steps (5 at 0.6) at 80x56 (the tiny model's 64² area), then 2
    # refining (5 at 0.4) at 192x128 in tiles, each tile reported ("tile 7 of 24") before its step.
    steps = [p for p in reports if not p.tiles]
    assert [p.step for p in steps] == [1, 2, 3, 4, 5] and {p.total for p in reports} == {5}
    count = len(tile_grid(192 // 8, 128 // 8, 64 // 8, 16 // 8))
    assert count == 4 * 3  # 24x16 latent pixels in 8-px tiles that share 2
    expected = [(done_steps, tile) for done_steps in (3, 4) for tile in range(1, count + 1)]
    assert [(p.step, p.tile) for p in reports if p.tiles] == expected
    assert {p.tiles for p in reports if p.tiles} == {count}
    assert all(p.rgb is None for p in reports if p.tiles)
    order = [(p.step + 1 if p.tiles else p.step, bool(not p.tiles)) for p in reports]
    assert order == sorted(order)  # a step's tiles, then the step itself
    # The refining steps show the whole canvas (the last: the result at preview size).
    assert reports[-1].rgb is not None and reports[-1].rgb.shape == (128, 192, 3)
    assert "forward" not in engine.pipeline.unet.__dict__  # the UNet is itself again
    assert result.scores and result.scores[0].style is not None
    # The same job again: the same pixels (the refine is as reproducible as a plain job).
    assert np.array_equal(engine.generate(job(width=192, height=128, refine=refine)).images[0], image)


def test_a_batch_is_made_small_together_then_each_picture_refined_with_its_seed(engine):
    reports = []
    refine = Refine(strength=0.4, tile=64, overlap=16)
    request = job(width=192, height=128, refine=refine, batch=2)
    assert request.total_steps == 3 + 2 * 2
    result = engine.generate(request, on_step=reports.append)
    assert [p.step for p in reports if not p.tiles] == list(range(1, 8)) and {p.total for p in reports} == {7}
    assert result.seeds == [7, 8] and len(result.scores) == 2
    assert [image.shape for image in result.images] == [(128, 192, 3)] * 2
    # Each is the picture its seed makes alone (a batched first stage may round differently).
    for image, seed in zip(result.images, result.seeds, strict=True):
        alone = engine.generate(job(width=192, height=128, refine=refine, seed=seed)).images[0]
        assert np.abs(alone.astype(int) - image.astype(int)).max() <= 2


def test_a_canvas_with_more_latent_pixels_than_its_preview_is_previewed_at_the_preview_size(engine):
    reports = []
    refine = Refine(strength=0.4, tile=64, overlap=16)
    request = job(width=192, height=128, refine=refine, preview_side=12, preview_share=None)
    engine.generate(request, on_step=reports.append)
    pictures = [p.rgb.shape for p in reports if p.rgb is not None]
    # Every step pictured (no budget) by the tiny autoencoder at the 12 px asked, the result too.
    assert pictures == [(8, 12, 3)] * 5
    # Without one, linear previews: at latent resolution up to the size asked, scaled down above.
    for size, shape in (((192, 128), (8, 12, 3)), ((80, 56), (7, 10, 3))):
        shown = []
        stream = job_previews(
            replace(request, width=size[0], height=size[1]), shown.append, torch.device("cpu"), None
        )
        stream.push(1, 1, torch.randn(1, 4, size[1] // 8, size[0] // 8), torch.zeros(1))
        assert shown[0].rgb.shape == shape and stream.last_side == shape[1]


def test_a_selection_is_refined_from_its_first_stage_inside_and_the_canvas_around_it():
    canvas = noise_image(5, size=96).resize((192, 128))
    selection = Image.new("L", (192, 128), 0)
    selection.paste(255, (48, 32, 144, 96))
    made_small = np.full((56, 80, 3), 200, np.uint8)
    calls = []

    def generate_one(request, on_step, cancel):
        calls.append(request)
        from backend.engine.request import GenerationResult

        picture = made_small if len(calls) == 1 else np.zeros((request.height, request.width, 3), np.uint8)
        return GenerationResult([picture], [request.seed], "tiny", True)

    request = job(
        width=192, height=128, mode=Mode.INPAINT, init_image=canvas, mask=selection, refine=Refine()
    )
    run_refined(request, generate_one, Pointwise(), 64, None, None)
    first, second = calls
    assert (first.mode, first.width, first.height, first.mask) == (Mode.INPAINT, 80, 56, selection)
    assert (second.mode, second.mask, second.strength) == (Mode.INPAINT, selection, 0.35)
    start = np.asarray(second.init_image)
    inside = np.asarray(selection) > 127
    assert (start[inside] == 200).all()  # the first stage's picture, upscaled, inside the selection
    assert np.array_equal(start[~inside], np.asarray(canvas)[~inside])  # the artist's canvas around it


def test_a_selection_at_canvas_resolution_runs_tile_by_tile(engine):
    selection = Image.new("L", (192, 128), 0)
    selection.paste(255, (48, 32, 144, 96))
    refine = Refine(strength=0.4, tile=64, overlap=16)
    fields = {"width": 192, "height": 128, "refine": refine, "init_image": noise_image(5, size=96)}
    reports = []
    inpainted = engine.generate(job(mode=Mode.INPAINT, mask=selection, **fields), on_step=reports.append)
    assert inpainted.images[0].shape == (128, 192, 3) and {p.tiles for p in reports if p.tiles} == {12}
    assert not np.array_equal(inpainted.images[0], engine.generate(job(**fields)).images[0])


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"refine": Refine(tile=60)}, "refine tile must be a multiple of 8"),
        ({"refine": Refine(tile=64, overlap=64)}, "must be smaller than its tile"),
        ({"refine": Refine(strength=0.0)}, r"refine strength must be in \(0, 1\]"),
    ],
)
def test_what_a_refined_job_cannot_have_is_said_in_one_line(engine, fields, said):
    request = job(**{"refine": Refine(), **fields})
    with pytest.raises(RequestError, match=said):
        engine.generate(request)


def test_the_command_line_makes_a_picture_at_the_target_size(tmp_path, tiny_paths):
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "big.png"
    arguments = (
        f"-m backend generate --model tiny --style {REPO / 'examples' / 'style.png'} --prompt a-harbour "
        f"--steps 4 --target-size 256x192 --tile 64 --tile-overlap 16 --out {out} --device cpu"
    )
    done = subprocess.run(
        [sys.executable, *arguments.split()], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (256, 192) and "wrote" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "backend", "generate", "--prompt", "x", "--target-size", "4096"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "expected WIDTHxHEIGHT" in bad.stderr and "Traceback" not in bad.stderr
