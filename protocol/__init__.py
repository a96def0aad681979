"""The InstantStyle wire format: sans-I/O, standard library only.

It runs inside Krita's Python as well as in the backend, so it holds no
sockets, no asyncio and no Qt: only functions from text or bytes to typed
messages and back, each validating everything it reads. See PROTOCOL.md.
"""

from .codec import PROTOCOL_VERSION, decode_client_message, decode_server_message, encode_message
from .enums import BlockPreset, ErrorCode, FrameKind, MessageType, Mode, ModelPhase, PixelFormat, Sampler
from .errors import ProtocolError
from .frames import PixelFrame, decode_frame, encode_frame_header
from .messages import (
    Cancel,
    Cancelled,
    ClientMessage,
    Error,
    Generate,
    Hello,
    Limits,
    LoraWeight,
    ModelFeatures,
    ModelInfo,
    ModelStatus,
    Ping,
    Pong,
    Progress,
    Queued,
    Region,
    Result,
    Scores,
    ServerHello,
    ServerMessage,
    SpeedPresetInfo,
    Started,
    StyleImage,
)

__all__ = [
    "PROTOCOL_VERSION",
    "BlockPreset",
    "Cancel",
    "Cancelled",
    "ClientMessage",
    "Error",
    "ErrorCode",
    "FrameKind",
    "Generate",
    "Hello",
    "Limits",
    "LoraWeight",
    "MessageType",
    "Mode",
    "ModelFeatures",
    "ModelInfo",
    "ModelPhase",
    "ModelStatus",
    "Ping",
    "PixelFormat",
    "PixelFrame",
    "Pong",
    "Progress",
    "ProtocolError",
    "Queued",
    "Region",
    "Result",
    "Sampler",
    "Scores",
    "ServerHello",
    "ServerMessage",
    "SpeedPresetInfo",
    "Started",
    "StyleImage",
    "decode_client_message",
    "decode_frame",
    "decode_server_message",
    "encode_frame_header",
    "encode_message",
]
