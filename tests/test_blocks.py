"""Style-block injection: exactly the preset's attention blocks get a non-zero scale."""

from __future__ import annotations

import pytest

from backend.engine.blocks import (
    LAYOUT_BLOCK,
    STYLE_BLOCK,
    BlockMapError,
    UNetAttentionLayout,
    build_scale_map,
)
from protocol.enums import BlockPreset


def ip_scales(unet) -> dict[str, float]:
    """The scale of every IP-Adapter attention processor, by attention block name."""
    scales: dict[str, float] = {}
    for name, processor in unet.attn_processors.items():
        if hasattr(processor, "scale") and isinstance(processor.scale, list):
            block = name.split(".transformer_blocks")[0]
            scales[name] = (block, processor.scale[0])
    return scales


def nonzero_blocks(unet) -> set[str]:
    return {block for block, scale in ip_scales(unet).values() if scale != 0.0}


def test_tiny_unet_has_sdxl_topology(engine):
    layout = engine.layout
    assert layout == UNetAttentionLayout(down=(0, 2, 2), mid=1, up=(3, 3, 0))
    assert STYLE_BLOCK in layout.attention_names() and LAYOUT_BLOCK in layout.attention_names()


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        (BlockPreset.STYLE, {STYLE_BLOCK}),
        (BlockPreset.STYLE_LAYOUT, {STYLE_BLOCK, LAYOUT_BLOCK}),
    ],
)
def test_preset_sets_exactly_its_blocks(engine, preset, expected):
    unet = engine.pipeline.unet
    engine.pipeline.set_ip_adapter_scale(build_scale_map(engine.layout, preset, 0.8))
    assert nonzero_blocks(unet) == expected
    processors = ip_scales(unet)
    # Every cross-attention processor inside a target block has the style scale, all others exactly 0.
    for block, scale in processors.values():
        assert scale == (0.8 if block in expected else 0.0)
    # Each target block really has IP-Adapter processors (one per transformer layer).
    assert {block for block, _ in processors.values()} >= expected


def test_all_preset_sets_every_block(engine):
    engine.pipeline.set_ip_adapter_scale(build_scale_map(engine.layout, BlockPreset.ALL, 1.0))
    assert nonzero_blocks(engine.pipeline.unet) == set(engine.layout.attention_names())


def test_custom_map_is_validated_and_scaled(engine):
    custom = {"down": {"block_1": [0.5, 0.0]}, "up": {"block_0": 1.0}}
    scale_map = build_scale_map(engine.layout, BlockPreset.CUSTOM, 0.5, custom)
    engine.pipeline.set_ip_adapter_scale(scale_map)
    scales = {block: s for block, s in ip_scales(engine.pipeline.unet).values() if s}
    assert scales == {
        "down_blocks.1.attentions.0": 0.25,
        "up_blocks.0.attentions.0": 0.5,
        "up_blocks.0.attentions.1": 0.5,
        "up_blocks.0.attentions.2": 0.5,
    }


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        ({"down": {"block_0": 1.0}}, "down.block_0"),  # a block without attention
        ({"down": {"block_7": 1.0}}, "block_7"),
        ({"up": {"block_0": [1.0, 0.0]}}, "3 attention modules"),
        ({"side": {"block_0": 1.0}}, "unknown UNet part"),
        ({"up": {"block_0": "high"}}, "expected a number"),
        ({"up": {"block_0": True}}, "boolean"),
        ({"up": [1.0]}, "must map"),
    ],
)
def test_bad_custom_maps_give_clear_errors(engine, custom, message):
    with pytest.raises(BlockMapError, match=message):
        build_scale_map(engine.layout, BlockPreset.CUSTOM, 1.0, custom)


def test_custom_preset_needs_a_map(engine):
    with pytest.raises(BlockMapError, match="needs a per-block scale map"):
        build_scale_map(engine.layout, BlockPreset.CUSTOM, 1.0, None)


def test_a_jobs_scales_are_set_again_only_when_the_processors_no_longer_hold_them(engine, monkeypatch):
    """diffusers' ``set_ip_adapter_scale`` walks the UNet's state dict every call: the engine skips it
    when the processors still hold the job's map, and sets it again when anything changed them."""
    from backend.engine.request import GenerationRequest, StyleReference
    from tests.conftest import noise_image

    calls = []
    original = type(engine.pipeline).set_ip_adapter_scale

    def counting(pipe, scale_map):
        calls.append(scale_map)
        return original(pipe, scale_map)

    monkeypatch.setattr(type(engine.pipeline), "set_ip_adapter_scale", counting)
    request = GenerationRequest(prompt="a tower", style_images=[StyleReference(noise_image(2))], steps=1)
    unet = engine.pipeline.unet
    engine.prepare(request)
    engine.prepare(request)
    held = ip_scales(unet)
    assert len(calls) <= 1  # at most once: a previous test's engine may hold this map already
    engine.pipeline.set_ip_adapter_scale(build_scale_map(engine.layout, BlockPreset.ALL, 1.0))  # by hand
    calls.clear()
    engine.prepare(request)
    assert len(calls) == 1 and ip_scales(unet) == held  # noticed and set again
    name, processor = next(
        (n, p) for n, p in unet.attn_processors.items() if isinstance(getattr(p, "scale", None), list)
    )
    fresh = type(processor)(processor.hidden_size, processor.cross_attention_dim, processor.num_tokens, [1.0])
    try:
        unet.set_attn_processor({**unet.attn_processors, name: fresh})
        engine.prepare(request)
        assert len(calls) == 2 and ip_scales(unet) == held  # a replaced processor is noticed too
    finally:
        unet.set_attn_processor({**unet.attn_processors, name: processor})  # the engine is shared
    engine.prepare(request)
    assert len(calls) == 3 and ip_scales(unet) == held
    engine.prepare(request)
    assert len(calls) == 3  # and held again: nothing to set
