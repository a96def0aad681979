"""Enumerations shared by the wire format, the engine and the plugin.

They live in ``protocol`` because it is the one package that every side may
import (standard library only), so a preset or mode has exactly one spelling.
"""

from __future__ import annotations

from enum import Enum


class BlockPreset(str, Enum):
    """Which UNet attention blocks receive the style image features."""

    STYLE = "style"
    """``up_blocks.0.attentions.1`` only: the paper's default."""
    STYLE_LAYOUT = "style+layout"
    """The style block plus ``down_blocks.2.attentions.1`` (spatial layout)."""
    ALL = "all"
    """Every cross-attention block: plain IP-Adapter."""
    CUSTOM = "custom"
    """A per-block scale map given by the user."""


class Mode(str, Enum):
    """What the job starts from."""

    TXT2IMG = "txt2img"
    """A new image from the prompt and the style reference."""
    IMG2IMG = "img2img"
    """Stylize an existing image (a layer) with a denoising strength."""
    INPAINT = "inpaint"
    """Like img2img, but only inside a mask (a selection)."""
