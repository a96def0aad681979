"""The UNet's attention blocks as the docker shows them, and diffusers' per-block scale map.

The backend announces its UNet's attention blocks by name (``up_blocks.0.attentions.1``); the docker
edits one number per block and sends diffusers' nested map, ``{"up": {"block_0": [0, 1, 0]}}``.
"""

from __future__ import annotations

from typing import Any


def block_label(name: str) -> str:
    """``up_blocks.0.attentions.1`` as an artist reads it: ``up 0 · 1``."""
    parts = name.split(".")
    part = parts[0].replace("_blocks", "").replace("_block", "")
    return f"{part} {parts[1]} · {parts[3]}" if part != "mid" else f"mid · {parts[2]}"


def nested_scales(values: dict[str, float]) -> dict[str, Any]:
    """``{attention name: scale}`` as diffusers' per-block map (what ``block_scales`` carries)."""
    scales: dict[str, Any] = {}
    for name, value in values.items():
        parts = name.split(".")
        if parts[0] == "mid_block":
            scales.setdefault("mid", []).append(value)
            continue
        part = "down" if parts[0] == "down_blocks" else "up"
        scales.setdefault(part, {}).setdefault(f"block_{parts[1]}", []).append(value)
    return scales


def flat_scales(scales: dict[str, Any], names: list[str]) -> dict[str, float]:
    """The inverse of ``nested_scales`` for the blocks in ``names`` (missing ones: 0)."""
    values = dict.fromkeys(names, 0.0)
    for name in names:
        parts = name.split(".")
        if parts[0] == "mid_block":
            entry = scales.get("mid", 0.0)
            index = int(parts[2])
        else:
            part = "down" if parts[0] == "down_blocks" else "up"
            entry = scales.get(part, {}).get(f"block_{parts[1]}", 0.0)
            index = int(parts[3])
        if isinstance(entry, list):
            entry = entry[index] if index < len(entry) else 0.0
        if isinstance(entry, int | float) and not isinstance(entry, bool):
            values[name] = float(entry)
    return values
