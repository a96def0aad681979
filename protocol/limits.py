"""The protocol's hard bounds, and the limits a server announces in ``hello``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .schema import bounds

MAX_JOB_ID = 2**32 - 1
MAX_SEED = 2**32 - 1
MAX_TEXT = 4000
MAX_INPUT_INDEX = 63
"""INPUT frame indices a job may use (style images, init image, mask)."""
MAX_BLOCK_SCALE = 10.0
"""Largest per-block IP-Adapter scale (InstantStyle uses about 1; 10 is already far past useful)."""
MAX_BLOCK_DEPTH = 4
MAX_LORAS = 8
"""LoRAs one job may use at once."""
MAX_LORA_WEIGHT = 4.0
MAX_LAYOUT_PUSH = 5.0
MAX_REGIONS = 8
MAX_SWEEP_AXES = 2
MAX_SWEEP_VALUES = 16
MAX_PREVIEW_SIDE = 4096
MAX_AUTO_POINTS = 64
"""Points an auto-strength search may report (its cells are bounded by ``max_sweep_cells``)."""
MAX_CANVAS_SIDE = 16384
MAX_REFINE_TILE = 4096
MAX_TILES = (MAX_CANVAS_SIDE // 8) ** 2
"""Tiles a refined step can have at most (8-px tiles on the largest canvas)."""
DEFAULT_PREVIEW_SIDE = 1024
PREVIEW_HEADER_BYTES = 64
"""At least a pixel frame's header (``frames.HEADER``, 20 bytes), with room to spare."""
DEFAULT_LAYOUT_PUSH = 2.0
"""ComfyUI_IPAdapter_plus's advice for SDXL's "style transfer precise"."""
DEFAULT_LEAKAGE_MARGIN = 0.02
"""Auto strength: how far above the no-style picture's content cosine a setting's may go (about the
spread we expect of CLIP image-text cosines between seeds of one prompt; ``docs/AUTO_STRENGTH.md``)."""
DEFAULT_PROMPT_MARGIN = 0.03
"""Auto strength: how far below the no-style picture's prompt cosine a setting's may fall."""


@dataclass(frozen=True)
class Limits:
    """What a server accepts; sent in ``hello`` so clients can check before sending."""

    max_side: int = field(default=2048, metadata=bounds(8, 16384))
    max_pixels: int = field(default=2048 * 2048, metadata=bounds(64, 16384 * 16384))
    max_steps: int = field(default=150, metadata=bounds(1, 1000))
    max_batch: int = field(default=8, metadata=bounds(1, 64))
    max_style_images: int = field(default=4, metadata=bounds(1, 16))
    max_message_bytes: int = field(default=2048 * 2048 * 4 + 64, metadata=bounds(1024, 2**31))
    """Largest WebSocket message accepted: one RGBA image of max_side x max_side plus its header."""
    max_queued_jobs: int = field(default=32, metadata=bounds(1, 10000))
    max_regions: int = field(default=4, metadata=bounds(0, MAX_REGIONS))
    """Regions one job may have (``generate.regions``)."""
    max_sweep_cells: int = field(default=16, metadata=bounds(1, MAX_SWEEP_VALUES**MAX_SWEEP_AXES))
    """Cells (pictures) one sweep may make."""
    max_preview_side: int = field(default=1024, metadata=bounds(8, MAX_PREVIEW_SIDE))
    """Longest side of preview frames: a larger ``generate.preview_side`` gets this size."""
    max_canvas_side: int = field(default=8192, metadata=bounds(8, MAX_CANVAS_SIDE))
    """Longest side of a job with ``refine`` (made at the model's size, refined at this one); its
    result travels as RESULT_TILE frames when one frame would exceed ``max_message_bytes``."""
    max_canvas_pixels: int = field(
        default=8192 * 8192, metadata=bounds(64, MAX_CANVAS_SIDE * MAX_CANVAS_SIDE)
    )

    @property
    def preview_side_in_one_message(self) -> int:
        """``max_preview_side``, or less where a square RGB preview of it would not fit one message
        (a canvas refined at its own size is previewed whole; its result travels in tiles)."""
        fits = math.isqrt(max(0, self.max_message_bytes - PREVIEW_HEADER_BYTES) // 3)
        return max(8, min(self.max_preview_side, fits))
