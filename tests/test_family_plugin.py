"""The plugin follows the backend's model family (SDXL, SD1.5), Qt-free: the custom preset's first map,
the block grid's values and hint, the per-family custom scales, the size tooltip, the status line and
the managed backend's ControlNet argument (issue 23)."""

from __future__ import annotations

import json

import pytest

from krita_plugin.instantstyle.block_map import flat_scales, grid_values
from krita_plugin.instantstyle.managed.model_choice import ManagedModel, ModelChoice
from krita_plugin.instantstyle.model_family import (
    BLOCKS_FAMILY_KEY,
    CUSTOM_START,
    KNOWN_PRESET_BLOCKS,
    BlockScalesByFamily,
    canvas_resolution_tip,
    custom_start,
    custom_start_for,
    family_key,
    grid_hint,
    preset_blocks,
    with_family,
)
from krita_plugin.instantstyle.settings import DictStore, GenerationSettings, load_settings, save_settings
from protocol import LAYOUT_PUSH_BLOCKS, BlockPreset, ModelFamily, ModelFeatures

SDXL_BLOCKS = [
    *(f"down_blocks.{b}.attentions.{a}" for b in (1, 2) for a in (0, 1)),
    "mid_block.attentions.0",
    *(f"up_blocks.{b}.attentions.{a}" for b in (0, 1) for a in (0, 1, 2)),
]
SD15_BLOCKS = [
    *(f"down_blocks.{b}.attentions.{a}" for b in (0, 1, 2) for a in (0, 1)),
    "mid_block.attentions.0",
    *(f"up_blocks.{b}.attentions.{a}" for b in (1, 2, 3) for a in (0, 1, 2)),
]
SD15_STYLE = [f"up_blocks.1.attentions.{i}" for i in range(3)]
SD15_ANNOUNCED = {
    "style": SD15_STYLE,
    "style+layout": [
        "down_blocks.2.attentions.0",
        "down_blocks.2.attentions.1",
        "mid_block.attentions.0",
        *SD15_STYLE,
    ],
    "precise": SD15_STYLE,
    "layout_push": ["down_blocks.2.attentions.0", "down_blocks.2.attentions.1"],
}


def sd15(**overrides) -> ModelFeatures:
    values = {
        "family": ModelFamily.SD15,
        "attention_blocks": SD15_BLOCKS,
        "preset_blocks": SD15_ANNOUNCED,
        "native_side": 512,
    }
    return ModelFeatures(**{**values, **overrides})


def sdxl(**overrides) -> ModelFeatures:
    return ModelFeatures(**{"attention_blocks": SDXL_BLOCKS, "native_side": 1024, **overrides})


# ---------------------------------------------------------------- the custom preset's first map


def test_the_custom_start_is_the_style_preset_of_the_backends_model():
    assert json.loads(custom_start_for(sd15(), ModelFamily.SDXL)) == {"up": {"block_1": [1.0, 1.0, 1.0]}}
    # SDXL's up_blocks.0 has three attentions: the backend wants one scale for each
    assert json.loads(custom_start_for(sdxl(), ModelFamily.SD15)) == {"up": {"block_0": [0.0, 1.0, 0.0]}}
    # what the server announces wins over what the plugin knows of the family
    odd = sd15(preset_blocks={"style": ["mid_block.attentions.0", "down_blocks.0.attentions.1"]})
    assert json.loads(custom_start_for(odd, ModelFamily.SD15)) == {
        "mid": [1.0],
        "down": {"block_0": [0.0, 1.0]},
    }


def test_an_older_server_or_none_yet_gets_its_familys_known_blocks():
    older = ModelFeatures(attention_blocks=SDXL_BLOCKS)  # no family, no preset_blocks: SDXL
    assert preset_blocks(older) == KNOWN_PRESET_BLOCKS[ModelFamily.SDXL]
    assert json.loads(custom_start_for(older, ModelFamily.SD15)) == {"up": {"block_0": [0.0, 1.0, 0.0]}}
    nothing_known = ModelFeatures()  # not connected: the family the grid last showed
    assert custom_start_for(nothing_known, ModelFamily.SDXL) == CUSTOM_START
    assert json.loads(custom_start_for(nothing_known, ModelFamily.SD15)) == {
        "up": {"block_1": [1.0, 1.0, 1.0]}
    }
    assert custom_start({}, SDXL_BLOCKS) == ""


def test_the_plugins_known_blocks_match_what_the_protocol_documents():
    assert KNOWN_PRESET_BLOCKS[ModelFamily.SD15] == SD15_ANNOUNCED
    sdxl_known = KNOWN_PRESET_BLOCKS[ModelFamily.SDXL]
    assert sdxl_known[BlockPreset.STYLE.value] == ["up_blocks.0.attentions.1"]
    assert sdxl_known[LAYOUT_PUSH_BLOCKS] == ["down_blocks.2.attentions.1"]
    for family, blocks in KNOWN_PRESET_BLOCKS.items():
        names = SD15_BLOCKS if family is ModelFamily.SD15 else SDXL_BLOCKS
        assert {name for listed in blocks.values() for name in listed} <= set(names), family


def test_the_start_fills_a_grid_of_its_family_exactly():
    values = flat_scales(json.loads(custom_start_for(sd15(), ModelFamily.SD15)), SD15_BLOCKS)
    assert {name for name, value in values.items() if value} == set(SD15_STYLE)


# ---------------------------------------------------------------- the block grid


def test_the_grid_keeps_values_by_name_only_within_one_family():
    shown = {"down_blocks.2.attentions.1": 0.8, "up_blocks.0.attentions.1": 1.0}
    saved = json.dumps({"up": {"block_1": [0.5, 0.0, 0.0]}})
    same = grid_values(SDXL_BLOCKS[:4], "sdxl", shown, "sdxl", saved)
    assert same["down_blocks.2.attentions.1"] == 0.8 and same["down_blocks.1.attentions.0"] == 0.0
    # SD1.5's down_blocks.2.attentions.1 is another place: the saved SD1.5 map, not SDXL's value
    other = grid_values(SD15_BLOCKS, "sd15", shown, "sdxl", saved)
    assert other["down_blocks.2.attentions.1"] == 0.0 and other["up_blocks.1.attentions.0"] == 0.5
    assert sum(other.values()) == 0.5
    first = grid_values(SD15_BLOCKS, "sd15", {}, "", saved)  # an empty grid: the saved map
    assert first == other
    assert grid_values(SD15_BLOCKS, "sd15", {}, "", "not json") == dict.fromkeys(SD15_BLOCKS, 0.0)


def test_the_grids_hint_names_the_models_style_and_layout_blocks():
    assert grid_hint(preset_blocks(sdxl())) == (
        "InstantStyle's style block is up 0 · 1. down 2 · 1 carries the layout."
    )
    assert grid_hint(preset_blocks(sd15())) == (
        "InstantStyle's style blocks are up 1 · 0, up 1 · 1, up 1 · 2. down 2 · 0, down 2 · 1, mid · 0 "
        "carry the layout."
    )


# ---------------------------------------------------------------- custom scales kept per family


def test_custom_block_scales_are_kept_per_family_and_come_back():
    store = DictStore()
    settings = GenerationSettings(block_scales='{"up": {"block_0": [0.0, 2.0, 0.0]}}')
    save_settings(store, settings)
    by_family = BlockScalesByFamily(store)
    assert by_family.family() is ModelFamily.SDXL  # saved before families: SDXL's
    assert by_family.switch(settings, ModelFamily.SDXL, settings.block_scales) is None
    assert store.read(family_key(ModelFamily.SDXL), "") == ""  # nothing moved

    sdxl_map = '{"up": {"block_0": [0.0, 1.5, 0.0]}}'  # what the grid shows when SD1.5 arrives
    assert by_family.switch(settings, ModelFamily.SD15, sdxl_map) == ""  # SD1.5 has none yet
    assert settings.block_scales == "" and by_family.family() is ModelFamily.SD15
    assert load_settings(store).block_scales == ""  # saved at once, not only with the next job

    sd15_map = '{"up": {"block_1": [1.0, 0.5, 1.0]}}'
    assert by_family.switch(settings, ModelFamily.SDXL, sd15_map) == sdxl_map
    assert settings.block_scales == sdxl_map and load_settings(store).block_scales == sdxl_map
    assert by_family.switch(settings, ModelFamily.SD15, sdxl_map) == sd15_map


@pytest.mark.parametrize("stored", ["", "not json", '"sd2"', "3"])
def test_a_missing_or_corrupt_family_entry_counts_as_sdxl(stored):
    store = DictStore()
    store.write(BLOCKS_FAMILY_KEY, stored)
    store.write(family_key(ModelFamily.SD15), "[1, 2]")  # not a text: no saved map
    settings = GenerationSettings(block_scales="x")
    assert BlockScalesByFamily(store).family() is ModelFamily.SDXL
    assert BlockScalesByFamily(store).switch(settings, ModelFamily.SD15, "x") == ""
    assert json.loads(store.read(family_key(ModelFamily.SDXL), "")) == "x"


# ---------------------------------------------------------------- words that name the model's size and family


def test_the_canvas_resolution_tip_says_the_models_own_size():
    assert "512×512 px for this SD1.5 model" in canvas_resolution_tip(sd15())
    assert "1024×1024 px for this SDXL model" in canvas_resolution_tip(sdxl())
    unknown = canvas_resolution_tip(None)
    assert "SDXL" in unknown and "SD1.5" in unknown and "×" not in unknown
    assert "about 1 megapixel" in canvas_resolution_tip(ModelFeatures())  # native side not said


def test_the_status_line_names_the_family_unless_the_label_does():
    from krita_plugin.instantstyle.connection import Connection
    from krita_plugin.instantstyle.session import Session
    from protocol import ImageAdapter, Limits, ModelInfo, ModelPhase, ModelStatus, PreviewMethod, ServerHello

    def status(label: str, features: ModelFeatures | None) -> str:
        session = Session(Connection("ws://127.0.0.1:1", ""))
        ready = ModelStatus(ModelPhase.READY, features=features)
        session.hello = ServerHello("1", ModelInfo(label, False), Limits(), status=ready)
        return session._connected_status()

    plus = sd15(image_adapter=ImageAdapter.PLUS, content_subtraction=False, preview=PreviewMethod.TINY_VAE)
    assert status("dreamshaper_8.safetensors", plus) == (
        "connected — SD1.5 · dreamshaper_8.safetensors — full-size previews — plus IP-Adapter "
        "(no content subtraction)"
    )
    assert (
        status("tiny random-weight SD1.5", sd15()) == "connected — tiny random-weight SD1.5 — rough previews"
    )
    assert status("SDXL base 1.0 + ip-adapter_sdxl", sdxl()) == (
        "connected — SDXL base 1.0 + ip-adapter_sdxl — rough previews"
    )
    assert status("illustrious.safetensors", sdxl()).startswith("connected — SDXL · illustrious")
    assert status("dreamshaper_8.safetensors", None) == "connected — dreamshaper_8.safetensors"  # not said
    assert with_family("stable-diffusion-v1-5", ModelFamily.SD15) == "stable-diffusion-v1-5"


# ---------------------------------------------------------------- the managed backend's ControlNet


@pytest.mark.parametrize("model", [ManagedModel.SDXL, ManagedModel.CHECKPOINT, ManagedModel.TINY])
def test_the_managed_backend_asks_for_the_familys_own_controlnet(model):
    arguments = ModelChoice(model, "/models/any.safetensors", controlnet=True).serve_arguments()
    assert arguments[arguments.index("--controlnet") + 1] == "auto"
    assert not any("sdxl-1.0" in argument for argument in arguments)
    assert "--controlnet" not in ModelChoice(model, "/models/any.safetensors").serve_arguments()
