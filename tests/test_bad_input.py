"""Malformed input: every bad message gets a clear error, and the server keeps serving."""

from __future__ import annotations

import json
import struct

import pytest
import websockets
from websockets.asyncio.client import connect

from backend.client import InstantStyleClient, input_frame
from backend.server.config import ConfigError, ServerConfig
from protocol import (
    Error,
    ErrorCode,
    FrameKind,
    Hello,
    PixelFormat,
    ServerHello,
    decode_server_message,
    encode_frame_header,
    encode_message,
)
from protocol.frames import PNG_SIGNATURE
from tests.conftest import noise_image
from tests.server_helpers import generate_message, run, running_server

STYLE = noise_image(4, size=32)
STYLE_FRAME = input_frame(1, 0, STYLE)


def generate(**fields) -> str:
    body = json.loads(encode_message(generate_message(1)))
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None})


def raw(**fields) -> str:
    return json.dumps(fields)


def header(kind=FrameKind.INPUT, fmt=PixelFormat.RGB8, width=2, height=2, job=1, index=0) -> bytes:
    return encode_frame_header(kind, job, index, width, height, fmt)


BAD_MESSAGES: list[tuple[str, list[str | bytes], ErrorCode]] = [
    ("truncated JSON", ["{"], ErrorCode.BAD_JSON),
    ("JSON list", ["[]"], ErrorCode.BAD_MESSAGE),
    ("JSON string", ['"hello"'], ErrorCode.BAD_MESSAGE),
    ("no type", [raw(version=1)], ErrorCode.BAD_MESSAGE),
    ("unknown type", [raw(type="fly", version=1)], ErrorCode.UNKNOWN_TYPE),
    ("wrong version", [generate(version=2)], ErrorCode.BAD_VERSION),
    ("no version", [raw(type="ping")], ErrorCode.BAD_VERSION),
    ("missing prompt", [generate(prompt=None)], ErrorCode.MISSING_FIELD),
    ("job id as string", [generate(job_id="1")], ErrorCode.BAD_FIELD),
    ("job id zero", [generate(job_id=0)], ErrorCode.OUT_OF_RANGE),
    ("negative width", [generate(width=-64)], ErrorCode.OUT_OF_RANGE),
    ("width not a multiple of 8", [STYLE_FRAME, generate(width=65)], ErrorCode.OUT_OF_RANGE),
    ("absurd width", [generate(width=10**9)], ErrorCode.OUT_OF_RANGE),
    ("over the server's max side", [STYLE_FRAME, generate(width=4096, height=8)], ErrorCode.TOO_LARGE),
    ("zero steps", [generate(steps=0)], ErrorCode.OUT_OF_RANGE),
    ("too many steps", [generate(steps=10000)], ErrorCode.OUT_OF_RANGE),
    ("steps as float", [generate(steps=3.5)], ErrorCode.BAD_FIELD),
    ("NaN guidance", ['{"type":"generate","version":1,"guidance_scale":NaN}'], ErrorCode.BAD_JSON),
    ("unknown preset", [generate(preset="sparkles")], ErrorCode.BAD_FIELD),
    ("no style images", [generate(style_images=[])], ErrorCode.MISSING_FIELD),
    ("style image never sent", [generate(style_images=[{"input": 5}])], ErrorCode.MISSING_INPUT),
    ("huge prompt", [generate(prompt="x" * 10000)], ErrorCode.TOO_LARGE),
    ("misspelt field", [generate(stpes=3)], ErrorCode.BAD_FIELD),
    ("img2img without init image", [STYLE_FRAME, generate(mode="img2img")], ErrorCode.MISSING_FIELD),
    ("custom preset without map", [STYLE_FRAME, generate(preset="custom")], ErrorCode.MISSING_FIELD),
    ("batch too large", [generate(batch=99)], ErrorCode.OUT_OF_RANGE),
    ("content scale too large", [generate(content_scale=5)], ErrorCode.OUT_OF_RANGE),
    ("negative seed", [generate(seed=-1)], ErrorCode.OUT_OF_RANGE),
    (
        "weights add to zero",
        [STYLE_FRAME, generate(style_images=[{"input": 0, "weight": 0}])],
        ErrorCode.OUT_OF_RANGE,
    ),
    ("style image as object", [generate(style_images={"input": 0})], ErrorCode.BAD_FIELD),
    ("boolean width", [generate(width=True)], ErrorCode.BAD_FIELD),
    ("control message over 256 KiB", [generate(prompt="x" * 300_000)], ErrorCode.TOO_LARGE),
    ("frame shorter than its header", [b"IS\x01"], ErrorCode.BAD_FRAME),
    ("frame with a bad magic", [b"XX" + header()[2:] + bytes(12)], ErrorCode.BAD_FRAME),
    ("frame with a wrong length", [header() + bytes(11)], ErrorCode.BAD_FRAME),
    ("frame of unknown kind", [header()[:3] + b"\x09" + header()[4:] + bytes(12)], ErrorCode.BAD_FRAME),
    ("client sends a RESULT frame", [header(kind=FrameKind.RESULT) + bytes(12)], ErrorCode.BAD_FRAME),
    ("frame over the max side", [header(width=5000, height=1) + bytes(15000)], ErrorCode.TOO_LARGE),
    ("empty frame", [header(width=0, height=0)], ErrorCode.BAD_FRAME),
    (
        "PNG that is not a PNG",
        [header(fmt=PixelFormat.PNG) + b"not a png at all, really not"],
        ErrorCode.BAD_FRAME,
    ),
    (
        "PNG with a lying size",
        [header(fmt=PixelFormat.PNG) + PNG_SIGNATURE + struct.pack("!I4sII", 13, b"IHDR", 9, 9) + bytes(8)],
        ErrorCode.BAD_FRAME,
    ),
    ("cancel of an unknown job", [raw(type="cancel", version=1, job_id=42)], ErrorCode.UNKNOWN_JOB),
    ("second hello", [encode_message(Hello(client="again"))], ErrorCode.BAD_MESSAGE),
    ("frame version 9", [header()[:2] + b"\x09" + header()[3:] + bytes(12)], ErrorCode.BAD_VERSION),
    # Values that used to pass validation and fail later, or silently do the wrong thing:
    (
        "huge block scale",
        [generate(preset="custom", block_scales={"up": {"block_0": 1e30}})],
        ErrorCode.OUT_OF_RANGE,
    ),
    ("negative block scale", [generate(preset="custom", block_scales={"mid": -5})], ErrorCode.OUT_OF_RANGE),
    (
        "block scale list",
        [generate(preset="custom", block_scales={"up": {"block_0": [0, 1e308, 0]}})],
        ErrorCode.OUT_OF_RANGE,
    ),
    ("block scales without custom", [generate(block_scales={"nowhere": 1})], ErrorCode.BAD_FIELD),
    (
        "lone surrogate in prompt",
        ['{"type":"generate","version":1,"job_id":1,"prompt":"a \\ud800 cat","style_images":[{"input":0}]}'],
        ErrorCode.BAD_FIELD,
    ),
    ("lone surrogate in content", [generate(content_text="\ud800")], ErrorCode.BAD_FIELD),
    ("version true", [generate(version=True)], ErrorCode.BAD_VERSION),
    ("batch seeds past the largest seed", [generate(seed=2**32 - 2, batch=4)], ErrorCode.OUT_OF_RANGE),
    ("INPUT frame for job 0", [header(job=0) + bytes(12)], ErrorCode.BAD_FRAME),
    ("INPUT frame index 65535", [header(index=65535) + bytes(12)], ErrorCode.BAD_FRAME),
]


async def _hello(ws, token=None) -> ServerHello:
    await ws.send(encode_message(Hello(client="tester", token=token)))
    return decode_server_message(await ws.recv())


async def _first_error(ws) -> Error:
    while True:
        data = await ws.recv()
        if isinstance(data, str) and isinstance(message := decode_server_message(data), Error):
            return message


async def _serves_a_valid_job(ws, job_id: int) -> bool:
    await ws.send(input_frame(job_id, 0, STYLE))
    await ws.send(encode_message(generate_message(job_id, steps=1)))
    while True:
        data = await ws.recv()
        if isinstance(data, bytes) and data[3] == FrameKind.RESULT:
            return True
        if isinstance(data, str) and isinstance(decode_server_message(data), Error):
            return False


HUGE = 10**400  # a JSON integer with no float value: float() of it raised OverflowError (an internal error)
HUGE_NUMBERS = {
    "guidance_scale": {"guidance_scale": HUGE},
    "strength": {"strength": -HUGE},
    "style image weight": {"style_images": [{"input": 0, "weight": HUGE}]},
    "LoRA weight": {"loras": [{"name": "ink", "weight": HUGE}]},
    "region's style weight": {
        "regions": [{"mask": 0, "style_images": [{"input": 0, "weight": HUGE}]}],
    },
}


def first_error_then_a_valid_job(engine, frames: list[str | bytes]) -> tuple[Error, bool]:
    """Send ``frames`` after hello: the first error they get, and whether a valid job runs after it."""

    async def scenario():
        async with (
            running_server(engine) as server,
            connect(server.url, compression=None, max_size=None) as ws,
        ):
            await _hello(ws)
            for frame in frames:
                await ws.send(frame)
            error = await _first_error(ws)
            return error, await _serves_a_valid_job(ws, 77)

    return run(scenario(), timeout=60)


@pytest.mark.parametrize("fields", list(HUGE_NUMBERS.values()), ids=list(HUGE_NUMBERS))
def test_a_huge_integer_in_a_number_field_is_out_of_range_for_that_job(engine, fields):
    error, still_serving = first_error_then_a_valid_job(engine, [STYLE_FRAME, generate(**fields)])
    assert (error.code, error.job_id) == (ErrorCode.OUT_OF_RANGE, 1), error
    assert "got an integer beyond 1e308" in error.message
    assert still_serving


@pytest.mark.parametrize(("frames", "code"), [c[1:] for c in BAD_MESSAGES], ids=[c[0] for c in BAD_MESSAGES])
def test_bad_message_gets_a_clear_error_and_the_server_keeps_serving(engine, frames, code):
    error, still_serving = first_error_then_a_valid_job(engine, frames)
    assert error.code is code, error
    assert error.message and "Traceback" not in error.message
    assert still_serving


def test_a_message_over_max_size_closes_only_that_connection(engine):
    async def scenario():
        async with running_server(engine) as server:
            limit = server.config.limits.max_message_bytes
            ws = await connect(server.url, compression=None, max_size=None)
            await _hello(ws)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.send(header(width=2048, height=2048) + bytes(limit))
                await ws.recv()
            async with connect(server.url, compression=None, max_size=None) as ws:
                await _hello(ws)
                return closed.value, await _serves_a_valid_job(ws, 1)

    closed, still_serving = run(scenario(), timeout=60)
    # The server closes with 1009 "message too big" (or the socket drops while the client still writes).
    assert closed.rcvd is None or closed.rcvd.code == 1009
    assert still_serving


def test_duplicate_job_id_is_refused(engine):
    async def scenario():
        async with (
            running_server(engine) as server,
            connect(server.url, compression=None, max_size=None) as ws,
        ):
            await _hello(ws)
            await ws.send(STYLE_FRAME)
            await ws.send(encode_message(generate_message(1, steps=5)))
            await ws.send(STYLE_FRAME)
            return await _first_error(ws), await _serves_a_valid_job(ws, 2)

    error, still_serving = run(scenario(), timeout=60)
    assert error.code is ErrorCode.DUPLICATE_JOB and still_serving


HANDSHAKES = [
    ("wrong token", {"token": "not-the-token"}, ErrorCode.UNAUTHORIZED),
    ("missing token", {"token": None}, ErrorCode.UNAUTHORIZED),
    ("generate before hello", {"first": encode_message(generate_message(1))}, ErrorCode.NOT_READY),
    ("binary before hello", {"first": STYLE_FRAME}, ErrorCode.NOT_READY),
    ("garbage before hello", {"first": "{{{"}, ErrorCode.BAD_JSON),
    # A token that is not text used to close the connection without a word (the plugin kept retrying).
    (
        "token with a lone surrogate",
        {"first": '{"type":"hello","version":1,"token":"ab\\udc80cdefgh"}'},
        ErrorCode.BAD_FIELD,
    ),
]


@pytest.mark.parametrize(("case", "code"), [c[1:] for c in HANDSHAKES], ids=[c[0] for c in HANDSHAKES])
def test_refused_handshakes(engine, case, code):
    token = "correct horse battery"

    async def scenario():
        async with running_server(engine, token=token) as server:
            async with connect(server.url, compression=None) as ws:
                await ws.send(case.get("first") or encode_message(Hello(client="x", token=case.get("token"))))
                reply = decode_server_message(await ws.recv())
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
            async with InstantStyleClient.connect(server.url, token=token) as client:
                await client.submit(generate_message(1, steps=1), {0: STYLE})
                outcome = await client.follow(1)
            return reply, closed.value.rcvd.code, outcome

    reply, close_code, outcome = run(scenario(), timeout=60)
    assert isinstance(reply, Error) and reply.code is code
    assert close_code == 1008
    assert outcome.error is None and len(outcome.images) == 1


def test_browser_origin_is_refused_at_the_handshake(engine):
    async def scenario():
        async with running_server(engine) as server:
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with connect(server.url, origin="https://evil.example"):
                    pass
            async with InstantStyleClient.connect(server.url) as client:
                await client.submit(generate_message(1, steps=1), {0: STYLE})
                return refused.value.response.status_code, await client.follow(1)

    status, outcome = run(scenario(), timeout=60)
    assert status == 403
    assert outcome.error is None and len(outcome.images) == 1


def test_non_loopback_bind_without_token_is_refused(engine):
    from backend.server.app import InstantStyleServer
    from protocol import ModelInfo

    with pytest.raises(ConfigError, match="needs a token"):
        InstantStyleServer(engine, ModelInfo("tiny", True), ServerConfig(host="0.0.0.0", port=0))
