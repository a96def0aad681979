"""A result image put together from its frames, on the client: one RESULT frame, or RESULT_TILE
frames that each carry a rectangle (a canvas too large for one message). Sans-I/O, like the codec."""

from __future__ import annotations

from .enums import ErrorCode, FrameKind, PixelFormat
from .errors import ProtocolError
from .frames import PixelFrame

CHANNELS = 4
"""Results are RGBA8."""


class ResultImage:
    """The ``width`` × ``height`` RGBA image a ``result`` announced, filled frame by frame."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(width * height * CHANNELS)
        self.covered = 0
        self._places: set[tuple[int, int]] = set()

    @property
    def complete(self) -> bool:
        return self.covered == self.width * self.height

    def add(self, frame: PixelFrame) -> None:
        """Place one frame; a frame that does not fit the announced image is a ``BAD_FRAME``."""

        def bad(text: str) -> ProtocolError:
            return ProtocolError(ErrorCode.BAD_FRAME, f"result {frame.index}: {text}", frame.job_id)

        if frame.format is not PixelFormat.RGBA8:
            raise bad(f"expected RGBA8 pixels, got {frame.format.name}")
        if frame.kind is FrameKind.RESULT:
            if (frame.width, frame.height) != (self.width, self.height) or self.covered:
                raise bad(f"a {frame.width}x{frame.height} frame for a {self.width}x{self.height} image")
            self.pixels[:] = frame.payload
            self.covered = self.width * self.height
            return
        if frame.kind is not FrameKind.RESULT_TILE:
            raise bad(f"a {frame.kind.name} frame is not part of a result")
        right, bottom = frame.x + frame.width, frame.y + frame.height
        if right > self.width or bottom > self.height:
            raise bad(f"a tile reaching {right}x{bottom} is outside the {self.width}x{self.height} image")
        area = frame.width * frame.height
        if (frame.x, frame.y) in self._places or self.covered + area > self.width * self.height:
            raise bad(f"the tile at {frame.x},{frame.y} overlaps another")
        self._places.add((frame.x, frame.y))
        row = frame.width * CHANNELS
        for line in range(frame.height):
            start = ((frame.y + line) * self.width + frame.x) * CHANNELS
            self.pixels[start : start + row] = frame.payload[line * row : (line + 1) * row]
        self.covered += frame.width * frame.height
