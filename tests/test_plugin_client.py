"""The plugin's Qt-free client and job model against a real backend on 127.0.0.1 (tiny model)."""

from __future__ import annotations

import numpy as np
import pytest

from backend.engine.request import GenerationRequest, StyleReference
from krita_plugin.instantstyle.connection import Connection, ConnectionState
from krita_plugin.instantstyle.job_message import SubmitError
from krita_plugin.instantstyle.jobs import Image, JobInputs, JobState, Target
from krita_plugin.instantstyle.session import Session, UpdateKind
from krita_plugin.instantstyle.settings import GenerationSettings, JobKind
from tests.conftest import noise_image
from tests.server_helpers import ServerThread, SpyEngine

TIMEOUT = 60.0
STYLE = noise_image(8, size=32)


def as_image(pil) -> Image:
    return Image(pil.width, pil.height, 3, pil.convert("RGB").tobytes())


def settings(**overrides) -> GenerationSettings:
    values = {"prompt": "a fox", "kind": JobKind.NEW_IMAGE, "steps": 4, "seed": 11, "seed_locked": True}
    values.update(overrides)
    return GenerationSettings(**values)


TARGET = Target(0, 0, 64, 64)


def pump(session: Session, until, timeout: float = TIMEOUT) -> list:
    """Call session.update() until ``until(updates)`` holds."""
    import time

    updates: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        updates.extend(session.update())
        if until(updates):
            return updates
        time.sleep(0.01)
    raise TimeoutError(f"no match; last updates {updates[-5:]}")


def connect(url: str, token: str = "") -> Session:
    session = Session(Connection(url, token))
    session.connection.start()
    pump(session, lambda _u: session.connected)
    return session


@pytest.mark.parametrize(("asked", "server_limit", "side"), [(512, 1024, 64), (32, 1024, 32), (512, 16, 16)])
def test_the_preview_size_setting_reaches_the_frames_within_the_servers_limit(
    engine, asked, server_limit, side
):
    from dataclasses import replace

    from protocol import Limits

    limits = replace(Limits(), max_preview_side=server_limit)
    with ServerThread(engine, limits=limits) as server:
        session = connect(server.url)
        try:
            assert session.status.endswith("— full-size previews")
            job = session.submit(
                settings(steps=2, preview_side=asked), JobInputs([(as_image(STYLE), 1.0)]), TARGET
            )
            pump(session, lambda u: any(x.kind is UpdateKind.RESULT for x in u))
        finally:
            session.connection.stop()
    assert (job.preview.width, job.preview.height, job.preview.channels) == (side, side, 3)
    assert job.preview_step == 2


def test_previews_arrive_in_order_and_the_result_matches_the_engine(engine):
    with ServerThread(engine) as server:
        session = connect(server.url)
        try:
            assert session.hello.model.is_test_model
            job = session.submit(settings(content_text="a dog"), JobInputs([(as_image(STYLE), 1.0)]), TARGET)
            updates = pump(session, lambda u: any(x.kind is UpdateKind.RESULT for x in u))
        finally:
            session.connection.stop()
    kinds = [u.kind for u in updates if u.job is job]
    previews = [u for u in updates if u.kind is UpdateKind.PREVIEW]
    assert kinds[0] is UpdateKind.QUEUED and kinds[-1] is UpdateKind.RESULT
    # The preview budget: the first step and the last (the result) always, every step's progress.
    steps = [u.step for u in previews]
    assert steps == sorted(set(steps)) and {1, 4} <= set(steps)
    assert kinds.count(UpdateKind.PROGRESS) == 5  # started + 4 steps
    assert job.state is JobState.DONE and job.step == 4 and job.preview.width == 64
    assert job.layer_names == ["InstantStyle: a fox (seed 11) [TEST MODEL]"]
    assert session.history == [job]

    expected = engine.generate(
        GenerationRequest(
            prompt="a fox",
            style_images=[StyleReference(STYLE)],
            content_text="a dog",
            width=64,
            height=64,
            steps=4,
            seed=11,
        )
    ).images[0]
    (image,) = job.images
    rgba = np.frombuffer(image.data, np.uint8).reshape(64, 64, 4)
    assert np.array_equal(rgba[..., :3], expected)


def test_stylize_sends_the_layer_and_selection_mask(engine):
    spy = SpyEngine(engine)
    init = noise_image(9)
    mask = Image(64, 64, 1, bytes([255]) * (64 * 32) + bytes(64 * 32))
    with ServerThread(spy) as server:
        session = connect(server.url)
        try:
            job = session.submit(
                settings(kind=JobKind.STYLIZE, strength=0.5),
                JobInputs([(as_image(STYLE), 1.0)], as_image(init), mask),
                TARGET,
            )
            pump(session, lambda _u: job.state.finished)
            plain = session.submit(
                settings(kind=JobKind.STYLIZE, strength=0.5),
                JobInputs([(as_image(STYLE), 1.0)], as_image(init)),
                TARGET,
            )
            pump(session, lambda _u: plain.state.finished)
        finally:
            session.connection.stop()
    assert job.state is JobState.DONE and plain.state is JobState.DONE
    assert job.total == 2 and plain.total == 2  # strength 0.5 of 4 steps


def test_cancel_a_running_job(engine):
    with ServerThread(engine) as server:
        session = connect(server.url)
        try:
            job = session.submit(
                settings(steps=100, auto_size=False, width=256, height=256),
                JobInputs([(as_image(STYLE), 1.0)]),
                TARGET,
            )
            pump(session, lambda u: any(x.kind is UpdateKind.PREVIEW for x in u))
            session.cancel(job)
            updates = pump(session, lambda _u: job.state.finished)
        finally:
            session.connection.stop()
    assert job.state is JobState.CANCELLED and 1 <= job.step < 100
    assert any(u.kind is UpdateKind.CANCELLED for u in updates) and session.history == []


def test_reconnects_after_the_server_restarts(engine):
    with ServerThread(engine) as first:
        session = connect(first.url)
        port = first.port
    try:
        pump(session, lambda _u: session.connection.state is not ConnectionState.CONNECTED)
        assert not session.connected and "retrying" in session.status
        with pytest.raises(SubmitError, match="not connected"):
            session.submit(settings(), JobInputs([(as_image(STYLE), 1.0)]), TARGET)
        with ServerThread(engine, port=port) as second:
            session.connection.reconnect_now()
            pump(session, lambda _u: session.connected)
            job = session.submit(settings(steps=2), JobInputs([(as_image(STYLE), 1.0)]), TARGET)
            pump(session, lambda _u: job.state.finished)
            assert second.port == port
    finally:
        session.connection.stop()
    assert job.state is JobState.DONE


def test_a_job_in_flight_fails_clearly_when_the_server_goes_away(engine):
    server = ServerThread(engine).__enter__()
    session = connect(server.url)
    try:
        job = session.submit(
            settings(steps=150, auto_size=False, width=256, height=256),
            JobInputs([(as_image(STYLE), 1.0)]),
            TARGET,
        )
        pump(session, lambda u: any(x.kind is UpdateKind.PREVIEW for x in u))
        server.stop()
        updates = pump(session, lambda _u: job.state.finished)
    finally:
        session.connection.stop()
    assert job.state in (JobState.FAILED, JobState.CANCELLED)
    messages = " ".join(u.message for u in updates)
    assert "Traceback" not in messages and ("shutting down" in messages.lower() or "lost" in messages)


@pytest.mark.parametrize("wrong", ["a-wrong-token", "pasted-\udc80-garbage"])
def test_wrong_token_is_reported_and_not_retried(engine, wrong):
    """Also a token that is not valid text (it used to close the connection silently, retried forever)."""
    with ServerThread(engine, token="the-right-token") as server:
        session = Session(Connection(server.url, token=wrong))
        session.connection.start()
        try:
            updates = pump(session, lambda _u: session.connection.state is ConnectionState.UNAUTHORIZED)
            assert "refused the token" in updates[-1].message and not session.connected
            good = connect(server.url, token="the-right-token")
            good.connection.stop()
        finally:
            session.connection.stop()


def test_unreachable_backend_gives_a_clear_message():
    session = Session(Connection("ws://127.0.0.1:9"))  # the discard port: nothing listens
    session.connection.start()
    try:
        updates = pump(session, lambda u: any("not reachable" in x.message for x in u), timeout=20)
    finally:
        session.connection.stop()
    assert "ws://127.0.0.1:9" in updates[-1].message and "Traceback" not in updates[-1].message


def test_bad_custom_blocks_and_limits_are_caught_before_sending(engine):
    with ServerThread(engine) as server:
        session = connect(server.url)
        try:
            with pytest.raises(SubmitError, match="not valid JSON"):
                session.submit(
                    settings(preset="custom", block_scales="{oops"),
                    JobInputs([(as_image(STYLE), 1.0)]),
                    TARGET,
                )
            with pytest.raises(SubmitError, match=r"(?i)steps"):
                session.submit(settings(steps=5000), JobInputs([(as_image(STYLE), 1.0)]), TARGET)
            with pytest.raises(SubmitError, match="style reference"):
                session.submit(settings(), JobInputs([]), TARGET)
            job = session.submit(
                settings(preset="custom", block_scales='{"down": {"block_0": 1}}'),
                JobInputs([(as_image(STYLE), 1.0)]),
                TARGET,
            )
            updates = pump(session, lambda _u: job.state.finished)
        finally:
            session.connection.stop()
    assert job.state is JobState.FAILED and "down.block_0" in job.message
    assert any(u.kind is UpdateKind.FAILED for u in updates)


def test_keep_the_lines_uses_the_controlnet_and_is_refused_without_one(engine):
    from backend.engine.engine import InstantStyleEngine

    lines = Image(64, 64, 3, bytes(range(256)) * 48)
    inputs = JobInputs([(as_image(STYLE), 1.0)], lines)
    with ServerThread(engine) as server:
        session = connect(server.url)
        try:
            job = session.submit(settings(kind=JobKind.KEEP_LINES, control_scale=0.8), inputs, TARGET)
            pump(session, lambda _u: job.state.finished)
        finally:
            session.connection.stop()
    assert job.state is JobState.DONE and job.total == 4  # every step runs, unlike img2img
    with ServerThread(InstantStyleEngine(engine.pipeline, engine.spec)) as bare:
        session = connect(bare.url)
        try:
            with pytest.raises(SubmitError, match="--controlnet"):
                session.submit(settings(kind=JobKind.KEEP_LINES), inputs, TARGET)
        finally:
            session.connection.stop()


def test_the_plugin_accepts_messages_as_large_as_the_server_announces(engine):
    """A server with a larger --max-side sends larger results than the default limit allows."""
    from websockets.sync.client import connect as sync_connect

    from krita_plugin.instantstyle.connection import _accept_messages_up_to
    from protocol import Limits

    side = 4096
    limits = Limits(max_side=side, max_pixels=side * side, max_message_bytes=side * side * 4 + 64)
    with ServerThread(engine, limits=limits) as server, sync_connect(server.url, max_size=1 << 20) as ws:
        _accept_messages_up_to(ws, limits.max_message_bytes)
        assert ws.protocol.max_message_size == side * side * 4 + 64


def test_find_strength_through_the_server_and_a_point_of_its_map_painted_as_the_engine_paints_it(engine):
    """An auto job from the plugin's session: its result carries the server's search, its picture is
    the chosen setting's; a point picked from the search is a normal job with the engine's pixels."""
    from krita_plugin.instantstyle.job_message import point_settings
    from protocol import BlockPreset, SearchStage

    # Enough steps that the search's budget (half a job's cost) affords a grid, not one setting.
    chosen_settings = settings(content_text="stripes", style_scale=0.3, content_scale=1.7, steps=24)
    inputs = JobInputs([(as_image(STYLE), 1.0)])
    with ServerThread(engine) as server:
        session = connect(server.url)
        try:
            job = session.submit(chosen_settings, inputs, TARGET, auto=True)
            pump(session, lambda _u: job.state.finished)
            search = job.search
            assert job.state is JobState.DONE and search is not None, job.message
            others = [
                i
                for i, p in enumerate(search.points)
                if i != search.chosen and p.stage is not SearchStage.BASELINE
            ]
            picked = search.points[others[-1]]
            clicked = session.submit(point_settings(chosen_settings, picked, job.seed), inputs, TARGET)
            pump(session, lambda _u: clicked.state.finished)
        finally:
            session.connection.stop()
    assert [p.stage for p in search.points].count(SearchStage.BASELINE) == 1
    assert all(p.scores.content is not None for p in search.points)  # "stripes" is described
    chosen = search.points[search.chosen]
    assert job.layer_names[0].endswith(
        f"(seed 11) style {chosen.style_scale:g} content {chosen.content_scale:g} (auto) [TEST MODEL]"
    )

    def rendered(point) -> np.ndarray:
        return engine.generate(
            GenerationRequest(
                prompt="a fox",
                style_images=[StyleReference(STYLE)],
                content_text="stripes",
                style_scale=point.style_scale,
                content_scale=point.content_scale,
                preset=BlockPreset(point.preset),
                width=64,
                height=64,
                steps=24,
                seed=11,
            )
        ).images[0]

    assert len(search.points) >= 5, search.points
    for made, point in ((job, chosen), (clicked, picked)):
        rgba = np.frombuffer(made.images[0].data, np.uint8).reshape(64, 64, 4)
        assert np.array_equal(rgba[..., :3], rendered(point))
    assert clicked.search is None and clicked.seed == job.seed == 11


def test_keep_lines_through_the_tile_controlnet_reaches_the_engine(engine):
    from protocol import ControlKind, Mode

    layer = Image(64, 64, 3, bytes(range(256)) * 48)
    inputs = JobInputs([(as_image(STYLE), 1.0)], layer)
    with ServerThread(engine) as server:
        session = connect(server.url)
        try:
            assert session.features.controls == [ControlKind.EDGES, ControlKind.TILE]
            job = session.submit(
                settings(kind=JobKind.KEEP_LINES, control="tile", control_scale=0.8), inputs, TARGET
            )
            pump(session, lambda _u: job.state.finished)
        finally:
            session.connection.stop()
    assert job.state is JobState.DONE, job.message
    from PIL import Image as PILImage

    expected = engine.generate(
        GenerationRequest(
            prompt="a fox",
            style_images=[StyleReference(STYLE)],
            mode=Mode.CONTROL,
            init_image=PILImage.frombytes("RGB", (64, 64), layer.data),
            control=ControlKind.TILE,
            control_scale=0.8,
            width=64,
            height=64,
            steps=4,
            seed=11,
        )
    ).images[0]
    rgba = np.frombuffer(job.images[0].data, np.uint8).reshape(64, 64, 4)
    assert np.array_equal(rgba[..., :3], expected)
