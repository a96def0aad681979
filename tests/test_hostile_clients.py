"""The server against careless and hostile clients (tiny model, loopback): every budget holds per server,
clients take turns, nothing a client sends reaches the log unescaped, and after each probe a normal job
on the same server still succeeds."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time

import numpy as np
import pytest
import websockets
from PIL import Image
from websockets.asyncio.client import connect

from backend.client import InstantStyleClient, input_frame
from backend.server import inputs
from backend.server.config import ConfigError, ServerConfig
from backend.server.outbox import Outbox, OutboxPool
from protocol import (
    BlockPreset,
    ErrorCode,
    FrameKind,
    Hello,
    Limits,
    Ping,
    PixelFormat,
    Pong,
    encode_frame_header,
    encode_message,
)
from tests.attack_probes import a_normal_job
from tests.conftest import noise_image
from tests.server_helpers import generate_message, run, running_server

STYLE = noise_image(3)


async def a_normal_job_succeeds(url: str) -> None:
    assert await a_normal_job(url), "a normal job failed after the probe"


class GatedEngine:
    """The real engine, whose first job waits for ``gate``: the queue fills while it runs."""

    def __init__(self, engine, gate: threading.Event) -> None:
        self.engine, self.gate, self.started = engine, gate, []

    def generate(self, request, on_step=None, cancel=None):
        self.started.append(request.prompt)
        if len(self.started) == 1:
            assert self.gate.wait(60)
        return self.engine.generate(request, on_step=on_step, cancel=cancel)

    def release_memory(self) -> None:
        self.engine.release_memory()


def test_clients_take_turns_so_a_single_job_is_not_stuck_behind_a_batch(engine):
    gate = threading.Event()
    gated = GatedEngine(engine, gate)

    async def scenario():
        async with running_server(gated) as server:
            async with (
                InstantStyleClient.connect(server.url, client="batch") as batch,
                InstantStyleClient.connect(server.url, client="other") as other,
                InstantStyleClient.connect(server.url, client="single") as single,
            ):
                await batch.submit(generate_message(1, steps=1, prompt="batch 1"), {0: STYLE})
                while not gated.started:  # the first job runs (and waits at the gate) before the rest queue
                    await asyncio.sleep(0.02)
                for job_id in range(2, 11):  # eight wait (32 // 4 per client), the tenth is refused
                    await batch.submit(
                        generate_message(job_id, steps=1, prompt=f"batch {job_id}"), {0: STYLE}
                    )
                await other.submit(generate_message(1, steps=1, prompt="other"), {0: STYLE})
                # Connections are served concurrently: let "other" be queued before "single" asks.
                assert type(await other.receive()).__name__ == "Queued"
                await single.submit(generate_message(1, steps=1, prompt="single"), {0: STYLE})
                gate.set()
                batch_outcomes = await batch.follow_all(list(range(1, 11)))
                single_outcome = await single.follow(1)
                await other.follow(1)
            await a_normal_job_succeeds(server.url)
            return batch_outcomes, single_outcome

    batch_outcomes, single_outcome = run(scenario())
    refused = batch_outcomes[10].error
    assert refused.code is ErrorCode.QUEUE_FULL and "share per client" in refused.message
    assert all(batch_outcomes[j].error is None for j in range(1, 10))
    # The single job waits for the running batch job and the other client's one: two jobs, not eight.
    assert single_outcome.positions[0] == 2 and single_outcome.error is None
    assert gated.started[:4] == ["batch 1", "other", "single", "batch 2"]


async def all_disconnected(server, seconds: float) -> bool:
    """Whether the server has let go of every connection within ``seconds``."""
    deadline = time.monotonic() + seconds
    while server.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return not server.connections


def test_a_client_that_never_reads_is_cut_off_and_the_others_are_served(engine):
    config = {"outbox_bytes_per_client": 1 << 20, "slow_client_seconds": 1.0}

    async def scenario():
        async with running_server(engine, **config) as server:
            # max_queue=1: the client library stops reading after one message; TCP does the rest.
            async with connect(server.url, max_size=None, max_queue=1, compression=None) as silent:
                await silent.send(encode_message(Hello(client="silent")))
                for job_id in (1, 2, 3):
                    await silent.send(input_frame(job_id, 0, STYLE))
                    message = generate_message(job_id, steps=1, width=512, height=512, batch=4)
                    await silent.send(encode_message(message))
                for nonce in range(2000):  # replies to a client that does not read are dropped, not kept
                    await silent.send(encode_message(Ping(nonce)))
                await a_normal_job_succeeds(server.url)
                cut_off = await all_disconnected(server, 60)
            await a_normal_job_succeeds(server.url)
            return cut_off

    assert run(scenario(), timeout=180), "the non-reading client was never disconnected"


def test_the_servers_budget_of_unsent_bytes_cuts_off_the_client_holding_most(engine, caplog):
    """Each client within its own budget (a 16 MiB result against 72 MiB) could still together hold
    gigabytes: over the server's budget, the one with the most waiting is cut off."""
    config = {"outbox_bytes_total": 4 << 20, "slow_client_seconds": 1.0}

    async def scenario():
        async with running_server(engine, **config) as server:
            async with connect(server.url, max_size=None, max_queue=1, compression=None) as silent:
                await silent.send(encode_message(Hello(client="silent")))
                await silent.send(input_frame(1, 0, STYLE))
                message = generate_message(1, steps=1, width=1024, height=1024, batch=4, preview_side=64)
                await silent.send(encode_message(message))
                cut_off = await all_disconnected(server, 90)
            await a_normal_job_succeeds(server.url)
            return cut_off

    with caplog.at_level(logging.WARNING, logger="backend.server.connection"):
        assert run(scenario(), timeout=180), "the client over the server's budget was never disconnected"
    # Cut off for its unread bytes (not by the keepalive's unanswered ping, 40 s on).
    assert any("disconnecting client silent" in r.getMessage() for r in caplog.records), caplog.text


def test_the_servers_unsent_bytes_count_against_the_client_holding_most():
    pool = OutboxPool(max_bytes=100)
    small, large = Outbox(4, max_bytes=1000, pool=pool), Outbox(4, max_bytes=1000, pool=pool)
    small.put(b"x" * 40)
    large.put(b"x" * 50)
    now = time.monotonic()
    assert small.over_budget_for(now) == large.over_budget_for(now) == 0.0  # 90 of 100
    large.put(b"x" * 20)  # 110 of 100: over from now on, and the large one holds the most
    assert 2.4 < large.over_budget_for(now + 2.5) <= 2.5 and small.over_budget_for(now + 2.5) == 0.0
    large.close()  # disconnected: out of the pool, the rest is under the budget again
    assert pool.bytes == 40 and small.over_budget_for(now + 3) == 0.0


def test_before_hello_only_small_messages_and_a_bounded_number_of_connections(engine):
    async def scenario():
        async with running_server(engine, max_connections=4, pre_auth_max_bytes=4096) as server:
            async with connect(server.url, max_size=None) as stranger:
                await stranger.send(b"IS" + b"\0" * 10000)  # a big frame before hello
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await stranger.recv()
                assert closed.value.rcvd.code == 1009  # message too big
            for _ in range(200):  # until the server has let go of the stranger's connection
                if not server.connections:
                    break
                await asyncio.sleep(0.05)
            held = [await connect(server.url).__aenter__() for _ in range(4)]
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with connect(server.url):
                    pass
            assert refused.value.response.status_code == 503
            for ws in held:
                await ws.close()
            await asyncio.sleep(0.2)
            await a_normal_job_succeeds(server.url)

    run(scenario())


def test_input_bytes_are_budgeted_per_client_and_per_server(engine):
    limits = Limits(max_side=512, max_pixels=512 * 512, max_message_bytes=512 * 512 * 4 + 64)
    config = {"limits": limits, "input_bytes_per_client": 3 << 20, "input_bytes_total": 5 << 20}

    async def send_inputs(client: InstantStyleClient, frames: list[tuple[int, int]]) -> list:
        """Send 1 MiB INPUT frames (job, index) that no generate ever uses; the errors they got."""
        for job_id, index in frames:
            header = encode_frame_header(FrameKind.INPUT, job_id, index, 512, 512, PixelFormat.RGBA8)
            await client.connection.send(header + bytes(512 * 512 * 4))
        await client.connection.send(encode_message(Ping(7)))  # answered after every frame before it
        errors = []
        while not isinstance(reply := await client.receive(), Pong):
            errors.append(reply)
        return errors

    async def scenario():
        async with running_server(engine, **config) as server:
            async with (
                InstantStyleClient.connect(server.url, client="a") as a,
                InstantStyleClient.connect(server.url, client="b") as b,
            ):
                own = await send_inputs(a, [(1, 0), (1, 1), (1, 2), (2, 0)])  # the 4th MiB: over its 3
                others = await send_inputs(b, [(1, 0), (1, 1), (1, 2)])  # 3 + 3 MiB: over the server's 5
            await a_normal_job_succeeds(server.url)
            return own, others

    own, others = run(scenario())
    assert [(e.code, e.job_id) for e in own] == [(ErrorCode.TOO_LARGE, 2)] and "from this client" in own[
        0
    ].message
    assert [(e.code, e.job_id) for e in others] == [(ErrorCode.TOO_LARGE, 1)]
    assert "the server holds too many input bytes" in others[0].message


def test_images_of_queued_jobs_are_budgeted_before_they_are_decoded(engine, monkeypatch):
    decoded_on = []
    real = inputs.frame_to_image

    def spy(frame):
        if frame.format is PixelFormat.PNG:
            decoded_on.append(threading.current_thread().name)
        return real(frame)

    monkeypatch.setattr(inputs, "frame_to_image", spy)
    buffer = io.BytesIO()
    Image.new("RGB", (1024, 1024), (200, 30, 30)).save(buffer, "PNG")  # 4 MiB decoded, ~3 KB sent
    png = buffer.getvalue()
    gate = threading.Event()

    async def scenario():
        config = {"queued_image_bytes_total": 10 << 20, "queued_image_bytes_per_client": 10 << 20}
        async with running_server(GatedEngine(engine, gate), **config) as server:
            async with InstantStyleClient.connect(server.url) as client:
                outcomes = []
                for job_id in (1, 2, 3):
                    header = encode_frame_header(FrameKind.INPUT, job_id, 0, 1024, 1024, PixelFormat.PNG)
                    await client.connection.send(header + png)
                    await client.connection.send(encode_message(generate_message(job_id, steps=1)))
                gate.set()
                outcomes = await client.follow_all([1, 2, 3])
            await a_normal_job_succeeds(server.url)
            return outcomes

    outcomes = run(scenario())
    assert outcomes[1].error is None and outcomes[2].error is None  # 2 x 4 MiB fit in 10 MiB
    full = outcomes[3].error
    assert full.code is ErrorCode.QUEUE_FULL and "image bytes" in full.message
    # Jobs 1 and 2 were decoded off the event loop; job 3 was refused before it was decoded.
    assert len(decoded_on) == 2 and all(name.startswith("decode") for name in decoded_on), decoded_on


def test_client_text_reaches_the_log_escaped_and_short(engine, caplog):
    async def scenario():
        async with running_server(engine) as server:
            async with InstantStyleClient.connect(server.url, client="evil\nINFO forged line") as client:
                await client.connection.send('{"type":"ping","version":1,"' + "x" * 250_000 + '":1}')
                error = await client.receive()
            await a_normal_job_succeeds(server.url)
            return error

    with caplog.at_level(logging.INFO, logger="backend.server"):
        error = run(scenario())
    assert error.code is ErrorCode.BAD_FIELD and len(error.message) < 200
    server_lines = [r.getMessage() for r in caplog.records if r.name.startswith("backend.server")]
    assert any("evil\\nINFO forged line" in line for line in server_lines)
    assert all("\n" not in line and len(line) < 1000 for line in server_lines), server_lines


def test_impossible_limits_are_refused_at_start_and_clients_adopt_the_announced_ones(engine):
    with pytest.raises(ConfigError, match="max_side must be between 8 and 16384, got 20000"):
        ServerConfig(limits=Limits(max_side=20000)).check()
    side = 4096
    limits = Limits(max_side=side, max_pixels=side * side, max_message_bytes=side * side * 4 + 64)

    async def scenario():
        async with (
            running_server(engine, limits=limits) as server,
            InstantStyleClient.connect(server.url) as c,
        ):
            return c.connection.protocol.max_message_size

    assert run(scenario()) == side * side * 4 + 64 > Limits().max_message_bytes


def test_shutdown_stops_accepting_first_and_ends_quickly_whatever_clients_do(engine):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            server_context = running_server(engine)
            server = await server_context.__aenter__()
            url = server.url
            silent = await stack.enter_async_context(connect(url, max_size=None, max_queue=1))
            await silent.send(encode_message(Hello(client="silent")))  # then it never reads
            await silent.send(input_frame(1, 0, STYLE))
            await silent.send(encode_message(generate_message(1, steps=150, width=512, height=512, batch=4)))
            listener = await stack.enter_async_context(
                InstantStyleClient.connect(server.url, client="listener")
            )
            await listener.submit(generate_message(1, steps=150, width=256, height=256), {0: STYLE})
            await asyncio.sleep(1.0)  # one job runs, the other waits
            started = time.monotonic()
            await server_context.__aexit__(None, None, None)
            seconds = time.monotonic() - started
            told = await listener.follow(1)
            with pytest.raises(OSError):  # nobody listens any more
                async with connect(url, open_timeout=2):
                    pass
            return seconds, told

    seconds, told = run(scenario())
    assert seconds < 3.0, f"shutdown took {seconds:.1f} s"
    assert told.error is not None and told.error.code is ErrorCode.SHUTTING_DOWN


def test_the_unsent_bytes_budget_holds_a_whole_sweep_result():
    """A slow but reading client gets its result: the budget held 8 pictures (the largest batch) and a
    16-cell sweep at the largest size (its RESULT frames as the server encodes them) did not fit."""
    from backend.engine.request import GenerationResult, SweepCell
    from backend.server.job_events import encode_event
    from backend.server.jobs import JobFinished

    limits = Limits()
    side = limits.max_side
    picture = np.zeros((side, side, 3), dtype=np.uint8)
    cells = limits.max_sweep_cells
    assert cells > limits.max_batch
    result = GenerationResult(
        images=[picture] * cells,
        seeds=list(range(cells)),
        model_label="tiny",
        is_test_model=True,
        cells=[SweepCell(1.0, 0.5, BlockPreset.STYLE, seed) for seed in range(cells)],
    )
    sent = sum(len(item) for item in encode_event(1, JobFinished(result)) if isinstance(item, str | bytes))
    assert sent > cells * side * side * 3  # every picture is in it
    assert sent <= ServerConfig().outbox_budget


def test_a_burst_of_small_messages_from_one_client_lets_the_others_take_turns(engine, monkeypatch):
    """One socket read can hold thousands of pings, which websockets hands over without suspending:
    the server takes another client's message between two of them, not after the whole burst (which
    held the event loop, and a SIGTERM with it, for a second on a loaded CPU)."""
    from backend.server.connection import Connection

    handled: list[str] = []
    handle = Connection._handle

    async def recorded(self, message):
        handled.append(self.name)
        await handle(self, message)

    monkeypatch.setattr(Connection, "_handle", recorded)
    burst = 2000

    async def scenario():
        async with running_server(engine) as server, contextlib.AsyncExitStack() as stack:
            flooder = await stack.enter_async_context(InstantStyleClient.connect(server.url, client="burst"))
            other = await stack.enter_async_context(InstantStyleClient.connect(server.url, client="other"))
            # Each send only writes to the socket (no suspension): all of them, and the other
            # client's one ping, reach the server before it reads either socket.
            for nonce in range(burst):
                await flooder.connection.send(encode_message(Ping(nonce)))
            await other.connection.send(encode_message(Ping(1)))
            while len(handled) < burst + 1:
                await asyncio.sleep(0.1)
            await a_normal_job_succeeds(server.url)

    run(scenario(), timeout=120)
    place = handled.index("other")
    assert handled[: burst + 1].count("burst") == burst  # every ping was handled
    assert place < 50, f"the other client's ping was handled after {place} of the burst's"
