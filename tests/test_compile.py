"""Opt-in regional ``torch.compile``: once warmed up, changing the style strength or preset never
recompiles, and the compiled UNet makes the same pixels.

The backend here counts the graphs Dynamo hands it and runs them eagerly: recompiles are decided by
Dynamo's guards, before any backend, so the count is the one inductor would see (without minutes of
C++ compilation on a CPU).
"""

from __future__ import annotations

import numpy as np
import pytest

from backend.engine.engine import InstantStyleEngine
from backend.engine.request import GenerationRequest, StyleReference
from protocol import BlockPreset
from tests.conftest import noise_image


def _job(scale: float, preset: BlockPreset, **extra) -> GenerationRequest:
    return GenerationRequest(
        prompt="a lighthouse",
        style_images=[StyleReference(noise_image(3))],
        content_text="a cat",
        width=64,
        height=64,
        steps=2,
        seed=4,
        style_scale=scale,
        preset=preset,
        **extra,
    )


@pytest.fixture(scope="module")
def compiled(tiny_paths):
    engine = InstantStyleEngine.load(tiny_paths.spec(), device="cpu")
    graphs: list[int] = []

    def counting_backend(graph_module, _example_inputs):
        graphs.append(len(graph_module.graph.nodes))
        return graph_module.forward

    engine.compile_unet(backend=counting_backend)
    engine.warm_up(size=64, steps=2)
    return engine, graphs


def test_changing_strength_or_preset_after_warm_up_never_recompiles(compiled):
    engine, graphs = compiled
    assert engine.compiled and graphs, "the warm-up compiled the repeated blocks"
    after_warm_up = len(graphs)
    jobs = [
        (0.3, BlockPreset.STYLE),
        (1.7, BlockPreset.STYLE),
        (0.6, BlockPreset.STYLE_LAYOUT),
        (1.0, BlockPreset.ALL),
        (0.05, BlockPreset.ALL),
        (1.2, BlockPreset.STYLE),
    ]
    for scale, preset in jobs:
        engine.generate(_job(scale, preset))
        assert len(graphs) == after_warm_up, f"recompiled for strength {scale} with preset {preset.value}"


def test_the_compiled_unet_makes_the_same_pixels(compiled, engine):
    compiled_engine, _ = compiled
    for scale, preset in [(0.8, BlockPreset.STYLE), (1.0, BlockPreset.ALL)]:
        fast = compiled_engine.generate(_job(scale, preset)).images[0]
        plain = engine.generate(_job(scale, preset)).images[0]
        assert np.array_equal(fast, plain), (scale, preset)
