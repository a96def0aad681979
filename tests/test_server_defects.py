"""Defects hostile clients of sweeps, regions and LoRAs found, each through a real server process.

A refused generate released nothing of the INPUT frames sent for it (a few refusals blocked the
client's next jobs); a live generate refused for a missing input still cancelled the running live job;
a failed job wrote the client's text raw into the server's log (a forged line, a bidi override, NUL).
After each, the server serves a normal job.
"""

from __future__ import annotations

import json
import logging
import sys

import pytest
from websockets.asyncio.client import connect

from backend.client import InstantStyleClient, input_frame
from backend.server.logs import EscapingFormatter
from protocol import Error, ErrorCode, FrameKind, Hello, Progress, decode_server_message, encode_message
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
