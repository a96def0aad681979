"""Restyling while keeping the lines: Canny edges + ControlNet (InstantStyle's image-based stylization)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from backend.client import InstantStyleClient, frame_image
from backend.engine.canny import canny
from backend.engine.engine import InstantStyleEngine
from backend.engine.loading import ModelLoadError
from backend.engine.request import GenerationRequest, RequestError, StyleReference
from protocol import ErrorCode, Mode
from tests.conftest import noise_image
from tests.server_helpers import generate_message, run, running_server


def square(size: int = 64, start: int = 16, end: int = 48) -> Image.Image:
    pixels = np.zeros((size, size), np.uint8)
    pixels[start:end, start:end] = 255
    return Image.fromarray(pixels).convert("RGB")


STYLE, LINES = noise_image(21), square()


def test_canny_finds_one_pixel_wide_edges_and_nothing_on_flat_areas():
    edges = np.asarray(canny(square()))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) == {0, 255}
    gray = edges[..., 0]
    assert list(gray[30, 10:22]) == [0] * 6 + [255] + [0] * 5  # the square's left side, one pixel wide
    assert gray[20:44, 20:44].max() == 0 and gray[:10].max() == 0  # inside and far outside: nothing
    assert np.asarray(canny(Image.new("L", (32, 32), 128))).max() == 0  # no false edges at the frame


def request(**overrides) -> GenerationRequest:
    fields = {
        "prompt": "a harbour",
        "style_images": [StyleReference(STYLE)],
        "width": 64,
        "height": 64,
        "steps": 3,
        "seed": 4,
        "mode": Mode.CONTROL,
        "init_image": LINES,
    }
    fields.update(overrides)
    return GenerationRequest(**fields)


def test_control_scale_zero_is_plain_txt2img_and_the_edges_steer_otherwise(engine):
    assert Mode.CONTROL in engine.modes
    plain = engine.generate(request(mode=Mode.TXT2IMG, init_image=None)).images[0]
    assert np.array_equal(engine.generate(request(control_scale=0.0)).images[0], plain)
    steered = engine.generate(request()).images[0]
    assert not np.array_equal(steered, plain)
    assert np.array_equal(engine.generate(request()).images[0], steered)
    other_lines = engine.generate(request(init_image=square(start=8, end=30))).images[0]
    assert not np.array_equal(other_lines, steered)


def test_control_runs_every_step_and_needs_an_init_image(engine):
    totals: list[int] = []
    engine.generate(request(steps=4, strength=0.25), on_step=lambda p: totals.append(p.total))
    assert totals == [4, 4, 4, 4]  # strength does not apply: the edges, not the pixels, carry the picture
    with pytest.raises(RequestError, match="init image"):
        engine.generate(request(init_image=None))


def test_without_a_controlnet_the_mode_is_refused_clearly(engine):
    bare = InstantStyleEngine(engine.pipeline, engine.spec)
    assert Mode.CONTROL not in bare.modes
    with pytest.raises(RequestError, match="--controlnet"):
        bare.generate(request())


@pytest.mark.parametrize("layout", ["hub", "single-file"])
def test_every_layout_brings_the_same_controlnet(engine, tiny_paths, layout):
    other = InstantStyleEngine.load(tiny_paths.spec(layout), device="cpu")
    mine, theirs = engine.controlnet.state_dict(), other.controlnet.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_missing_controlnet_names_the_path(tiny_paths, tmp_path):
    with pytest.raises(ModelLoadError, match="no-controlnet"):
        InstantStyleEngine.load(
            replace(tiny_paths.spec(), controlnet=str(tmp_path / "no-controlnet")), device="cpu"
        )


def test_control_through_the_server(engine):
    async def scenario(server_engine):
        async with running_server(server_engine) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(
                generate_message(1, mode="control", init_image=1, steps=3, seed=4, prompt="a harbour"),
                {0: STYLE, 1: LINES},
            )
            return client.hello.modes, await client.follow(1)

    modes, outcome = run(scenario(engine))
    assert Mode.CONTROL in modes and outcome.error is None
    assert np.array_equal(
        np.asarray(frame_image(outcome.images[0]))[..., :3], engine.generate(request()).images[0]
    )

    modes, refused = run(scenario(InstantStyleEngine(engine.pipeline, engine.spec)))
    assert Mode.CONTROL not in modes
    assert refused.error.code is ErrorCode.BAD_REQUEST and "ControlNet" in refused.error.message
