"""Defects hostile clients of sweeps, regions and LoRAs found, each through a real server process.

A slow but reading client lost a sweep's result (its unsent-bytes budget counted a batch, not a
sweep's cells); a huge integer in a number field was an internal error without a job id; a failed job
wrote the client's text raw into the server's log (a forged line, a bidi override, NUL); a refused
generate released nothing of the INPUT frames sent for it (a few refusals blocked the client's next
jobs); a sweep held the worker for all its cells while another client's one-step job waited; a region
on a picture too thin for the UNet's smallest level failed in the engine; a live generate refused for
a missing input still cancelled the running live job. After each, the server serves a normal job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys

import pytest
from websockets.asyncio.client import connect

from backend.client import InstantStyleClient, input_frame
from backend.server.logs import EscapingFormatter
from protocol import (
    Error,
    ErrorCode,
    FrameKind,
    Hello,
    Progress,
    Region,
    Result,
    Started,
    StyleImage,
    SweepAxis,
    SweepValues,
    decode_server_message,
    encode_message,
)
from tests.attack_probes import ServerProcess, a_normal_job
from tests.conftest import noise_image
from tests.server_helpers import generate_message, run

SIDE = 256
STYLE = noise_image(51, size=SIDE)  # 192 KiB of RGB: the client's input budget holds about 24
FORGED = "block_0\nFORGED 2026-01-01 CRITICAL backend: fake entry \u202e\u0000"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess("--max-side", str(SIDE), log=tmp_path_factory.mktemp("defects") / "serve.log")
    yield process
    process.stop()


def generate(job_id: int, **fields) -> str:
    body = json.loads(encode_message(generate_message(job_id, steps=1)))
    return json.dumps({**body, **fields})


async def session(url: str):
    ws = await connect(url, compression=None, max_size=None)
    await ws.send(encode_message(Hello(client="defects")))
    await ws.recv()
    return ws


async def next_error(ws) -> Error:
    while True:
        data = await ws.recv()
        if isinstance(data, str) and isinstance(message := decode_server_message(data), Error):
            return message


def test_a_slow_reader_gets_a_whole_sweep_of_sixteen_max_side_pictures(tmp_path):
    """16 cells at 1024² are 64 MiB of RESULT frames; the budget counted 8 pictures plus 8 MiB (40 MiB),
    so a client that paused reading for longer than ``slow_client_seconds`` (5 s) was cut off."""
    process = ServerProcess("--max-side", "1024", log=tmp_path / "serve.log")
    style = noise_image(52, size=64)

    async def scenario():
        ws = await connect(process.url, compression=None, max_size=None, max_queue=1)  # reads as asked
        await ws.send(encode_message(Hello(client="slow reader")))
        await ws.recv()
        await ws.send(input_frame(1, 0, style))
        sweep = [SweepValues(SweepAxis.SEED, values=list(range(16)))]
        message = generate_message(1, steps=1, width=1024, height=1024, preview_side=64, sweep=sweep)
        await ws.send(encode_message(message))
        while True:  # the JSON ``result``, after the previews (frames) of every cell
            data = await ws.recv()
            if isinstance(data, str) and isinstance(decode_server_message(data), Result):
                break
        await asyncio.sleep(8)  # the artist's machine is busy: nothing is read for 8 s
        frames = []
        while len(frames) < 16:
            data = await ws.recv()
            assert isinstance(data, bytes), data
            frames.append(data)
        await ws.close()
        return frames

    try:
        frames = run(scenario(), timeout=240)
        assert [frame[3] for frame in frames] == [FrameKind.RESULT] * 16
        assert all(len(frame) > 1024 * 1024 * 4 for frame in frames)
        assert run(a_normal_job(process.url), timeout=120)
        assert "unread" not in process.log.read_text()
    finally:
        process.stop()


@pytest.mark.parametrize(
    "fields",
    [
        {"guidance_scale": 10**400},
        {"loras": [{"name": "ink", "weight": -(10**400)}]},
        {"style_images": [{"input": 0, "weight": 10**400}]},
    ],
    ids=["guidance", "lora weight", "style weight"],
)
def test_a_huge_integer_in_a_float_field_is_out_of_range_for_its_job(server, fields):
    async def scenario():
        ws = await session(server.url)
        await ws.send(input_frame(1, 0, STYLE))
        await ws.send(generate(1, **fields))
        error = await next_error(ws)
        await ws.close()
        return error

    error = run(scenario(), timeout=60)
    assert (error.code, error.job_id) == (ErrorCode.OUT_OF_RANGE, 1), error
    assert run(a_normal_job(server.url), timeout=120)


def test_a_region_on_a_picture_too_thin_for_the_unet_is_refused_before_it_runs(server):
    async def scenario():
        async with InstantStyleClient.connect(server.url, client="regions") as client:
            mask = STYLE.convert("L").resize((8, 256))
            message = generate_message(1, width=8, height=256, regions=[Region(1, [StyleImage(0)])])
            await client.submit(message, {0: STYLE, 1: mask})
            return await client.follow(1)

    outcome = run(scenario(), timeout=60)
    assert outcome.started is None and outcome.error.code is ErrorCode.BAD_FIELD, outcome
    assert run(a_normal_job(server.url), timeout=120)


def test_a_sweep_takes_a_turn_per_cell_and_keeps_each_cells_pixels(server):
    """Before, another client's one-step job waited for every cell of a sweep."""
    sweep = [SweepValues(SweepAxis.SEED, values=[1, 2, 3, 4, 5, 6])]
    long_sweep = generate_message(1, steps=2, width=128, height=128, sweep=sweep)

    async def scenario():
        async with (
            InstantStyleClient.connect(server.url, client="sweeper") as sweeper,
            InstantStyleClient.connect(server.url, client="other") as other,
        ):
            arrivals: list[str] = []
            await sweeper.submit(long_sweep, {0: STYLE})
            while not isinstance(await sweeper.receive(), Progress):  # its first cell runs
                pass
            await other.submit(generate_message(1, steps=1), {0: STYLE})

            async def follow(client, name):
                outcome = await client.follow(1)
                arrivals.append(name)
                return outcome

            swept, single = await asyncio.gather(follow(sweeper, "sweep"), follow(other, "single"))
            alone = []  # each cell as the single job with its settings, nobody else waiting
            for seed in range(1, 7):
                job = dataclasses.replace(long_sweep, job_id=1 + seed, seed=seed, sweep=[])
                await sweeper.submit(job, {0: STYLE})
                alone.append(await sweeper.follow(job.job_id))
            return arrivals, swept, single, alone

    arrivals, swept, single, alone = run(scenario(), timeout=180)
    assert arrivals == ["single", "sweep"] and single.error is None
    assert swept.error is None and swept.result.count == 6 and swept.queued is None
    steps = [p.step for p in swept.progress]  # counted across the cells, one job to the client
    assert steps == sorted(set(steps)) and steps[-1] == 12 and swept.started is None  # read before
    assert [c.seed for c in swept.result.cells] == [1, 2, 3, 4, 5, 6]
    assert [frame.payload for frame in swept.images] == [job.images[0].payload for job in alone]


def test_a_sweep_cancelled_between_its_cells_says_how_far_it_got(server):
    sweep = [SweepValues(SweepAxis.SEED, [1, 2, 3, 4])]

    async def scenario():
        async with (
            InstantStyleClient.connect(server.url, client="sweeper") as sweeper,
            InstantStyleClient.connect(server.url, client="other") as other,
        ):
            await sweeper.submit(generate_message(1, steps=4, width=128, height=128, sweep=sweep), {0: STYLE})
            while not isinstance(await sweeper.receive(), Progress):
                pass
            await other.submit(generate_message(1, steps=40, width=128, height=128), {0: STYLE})
            while not isinstance(await other.receive(), Started):  # the sweep waits for its next turn
                pass
            await sweeper.cancel(1)
            return await sweeper.follow(1), await other.follow(1)

    outcome, single = run(scenario(), timeout=120)
    assert outcome.cancelled is not None and outcome.result is None and not outcome.images
    assert outcome.cancelled.step == 4  # the whole first cell, counted for the sweep
    assert single.error is None and single.result.count == 1
    assert run(a_normal_job(server.url), timeout=120)


def test_refused_generates_release_their_input_frames(server):
    """Thirty refusals (an unknown LoRA; a sweep over the cell limit) with one input each: before, the
    25th input was already too_large and so was every valid job after them."""

    async def scenario():
        ws = await session(server.url)
        codes = []
        for job_id in range(1, 31):
            await ws.send(input_frame(job_id, 0, STYLE))
            if job_id % 2:
                await ws.send(generate(job_id, loras=[{"name": "nope", "weight": 1.0}]))
            else:
                cells = [
                    {"axis": "seed", "values": list(range(8))},
                    {"axis": "style_scale", "values": [0.5] * 8},
                ]
                await ws.send(generate(job_id, sweep=cells))
            codes.append((await next_error(ws)).code)
        await ws.send(input_frame(99, 0, STYLE))
        await ws.send(generate(99))
        while True:
            data = await ws.recv()
            if isinstance(data, bytes) and data[3] == FrameKind.RESULT:
                break
            assert not (isinstance(data, str) and isinstance(decode_server_message(data), Error)), data
        await ws.close()
        return codes

    codes = run(scenario(), timeout=120)
    assert set(codes) <= {ErrorCode.BAD_FIELD, ErrorCode.OUT_OF_RANGE} and len(codes) == 30, codes


def test_a_refused_live_generate_leaves_the_running_live_job_alone(server):
    async def scenario():
        async with InstantStyleClient.connect(server.url, client="live") as client:
            await client.submit(generate_message(1, steps=6, live=True), {0: STYLE})
            while not isinstance(await client.receive(), Progress):  # job 1 is running
                pass
            await client.connection.send(generate(2, live=True))  # its input never sent
            return await client.follow_all([1, 2])

    outcomes = run(scenario(), timeout=120)
    assert outcomes[2].error is not None and outcomes[2].error.code is ErrorCode.MISSING_INPUT
    assert outcomes[1].cancelled is None and len(outcomes[1].images) == 1  # it ran to its end


def test_client_text_in_a_failed_jobs_error_cannot_forge_log_lines(server):
    async def scenario():
        ws = await session(server.url)
        await ws.send(input_frame(1, 0, STYLE))
        await ws.send(generate(1, preset="custom", block_scales={"up": {FORGED: 1.0}}))
        error = await next_error(ws)
        await ws.close()
        return error

    error = run(scenario(), timeout=120)
    assert error.job_id == 1
    assert run(a_normal_job(server.url), timeout=120)
    log = server.log.read_bytes().decode("utf-8", "surrogateescape")
    assert "\\nFORGED 2026-01-01 CRITICAL" in log, log[-3000:]  # the line was written, escaped
    assert not any(line.startswith("FORGED") for line in log.splitlines())
    assert "\u202e" not in log and "\x00" not in log


def test_a_traceback_follows_its_record_on_indented_escaped_lines():
    record = logging.LogRecord(
        "backend.server.executor", logging.ERROR, __file__, 1, "job %s failed: %s", (7, FORGED), None
    )
    record.trace = f"Traceback (most recent call last):\n  File 'x.py'\nValueError: {FORGED}\n"
    first, *rest = EscapingFormatter("%(levelname)s %(name)s: %(message)s").format(record).split("\n")
    assert first.startswith("ERROR backend.server.executor: job 7 failed: block_0\\nFORGED")
    assert first.endswith("\\u202e\\x00") and len(rest) == 4  # the message's newline became an indented line
    assert all(line.startswith("    ") for line in rest) and "\u202e" not in "".join(rest)
    try:  # log.exception's traceback (exc_info) follows the same rule
        raise ValueError(FORGED)
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "internal error", (), sys.exc_info())
    first, *rest = EscapingFormatter("%(message)s").format(record).split("\n")
    assert first == "internal error" and rest[-1].startswith("    FORGED") and rest[-1].endswith("\\x00")
    assert all(line.startswith("    ") for line in rest)


def test_the_log_follows_stderr_even_after_the_stream_it_started_with_closed():
    """An in-process ``python -m backend`` (a launcher, a test) configured logging while stderr was a
    stream that later closed: later lines go to stderr as it is now, never a "Logging error"."""
    import io
    import logging
    import sys

    from backend.server.logs import configure_logging

    before, handlers = sys.stderr, logging.getLogger().handlers[:]
    first, now = io.StringIO(), io.StringIO()
    try:
        sys.stderr = first
        configure_logging(logging.INFO)
        first.close()
        sys.stderr = now
        logging.getLogger("backend.test").info("after the first stream closed")
    finally:
        sys.stderr = before
        logging.getLogger().handlers[:] = handlers
    assert "INFO backend.test: after the first stream closed" in now.getvalue()
    assert "Logging error" not in now.getvalue()
