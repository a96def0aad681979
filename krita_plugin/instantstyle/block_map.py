"""The UNet's attention blocks as the docker shows them, and diffusers' per-block scale map.

The backend announces its UNet's attention blocks by name (``up_blocks.0.attentions.1``); the docker
edits one number per block and sends diffusers' nested map, ``{"up": {"block_0": [0, 1, 0]}}``.
"""

from __future__ import annotations

import json
from typing import Any


def block_label(name: str) -> str:
    """``up_blocks.0.attentions.1`` as an artist reads it: ``up 0 · 1``."""
    parts = name.split(".")
    part = parts[0].replace("_blocks", "").replace("_block", "")
    return f"{part} {parts[1]} · {parts[3]}" if part != "mid" else f"mid · {parts[2]}"


def nested_scales(values: dict[str, float]) -> dict[str, Any]:
    """``{attention name: scale}`` as diffusers' per-block map (what ``block_scales`` carries).

    ``values`` names every attention of the blocks concerned (the grid's zeros too): a block's list
    has one scale per attention, in order, as diffusers and the backend require. Blocks whose scales
    are all 0 are left out (the backend gives unnamed blocks 0)."""
    grouped: dict[tuple[str, str | None], dict[int, float]] = {}
    for name, value in values.items():
        parts = name.split(".")
        if parts[0] == "mid_block":
            key, index = ("mid", None), int(parts[2])
        else:
            key = ("down" if parts[0] == "down_blocks" else "up", f"block_{parts[1]}")
            index = int(parts[3])
        grouped.setdefault(key, {})[index] = value
    scales: dict[str, Any] = {}
    for (part, block), by_index in grouped.items():
        if not any(by_index.values()):
            continue
        row = [by_index.get(i, 0.0) for i in range(max(by_index) + 1)]
        if block is None:
            scales["mid"] = row
        else:
            scales.setdefault(part, {})[block] = row
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


def parse_scales(text: str) -> dict[str, Any]:
    """A saved ``block_scales`` text as a map ({} when empty or not a JSON object)."""
    try:
        scales = json.loads(text) if text else {}
    except ValueError:
        return {}
    return scales if isinstance(scales, dict) else {}


def grid_values(
    names: list[str], family: str, shown: dict[str, float], shown_family: str, saved: str
) -> dict[str, float]:
    """The values of a block grid rebuilt for ``names`` of a ``family``'s UNet: those ``shown`` for the
    blocks that remain while the family is the same; else (an empty grid, or another family, whose
    names mean other places) the ``saved`` map's."""
    if shown and family == shown_family:
        return {name: shown.get(name, 0.0) for name in names}
    return flat_scales(parse_scales(saved), names)
