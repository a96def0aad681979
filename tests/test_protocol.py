"""The sans-I/O codec: round trips, and decoders that only ever raise ProtocolError."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    BlockPreset,
    Cancel,
    Cancelled,
    Error,
    ErrorCode,
    FrameKind,
    Generate,
    Hello,
    Limits,
    Mode,
    ModelInfo,
    Ping,
    PixelFormat,
    PixelFrame,
    Pong,
    Progress,
    ProtocolError,
    Queued,
    Result,
    ServerHello,
    Started,
    StyleImage,
    decode_client_message,
    decode_frame,
    decode_server_message,
    encode_message,
)
from protocol.frames import HEADER

CLIENT_EXAMPLES = [
    Hello(client="krita", token="secret-token"),
    Generate(
        job_id=3,
        prompt="a cat",
        style_images=[StyleImage(0, 0.7), StyleImage(1, 0.3)],
        content_text="a dog",
        content_scale=0.4,
        preset=BlockPreset.CUSTOM,
        block_scales={"up": {"block_0": [0.0, 1.0, 0.0]}},
        mode=Mode.INPAINT,
        init_image=2,
        mask=3,
        strength=0.5,
        width=512,
        height=768,
        steps=20,
        seed=9,
        batch=2,
    ),
    Cancel(job_id=3),
    Ping(nonce=5),
]
SERVER_EXAMPLES = [
    ServerHello("0.1.0", ModelInfo("tiny", True, "cpu", "float32"), Limits()),
    Queued(1, 2),
    Started(1, 42, 30),
    Progress(1, 3, 30, 1.5),
    Result(1, 2, 64, 64, [4, 5], "tiny", True, 0.3),
    Cancelled(1, 7),
    Error(ErrorCode.BAD_FIELD, "width must be an integer", 1),
    Pong(5),
]


@pytest.mark.parametrize("message", CLIENT_EXAMPLES, ids=lambda m: type(m).__name__)
def test_client_messages_round_trip(message):
    text = encode_message(message)
    assert json.loads(text)["version"] == 1
    assert decode_client_message(text) == message


@pytest.mark.parametrize("message", SERVER_EXAMPLES, ids=lambda m: type(m).__name__)
def test_server_messages_round_trip(message):
    assert decode_server_message(encode_message(message)) == message


def test_sides_do_not_accept_each_others_messages():
    with pytest.raises(ProtocolError) as raised:
        decode_client_message(encode_message(Queued(1, 0)))
    assert raised.value.code is ErrorCode.UNKNOWN_TYPE
    with pytest.raises(ProtocolError):
        decode_server_message(encode_message(Cancel(1)))


@pytest.mark.parametrize("fmt", [PixelFormat.RGB8, PixelFormat.RGBA8, PixelFormat.GRAY8])
def test_frames_round_trip(fmt):
    frame = PixelFrame(FrameKind.RESULT, 2**32 - 1, 65535, 3, 2, fmt, bytes(range(3 * 2 * fmt.channels)))
    data = frame.encode()
    assert len(data) == HEADER.size + len(frame.payload)
    assert decode_frame(data) == frame


def test_errors_carry_the_job_id_when_known():
    with pytest.raises(ProtocolError) as raised:
        decode_client_message(json.dumps({"type": "generate", "version": 1, "job_id": 9, "prompt": 5}))
    assert raised.value.job_id == 9


def test_server_limits_are_enforced():
    limits = Limits(max_side=256, max_pixels=256 * 256, max_steps=10, max_batch=2)
    ok = Generate(
        job_id=1, prompt="p", style_images=[StyleImage(0)], width=256, height=256, steps=10, batch=2
    )
    assert decode_client_message(encode_message(ok), limits) == ok
    for change, code in [
        ({"width": 264}, ErrorCode.TOO_LARGE),
        ({"steps": 11}, ErrorCode.OUT_OF_RANGE),
        ({"batch": 3}, ErrorCode.OUT_OF_RANGE),
    ]:
        body = {**json.loads(encode_message(ok)), **change}
        with pytest.raises(ProtocolError) as raised:
            decode_client_message(json.dumps(body), limits)
        assert raised.value.code is code


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
GENERATE_FIELDS = [
    "job_id",
    "prompt",
    "style_images",
    "negative_prompt",
    "content_text",
    "content_scale",
    "preset",
    "block_scales",
    "style_scale",
    "mode",
    "init_image",
    "mask",
    "strength",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "seed",
    "batch",
]


def _only_protocol_errors(decode, data) -> None:
    try:
        decode(data)
    except ProtocolError as error:
        assert isinstance(error.code, ErrorCode) and error.message


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_fuzz_arbitrary_text_frames(data):
    _only_protocol_errors(decode_client_message, data)
    _only_protocol_errors(decode_server_message, data)


@FUZZ
@given(
    st.sampled_from(["hello", "generate", "cancel", "ping", "result", "error", "nope"]),
    st.sampled_from([1, 1, 1, 2, None, "1"]),
    st.dictionaries(
        st.sampled_from([*GENERATE_FIELDS, "token", "client", "nonce", "code", "extra"]),
        JSON_VALUES,
        max_size=8,
    ),
)
def test_fuzz_structured_messages(kind, version, fields):
    body = json.dumps({"type": kind, "version": version, **fields})
    _only_protocol_errors(decode_client_message, body)
    _only_protocol_errors(decode_server_message, body)


@FUZZ
@given(st.binary(max_size=64))
def test_fuzz_arbitrary_binary_frames(data):
    _only_protocol_errors(decode_frame, data)


@FUZZ
@given(
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**16 - 1),
    st.integers(0, 255),
    st.integers(0, 40),
    st.integers(0, 40),
    st.binary(max_size=300),
)
def test_fuzz_frame_headers(version, kind, job_id, index, fmt, width, height, payload):
    data = HEADER.pack(b"IS", version, kind, job_id, index, fmt, 0, width, height) + payload
    _only_protocol_errors(lambda d: decode_frame(d, max_side=32), data)
