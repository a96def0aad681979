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


SD15_PRESET_BLOCKS = {
    "style": [f"up_blocks.1.attentions.{i}" for i in range(3)],
    "style+layout": [
        "down_blocks.2.attentions.0",
        "down_blocks.2.attentions.1",
        "mid_block.attentions.0",
        *(f"up_blocks.1.attentions.{i}" for i in range(3)),
    ],
    "precise": [f"up_blocks.1.attentions.{i}" for i in range(3)],
    "layout_push": ["down_blocks.2.attentions.0", "down_blocks.2.attentions.1"],
}


def ready_status(features: dict) -> str:
    """A ``model_status`` text frame with these ``features`` as the server would send them."""
    return json.dumps({"type": "model_status", "version": 1, "phase": "ready", "features": features})


def test_the_family_and_its_preset_blocks_round_trip():
    from protocol import LAYOUT_PUSH_BLOCKS, ModelFamily, ModelFeatures, ModelPhase, ModelStatus

    features = ModelFeatures(
        attention_blocks=SD15_PRESET_BLOCKS["style+layout"],
        native_side=512,
        family=ModelFamily.SD15,
        preset_blocks=SD15_PRESET_BLOCKS,
    )
    text = encode_message(ModelStatus(ModelPhase.READY, features=features))
    sent = json.loads(text)["features"]
    assert sent["family"] == "sd15" and sent["preset_blocks"] == SD15_PRESET_BLOCKS
    decoded = decode_server_message(text)
    assert decoded.features == features and decoded.features.family is ModelFamily.SD15
    assert decoded.features.preset_blocks[LAYOUT_PUSH_BLOCKS] == SD15_PRESET_BLOCKS["layout_push"]
    assert ModelFamily.SD15.label == "SD1.5" and ModelFamily.SDXL.label == "SDXL"


def test_an_older_servers_features_are_sdxl_with_no_preset_blocks_said():
    from protocol import ModelFamily

    features = decode_server_message(
        ready_status({"attention_blocks": ["up_blocks.0.attentions.1"]})
    ).features
    assert features.family is ModelFamily.SDXL and features.preset_blocks == {}


@pytest.mark.parametrize(
    ("features", "code", "said"),
    [
        ({"family": "sd2"}, ErrorCode.BAD_FIELD, "features.family must be one of 'sdxl', 'sd15'"),
        ({"preset_blocks": ["style"]}, ErrorCode.BAD_FIELD, "features.preset_blocks must be a JSON object"),
        (
            {"preset_blocks": {"style": "up_blocks.1"}},
            ErrorCode.BAD_FIELD,
            "preset_blocks.style must be a list",
        ),
        ({"preset_blocks": {"style": [1]}}, ErrorCode.BAD_FIELD, "preset_blocks.style[0] must be a string"),
        (
            {"preset_blocks": {f"k{i}": [] for i in range(17)}},
            ErrorCode.OUT_OF_RANGE,
            "features.preset_blocks has 17 keys, at most 16 allowed",
        ),
        (
            {"preset_blocks": {"style": ["x" * 101]}},
            ErrorCode.TOO_LARGE,
            "preset_blocks.style[0] is 101 characters, at most 100 allowed",
        ),
        (
            {"preset_blocks": {"k" * 101: []}},
            ErrorCode.TOO_LARGE,
            "a key of features.preset_blocks is 101 characters",
        ),
        (
            {"preset_blocks": {"style": ["a"] * 1001}},
            ErrorCode.OUT_OF_RANGE,
            "preset_blocks.style has 1001 items, at most 1000 allowed",
        ),
    ],
    ids=["family", "not-a-map", "not-a-list", "not-strings", "keys", "name", "key", "names"],
)
def test_preset_blocks_and_family_are_bounded_and_typed(features, code, said):
    with pytest.raises(ProtocolError) as raised:
        decode_server_message(ready_status(features))
    assert raised.value.code is code and said in raised.value.message, raised.value.message


def test_preset_blocks_at_their_bounds_are_accepted():
    from protocol import ModelFeatures

    at_limit = {"style": ["x" * 100] * 1000, **{f"k{i}": [] for i in range(15)}}
    assert decode_server_message(ready_status({"preset_blocks": at_limit})).features.preset_blocks == at_limit
    assert ModelFeatures().preset_blocks == {}  # each instance its own map
    assert ModelFeatures().preset_blocks is not ModelFeatures().preset_blocks
