"""Byte-level pixel conversions with no numpy and no per-pixel Python loops.

Krita's RGBA 8-bit layers hand out and take bytes in B, G, R, A order
(``QImage.Format_ARGB32`` on little-endian machines); the protocol uses R, G, B, A.
Slice assignment swaps the channels in C, so a 4k canvas converts in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass


def swap_red_blue(pixels: bytes | bytearray) -> bytes:
    """RGBA <-> BGRA (the same operation both ways)."""
    if len(pixels) % 4:
        raise ValueError(f"4-channel pixel data must be a multiple of 4 bytes, got {len(pixels)}")
    swapped = bytearray(pixels)
    swapped[0::4] = pixels[2::4]
    swapped[2::4] = pixels[0::4]
    return bytes(swapped)


def to_8bit(pixels: bytes | bytearray) -> bytes:
    """16-bit little-endian channels (Krita's U16) to 8-bit: keep each high byte."""
    return bytes(pixels[1::2])


def to_16bit(pixels: bytes | bytearray) -> bytes:
    """8-bit channels to 16-bit little-endian, scaled exactly (v * 257), so 255 stays full white."""
    out = bytearray(len(pixels) * 2)
    out[0::2] = pixels
    out[1::2] = pixels
    return bytes(out)


def part_bgra(
    rgba: bytes | bytearray, width: int, height: int, x: int, y: int, mask: bytes | None, mask_width: int
) -> bytes:
    """A ``width`` × ``height`` RGBA rectangle at (``x``, ``y``) of a result as BGRA for
    ``setPixelData``; with ``mask`` (gray, ``mask_width`` wide: the whole result's selection), its
    alpha is the selection's there, so only the selection shows."""
    bgra = swap_red_blue(rgba)
    if mask is None:
        return bgra
    rows = [mask[(y + row) * mask_width + x : (y + row) * mask_width + x + width] for row in range(height)]
    out = bytearray(bgra)
    out[3::4] = b"".join(rows)
    return bytes(out)


def round_to_multiple(value: int, multiple: int = 8) -> int:
    return max(multiple, (value + multiple - 1) // multiple * multiple)


def fit_generation_size(width: int, height: int, max_side: int, max_pixels: int) -> tuple[int, int]:
    """The size to generate for a target area: same aspect, within limits, multiples of 8."""
    scale = min(1.0, max_side / max(width, height), (max_pixels / (width * height)) ** 0.5)
    fitted_w = max(8, int(width * scale) // 8 * 8)
    fitted_h = max(8, int(height * scale) // 8 * 8)
    if scale == 1.0:
        fitted_w, fitted_h = round_to_multiple(width), round_to_multiple(height)
        if fitted_w > max_side or fitted_h > max_side or fitted_w * fitted_h > max_pixels:
            fitted_w, fitted_h = width // 8 * 8 or 8, height // 8 * 8 or 8
    return fitted_w, fitted_h


@dataclass(frozen=True)
class SavedSelection:
    """A selection kept for a region: the whole document's selection mask when it was saved."""

    width: int
    height: int
    data: bytes

    def crop(self, x: int, y: int, width: int, height: int) -> bytes:
        """The mask inside an area, row by row (outside the saved document: not selected)."""
        rows = []
        for row_y in range(y, y + height):
            row = (
                self.data[row_y * self.width : (row_y + 1) * self.width] if 0 <= row_y < self.height else b""
            )
            start = max(0, x)
            piece = b"\0" * (start - x) + row[start : max(start, x + width)]
            rows.append(piece.ljust(width, b"\0"))
        return b"".join(rows)
