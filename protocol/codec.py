"""Text frames: JSON control messages with a ``type`` and a protocol ``version``."""

from __future__ import annotations

import json
from typing import Any

from .enums import ErrorCode, MessageType
from .errors import ProtocolError
from .messages import CLIENT_MESSAGES, SERVER_MESSAGES, ClientMessage, Generate, Limits, ServerMessage
from .schema import from_json_object, to_json_object

PROTOCOL_VERSION = 1
MAX_TEXT_FRAME_BYTES = 256 * 1024
"""Control messages are small; images travel as binary frames."""


def encode_message(message: ClientMessage | ServerMessage) -> str:
    """A message as the text of one WebSocket frame."""
    body = {"type": message.TYPE.value, "version": PROTOCOL_VERSION, **to_json_object(message)}
    return json.dumps({k: v for k, v in body.items() if v is not None}, separators=(",", ":"))


def decode_client_message(text: str | bytes, limits: Limits | None = None) -> ClientMessage:
    """What a server reads: ``hello``, ``generate``, ``cancel`` or ``ping``, fully validated."""
    message = _decode(text, CLIENT_MESSAGES)
    if isinstance(message, Generate):
        message.check_limits(limits or Limits())
    return message  # type: ignore[return-value]


def decode_server_message(text: str | bytes) -> ServerMessage:
    """What a client reads."""
    return _decode(text, SERVER_MESSAGES)  # type: ignore[return-value]


def _reject_constant(name: str) -> Any:
    raise ProtocolError(ErrorCode.BAD_JSON, f"{name} is not valid JSON")


def _decode(text: str | bytes, registry: dict[MessageType, type]) -> object:
    if len(text) > MAX_TEXT_FRAME_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"control message over {MAX_TEXT_FRAME_BYTES} bytes")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message must be a JSON object")
    kind = data.pop("type", None)
    version = data.pop("version", None)
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message needs a string 'type'")
    if type(version) is not int or version != PROTOCOL_VERSION:  # true == 1 in Python, not on the wire
        raise ProtocolError(
            ErrorCode.BAD_VERSION,
            f"protocol version {version!r} is not supported; this side speaks {PROTOCOL_VERSION}",
        )
    try:
        cls = registry[MessageType(kind)]
    except (ValueError, KeyError):
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}") from None
    job_id = data.get("job_id") if isinstance(data.get("job_id"), int) else None
    try:
        return from_json_object(cls, data)
    except ProtocolError as error:
        error.job_id = error.job_id if error.job_id is not None else job_id
        raise
