"""What the docker shows that depends on the backend's model family (SDXL, SD1.5), Qt-free.

The two families name their attention blocks alike (both have ``down_blocks.2.attentions.1``) but
the names mean different places, so the custom preset's starting map, the block grid's hint and the
artist's saved custom scales all follow ``features.family`` and ``features.preset_blocks``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .block_map import block_label, nested_scales
from .deps import protocol
from .settings import GenerationSettings, SettingsStore

ModelFamily = protocol.ModelFamily
STYLE = protocol.BlockPreset.STYLE.value
STYLE_LAYOUT = protocol.BlockPreset.STYLE_LAYOUT.value


_SD15_STYLE = [f"up_blocks.1.attentions.{i}" for i in range(3)]
_SD15_LAYOUT = ["down_blocks.2.attentions.0", "down_blocks.2.attentions.1"]
KNOWN_PRESET_BLOCKS: dict[protocol.ModelFamily, dict[str, list[str]]] = {
    ModelFamily.SDXL: {
        STYLE: ["up_blocks.0.attentions.1"],
        STYLE_LAYOUT: ["down_blocks.2.attentions.1", "up_blocks.0.attentions.1"],
        protocol.BlockPreset.PRECISE.value: ["up_blocks.0.attentions.1"],
        protocol.LAYOUT_PUSH_BLOCKS: ["down_blocks.2.attentions.1"],
    },
    ModelFamily.SD15: {  # InstantStyle's infer_style_sd15.py
        STYLE: list(_SD15_STYLE),
        STYLE_LAYOUT: [*_SD15_LAYOUT, "mid_block.attentions.0", *_SD15_STYLE],
        protocol.BlockPreset.PRECISE.value: list(_SD15_STYLE),
        protocol.LAYOUT_PUSH_BLOCKS: list(_SD15_LAYOUT),
    },
}
"""What each family's server announces in ``preset_blocks``: the plugin's guess where a server says
nothing (an older one is SDXL) or none is connected yet."""

CUSTOM_START = '{"up": {"block_0": [0.0, 1.0]}}'
"""An empty custom grid's first map where nothing better is known: SDXL's style block (the docker
passes ``custom_start_for`` the backend's features)."""

FAMILY_NAMES: dict[protocol.ModelFamily, tuple[str, ...]] = {
    ModelFamily.SDXL: ("sdxl",),
    ModelFamily.SD15: ("sd1.5", "sd15", "sd 1.5", "sd-1.5", "v1-5", "v1.5"),
}
"""How a model's label may already name its family (lower case)."""


def preset_blocks(features: protocol.ModelFeatures) -> dict[str, list[str]]:
    """The blocks each preset styles on the backend's model: as it says, or as its family has them."""
    return features.preset_blocks or KNOWN_PRESET_BLOCKS[features.family]


def _block_of(name: str) -> str:
    """``up_blocks.1.attentions.2`` -> ``up_blocks.1``: the UNet block whose attentions share one list."""
    return name.split(".attentions.")[0]


def custom_start(blocks: dict[str, list[str]], attention_blocks: list[str]) -> str:
    """The custom preset's first map: the style preset's blocks at 1, in diffusers' nested form.

    Each block with a style target gets one scale per attention (counted from ``attention_blocks``,
    else up to the highest target), as the backend requires: 1 at the targets, 0 elsewhere."""
    targets = blocks.get(STYLE, [])
    values: dict[str, float] = {}
    for target in targets:
        for name in attention_blocks:
            if _block_of(name) == _block_of(target):
                values.setdefault(name, 0.0)
        values[target] = 1.0
    nested = nested_scales(values)
    return json.dumps(nested) if nested else ""


def custom_start_for(features: protocol.ModelFeatures, family: protocol.ModelFamily) -> str:
    """The custom start for the backend's model once its blocks are known, else for ``family`` (the
    family the artist's grid last showed)."""
    if features.attention_blocks:
        return custom_start(preset_blocks(features), features.attention_blocks)
    return custom_start(KNOWN_PRESET_BLOCKS[family], [])


def grid_hint(blocks: dict[str, list[str]]) -> str:
    """The grid's tooltip tail: which of its blocks carry style and which the layout, on this model."""
    style = blocks.get(STYLE, [])
    layout = [name for name in blocks.get(STYLE_LAYOUT, []) if name not in style]

    def listed(names: list[str]) -> str:
        return ", ".join(block_label(name) for name in names)

    hint = f"InstantStyle's style {'block is' if len(style) == 1 else 'blocks are'} {listed(style)}."
    if layout:
        hint += f" {listed(layout)} {'carries' if len(layout) == 1 else 'carry'} the layout."
    return hint


def canvas_resolution_tip(features: protocol.ModelFeatures | None) -> str:
    """The "Canvas resolution" tooltip, with the model's own size where the backend said it."""
    if features is not None and features.native_side:
        side = features.native_side
        size = f"{side}×{side} px for this {features.family.label} model"
    else:
        size = "about 1 megapixel for SDXL, a quarter of that for SD1.5"
    return (
        f"a layer larger than the model's size ({size}) is made at that size, then upscaled and "
        "refined in tiles with the same style, at the layer's own resolution (slower, sharp); off: made "
        "within the backend's size and stretched to the layer"
    )


def with_family(label: str, family: protocol.ModelFamily) -> str:
    """The model's label for the status line, led by its family unless the label names it already."""
    if any(name in label.lower() for name in FAMILY_NAMES[family]):
        return label
    return f"{family.label} · {label}"


BLOCKS_FAMILY_KEY = "block_scales_family"
"""Settings-store key: the family ``GenerationSettings.block_scales`` was made for."""


def family_key(family: protocol.ModelFamily) -> str:
    """Settings-store key of one family's custom block scales, kept while another family is served."""
    return f"block_scales.{family.value}"


@dataclass
class BlockScalesByFamily:
    """The artist's custom block scales, one map per family in the settings store, so that a model of
    the other family starts from its own map and switching back restores the first."""

    store: SettingsStore

    def family(self) -> protocol.ModelFamily:
        """The family the saved ``block_scales`` belong to (SDXL: saved before SD1.5 existed)."""
        try:
            return ModelFamily(json.loads(self.store.read(BLOCKS_FAMILY_KEY, "")))
        except (ValueError, TypeError):
            return ModelFamily.SDXL

    def switch(self, settings: GenerationSettings, family: protocol.ModelFamily, current: str) -> str | None:
        """The backend serves ``family``: keep ``current`` (the grid's map) as the old family's and
        return the new family's saved map ("" when none), also put in ``settings``; None: no change."""
        was = self.family()
        if was is family:
            return None
        self.store.write(family_key(was), json.dumps(current))
        self.store.write(BLOCKS_FAMILY_KEY, json.dumps(family.value))
        try:
            text = json.loads(self.store.read(family_key(family), ""))
        except ValueError:
            text = ""
        text = text if isinstance(text, str) else ""
        settings.block_scales = text
        self.store.write("block_scales", json.dumps(text))  # as save_settings writes it
        return text
