"""Canny edges in numpy, for ControlNet-guided stylization (no OpenCV dependency).

InstantStyle's image-based stylization conditions SDXL on the Canny edges of
the picture to restyle (thresholds 50/200, ControlNet scale 0.6 in the paper's
code), so the artist's lines survive while the style changes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

LOW_THRESHOLD = 50
HIGH_THRESHOLD = 200


def _shift(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``array`` moved by (dy, dx) (at most one pixel), borders repeated: no false edges at the frame."""
    h, w = array.shape
    padded = np.pad(array, 1, mode="edge")
    return padded[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def canny(image: Image.Image, low: float = LOW_THRESHOLD, high: float = HIGH_THRESHOLD) -> Image.Image:
    """White edges on black, as an RGB image of the same size (what canny ControlNets are trained on)."""
    gray = np.asarray(image.convert("L").filter(ImageFilter.GaussianBlur(1.4)), dtype=np.float32)
    # Sobel gradients.
    gx = (
        _shift(gray, 1, -1)
        + 2 * _shift(gray, 0, -1)
        + _shift(gray, -1, -1)
        - _shift(gray, 1, 1)
        - 2 * _shift(gray, 0, 1)
        - _shift(gray, -1, 1)
    )
    gy = (
        _shift(gray, -1, 1)
        + 2 * _shift(gray, -1, 0)
        + _shift(gray, -1, -1)
        - _shift(gray, 1, 1)
        - 2 * _shift(gray, 1, 0)
        - _shift(gray, 1, -1)
    )
    magnitude = np.hypot(gx, gy)
    # Non-maximum suppression along the gradient direction, quantised to 0/45/90/135 degrees.
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = ((angle + 22.5) // 45).astype(np.int8) % 4
    neighbours = {0: (0, 1), 1: (1, -1), 2: (1, 0), 3: (1, 1)}
    keep = np.zeros(gray.shape, dtype=bool)
    for index, (dy, dx) in neighbours.items():
        local_max = (magnitude >= _shift(magnitude, dy, dx)) & (magnitude > _shift(magnitude, -dy, -dx))
        keep |= (sector == index) & local_max
    thin = np.where(keep, magnitude, 0.0)
    # Hysteresis: weak edges survive only when connected to strong ones.
    strong = thin >= high
    weak = thin >= low
    edges = strong.copy()
    for _ in range(max(gray.shape)):
        grown = edges.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    grown |= _shift(edges, dy, dx)
        grown &= weak
        if np.array_equal(grown, edges):
            break
        edges = grown
    pixels = np.where(edges, 255, 0).astype(np.uint8)
    return Image.fromarray(np.stack([pixels] * 3, axis=-1))
