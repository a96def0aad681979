"""The WebSocket server on 127.0.0.1 with the tiny model: streaming, concurrency, cancel, faults."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import websockets
from PIL import Image

from backend.client import InstantStyleClient, JobOutcome, frame_image
from backend.engine.request import GenerationRequest, StyleReference
from backend.server.config import ConfigError, ServerConfig, is_loopback
from backend.server.outbox import Outbox, StepUpdate
from backend.server.worker import GpuWorker
from protocol import Error, ErrorCode, FrameKind, PixelFormat, Progress
from tests.conftest import noise_image
from tests.server_helpers import SpyEngine, generate_message, run, running_server

STYLE = noise_image(3)


def test_round_trip_streams_every_step_then_the_exact_result(engine):
    async def scenario():
        # preview_share None: a preview every step (test_preview_budget.py: the default budget).
        async with (
            running_server(engine, preview_share=None) as server,
            InstantStyleClient.connect(server.url) as client,
        ):
            assert client.hello.model.is_test_model
            await client.submit(generate_message(1, steps=5, content_text="a cat"), {0: STYLE})
            return await client.follow(1)

    outcome = run(scenario())
    assert outcome.error is None and outcome.queued is not None and outcome.queued.position == 0
    steps = ["Progress", "PREVIEW"] * 5
    assert outcome.order == ["Queued", "Started", *steps, "Result", "RESULT"]
    assert outcome.started.total_steps == 5 and outcome.started.seed == 5
    assert [p.step for p in outcome.progress] == [1, 2, 3, 4, 5]
    assert [f.index for f in outcome.previews] == [1, 2, 3, 4, 5]
    assert all((f.width, f.height, f.format) == (64, 64, PixelFormat.RGB8) for f in outcome.previews)
    assert outcome.result.seeds == [5] and outcome.result.is_test_model

    expected = engine.generate(
        GenerationRequest(
            prompt="a lighthouse",
            style_images=[StyleReference(STYLE)],
            content_text="a cat",
            width=64,
            height=64,
            steps=5,
            seed=5,
        )
    ).images[0]
    (frame,) = outcome.images
    assert frame.format is PixelFormat.RGBA8
    pixels = np.asarray(frame_image(frame))
    assert np.array_equal(pixels[..., :3], expected) and (pixels[..., 3] == 255).all()


def test_two_clients_at_once_both_complete(engine):
    async def one(url, seed):
        async with InstantStyleClient.connect(url, client=f"c{seed}") as client:
            await client.submit(generate_message(1, seed=seed, steps=4), {0: STYLE})
            return await client.follow(1)

    async def scenario():
        async with running_server(engine) as server:
            return await asyncio.gather(one(server.url, 1), one(server.url, 2))

    first, second = run(scenario())
    for outcome in (first, second):
        assert outcome.error is None and len(outcome.progress) == 4 and len(outcome.images) == 1
    assert {first.queued.position, second.queued.position} == {0, 1}
    assert not np.array_equal(
        np.asarray(frame_image(first.images[0])), np.asarray(frame_image(second.images[0]))
    )


def test_cancel_mid_job_stops_within_one_step_and_the_next_job_runs(engine, monkeypatch):
    spy = SpyEngine(engine)
    step_at_cancel: dict[int, int] = {}
    original_cancel = GpuWorker.cancel

    def recording_cancel(self, job):
        step_at_cancel[job.job_id] = job.last_step  # where the worker was when the server got the cancel
        return original_cancel(self, job)

    monkeypatch.setattr(GpuWorker, "cancel", recording_cancel)

    async def scenario():
        async with running_server(spy) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(
                generate_message(1, steps=100, width=256, height=256, prompt="long"), {0: STYLE}
            )
            await client.submit(generate_message(2, steps=2, prompt="next"), {0: STYLE})
            long_job = JobOutcome()
            while len(long_job.progress) < 2:
                item = await client.receive()
                if getattr(item, "job_id", None) == 1 and type(item).__name__ == "Progress":
                    long_job.progress.append(item)
            seen = long_job.progress[-1].step
            await client.cancel(1)
            outcomes = await client.follow_all([1, 2])
            return seen, outcomes[1], outcomes[2]

    seen, cancelled, next_job = run(scenario())
    assert cancelled.cancelled is not None and cancelled.result is None
    # The job stopped at most one step after the server received the cancel...
    assert step_at_cancel[1] <= cancelled.cancelled.step <= step_at_cancel[1] + 1
    # ...which was soon after the client asked (loose bound: the CPU is shared with the client here).
    assert seen <= cancelled.cancelled.step < 100
    assert spy.jobs[0].outcome == "cancelled" and spy.jobs[0].steps_run == cancelled.cancelled.step
    assert next_job.error is None and len(next_job.images) == 1 and spy.jobs[1].outcome == "finished"


def test_cancel_a_queued_job(engine):
    spy = SpyEngine(engine)

    async def scenario():
        async with running_server(spy) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(generate_message(1, steps=20, width=128, height=128), {0: STYLE})
            await client.submit(generate_message(2, prompt="never runs"), {0: STYLE})
            await client.cancel(2)
            outcomes = await client.follow_all([1, 2])
            return outcomes[1], outcomes[2]

    first, second = run(scenario())
    assert second.cancelled is not None and second.cancelled.step == 0 and second.queued.position == 1
    assert first.error is None and len(first.images) == 1
    assert [job.prompt for job in spy.jobs] == ["a lighthouse"]


def test_a_disconnected_client_has_its_job_cancelled(engine):
    spy = SpyEngine(engine)

    async def scenario():
        async with running_server(spy) as server:
            async with InstantStyleClient.connect(server.url, client="quitter") as quitter:
                await quitter.submit(
                    generate_message(1, steps=150, width=256, height=256, prompt="orphan"), {0: STYLE}
                )
                while not isinstance(item := await quitter.receive(), Progress):
                    assert not isinstance(item, Error), item
                quitter.connection.transport.abort()  # the client dies without a close handshake
            async with InstantStyleClient.connect(server.url, client="next") as client:
                await client.submit(generate_message(1, steps=2), {0: STYLE})
                return await client.follow(1)

    outcome = run(scenario())
    assert outcome.error is None and len(outcome.images) == 1
    orphan = spy.jobs[0]
    assert orphan.prompt == "orphan" and orphan.outcome == "cancelled" and orphan.steps_run < 150


def test_an_engine_failure_ends_only_that_job(engine):
    spy = SpyEngine(
        engine, fail_with=lambda r: RuntimeError("CUDA out of memory") if r.prompt == "boom" else None
    )

    async def scenario():
        async with running_server(spy) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(generate_message(1, prompt="boom"), {0: STYLE})
            failed = await client.follow(1)
            await client.submit(
                generate_message(2, preset="custom", block_scales={"down": {"block_0": 1}}), {0: STYLE}
            )
            bad_map = await client.follow(2)
            await client.submit(generate_message(3), {0: STYLE})
            return failed, bad_map, await client.follow(3)

    failed, bad_map, fine = run(scenario())
    assert failed.error.code is ErrorCode.OUT_OF_MEMORY and failed.error.job_id == 1
    assert "Traceback" not in failed.error.message
    assert bad_map.error.code is ErrorCode.BAD_REQUEST and "down.block_0" in bad_map.error.message
    assert fine.error is None and len(fine.images) == 1


def test_a_client_that_stops_reading_does_not_stall_others(engine):
    async def scenario():
        async with (
            running_server(engine) as server,
            InstantStyleClient.connect(server.url, client="sleepy") as sleepy,
        ):
            await sleepy.submit(generate_message(1, steps=30, width=512, height=512, batch=2), {0: STYLE})
            async with InstantStyleClient.connect(server.url, client="busy") as busy:
                await busy.submit(generate_message(1, steps=2), {0: STYLE})
                other = await busy.follow(1)  # completes although "sleepy" reads nothing
            late = await sleepy.follow(1)
            return other, late

    other, late = run(scenario())
    assert other.error is None and len(other.images) == 1
    assert (
        late.error is None and len(late.images) == 2 and late.result.count == 2
    )  # results are never dropped
    assert 1 <= len(late.progress) <= 30


def test_outbox_drops_stale_steps_but_never_results():
    async def scenario():
        outbox = Outbox(max_pending_steps=2)
        for step in range(1, 6):
            outbox.put(StepUpdate(7, f"progress {step}", b""))
        outbox.put("result")
        outbox.close()
        items = []
        while (item := await outbox.get()) is not None:
            items.append(item.progress if isinstance(item, StepUpdate) else item)
        return items, outbox.dropped_steps

    items, dropped = asyncio.run(scenario())
    assert items == ["progress 4", "progress 5", "result"] and dropped == 3


def test_outbox_never_drops_a_jobs_first_step_picture():
    async def scenario():
        outbox = Outbox(max_pending_steps=2)
        outbox.put(StepUpdate(7, "progress 1", b"first", kept=True))
        for step in range(2, 7):
            outbox.put(StepUpdate(7, f"progress {step}", b""))
        outbox.close()
        items = []
        while (item := await outbox.get()) is not None:
            items.append(item.progress)
        return items

    assert asyncio.run(scenario()) == ["progress 1", "progress 5", "progress 6"]


def test_shutdown_tells_connected_clients(engine):
    async def scenario():
        async with running_server(engine) as server:
            client_cm = InstantStyleClient.connect(server.url)
            client = await client_cm.__aenter__()
            await server.close()
            message = await client.receive()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await client.receive()
            return message, closed.value.rcvd.code

    message, code = run(scenario())
    assert isinstance(message, Error) and message.code is ErrorCode.SHUTTING_DOWN
    assert code == 1001


def test_security_configuration():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    with pytest.raises(ConfigError, match="needs a token"):
        ServerConfig(host="0.0.0.0").check()
    with pytest.raises(ConfigError, match="at least 8"):
        ServerConfig(token="short").check()
    with pytest.raises(ConfigError, match="clear text"):  # a token, but nothing to hide it
        ServerConfig(host="0.0.0.0", token="a-long-secret").check()
    ServerConfig(host="0.0.0.0", token="a-long-secret", insecure=True).check()
    config = ServerConfig(token="a-long-secret")
    assert (
        config.token_matches("a-long-secret")
        and not config.token_matches("wrong")
        and not config.token_matches(None)
    )


def test_result_frame_kinds_and_sizes(engine):
    async def scenario():
        async with running_server(engine) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(generate_message(1, width=96, height=64, steps=1, batch=2), {0: STYLE})
            return await client.follow(1)

    outcome = run(scenario())
    assert [f.kind for f in outcome.images] == [FrameKind.RESULT, FrameKind.RESULT]
    assert [f.index for f in outcome.images] == [0, 1]
    assert all(
        isinstance(frame_image(f), Image.Image) and frame_image(f).size == (96, 64) for f in outcome.images
    )


def test_an_internal_error_costs_one_message_not_the_connection(engine, monkeypatch):
    import backend.server.connection as connection_module

    def broken(message, inputs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(connection_module, "build_request", broken)

    async def scenario():
        async with running_server(engine) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(generate_message(1), {0: STYLE})
            failed = await client.follow(1)
            monkeypatch.undo()
            await client.submit(generate_message(2, steps=1), {0: STYLE})
            return failed, await client.follow(2)

    failed, fine = run(scenario())
    assert failed.error.code is ErrorCode.INTERNAL and "a bug" not in failed.error.message
    assert fine.error is None and len(fine.images) == 1  # the same connection still works


def test_queued_jobs_hear_when_they_move_up(engine):
    async def scenario():
        async with running_server(engine) as server, InstantStyleClient.connect(server.url) as client:
            for job_id in (1, 2, 3, 4):
                await client.submit(generate_message(job_id, steps=2, width=128, height=128), {0: STYLE})
            await client.cancel(2)
            return await client.follow_all([1, 2, 3, 4])

    outcomes = run(scenario())
    assert outcomes[1].positions == [0]
    assert outcomes[2].cancelled is not None
    # Each job hears every real move and nothing else: job 3 from 2 ahead to 1, job 4 from 3 to 1.
    assert outcomes[3].positions == [2, 1]
    assert outcomes[4].positions == [3, 2, 1]
    assert all(len(outcomes[j].images) == 1 for j in (1, 3, 4))
