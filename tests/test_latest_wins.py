"""Latest wins: a live job replaces the client's earlier live job, running (stopped at its next step) or
queued (dropped), so that live painting never waits behind stale jobs."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from backend.client import InstantStyleClient, frame_image
from backend.engine.request import GenerationRequest, StyleReference
from protocol import Progress, Queued
from tests.conftest import noise_image
from tests.server_helpers import generate_message, run, running_server

STYLE = noise_image(7)


@dataclass
class GatedEngine:
    """The real engine, but a job whose prompt is "gated" waits after its first step until released."""

    engine: object
    release: threading.Event = field(default_factory=threading.Event)

    def release_memory(self) -> None:
        self.engine.release_memory()

    def __getattr__(self, name: str) -> object:  # features, modes...: the real engine's
        return getattr(self.engine, name)

    def generate(self, request, on_step=None, cancel=None):
        def gated(preview):
            if on_step is not None:
                on_step(preview)
            if request.prompt == "gated" and preview.step == 1:
                assert self.release.wait(60), "the test never released the gated job"

        return self.engine.generate(request, on_step=gated, cancel=cancel)


async def wait_for(client: InstantStyleClient, kind: type, job_id: int, **fields) -> None:
    while True:
        item = await client.receive()
        if (
            isinstance(item, kind)
            and item.job_id == job_id
            and all(getattr(item, k) == v for k, v in fields.items())
        ):
            return


def expected_pixels(engine, seed: int) -> np.ndarray:
    request = GenerationRequest(
        prompt="a lighthouse", style_images=[StyleReference(STYLE)], width=64, height=64, steps=3, seed=seed
    )
    return engine.generate(request).images[0]


def test_a_live_job_stops_the_running_live_job_at_its_next_step(engine):
    gated = GatedEngine(engine)

    async def scenario():
        async with running_server(gated) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(generate_message(1, prompt="gated", steps=6, live=True), {0: STYLE})
            await wait_for(client, Progress, 1, step=1)  # job 1 runs, held after its first step
            await client.submit(generate_message(2, seed=11, live=True), {0: STYLE})
            await wait_for(client, Queued, 2)  # the server has read job 2: job 1 is marked cancelled
            gated.release.set()
            return await client.follow_all([1, 2])

    outcomes = run(scenario())
    first, second = outcomes[1], outcomes[2]
    assert first.cancelled is not None and first.result is None
    assert 1 <= first.cancelled.step < 6  # stopped at its next step, not run to the end
    assert second.result is not None
    assert np.array_equal(np.asarray(frame_image(second.images[0]))[..., :3], expected_pixels(engine, 11))


def test_a_queued_live_job_is_dropped_and_other_jobs_are_untouched(engine):
    gated = GatedEngine(engine)

    async def scenario():
        async with running_server(gated) as server, InstantStyleClient.connect(server.url) as client:
            await client.submit(generate_message(1, prompt="gated", steps=4), {0: STYLE})  # not live
            await wait_for(client, Progress, 1, step=1)
            await client.submit(generate_message(2, live=True), {0: STYLE})
            await wait_for(client, Queued, 2)
            await client.submit(generate_message(3, seed=12, live=True), {0: STYLE})
            dropped = await client.follow(2)  # replaced while still queued
            gated.release.set()
            return dropped, await client.follow_all([1, 3])

    dropped, outcomes = run(scenario())
    assert dropped.cancelled is not None and dropped.cancelled.step == 0 and dropped.started is None
    assert outcomes[1].result is not None  # the ordinary job is not replaced by live ones
    assert outcomes[3].result is not None
    assert np.array_equal(
        np.asarray(frame_image(outcomes[3].images[0]))[..., :3], expected_pixels(engine, 12)
    )


def test_live_jobs_of_another_client_are_not_replaced(engine):
    gated = GatedEngine(engine)

    async def scenario():
        async with (
            running_server(gated) as server,
            InstantStyleClient.connect(server.url) as painter,
            InstantStyleClient.connect(server.url) as other,
        ):
            await painter.submit(generate_message(1, prompt="gated", steps=4, live=True), {0: STYLE})
            await wait_for(painter, Progress, 1, step=1)
            await other.submit(generate_message(1, seed=13, live=True), {0: STYLE})
            await wait_for(other, Queued, 1)
            gated.release.set()
            return await painter.follow(1), await other.follow(1)

    mine, theirs = run(scenario())
    assert mine.result is not None and mine.cancelled is None
    assert theirs.result is not None
