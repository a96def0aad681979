"""Keep the picture, change the style: a Tile ControlNet conditioned on the init image itself (issue 24).

The tiny models ship a second random ControlNet standing in for a Tile ControlNet; every path a tile
job takes (engine, command line, server) gives exactly the engine's pixels.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from backend.client import InstantStyleClient, frame_image
from backend.engine.canny import canny
from backend.engine.control import ControlNets
from backend.engine.downloads import wanted_from_hub
from backend.engine.engine import InstantStyleEngine
from backend.engine.family import SD15, SDXL
from backend.engine.family_detect import resolve_spec
from backend.engine.loading import ModelLoadError, ModelSpec, load_controlnet
from backend.engine.memory import MemoryTier
from backend.engine.memory_budget import JobShape, at_rest, peak, sdxl_sizes
from backend.engine.model_loading import check_controlnet
from backend.engine.request import GenerationRequest, Refine, RequestError, StyleReference
from protocol import ControlKind, ErrorCode, Mode, ModelFamily
from tests.conftest import noise_image
from tests.server_helpers import generate_message, run, running_server

STYLE = noise_image(21)
PICTURE = noise_image(33, size=80).resize((80, 96))
"""The init picture, not at the job's size: the condition is the picture resized to it."""
EDGES, TILE = ControlKind.EDGES, ControlKind.TILE


def request(**overrides) -> GenerationRequest:
    fields = {
        "prompt": "a harbour",
        "style_images": [StyleReference(STYLE)],
        "width": 64,
        "height": 64,
        "steps": 3,
        "seed": 4,
        "mode": Mode.CONTROL,
        "control": TILE,
        "init_image": PICTURE,
    }
    fields.update(overrides)
    return GenerationRequest(**fields)


def tile_net(engine: InstantStyleEngine) -> torch.nn.Module:
    return engine.controlnets.loaded[TILE]


def test_the_tiny_model_offers_both_controls(engine):
    assert engine.features.controls == [EDGES, TILE] and Mode.CONTROL in engine.modes
    canny_weights, tile_weights = engine.controlnet.state_dict(), tile_net(engine).state_dict()
    assert canny_weights.keys() == tile_weights.keys()
    assert any(not torch.equal(canny_weights[key], tile_weights[key]) for key in canny_weights)


def test_tile_at_scale_zero_is_txt2img_and_differs_from_edges_otherwise(engine):
    plain = engine.generate(request(mode=Mode.TXT2IMG, control=EDGES, init_image=None)).images[0]
    assert np.array_equal(engine.generate(request(control_scale=0.0)).images[0], plain)
    tiled = engine.generate(request()).images[0]
    assert not np.array_equal(tiled, plain)
    assert np.array_equal(engine.generate(request()).images[0], tiled)
    edges = engine.generate(request(control=EDGES)).images[0]
    assert not np.array_equal(edges, tiled) and not np.array_equal(edges, plain)


def conditions(module: torch.nn.Module) -> tuple[list[torch.Tensor], object]:
    """What ``module`` receives as ``controlnet_cond`` at each call (and the hook's handle)."""
    seen: list[torch.Tensor] = []

    def hook(_module, _args, kwargs):
        seen.append(kwargs["controlnet_cond"].detach().clone())

    return seen, module.register_forward_pre_hook(hook, with_kwargs=True)


def as_pixels(condition: torch.Tensor) -> np.ndarray:
    """A condition batch's first picture as uint8 HWC (the pipeline hands it over in [0, 1])."""
    return (condition[0].permute(1, 2, 0).float() * 255).round().to(torch.uint8).numpy()


def test_the_tile_condition_is_the_init_picture_itself_and_edges_get_canny(engine):
    resized = PICTURE.convert("RGB").resize((64, 64), Image.Resampling.LANCZOS)
    tile_seen, tile_hook = conditions(tile_net(engine))
    edges_seen, edges_hook = conditions(engine.controlnet)
    try:
        engine.generate(request())
        assert len(tile_seen) == 3 and not edges_seen  # one call a step; the canny one stays out
        assert all(np.array_equal(as_pixels(c), np.asarray(resized)) for c in tile_seen)
        engine.generate(request(control=EDGES))
        assert len(tile_seen) == 3 and len(edges_seen) == 3
        assert np.array_equal(as_pixels(edges_seen[0]), np.asarray(canny(resized)))
    finally:
        tile_hook.remove()
        edges_hook.remove()


def test_each_control_has_its_own_pipeline_sharing_the_models(engine):
    tile_pipe, edges_pipe = engine.pipeline_for(Mode.CONTROL, TILE), engine.pipeline_for(Mode.CONTROL, EDGES)
    assert tile_pipe is not edges_pipe and tile_pipe.unet is edges_pipe.unet is engine.pipeline.unet
    assert tile_pipe.controlnet is tile_net(engine) and edges_pipe.controlnet is engine.controlnet
    assert engine.pipeline_for(Mode.CONTROL, TILE) is tile_pipe  # made once


def test_a_tile_job_at_canvas_resolution_refines_its_picture_img2img(engine):
    steps: list = []
    canvas = request(width=128, height=96, steps=2, refine=Refine(strength=0.35, tile=64, overlap=16))
    image = engine.generate(canvas, on_step=steps.append).images[0]
    assert image.shape == (96, 128, 3) and [p.step for p in steps if not p.tiles] == [1, 2, 3]


def test_a_control_not_loaded_is_refused_in_one_line(engine):
    edges_only = InstantStyleEngine(engine.pipeline, engine.spec, controlnet=engine.controlnet)
    assert edges_only.features.controls == [EDGES] and Mode.CONTROL in edges_only.modes
    with pytest.raises(RequestError, match="--tile-controlnet auto") as refused:
        edges_only.generate(request())
    assert len(str(refused.value).splitlines()) == 1 and SDXL.tile_controlnet in str(refused.value)
    tile_only = InstantStyleEngine(engine.pipeline, engine.spec, tile_controlnet=tile_net(engine))
    assert tile_only.features.controls == [TILE] and Mode.CONTROL in tile_only.modes
    with pytest.raises(RequestError, match="--controlnet auto"):
        tile_only.generate(request(control=EDGES))
    bare = InstantStyleEngine(engine.pipeline, engine.spec)
    assert bare.features.controls == [] and Mode.CONTROL not in bare.modes
    assert ControlNets().kinds == [] and ControlNets(tile=tile_net(engine)).kinds == [TILE]


def test_a_tile_job_through_the_server_has_the_engines_pixels(engine):
    async def scenario():
        async with running_server(engine) as server, InstantStyleClient.connect(server.url) as client:
            message = generate_message(
                1, mode=Mode.CONTROL, control=TILE, init_image=1, steps=3, seed=4, prompt="a harbour"
            )
            await client.submit(message, {0: STYLE, 1: PICTURE})
            return client.hello, await client.follow(1)

    hello, outcome = run(scenario())
    assert hello.status.features.controls == [EDGES, TILE] and Mode.CONTROL in hello.modes
    assert outcome.error is None
    result = np.asarray(frame_image(outcome.images[0]))[..., :3]
    assert np.array_equal(result, engine.generate(request()).images[0])


def test_a_server_without_a_tile_controlnet_refuses_tile_in_one_line_and_serves_on(engine):
    edges_only = InstantStyleEngine(engine.pipeline, engine.spec, controlnet=engine.controlnet)

    async def scenario():
        async with running_server(edges_only) as server, InstantStyleClient.connect(server.url) as client:
            inputs = {0: STYLE, 1: PICTURE}
            await client.submit(generate_message(1, mode=Mode.CONTROL, control=TILE, init_image=1), inputs)
            refused = await client.follow(1)
            await client.submit(generate_message(2, mode=Mode.CONTROL, init_image=1), inputs)
            return client.hello, refused, await client.follow(2)

    hello, refused, served = run(scenario())
    assert hello.status.features.controls == [EDGES]
    assert refused.error.code is ErrorCode.BAD_REQUEST and "--tile-controlnet" in refused.error.message
    assert len(refused.error.message.splitlines()) == 1
    assert served.error is None and len(served.images) == 1


def test_generate_on_the_command_line_writes_the_engines_tile_picture(engine, tmp_path, capsys):
    from backend import cli

    STYLE.save(tmp_path / "style.png")
    PICTURE.save(tmp_path / "picture.png")
    arguments = [
        "generate", "--model", "tiny", "--device", "cpu", "--style", str(tmp_path / "style.png"),
        "--prompt", "a harbour", "--width", "64", "--height", "64", "--steps", "3", "--seed", "4",
        "--mode", "control", "--control", "tile", "--init", str(tmp_path / "picture.png"),
        "--out", str(tmp_path / "tile.png"),
    ]  # fmt: skip
    assert cli.main(arguments) == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    with Image.open(tmp_path / "tile.png") as written:
        assert np.array_equal(np.asarray(written.convert("RGB")), engine.generate(request()).images[0])
    without_mode = [a for a in arguments if a not in ("--mode", "control")]
    assert cli.main(without_mode) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == ["error: control tile is only used with mode control"]


def test_tile_controlnet_auto_resolves_per_family():
    sdxl = resolve_spec(ModelSpec(tile_controlnet="auto"))
    assert sdxl.tile_controlnet == "xinsir/controlnet-tile-sdxl-1.0" == SDXL.tile_controlnet
    sd15 = resolve_spec(ModelSpec(family=ModelFamily.SD15, controlnet="auto", tile_controlnet="auto"))
    assert sd15.tile_controlnet == "lllyasviel/control_v11f1e_sd15_tile" == SD15.tile_controlnet
    assert sd15.controlnet == SD15.controlnet and sd15.controls == [EDGES, TILE]
    assert resolve_spec(ModelSpec(tile_controlnet="me/my-tile")).tile_controlnet == "me/my-tile"
    plain = resolve_spec(ModelSpec())
    assert plain.tile_controlnet is None and plain.controls == []


def test_each_controlnet_is_downloaded_and_counted_in_the_budget():
    spec = ModelSpec(controlnet=SDXL.controlnet, tile_controlnet=SDXL.tile_controlnet)
    folders, _singles = wanted_from_hub(spec, torch.float16)
    repos = {folder.repo_id: folder.variant for folder in folders}
    assert repos[SDXL.controlnet] == repos[SDXL.tile_controlnet] == "fp16"
    sizes = sdxl_sizes(torch.float16)
    one, two = JobShape(controlnet=1), JobShape(controlnet=2)
    assert at_rest(MemoryTier.FULL, two, sizes) - at_rest(MemoryTier.FULL, one, sizes) == pytest.approx(
        sizes.controlnet
    )
    assert JobShape(controlnet=True).controlnet == 1  # a bool still counts one
    # Below the full tier ControlNets rest in CPU memory and one visits a job: the peak is one's.
    assert peak(MemoryTier.ENCODERS_OFF, two, sizes) == peak(MemoryTier.ENCODERS_OFF, one, sizes)


def test_every_layout_brings_the_same_tile_controlnet(engine, tiny_paths):
    hub = load_controlnet(tiny_paths.spec("hub"), torch.float32, TILE)
    mine, theirs = tile_net(engine).state_dict(), hub.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_tile_controlnet_of_the_other_family_is_one_line_naming_the_option(engine, sd15_paths):
    spec = replace(engine.spec, tile_controlnet=str(sd15_paths.tile_controlnet))
    other = load_controlnet(spec, torch.float32, TILE)
    with pytest.raises(ModelLoadError) as refused:
        check_controlnet(other, engine.pipeline, spec, TILE)
    assert f"--tile-controlnet auto loads {SDXL.tile_controlnet}" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1


def test_the_tiny_sd15_keeps_the_picture_too(sd15_engine):
    assert sd15_engine.features.controls == [EDGES, TILE]
    plain = sd15_engine.generate(request(mode=Mode.TXT2IMG, control=EDGES, init_image=None)).images[0]
    assert np.array_equal(sd15_engine.generate(request(control_scale=0.0)).images[0], plain)
    tiled = sd15_engine.generate(request()).images[0]
    assert not np.array_equal(tiled, plain)
    assert not np.array_equal(sd15_engine.generate(request(control=EDGES)).images[0], tiled)
