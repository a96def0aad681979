"""One small job right after loading, so the artist's first job does not pay for the start."""

from __future__ import annotations

import time
from typing import Protocol

from PIL import Image

from protocol.enums import BlockPreset

from .prompt_cache import PromptCache
from .request import GenerationRequest, StyleReference
from .style_embedding import StyleEncoder


class Engine(Protocol):
    """What warming up uses of the engine (which imports this module)."""

    compiled: bool
    encoder: StyleEncoder
    prompts: PromptCache

    def generate(self, request: GenerationRequest) -> object: ...


def warm_up(engine: Engine, size: int = 512, steps: int = 2) -> float:
    """Lazy initialisation, kernel selection and the allocator's growth, paid now (compiled: one job
    per branch of the blocks, see ``compile_unet``). Returns its seconds. It leaves the embedding caches
    empty, free of its made-up reference, and loads no content text tower for its content text."""
    style = Image.new("RGB", (64, 64), (128, 96, 64))
    presets = (BlockPreset.STYLE, BlockPreset.ALL) if engine.compiled else (BlockPreset.STYLE,)
    encoder = engine.encoder
    started = time.perf_counter()
    for preset in presets:
        request = GenerationRequest(
            prompt="warm-up",
            style_images=[StyleReference(style)],
            content_text="a cat" if encoder.content_subtraction and encoder.text_ready else "",
            width=size,
            height=size,
            steps=steps,
            preset=preset,
        )
        engine.generate(request)
    encoder.image_cache.clear()
    encoder.text_cache.clear()
    engine.prompts.clear()
    return time.perf_counter() - started
