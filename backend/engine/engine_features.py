"""What a loaded engine tells clients it offers (``model_status.features``), read off its parts."""

from __future__ import annotations

from typing import Any

from protocol.enums import StyleMetric
from protocol.messages import ModelFeatures, SpeedPresetInfo

from .prediction import model_prediction
from .speed_presets import SpeedPreset, speed_preset


def loaded_speed_presets(engine: Any) -> list[SpeedPreset]:
    """The speed presets asked for at start whose LoRA loaded."""
    presets = [speed_preset(name, engine.family.family) for name in engine.spec.speed_presets]
    return [preset for preset in presets if preset.lora.name in engine.loras.loaded]


def engine_features(engine: Any) -> ModelFeatures:
    """``engine``'s LoRAs, presets, blocks, problems, previews, family, controls and style metric."""
    presets = [
        SpeedPresetInfo(p.name, p.label, p.lora.name, p.lora_weight, p.sampler, p.steps, p.guidance_scale)
        for p in loaded_speed_presets(engine)
    ]
    return ModelFeatures(
        sorted(engine.loras.loaded),
        presets,
        engine.layout.attention_names(),
        [*engine.loras.failed.values(), *engine.loras.duplicates]
        + ([engine.preview_vae.note] if engine.preview_vae.note else [])
        + engine.load_problems,
        engine.preview_vae.method,
        native_side=engine.native_side,
        prediction=model_prediction(engine.schedulers.model_scheduler).value,
        image_adapter=engine.adapter.kind,
        content_subtraction=engine.encoder.content_subtraction,
        family=engine.family.family,
        preset_blocks=engine.preset_blocks,
        controls=engine.controlnets.kinds,
        style_metric=StyleMetric.CSD if engine.csd is not None else StyleMetric.CLIP,
    )
