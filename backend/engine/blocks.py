"""Which UNet attention blocks get the style features, as diffusers scale maps.

InstantStyle's first idea is to feed the IP-Adapter only into the blocks that
carry style (``up_blocks.0.attentions.1``) and, optionally, spatial layout
(``down_blocks.2.attentions.1``). diffusers' ``set_ip_adapter_scale`` accepts a
per-block dict but silently drops block names that do not exist, so every map
is built from, and checked against, the UNet's real structure here. The names above are SDXL's;
each model family's own (SD1.5: ``up_blocks.1``) come from ``family.py`` as ``preset_blocks``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from protocol.enums import BlockPreset
from protocol.limits import MAX_BLOCK_SCALE

STYLE_BLOCK = "up_blocks.0.attentions.1"
LAYOUT_BLOCK = "down_blocks.2.attentions.1"

PRESET_TARGETS: dict[BlockPreset, tuple[str, ...]] = {
    BlockPreset.STYLE: (STYLE_BLOCK,),
    # The layout block's negative-only injection is precise.py's processor, not a scale.
    BlockPreset.PRECISE: (STYLE_BLOCK,),
    BlockPreset.STYLE_LAYOUT: (LAYOUT_BLOCK, STYLE_BLOCK),
}

# A user's custom map uses diffusers' own shape: {"down": {"block_2": [0.0, 1.0]},
# "mid": 0.0, "up": {"block_0": [0.0, 1.0, 0.0]}}; a number stands for every
# attention of that block.
BlockScaleMap = Mapping[str, object]


class BlockMapError(ValueError):
    """A per-block scale map names blocks or attentions that the UNet lacks."""


@dataclass(frozen=True)
class UNetAttentionLayout:
    """How many attention modules each UNet block has (0 = none)."""

    down: tuple[int, ...]
    mid: int
    up: tuple[int, ...]

    @classmethod
    def of(cls, unet: object) -> UNetAttentionLayout:
        def count(block: object) -> int:
            return len(getattr(block, "attentions", None) or ())

        return cls(
            down=tuple(count(b) for b in unet.down_blocks),  # type: ignore[attr-defined]
            mid=count(unet.mid_block),  # type: ignore[attr-defined]
            up=tuple(count(b) for b in unet.up_blocks),  # type: ignore[attr-defined]
        )

    def attention_names(self) -> list[str]:
        """Every attention module's name, e.g. ``up_blocks.0.attentions.1``."""
        names = [f"down_blocks.{b}.attentions.{a}" for b, n in enumerate(self.down) for a in range(n)]
        names += [f"mid_block.attentions.{a}" for a in range(self.mid)]
        names += [f"up_blocks.{b}.attentions.{a}" for b, n in enumerate(self.up) for a in range(n)]
        return names


def scales_for_targets(layout: UNetAttentionLayout, targets: Mapping[str, float]) -> dict[str, object]:
    """A complete diffusers scale map: ``targets`` get their scale, all else exactly 0."""
    known = set(layout.attention_names())
    unknown = sorted(set(targets) - known)
    if unknown:
        raise BlockMapError(f"the UNet has no attention block {', '.join(unknown)}")

    def block_list(prefix: str, count: int) -> list[float]:
        return [float(targets.get(f"{prefix}.attentions.{a}", 0.0)) for a in range(count)]

    scale_map: dict[str, object] = {
        "down": {f"block_{b}": block_list(f"down_blocks.{b}", n) for b, n in enumerate(layout.down) if n},
        "up": {f"block_{b}": block_list(f"up_blocks.{b}", n) for b, n in enumerate(layout.up) if n},
    }
    if layout.mid:
        scale_map["mid"] = (
            block_list("mid_block", layout.mid)[0] if layout.mid == 1 else block_list("mid_block", layout.mid)
        )
    return scale_map


def custom_targets(layout: UNetAttentionLayout, custom: BlockScaleMap) -> dict[str, float]:
    """Flatten and validate a user's diffusers-style map into ``{attention name: scale}``."""
    targets: dict[str, float] = {}
    for part, value in custom.items():
        if part == "mid":
            if not layout.mid:
                raise BlockMapError("the UNet has no mid-block attention")
            _assign(targets, "mid_block", layout.mid, value)
            continue
        if part not in ("down", "up"):
            raise BlockMapError(f"unknown UNet part {part!r}: expected 'down', 'mid' or 'up'")
        if not isinstance(value, Mapping):
            raise BlockMapError(f"{part!r} must map 'block_N' to a scale or a list of scales")
        counts = layout.down if part == "down" else layout.up
        for block_name, block_value in value.items():
            index = _block_index(block_name)
            if index is None or index >= len(counts) or counts[index] == 0:
                raise BlockMapError(f"{part}.{block_name} is not a UNet block with attention")
            _assign(targets, f"{part}_blocks.{index}", counts[index], block_value)
    return targets


PresetBlocks = Mapping[str, Sequence[str]]
"""The attention names each preset targets, by ``BlockPreset`` value (``FamilyTraits.preset_blocks``)."""


def preset_targets(
    layout: UNetAttentionLayout,
    preset: BlockPreset,
    custom: BlockScaleMap | None,
    blocks: PresetBlocks | None = None,
) -> dict[str, float]:
    """The unscaled per-attention weights (1.0 = full) that a preset selects (``blocks``: the model
    family's targets; None: SDXL's)."""
    if preset is BlockPreset.ALL:
        return dict.fromkeys(layout.attention_names(), 1.0)
    if preset is BlockPreset.CUSTOM:
        if not custom:
            raise BlockMapError("the custom preset needs a per-block scale map")
        return custom_targets(layout, custom)
    names = PRESET_TARGETS[preset] if blocks is None else blocks[preset.value]
    return dict.fromkeys(names, 1.0)


def build_scale_map(
    layout: UNetAttentionLayout,
    preset: BlockPreset,
    style_scale: float,
    custom: BlockScaleMap | None = None,
    blocks: PresetBlocks | None = None,
) -> dict[str, object]:
    """The map for ``pipe.set_ip_adapter_scale``: the preset's targets times ``style_scale``."""
    weights = preset_targets(layout, preset, custom, blocks)
    return scales_for_targets(layout, {name: w * style_scale for name, w in weights.items()})


def _block_index(name: object) -> int | None:
    if not isinstance(name, str) or not name.startswith("block_"):
        return None
    digits = name[len("block_") :]
    return int(digits) if digits.isdigit() else None


def _assign(targets: dict[str, float], prefix: str, count: int, value: object) -> None:
    if isinstance(value, bool):
        raise BlockMapError(f"{prefix}: a scale must be a number, not a boolean")
    if isinstance(value, int | float):
        values = [float(value)] * count
    elif isinstance(value, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        if len(value) != count:
            raise BlockMapError(f"{prefix} has {count} attention modules, the map gives {len(value)} scales")
        values = [float(v) for v in value]
    else:
        raise BlockMapError(f"{prefix}: expected a number or a list of {count} numbers")
    for scale in values:
        if not 0.0 <= scale <= MAX_BLOCK_SCALE:  # also false for NaN
            raise BlockMapError(f"{prefix}: a scale must be from 0 to {MAX_BLOCK_SCALE}, got {scale}")
    for index, scale in enumerate(values):
        targets[f"{prefix}.attentions.{index}"] = scale


class AppliedScales:
    """``set_ip_adapter_scale`` only when a job's map differs from what the processors hold.

    diffusers expands a map by walking the UNet's state dict (13 ms a job on the tiny model, ~1 % of a
    256² job, more on SDXL's 2,500 tensors). The attention modules, their processors and the values
    these were given are remembered; a job with the same map checks them (microseconds): a processor
    replaced or a scale set by anything else since makes the next job set them again. (Call with
    diffusers' own processors installed: ``PreciseLayout.set(None)`` first, as ``prepare`` does.)"""

    def __init__(self) -> None:
        self._map: dict[str, object] | None = None
        self._held: list[tuple[object, object, list[float]]] = []

    def apply(self, pipe: object, unet: object, scale_map: dict[str, object]) -> None:
        if scale_map == self._map and self._still_held():
            return
        pipe.set_ip_adapter_scale(scale_map)  # type: ignore[attr-defined]
        self._map = scale_map
        self._held = [
            (module, module.processor, list(module.processor.scale))
            for module in unet.modules()  # type: ignore[attr-defined]
            if isinstance(getattr(getattr(module, "processor", None), "scale", None), list)
        ]

    def _still_held(self) -> bool:
        return bool(self._held) and all(
            module.processor is processor and processor.scale == values  # type: ignore[attr-defined]
            for module, processor, values in self._held
        )
