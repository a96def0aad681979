"""A job at a canvas's own resolution over the wire: ``generate.refine``, the canvas limits, and the
result in RESULT_TILE frames when one frame would be over the client's message limit, put together
by the plugin's session (and the headless client) with exactly the engine's pixels."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from backend.client import InstantStyleClient, frame_image
from backend.engine.request import GenerationRequest, Refine, StyleReference
from backend.server.job_events import result_frames, tile_side
from krita_plugin.instantstyle.jobs import Job, JobInputs, JobState, Target
from krita_plugin.instantstyle.session import UpdateKind
from protocol import (
    ErrorCode,
    FrameKind,
    Generate,
    Limits,
    Mode,
    ModelFamily,
    PixelFormat,
    PixelFrame,
    Progress,
    ProtocolError,
    ResultImage,
    StyleImage,
    decode_client_message,
    decode_frame,
    decode_server_message,
    encode_message,
)
from protocol import Refine as WireRefine
from tests.conftest import noise_image
from tests.server_helpers import ServerThread, generate_message, run, running_server
from tests.test_plugin_client import STYLE, as_image, connect, pump, settings


def test_an_image_over_the_message_limit_travels_in_tiles_that_put_it_back_together():
    image = np.random.default_rng(4).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    limit = 64 * 64 * 4 + 28  # one 64² tile and its header and place
    frames = result_frames(9, 0, image, limit)
    assert tile_side(limit) == 64 and len(frames) == 4 * 5 and all(len(f) <= limit for f in frames)
    assembly = ResultImage(300, 200)
    for data in frames:
        frame = decode_frame(data)
        assert frame.kind is FrameKind.RESULT_TILE and not assembly.complete
        assembly.add(frame)
    rgba = np.frombuffer(bytes(assembly.pixels), np.uint8).reshape(200, 300, 4)
    assert assembly.complete and np.array_equal(rgba[..., :3], image) and (rgba[..., 3] == 255).all()
    (whole,) = result_frames(9, 0, image, 300 * 200 * 4 + 20)  # fits: one RESULT frame, as before
    assert decode_frame(whole).kind is FrameKind.RESULT


def tile(x: int, y: int, width: int = 8, height: int = 8, kind=FrameKind.RESULT_TILE) -> PixelFrame:
    return PixelFrame(kind, 1, 0, width, height, PixelFormat.RGBA8, bytes(width * height * 4), x, y)


@pytest.mark.parametrize(
    ("frames", "said"),
    [
        ([tile(12, 0)], "outside the 16x16 image"),
        ([tile(0, 0), tile(0, 0)], "overlaps another"),
        ([tile(0, 0, 16, 16), tile(8, 8)], "overlaps another"),
        ([tile(0, 0, 8, 8, FrameKind.PREVIEW)], "is not part of a result"),
        ([tile(0, 0, 8, 16, FrameKind.RESULT)], "a 8x16 frame for a 16x16 image"),
    ],
)
def test_a_tile_that_does_not_fit_its_image_is_a_bad_frame(frames, said):
    assembly = ResultImage(16, 16)
    with pytest.raises(ProtocolError, match=said) as raised:
        for frame in frames:
            assembly.add(decode_frame(frame.encode()))
    assert raised.value.code is ErrorCode.BAD_FRAME


def test_a_result_tile_frame_round_trips_and_a_short_one_is_refused():
    frame = tile(24, 40)
    assert decode_frame(frame.encode()) == frame
    with pytest.raises(ProtocolError, match="has no place"):
        decode_frame(frame.encode()[:24])


def message(**fields) -> str:
    values = {"job_id": 1, "prompt": "x", "style_images": [StyleImage(0)], "width": 4096, "height": 3072}
    return encode_message(Generate(**{**values, **fields}))


def test_a_canvas_goes_up_to_the_servers_canvas_limit_with_refine_only():
    limits = Limits()
    assert decode_client_message(message(refine=WireRefine(0.3, 512, 64)), limits).refine.tile == 512
    with pytest.raises(
        ProtocolError, match=r"width 4096 is over this server's limit of 2048 \(with refine: 8192\)"
    ):
        decode_client_message(message(), limits)
    with pytest.raises(ProtocolError, match="width 9000 is over this server's limit of 8192"):
        decode_client_message(message(width=9000, refine=WireRefine()), limits)
    small = replace(limits, max_canvas_pixels=4096 * 2048)
    with pytest.raises(ProtocolError, match="4096x3072 is over 8388608 pixels"):
        decode_client_message(message(refine=WireRefine()), small)
    # A batch at canvas resolution: its pictures share one canvas's budget (4 of 4096x3072 fit 8192²).
    assert decode_client_message(message(refine=WireRefine(), batch=4), limits).batch == 4
    with pytest.raises(ProtocolError, match="a batch of 6 at 4096x3072 is over 67108864 pixels"):
        decode_client_message(message(refine=WireRefine(), batch=6), limits)
    for fields, said in [
        ({"live": True}, "cannot have live"),
        ({"refine": WireRefine(tile=100)}, "refine.tile must be a multiple of 8"),
        ({"refine": WireRefine(tile=64, overlap=64)}, "refine.overlap must be smaller than refine.tile"),
    ]:
        with pytest.raises(ProtocolError, match=said):
            decode_client_message(message(**{"refine": WireRefine(), **fields}), limits)


def test_the_plugin_gets_a_canvas_sized_result_in_tiles_with_the_engines_pixels(engine):
    # Messages of 32 KiB: the style reference (12 KiB) fits, a 256x192 RGBA result (192 KiB) does not.
    limits = replace(Limits(), max_message_bytes=32 * 1024)
    with ServerThread(engine, limits=limits) as server:
        session = connect(server.url)
        try:
            assert session.features.native_side == 64  # the tiny model's: 256x192 is far above
            job = session.submit(
                settings(steps=4), JobInputs([(as_image(STYLE), 1.0)]), Target(0, 0, 256, 192)
            )
            updates = pump(
                session, lambda u: any(x.kind in (UpdateKind.RESULT, UpdateKind.FAILED) for x in u)
            )
        finally:
            session.connection.stop()
    assert job.state is JobState.DONE, job.message
    (image,) = job.images
    assert (image.width, image.height, job.width, job.height) == (256, 192, 256, 192)
    # Each tile reached the plugin as a part of the result (written into the layer as it arrives),
    # with the whole image's pixels at its place, before the result itself.
    kinds = [u.kind for u in updates if u.kind in (UpdateKind.RESULT_PART, UpdateKind.RESULT)]
    assert kinds[-1] is UpdateKind.RESULT and len(kinds) > 2 and set(kinds[:-1]) == {UpdateKind.RESULT_PART}
    whole = np.frombuffer(image.data, np.uint8).reshape(192, 256, 4)
    covered = np.zeros((192, 256), int)
    for part in (u.part for u in updates if u.kind is UpdateKind.RESULT_PART):
        rows, columns = slice(part.y, part.y + part.image.height), slice(part.x, part.x + part.image.width)
        tile = np.frombuffer(part.image.data, np.uint8).reshape(part.image.height, part.image.width, 4)
        assert part.index == 0 and np.array_equal(tile, whole[rows, columns])
        covered[rows, columns] += 1
    assert (covered == 1).all()
    expected = engine.generate(
        GenerationRequest(
            prompt="a fox", style_images=[StyleReference(STYLE)], width=256, height=192, steps=4, seed=11,
            refine=Refine(),
        )
    ).images[0]  # fmt: skip
    rgba = np.frombuffer(image.data, np.uint8).reshape(192, 256, 4)
    assert np.array_equal(rgba[..., :3], expected)


def test_canvas_resolution_off_or_a_small_layer_keeps_one_job_within_the_limits(engine):
    with ServerThread(engine) as server:
        session = connect(server.url)
        try:
            inputs = JobInputs([(as_image(noise_image(2)), 1.0)])
            off = session.submit(settings(steps=2, canvas_resolution=False), inputs, Target(0, 0, 256, 192))
            small = session.submit(settings(steps=2), inputs, Target(0, 0, 64, 72))
            pump(session, lambda _u: off.state.finished and small.state.finished)
        finally:
            session.connection.stop()
    # Off: the canvas as it fits the server's size limits, one job (the layer stretches it).
    assert (off.images[0].width, off.images[0].height) == (256, 192)
    assert (off.total, small.total) == (2, 2)  # one job each: no refining stage
    assert (small.images[0].width, small.images[0].height) == (64, 72)


def test_a_tiles_progress_round_trips_and_a_tile_past_its_count_is_refused():
    tiled = Progress(7, 5, 8, 61.0, tile=7, tiles=24)
    assert decode_server_message(encode_message(tiled)) == tiled
    assert tiled.describe() == "step 6/8, tile 7/24" and Progress(7, 3, 30).describe() == "step 3/30"
    for tile, tiles in ((25, 24), (0, 24), (3, 0)):
        text = json.dumps({**json.loads(encode_message(Progress(7, 5, 8))), "tile": tile, "tiles": tiles})
        with pytest.raises(ProtocolError, match=r"progress.tile must be 1..tiles"):
            decode_server_message(text)


def test_a_refined_jobs_progress_counts_its_tiles_over_the_wire(engine):
    refine = WireRefine(strength=0.4, tile=64, overlap=16)

    async def scenario():
        async with (
            running_server(engine, preview_share=None) as server,
            InstantStyleClient.connect(server.url) as client,
        ):
            await client.submit(
                generate_message(1, width=192, height=128, steps=5, refine=refine), {0: STYLE}
            )
            return await client.follow(1)

    outcome = run(scenario())
    assert outcome.error is None, outcome.error
    # 5 steps at the tiny model's area, then 2 refining steps (5 at 0.4) of 12 tiles each.
    tiled = [(p.step, p.tile, p.tiles) for p in outcome.progress if p.tiles]
    assert tiled == [(step, tile, 12) for step in (5, 6) for tile in range(1, 13)]
    assert [p.step for p in outcome.progress if not p.tiles] == [1, 2, 3, 4, 5, 6, 7]
    # A tile's progress has no PREVIEW; every step's has one, the whole canvas at the preview size.
    order = [kind for kind in outcome.order if kind in ("Progress", "PREVIEW")]
    assert order == ["Progress", "PREVIEW"] * 5 + (["Progress"] * 12 + ["Progress", "PREVIEW"]) * 2
    assert {(f.width, f.height) for f in outcome.previews[5:]} == {(192, 128)}
    expected = engine.generate(
        GenerationRequest(
            prompt="a lighthouse", style_images=[StyleReference(STYLE)], width=192, height=128, steps=5,
            seed=5, refine=Refine(strength=0.4, tile=64, overlap=16),
        )
    ).images[0]  # fmt: skip
    assert np.array_equal(np.asarray(frame_image(outcome.images[0]))[..., :3], expected)


def test_the_docker_shows_which_tile_of_a_refining_step_runs():
    job = Job(1, "x", 1, Target(0, 0, 192, 128), 192, 128, step=3, total=5)
    assert job.progress == (3, 5, "step 3 / 5")
    job.tile, job.tiles = 7, 12
    assert job.progress == (3 * 12 + 7, 5 * 12, "step 4 / 5 · tile 7 / 12")


def test_previews_are_made_no_larger_than_one_message_takes():
    assert Limits().preview_side_in_one_message == 1024  # 1024² RGB is 3 MiB of the 16 MiB
    small = replace(Limits(), max_message_bytes=32 * 1024)
    assert small.preview_side_in_one_message == 104 and 104 * 104 * 3 + 64 <= 32 * 1024 < 105 * 105 * 3


def test_regions_and_selections_are_made_at_canvas_resolution_and_sweeps_are_not():
    from krita_plugin.instantstyle.job_message import wants_refine
    from krita_plugin.instantstyle.jobs import Image as Pixels
    from krita_plugin.instantstyle.jobs import RegionInput

    style = (as_image(STYLE), 1.0)
    mask = Pixels(4, 4, 1, bytes(16))
    regional = JobInputs([style], regions=[RegionInput("sky", mask, [style])])
    assert wants_refine(settings(), regional, 4096, 3072, native=1024, sweep=False)
    assert wants_refine(settings(), JobInputs([style], mask=mask), 4096, 3072, native=1024, sweep=False)
    assert not wants_refine(settings(), regional, 4096, 3072, native=1024, sweep=True)
    assert not wants_refine(settings(), regional, 1024, 1024, native=1024, sweep=False)
    assert not wants_refine(settings(canvas_resolution=False), regional, 4096, 3072, native=1024, sweep=False)


def test_a_batch_over_the_canvas_budget_is_made_at_the_models_size(engine):
    limits = replace(Limits(), max_canvas_pixels=256 * 192 * 2)  # two canvases of 256x192
    with ServerThread(engine, limits=limits) as server:
        session = connect(server.url)
        try:
            inputs = JobInputs([(as_image(STYLE), 1.0)])
            pair = session.submit(settings(steps=2, batch=2), inputs, Target(0, 0, 256, 192))
            three = session.submit(settings(steps=2, batch=3), inputs, Target(0, 0, 256, 192))
            pump(session, lambda _u: pair.state.finished and three.state.finished)
        finally:
            session.connection.stop()
    assert pair.state is three.state is JobState.DONE, (pair.message, three.message)
    assert pair.total > 2 and three.total == 2  # two refined; three in one job each, no refining stage
    assert [(i.width, i.height) for i in three.images] == [(256, 192)] * 3


def test_cfg_rescale_is_refused_for_keep_lines_and_the_docker_leaves_it_out():
    from krita_plugin.instantstyle import job_message
    from krita_plugin.instantstyle.jobs import Image as Pixels
    from krita_plugin.instantstyle.settings import JobKind

    control = message(mode=Mode.CONTROL, init_image=0, guidance_rescale=0.5, width=64, height=64)
    with pytest.raises(ProtocolError, match="guidance_rescale is not available with mode control") as raised:
        decode_client_message(control, Limits())
    assert raised.value.code is ErrorCode.BAD_FIELD
    assert (
        decode_client_message(message(guidance_rescale=0.5, width=64, height=64), Limits()).guidance_rescale
        == 0.5
    )
    style = Pixels(8, 8, 3, bytes(8 * 8 * 3))
    inputs = JobInputs([(style, 1.0)], init_image=Pixels(8, 8, 4, bytes(8 * 8 * 4)))
    shape = job_message.JobShape(3, 64, 64, seed=1, preview_side=256)
    for kind, sent in ((JobKind.KEEP_LINES, None), (JobKind.STYLIZE, 0.5)):
        built, _frames = job_message.build_message(settings(kind=kind, guidance_rescale=0.5), inputs, shape)
        assert built.guidance_rescale == sent, kind
    # SD1.5's img2img pipeline has no CFG rescale either: the artist's saved value stays, unsent.
    sd15 = ModelFamily.SD15
    stylize = settings(kind=JobKind.STYLIZE, guidance_rescale=0.5)
    built, _frames = job_message.build_message(stylize, inputs, shape, True, sd15)
    assert built.mode is Mode.IMG2IMG and built.guidance_rescale is None
    built, _frames = job_message.build_message(settings(guidance_rescale=0.5), inputs, shape, True, sd15)
    assert built.mode is Mode.TXT2IMG and built.guidance_rescale == 0.5  # SD1.5's txt2img has it
