"""Server errors in words for the artist: what happened and what to do, never a traceback."""

from __future__ import annotations

from .deps import protocol

_ADVICE = {
    protocol.ErrorCode.OUT_OF_MEMORY: "The GPU ran out of memory. Try a smaller size or a batch of 1.",
    protocol.ErrorCode.QUEUE_FULL: "The backend is busy with many jobs. Try again in a moment.",
    protocol.ErrorCode.UNAUTHORIZED: "The backend refused the token. Check it in the settings.",
    protocol.ErrorCode.SHUTTING_DOWN: "The backend is shutting down.",
    protocol.ErrorCode.BAD_VERSION: (
        "The backend speaks another protocol version. Update the plugin or the backend."
    ),
    protocol.ErrorCode.ENGINE_ERROR: "The backend could not run the job.",
    protocol.ErrorCode.INTERNAL: "The backend hit an internal error.",
    protocol.ErrorCode.WORKER_LOST: "The worker running this job stopped; it is being replaced. Try again.",
    protocol.ErrorCode.MODEL_FAILED: (
        "The backend could not load its model: see its console, then restart it."
    ),
}


def describe_error(code: protocol.ErrorCode, detail: str) -> str:
    advice = _ADVICE.get(code)
    detail = detail.strip().splitlines()[0] if detail.strip() else ""
    if advice and detail:
        return f"{advice} ({detail})"
    return advice or detail or code.value.replace("_", " ")
