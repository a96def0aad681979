"""The one exception type every decoder raises."""

from __future__ import annotations

from .enums import ErrorCode


class ProtocolError(ValueError):
    """A message or frame that breaks the protocol; maps one-to-one onto an ``error`` message."""

    def __init__(self, code: ErrorCode, message: str, job_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.value}, {self.message!r})"
